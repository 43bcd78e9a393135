//! NEWS2 (National Early Warning Score 2, Royal College of Physicians, 2017): parameter
//! scores, the aggregate and its clinical response bands.

use serde::Serialize;

/// The seven NEWS2 parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Param {
    /// Respiration rate, breaths per minute.
    RespirationRate,
    /// SpO2, %.
    Spo2,
    /// Air (0) or supplemental oxygen (1).
    Oxygen,
    /// Systolic blood pressure, mmHg.
    SystolicBp,
    /// Pulse, beats per minute.
    Pulse,
    /// ACVPU: 0 alert, 1 new confusion, 2 voice, 3 pain, 4 unresponsive.
    Consciousness,
    /// Temperature, °C.
    Temperature,
}

impl Param {
    /// All parameters, in the chart's order.
    pub const ALL: [Param; 7] = [
        Param::RespirationRate,
        Param::Spo2,
        Param::Oxygen,
        Param::SystolicBp,
        Param::Pulse,
        Param::Consciousness,
        Param::Temperature,
    ];

    /// The chart's name.
    pub fn name(self) -> &'static str {
        match self {
            Param::RespirationRate => "respiration rate",
            Param::Spo2 => "SpO2",
            Param::Oxygen => "air or oxygen",
            Param::SystolicBp => "systolic BP",
            Param::Pulse => "pulse",
            Param::Consciousness => "consciousness",
            Param::Temperature => "temperature",
        }
    }

    /// The LOINC code the parameter is read from by default.
    pub fn default_code(self) -> &'static str {
        match self {
            Param::RespirationRate => "9279-1",
            Param::Spo2 => "59408-5",
            Param::Oxygen => "3150-0",
            Param::SystolicBp => "8480-6",
            Param::Pulse => "8867-4",
            Param::Consciousness => "80288-4",
            Param::Temperature => "8310-5",
        }
    }
}

/// The clinical response a score calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Aggregate 0-4, no parameter scoring 3.
    Low,
    /// A single parameter scoring 3: urgent ward-based response.
    LowMedium,
    /// Aggregate 5-6: urgent response.
    Medium,
    /// Aggregate 7 or more: emergency response.
    High,
}

/// A parameter's score. SpO2 needs to know whether the patient is on oxygen (scale 2 only).
pub fn score(p: Param, value: f64, scale2: bool, on_oxygen: bool) -> u8 {
    // Charted values are whole numbers (temperature to one decimal): round as a nurse would.
    let v = if p == Param::Temperature {
        (value * 10.0).round() / 10.0
    } else {
        value.round()
    };
    match p {
        Param::RespirationRate => match v {
            v if v <= 8.0 => 3,
            v if v <= 11.0 => 1,
            v if v <= 20.0 => 0,
            v if v <= 24.0 => 2,
            _ => 3,
        },
        Param::Spo2 if !scale2 => match v {
            v if v <= 91.0 => 3,
            v if v <= 93.0 => 2,
            v if v <= 95.0 => 1,
            _ => 0,
        },
        Param::Spo2 => match v {
            v if v <= 83.0 => 3,
            v if v <= 85.0 => 2,
            v if v <= 87.0 => 1,
            v if v <= 92.0 || !on_oxygen => 0,
            v if v <= 94.0 => 1,
            v if v <= 96.0 => 2,
            _ => 3,
        },
        Param::Oxygen => {
            if v >= 1.0 {
                2
            } else {
                0
            }
        }
        Param::SystolicBp => match v {
            v if v <= 90.0 => 3,
            v if v <= 100.0 => 2,
            v if v <= 110.0 => 1,
            v if v <= 219.0 => 0,
            _ => 3,
        },
        Param::Pulse => match v {
            v if v <= 40.0 => 3,
            v if v <= 50.0 => 1,
            v if v <= 90.0 => 0,
            v if v <= 110.0 => 1,
            v if v <= 130.0 => 2,
            _ => 3,
        },
        Param::Consciousness => {
            if v >= 1.0 {
                3
            } else {
                0
            }
        }
        Param::Temperature => match v {
            v if v <= 35.0 => 3,
            v if v <= 36.0 => 1,
            v if v <= 38.0 => 0,
            v if v <= 39.0 => 1,
            _ => 2,
        },
    }
}

