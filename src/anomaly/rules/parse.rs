//! Reading a rules file: TOML with the span of every value, checked against the vitals of
//! the job's FHIR mapping; every problem is reported with file, line and column.

use super::*;
use serde::Deserialize;
use std::collections::HashMap;
use toml::Spanned;

/// Every problem found in a rules file, each with file, line and column.
pub type RuleErrors = crate::config::ConfigErrors;

/// What a rules file is called in messages.
const WHAT: &str = "rules file";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    rule: Vec<RawRule>,
    news2: Option<RawNews2>,
    #[serde(default)]
    quality: BTreeMap<String, Spanned<RawQuality>>,
    #[serde(default)]
    text_values: BTreeMap<String, Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    technical: Option<RawTechnical>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTechnical {
    enabled: Option<bool>,
    signal_lost_after: Option<Spanned<String>>,
    resolve_after: Option<Spanned<String>>,
    suppress: Option<Spanned<String>>,
    #[serde(default)]
    flags: BTreeMap<Spanned<String>, RawFlag>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlag {
    title: String,
    #[serde(default)]
    suspends: Vec<Spanned<String>>,
    #[serde(default)]
    on: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    sustained: Option<Spanned<String>>,
    resolve_after: Option<Spanned<String>>,
    suppress: Option<Spanned<String>>,
    max_gap: Option<Spanned<String>>,
    suspect_within: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBands {
    warning: Option<Spanned<f64>>,
    critical: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChange {
    within: Spanned<String>,
    drop: Option<Spanned<f64>>,
    rise: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBaseline {
    halflife: Spanned<String>,
    warmup: Spanned<String>,
    z: Spanned<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    title: Option<String>,
    vital: Spanned<String>,
    unit: Option<Spanned<String>>,
    above: Option<Spanned<RawBands>>,
    below: Option<Spanned<RawBands>>,
    change: Option<Spanned<RawChange>>,
    baseline: Option<Spanned<RawBaseline>>,
    severity: Option<Spanned<String>>,
    hysteresis: Option<Spanned<f64>>,
    sustained: Option<Spanned<String>>,
    resolve_after: Option<Spanned<String>>,
    suppress: Option<Spanned<String>>,
    max_gap: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNews2 {
    urgent: Option<Spanned<i64>>,
    emergency: Option<Spanned<i64>>,
    single_parameter: Option<bool>,
    stale_after: Option<Spanned<String>>,
    smoothing: Option<Spanned<String>>,
    #[serde(default)]
    scale2_patients: Vec<String>,
    #[serde(default)]
    vitals: BTreeMap<String, Spanned<String>>,
    sustained: Option<Spanned<String>>,
    resolve_after: Option<Spanned<String>>,
    suppress: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuality {
    min: Option<f64>,
    max: Option<f64>,
    max_step: Option<f64>,
    max_gap: Option<Spanned<String>>,
}

/// The shared checker, with the rules' wording: problems name the rule rather than a field,
/// and a zero duration is meaningful (`sustained = "0s"`: one reading is a finding).
struct Cx<'a>(crate::config::error::Checker<'a>);

impl Cx<'_> {
    fn at(&mut self, span: std::ops::Range<usize>, reason: impl Into<String>) {
        self.0.at(span, "", reason);
    }

    fn duration(&mut self, v: &Option<Spanned<String>>, what: &str, default: Duration) -> Duration {
        self.0.duration_or_zero(v, what, default)
    }
}

/// Reads and validates a rules file against the vitals of the job's FHIR mapping.
pub fn load(path: &std::path::Path, vitals: &Vitals) -> Result<RuleSet, RuleErrors> {
    let text = crate::config::error::read(WHAT, path)?;
    parse(&text, &path.display().to_string(), vitals)
}

/// Parses and validates rules text.
pub fn parse(text: &str, file: &str, vitals: &Vitals) -> Result<RuleSet, RuleErrors> {
    let raw: RawFile = crate::config::error::from_toml(WHAT, text, file)?;
    let mut cx = Cx(crate::config::error::Checker::new(WHAT, file, text));
    let d_sustained = cx.duration(
        &raw.defaults.sustained,
        "defaults.sustained",
        Duration::from_secs(30),
    );
    let d_resolve = cx.duration(
        &raw.defaults.resolve_after,
        "defaults.resolve_after",
        Duration::from_secs(120),
    );
    let d_suppress = cx.duration(
        &raw.defaults.suppress,
        "defaults.suppress",
        Duration::from_secs(600),
    );
    let positive = |cx: &mut Cx<'_>, v: &Option<Spanned<String>>, what: &str| {
        let d = cx.duration(v, what, Duration::ZERO);
        if let (Some(span), true) = (v.as_ref().map(Spanned::span), d.is_zero()) {
            cx.at(span, format!("{what} must be longer than 0s"));
        }
        v.as_ref().map(|_| ms_of(d))
    };
    let d_max_gap = positive(&mut cx, &raw.defaults.max_gap, "defaults.max_gap");
    let suspect_within = cx.duration(
        &raw.defaults.suspect_within,
        "defaults.suspect_within",
        Duration::from_secs(10),
    );
    let mut max_gap_ms: BTreeMap<String, i64> = BTreeMap::new();
    let mut rules = Vec::new();
    let mut ids: HashMap<String, std::ops::Range<usize>> = HashMap::new();
    for r in &raw.rule {
        let id = r.id.get_ref().clone();
        if ids.insert(id.clone(), r.id.span()).is_some() {
            cx.at(r.id.span(), format!("rule id \"{id}\" is used twice"));
        }
        let Some(vital) = vitals.resolve(r.vital.get_ref()).map(str::to_string) else {
            cx.at(
                r.vital.span(),
                format!(
                    "rule \"{id}\": unknown vital \"{}\": the FHIR mapping produces {}",
                    r.vital.get_ref(),
                    vitals.known()
                ),
            );
            continue;
        };
        if let (Some(u), Some(mapped)) = (&r.unit, vitals.units.get(&vital)) {
            // The UCUM code and the display text name the same unit.
            if !mapped.is_empty() && !mapped.iter().any(|m| m == u.get_ref()) {
                let spelled: Vec<String> = mapped.iter().map(|m| format!("\"{m}\"")).collect();
                cx.at(
                    u.span(),
                    format!(
                        "rule \"{id}\": unit \"{}\" but the FHIR mapping records {vital} in {}",
                        u.get_ref(),
                        spelled.join(" or ")
                    ),
                );
            }
        }
        let kinds = [
            r.above.is_some() || r.below.is_some(),
            r.change.is_some(),
            r.baseline.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            cx.at(
                r.id.span(),
                format!("rule \"{id}\": give exactly one of above/below, change, baseline"),
            );
            continue;
        }
        let severity = match r
            .severity
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("warning", _)) => Severity::Warning,
            Some(("critical", _)) => Severity::Critical,
            Some((other, span)) => {
                cx.at(
                    span,
                    format!(
                        "rule \"{id}\": severity \"{other}\": expected \"warning\" or \"critical\""
                    ),
                );
                Severity::Warning
            }
        };
        // A rule's max_gap bounds its vital's: where rules on one vital differ, the
        // smallest holds for all of them (a vital's evidence stops for every rule at once).
        if let Some(g) = positive(&mut cx, &r.max_gap, "max_gap") {
            let e = max_gap_ms.entry(vital.clone()).or_insert(g);
            *e = (*e).min(g);
        }
        let hysteresis = r.hysteresis.as_ref().map_or(0.0, |h| *h.get_ref());
        if hysteresis < 0.0 {
            cx.at(
                r.hysteresis.as_ref().expect("some").span(),
                format!("rule \"{id}\": hysteresis must not be negative"),
            );
        }
        let bands = |cx: &mut Cx<'_>,
                     b: &Spanned<RawBands>,
                     above: bool|
         -> (Option<f64>, Option<f64>) {
            let (w, c) = (
                b.get_ref().warning.as_ref().map(|v| *v.get_ref()),
                b.get_ref().critical.as_ref().map(|v| *v.get_ref()),
            );
            if w.is_none() && c.is_none() {
                cx.at(
                    b.span(),
                    format!("rule \"{id}\": a band needs warning, critical or both"),
                );
            }
            if let (Some(w), Some(c)) = (w, c) {
                let contradictory = if above { c < w } else { c > w };
                if contradictory {
                    cx.at(
                        b.span(),
                        format!(
                            "rule \"{id}\": critical {c} is less severe than warning {w} ({} critical must be {} warning)",
                            if above { "above:" } else { "below:" },
                            if above { "at or above" } else { "at or below" }
                        ),
                    );
                }
            }
            (w, c)
        };
        let push =
            |signal: Signal, test: Test, rules: &mut Vec<Rule>, cx: &mut Cx<'_>, suffix: &str| {
                rules.push(Rule {
                    id: format!("{id}{suffix}"),
                    title: r.title.clone().unwrap_or_else(|| id.clone()),
                    signal,
                    test,
                    hysteresis,
                    sustained: cx.duration(&r.sustained, "sustained", d_sustained),
                    resolve_after: cx.duration(&r.resolve_after, "resolve_after", d_resolve),
                    suppress: cx.duration(&r.suppress, "suppress", d_suppress),
                    unit: r.unit.as_ref().map(|u| u.get_ref().clone()),
                    max_gap: r
                        .max_gap
                        .as_ref()
                        .and_then(|g| humantime::parse_duration(g.get_ref().trim()).ok()),
                });
            };
        if r.above.is_some() || r.below.is_some() {
            let above = r.above.as_ref().map(|b| bands(&mut cx, b, true));
            let below = r.below.as_ref().map(|b| bands(&mut cx, b, false));
            if let (Some((aw, ac)), Some((bw, bc))) = (above, below) {
                let lowest_above = aw.or(ac).unwrap_or(f64::INFINITY);
                let highest_below = bw.or(bc).unwrap_or(f64::NEG_INFINITY);
                if highest_below + hysteresis >= lowest_above - hysteresis {
                    cx.at(
                        r.id.span(),
                        format!("rule \"{id}\": the below band ({highest_below}) and the above band ({lowest_above}) overlap (hysteresis {hysteresis} included)"),
                    );
                }
            }
            // Two sides of one vital are two conditions: each opens and resolves on its own.
            let sides = usize::from(above.is_some()) + usize::from(below.is_some());
            if let Some((w, c)) = above {
                let suffix = if sides == 2 { "/above" } else { "" };
                push(
                    Signal::Value(vital.clone()),
                    Test::Above {
                        warning: w,
                        critical: c,
                    },
                    &mut rules,
                    &mut cx,
                    suffix,
                );
            }
            if let Some((w, c)) = below {
                let suffix = if sides == 2 { "/below" } else { "" };
                push(
                    Signal::Value(vital.clone()),
                    Test::Below {
                        warning: w,
                        critical: c,
                    },
                    &mut rules,
                    &mut cx,
                    suffix,
                );
            }
        } else if let Some(ch) = &r.change {
            let c = ch.get_ref();
            let within = cx.duration(
                &Some(c.within.clone()),
                "change.within",
                Duration::from_secs(600),
            );
            let (falling, amount) = match (&c.drop, &c.rise) {
                (Some(d), None) => (true, *d.get_ref()),
                (None, Some(r)) => (false, *r.get_ref()),
                _ => {
                    cx.at(
                        ch.span(),
                        format!("rule \"{id}\": change needs exactly one of drop, rise"),
                    );
                    continue;
                }
            };
            if amount <= 0.0 {
                cx.at(
                    ch.span(),
                    format!(
                        "rule \"{id}\": change amounts are positive (a drop of 30 is drop = 30)"
                    ),
                );
            }
            let (warning, critical) = match severity {
                Severity::Warning => (Some(amount), None),
                Severity::Critical => (None, Some(amount)),
            };
            let signal = Signal::Change {
                vital: vital.clone(),
                within_s: within.as_secs().max(1),
                falling,
            };
            let test = if falling {
                Test::Below {
                    warning: warning.map(|a| -a),
                    critical: critical.map(|a| -a),
                }
            } else {
                Test::Above { warning, critical }
            };
            push(signal, test, &mut rules, &mut cx, "");
        } else if let Some(b) = &r.baseline {
            let bl = b.get_ref();
            let halflife = cx.duration(
                &Some(bl.halflife.clone()),
                "baseline.halflife",
                Duration::from_secs(3600),
            );
            let warmup = cx.duration(
                &Some(bl.warmup.clone()),
                "baseline.warmup",
                Duration::from_secs(1800),
            );
            let z = *bl.z.get_ref();
            if z <= 0.0 {
                cx.at(bl.z.span(), format!("rule \"{id}\": z must be positive"));
            }
            let (warning, critical) = match severity {
                Severity::Warning => (Some(z), None),
                Severity::Critical => (None, Some(z)),
            };
            let signal = Signal::Baseline {
                vital: vital.clone(),
                halflife_s: halflife.as_secs().max(1),
                warmup_s: warmup.as_secs(),
            };
            // Deviation either way: the signal is |z|.
            push(
                signal,
                Test::Above { warning, critical },
                &mut rules,
                &mut cx,
                "",
            );
        }
    }

    let news2 = raw.news2.as_ref().map(|n| {
        let urgent = n.urgent.as_ref().map_or(5, |v| *v.get_ref());
        let emergency = n.emergency.as_ref().map_or(7, |v| *v.get_ref());
        if !(1..=20).contains(&urgent) || !(1..=20).contains(&emergency) || urgent >= emergency {
            let span = n.urgent.as_ref().or(n.emergency.as_ref()).map_or(0..0, |s| s.span());
            cx.at(span, format!("news2: urgent ({urgent}) must be below emergency ({emergency}), both between 1 and 20"));
        }
        let mut map = BTreeMap::new();
        for p in Param::ALL {
            map.insert(p, p.default_code().to_string());
        }
        for (name, v) in &n.vitals {
            let Some(p) = Param::ALL.iter().copied().find(|p| format!("{p:?}").to_lowercase() == name.replace('_', "")) else {
                cx.at(v.span(), format!("news2.vitals: unknown parameter \"{name}\" (respiration_rate, spo2, oxygen, systolic_bp, pulse, consciousness, temperature)"));
                continue;
            };
            match vitals.resolve(v.get_ref()) {
                Some(k) => {
                    map.insert(p, k.to_string());
                }
                None => cx.at(v.span(), format!("news2.vitals.{name}: unknown vital \"{}\"", v.get_ref())),
            }
        }
        // Parameters the mapping does not produce are simply always missing (and reported
        // as such in every assessment).
        for (p, code) in map.iter_mut() {
            if let Some(k) = vitals.resolve(code) {
                *code = k.to_string();
            } else {
                tracing::warn!(parameter = p.name(), vital = %code, "NEWS2 parameter not produced by the FHIR mapping: always missing");
            }
        }
        News2Config {
            urgent: urgent.clamp(0, 255) as u8,
            emergency: emergency.clamp(0, 255) as u8,
            single_parameter: n.single_parameter.unwrap_or(true),
            stale_after: cx.duration(&n.stale_after, "news2.stale_after", Duration::from_secs(900)),
            smoothing: cx.duration(&n.smoothing, "news2.smoothing", Duration::from_secs(60)),
            scale2_patients: n.scale2_patients.clone(),
            vitals: map,
            sustained: cx.duration(&n.sustained, "news2.sustained", Duration::ZERO),
            resolve_after: cx.duration(&n.resolve_after, "news2.resolve_after", d_resolve),
            suppress: cx.duration(&n.suppress, "news2.suppress", d_suppress),
        }
    });

    let mut quality = BTreeMap::new();
    for (name, q) in &raw.quality {
        let Some(vital) = vitals.resolve(name) else {
            cx.at(q.span(), format!("quality: unknown vital \"{name}\""));
            continue;
        };
        let r = q.get_ref();
        if let (Some(lo), Some(hi)) = (r.min, r.max) {
            if lo >= hi {
                cx.at(
                    q.span(),
                    format!("quality.{name}: min {lo} must be below max {hi}"),
                );
            }
        }
        let gap = positive(&mut cx, &r.max_gap, &format!("quality.{name}.max_gap"));
        if let Some(g) = gap {
            // Set on the vital itself: it wins over the rules'.
            max_gap_ms.insert(vital.to_string(), g);
        }
        quality.insert(
            vital.to_string(),
            Quality {
                min: r.min,
                max: r.max,
                max_step: r.max_step,
                max_gap: gap.map(|g| Duration::from_millis(g as u64)),
            },
        );
    }

    let mut text_values: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (name, table) in &raw.text_values {
        let Some(vital) = vitals.resolve(name) else {
            cx.at(
                table.span(),
                format!(
                    "text_values: unknown vital \"{name}\": the FHIR mapping produces {}",
                    vitals.known()
                ),
            );
            continue;
        };
        let map = text_values.entry(vital.to_string()).or_default();
        for (text, v) in table.get_ref() {
            let number = match v.get_ref() {
                toml::Value::Integer(i) => Some(*i as f64),
                toml::Value::Float(f) if f.is_finite() => Some(*f),
                _ => None,
            };
            match number {
                Some(n) => {
                    map.insert(text.trim().to_lowercase(), n);
                }
                None => cx.at(
                    v.span(),
                    format!("text_values.{name}.\"{text}\": must be a number (what rules and NEWS2 read \"{text}\" as)"),
                ),
            }
        }
    }
    // NEWS2 reads oxygen delivery as air (0) or supplemental oxygen (1): the usual charting
    // words are understood, beside (and overridden by) what the file says.
    if let Some(n) = &news2 {
        if let Some(vital) = n.vitals.get(&Param::Oxygen) {
            let given = text_values.entry(vital.clone()).or_default();
            for (word, v) in crate::anomaly::news2::oxygen_words() {
                given.entry(word).or_insert(v);
            }
        }
    }

    let t = raw.technical.as_ref();
    let defaults = Technical::default();
    let timed = |cx: &mut Cx<'_>, v: Option<&Option<Spanned<String>>>, what: &str, d: i64| {
        ms_of(cx.duration(v.unwrap_or(&None), what, Duration::from_millis(d as u64)))
    };
    let mut flags = BTreeMap::new();
    for (key, f) in t.map(|t| &t.flags).into_iter().flatten() {
        let Some((type_name, value)) = key.get_ref().split_once('.') else {
            cx.at(
                key.span(),
                format!(
                    "technical.flags.\"{}\": name the device value as type.value (\"spo2.probeOff\")",
                    key.get_ref()
                ),
            );
            continue;
        };
        let mut suspends = Vec::new();
        for v in &f.suspends {
            match vitals.resolve(v.get_ref()) {
                Some(k) => suspends.push(k.to_string()),
                None => cx.at(
                    v.span(),
                    format!(
                        "technical.flags.{}: unknown vital \"{}\": the FHIR mapping produces {}",
                        key.get_ref(),
                        v.get_ref(),
                        vitals.known()
                    ),
                ),
            }
        }
        flags.insert(
            (type_name.to_string(), value.to_string()),
            Flag {
                title: f.title.clone(),
                suspends,
                on_words: f.on.iter().map(|w| w.trim().to_lowercase()).collect(),
            },
        );
    }
    let technical = Technical {
        flags,
        enabled: t.and_then(|t| t.enabled).unwrap_or(true),
        signal_lost_after_ms: timed(
            &mut cx,
            t.map(|t| &t.signal_lost_after),
            "technical.signal_lost_after",
            defaults.signal_lost_after_ms,
        )
        .max(1),
        resolve_after_ms: timed(
            &mut cx,
            t.map(|t| &t.resolve_after),
            "technical.resolve_after",
            defaults.resolve_after_ms,
        ),
        suppress_ms: timed(
            &mut cx,
            t.map(|t| &t.suppress),
            "technical.suppress",
            defaults.suppress_ms,
        ),
    };

    cx.0.finish(RuleSet {
        file: file.to_string(),
        rules,
        news2,
        quality,
        text_values,
        evidence: Evidence {
            max_gap_ms,
            default_max_gap_ms: d_max_gap,
            suspect_within_ms: ms_of(suspect_within),
        },
        technical,
    })
}

fn ms_of(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128 / 4) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::FhirMapping;

    fn vitals() -> Vitals {
        let fhir = FhirMapping::from_file(std::path::Path::new(
            "templates/bedside-monitor/fhirmapping.json",
        ))
        .expect("mapping");
        Vitals::new(&fhir)
    }

    #[test]
    fn a_rule_unit_matches_the_mappings_ucum_code_or_its_display_text() {
        let rule = |unit: &str| {
            format!("[[rule]]\nid = \"bp\"\nvital = \"8480-6\"\nunit = \"{unit}\"\nbelow = {{ warning = 90 }}\n")
        };
        parse(&rule("mm[Hg]"), "r.toml", &vitals()).expect("the UCUM code");
        parse(&rule("mmHg"), "r.toml", &vitals()).expect("the display text");
        let e = parse(&rule("kPa"), "r.toml", &vitals()).expect_err("another unit");
        assert!(
            e.errors[0].reason.contains("in \"mm[Hg]\" or \"mmHg\"") && e.errors[0].line == Some(4),
            "{:?}",
            e.errors
        );
    }

    #[test]
    fn the_shipped_rules_load() {
        let r = load(
            std::path::Path::new("templates/alerts/adult-vitals.toml"),
            &vitals(),
        )
        .expect("rules");
        assert!(r.rules.iter().any(|r| r.id == "tachycardia"));
        assert!(r.news2.is_some());
    }

    #[test]
    fn vitals_are_named_by_code_type_or_component() {
        let v = vitals();
        assert_eq!(v.resolve("heartRate"), Some("8867-4"));
        assert_eq!(v.resolve("8867-4"), Some("8867-4"));
        assert_eq!(v.resolve("bloodPressure.systolic"), Some("8480-6"));
        assert_eq!(
            v.resolve("bloodPressure"),
            None,
            "a type with components names no single value"
        );
    }

    #[test]
    fn bad_rules_are_refused_with_line_and_column() {
        let text = r#"
[[rule]]
id = "hr"
vital = "heartRate"
above = { warning = 150, critical = 130 }

[[rule]]
id = "x"
vital = "glucose"
below = { warning = 3 }

[[rule]]
id = "bp"
vital = "8480-6"
unit = "kPa"
below = { warning = 90 }
above = { warning = 85 }
"#;
        let e = parse(text, "r.toml", &vitals()).expect_err("invalid");
        let lines: Vec<String> = e
            .errors
            .iter()
            .map(|e| format!("{}:{}", e.line.unwrap_or(0), e.reason))
            .collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("5:") && l.contains("less severe")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("9:") && l.contains("unknown vital \"glucose\"")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("15:") && l.contains("mmHg")),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l.contains("overlap")), "{lines:?}");
    }

    #[test]
    fn levels_use_hysteresis() {
        let r = parse(
            "[[rule]]\nid = \"hr\"\nvital = \"heartRate\"\nabove = { warning = 130, critical = 150 }\nhysteresis = 5\n",
            "r.toml",
            &vitals(),
        )
        .expect("rules");
        let rule = &r.rules[0];
        assert_eq!(
            [120.0, 125.0, 129.0, 130.0, 149.0, 150.0].map(|v| rule.level(v)),
            [
                Level::Normal,
                Level::Margin,
                Level::Margin,
                Level::Warning,
                Level::Warning,
                Level::Critical
            ]
        );
        let b = r.boundaries()[&Signal::Value("8867-4".into())].clone();
        assert!(
            b.contains(&125.0) && b.contains(&130.0) && b.contains(&150.0),
            "{b:?}"
        );
    }
}