/// Values at which a parameter's score can change (upper edges of the chart's ranges): the
/// vital-state operator re-emits a reading only when it crosses one.
pub fn boundaries(p: Param) -> &'static [f64] {
    match p {
        Param::RespirationRate => &[8.5, 11.5, 20.5, 24.5],
        Param::Spo2 => &[83.5, 85.5, 87.5, 91.5, 92.5, 93.5, 94.5, 95.5, 96.5],
        Param::Oxygen | Param::Consciousness => &[0.5],
        Param::SystolicBp => &[90.5, 100.5, 110.5, 219.5],
        Param::Pulse => &[40.5, 50.5, 90.5, 110.5, 130.5],
        Param::Temperature => &[35.05, 36.05, 38.05, 39.05],
    }
}

/// ACVPU as charted: `A` (alert) 0, `C` (new confusion) 1, `V` 2, `P` 3, `U` 4.
pub fn acvpu(s: &str) -> Option<f64> {
    match s.trim().to_ascii_uppercase().as_str() {
        "A" | "ALERT" => Some(0.0),
        "C" | "CONFUSION" | "NEW CONFUSION" => Some(1.0),
        "V" | "VOICE" => Some(2.0),
        "P" | "PAIN" => Some(3.0),
        "U" | "UNRESPONSIVE" => Some(4.0),
        _ => None,
    }
}

/// How oxygen delivery is usually charted, as NEWS2 reads it: air 0, supplemental oxygen 1.
pub fn oxygen_words() -> std::collections::BTreeMap<String, f64> {
    let air = ["ra", "air", "room air", "none", "off"];
    let oxygen = [
        "o2",
        "oxygen",
        "on oxygen",
        "nc",
        "nasal cannula",
        "nasal cannulae",
        "mask",
        "fm",
        "face mask",
        "simple mask",
        "venturi",
        "vm",
        "nrb",
        "nrm",
        "non-rebreather",
        "hfnc",
        "high flow",
        "cpap",
        "niv",
    ];
    air.iter()
        .map(|w| (w.to_string(), 0.0))
        .chain(oxygen.iter().map(|w| (w.to_string(), 1.0)))
        .collect()
}

/// A NEWS2 assessment from the parameters at hand.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    /// Aggregate score of the parameters present.
    pub score: u8,
    /// The clinical risk band.
    pub risk: Risk,
    /// Parameters with a current (not stale) value, and their scores.
    pub scores: Vec<(Param, u8)>,
    /// Parameters without a current value: the score may be higher than shown.
    pub missing: Vec<Param>,
}

/// Scores the current values (`None`: missing or stale).
pub fn assess(values: &[(Param, Option<f64>)], scale2: bool) -> Assessment {
    let get = |p: Param| values.iter().find(|(q, _)| *q == p).and_then(|(_, v)| *v);
    let on_oxygen = get(Param::Oxygen).is_some_and(|v| v >= 1.0);
    let mut scores = Vec::new();
    let mut missing = Vec::new();
    for p in Param::ALL {
        match get(p) {
            Some(v) => scores.push((p, score(p, v, scale2, on_oxygen))),
            None => missing.push(p),
        }
    }
    let total: u8 = scores.iter().map(|(_, s)| s).sum();
    let risk = match total {
        t if t >= 7 => Risk::High,
        t if t >= 5 => Risk::Medium,
        _ if scores.iter().any(|(_, s)| *s == 3) => Risk::LowMedium,
        _ => Risk::Low,
    };
    Assessment {
        score: total,
        risk,
        scores,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_scores_follow_the_rcp_chart() {
        let s = |p, v| score(p, v, false, false);
        assert_eq!(
            [8.0, 9.0, 11.0, 12.0, 20.0, 21.0, 24.0, 25.0].map(|v| s(Param::RespirationRate, v)),
            [3, 1, 1, 0, 0, 2, 2, 3]
        );
        assert_eq!(
            [91.0, 92.0, 93.0, 94.0, 95.0, 96.0].map(|v| s(Param::Spo2, v)),
            [3, 2, 2, 1, 1, 0]
        );
        assert_eq!(
            [90.0, 91.0, 100.0, 101.0, 110.0, 111.0, 219.0, 220.0].map(|v| s(Param::SystolicBp, v)),
            [3, 2, 2, 1, 1, 0, 0, 3]
        );
        assert_eq!(
            [40.0, 41.0, 50.0, 51.0, 90.0, 91.0, 110.0, 111.0, 130.0, 131.0]
                .map(|v| s(Param::Pulse, v)),
            [3, 1, 1, 0, 0, 1, 1, 2, 2, 3]
        );
        assert_eq!(
            [35.0, 35.1, 36.0, 36.1, 38.0, 38.1, 39.0, 39.1].map(|v| s(Param::Temperature, v)),
            [3, 1, 1, 0, 0, 1, 1, 2]
        );
        assert_eq!(s(Param::Oxygen, 1.0), 2);
        assert_eq!(s(Param::Consciousness, acvpu("C").expect("C")), 3);
        assert_eq!(s(Param::Consciousness, acvpu("a").expect("A")), 0);
    }

    #[test]
    fn spo2_scale_2_scores_high_saturation_only_on_oxygen() {
        let s2 = |v, o2| score(Param::Spo2, v, true, o2);
        assert_eq!(
            [83.0, 84.0, 86.0, 88.0, 92.0].map(|v| s2(v, false)),
            [3, 2, 1, 0, 0]
        );
        assert_eq!(s2(97.0, false), 0, "on air, high saturation scores 0");
        assert_eq!(
            [93.0, 94.0, 95.0, 96.0, 97.0].map(|v| s2(v, true)),
            [1, 1, 2, 2, 3]
        );
    }

    #[test]
    fn boundaries_separate_every_score_change() {
        for p in Param::ALL {
            let b = boundaries(p);
            for w in b.windows(2) {
                assert!(w[0] < w[1], "{p:?} sorted");
            }
            // Between two boundaries the score is constant, under both scales and O2 states.
            let mut edges = vec![-1000.0];
            edges.extend_from_slice(b);
            edges.push(1000.0);
            for w in edges.windows(2) {
                for (scale2, o2) in [(false, false), (true, false), (true, true)] {
                    let lo = score(p, w[0] + 0.01, scale2, o2);
                    let hi = score(p, w[1] - 0.01, scale2, o2);
                    assert_eq!(lo, hi, "{p:?} between {} and {}", w[0], w[1]);
                }
            }
        }
    }

    #[test]
    fn risk_bands_and_missing_parameters() {
        let all = |rr, spo2, sbp, hr, temp| {
            vec![
                (Param::RespirationRate, Some(rr)),
                (Param::Spo2, Some(spo2)),
                (Param::Oxygen, Some(0.0)),
                (Param::SystolicBp, Some(sbp)),
                (Param::Pulse, Some(hr)),
                (Param::Consciousness, Some(0.0)),
                (Param::Temperature, Some(temp)),
            ]
        };
        let a = assess(&all(16.0, 97.0, 120.0, 70.0, 37.0), false);
        assert_eq!((a.score, a.risk), (0, Risk::Low));
        let a = assess(&all(16.0, 97.0, 120.0, 35.0, 37.0), false);
        assert_eq!((a.score, a.risk), (3, Risk::LowMedium), "a single 3");
        let a = assess(&all(22.0, 94.0, 105.0, 95.0, 37.0), false);
        assert_eq!((a.score, a.risk), (5, Risk::Medium));
        let a = assess(&all(26.0, 90.0, 95.0, 120.0, 38.5), false);
        assert_eq!((a.score, a.risk), (11, Risk::High));
        let a = assess(&[(Param::Pulse, Some(135.0)), (Param::Spo2, None)], false);
        assert_eq!(a.score, 3);
        assert_eq!(a.missing.len(), 6, "{:?}", a.missing);
    }
}
