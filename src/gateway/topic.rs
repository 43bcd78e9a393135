//! MQTT topic templates: `devices/{device}/vitals` subscribes to `devices/+/vitals` and names
//! the level it matches, so the gateway can key and label each message by it.

use std::fmt;

/// One level of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    /// `{name}`: any one level, captured under `name`.
    Capture(String),
    /// `+`: any one level, not captured.
    Any,
    /// `#`: the rest of the topic (last level only).
    Rest,
}

/// A topic filter whose single-level wildcards may carry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    text: String,
    levels: Vec<Level>,
}

impl TopicTemplate {
    /// Parses `devices/{device}/vitals`, `ward/+/bed/{bed}/#`; the error names the level.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty topic template".into());
        }
        if text.starts_with("$share/") {
            return Err(format!(
                "\"{text}\": give the filter without $share/<group>/ and the group with --share-group"
            ));
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        let mut names = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => Level::Any,
                "#" if i + 1 == parts.len() => Level::Rest,
                "#" => return Err(format!("\"{text}\": # is allowed only as the last level")),
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                    let name = &p[1..p.len() - 1];
                    if !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        return Err(format!(
                            "\"{text}\": level {} names \"{name}\": use letters, digits, _ and -",
                            i + 1
                        ));
                    }
                    if names.contains(&name) {
                        return Err(format!("\"{text}\": {{{name}}} appears twice"));
                    }
                    names.push(name);
                    Level::Capture(name.to_string())
                }
                p if p.contains(['+', '#', '{', '}']) => {
                    return Err(format!(
                        "\"{text}\": level {} (\"{p}\") mixes a wildcard with text; a wildcard \
                         or {{name}} takes a whole level",
                        i + 1
                    ))
                }
                p => Level::Literal(p.to_string()),
            };
            levels.push(level);
        }
        Ok(Self {
            text: text.to_string(),
            levels,
        })
    }

    /// The MQTT topic filter: every `{name}` becomes `+`.
    pub fn filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Capture(_) | Level::Any => "+",
                Level::Rest => "#",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The names this template captures.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|l| match l {
            Level::Capture(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// The captured levels of `topic`, or None when the topic does not match.
    pub fn captures<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let mut out = Vec::new();
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return Some(out),
                _ => {
                    let part = parts.next()?;
                    match level {
                        Level::Literal(s) if s != part => return None,
                        Level::Capture(name) => out.push((name.as_str(), part)),
                        _ => {}
                    }
                }
            }
        }
        parts.next().is_none().then_some(out)
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_levels_and_matches_like_the_filter() {
        let t = TopicTemplate::parse("devices/{device}/vitals").expect("template");
        assert_eq!(t.filter(), "devices/+/vitals");
        assert_eq!(t.names().collect::<Vec<_>>(), ["device"]);
        assert_eq!(
            t.captures("devices/dev-7/vitals"),
            Some(vec![("device", "dev-7")])
        );
        assert_eq!(t.captures("devices/dev-7/vitals/extra"), None);
        assert_eq!(t.captures("devices/dev-7"), None);
        assert_eq!(t.captures("other/dev-7/vitals"), None);
        let t = TopicTemplate::parse("ward/{ward}/+/{bed}/#").expect("template");
        assert_eq!(t.filter(), "ward/+/+/+/#");
        assert_eq!(
            t.captures("ward/3/icu/12/spo2/raw"),
            Some(vec![("ward", "3"), ("bed", "12")])
        );
        // # matches the parent level too, as in MQTT.
        assert_eq!(
            t.captures("ward/3/icu/12"),
            Some(vec![("ward", "3"), ("bed", "12")])
        );
        assert_eq!(
            t.captures("devices//vitals").map(|c| c.len()),
            None,
            "a different template"
        );
        let t = TopicTemplate::parse("d/{id}").expect("template");
        assert_eq!(t.captures("d/"), Some(vec![("id", "")]));
    }

    #[test]
    fn refuses_what_is_not_a_filter_and_says_where() {
        for (text, says) in [
            ("", "empty"),
            ("a/#/b", "last level"),
            ("a/dev+/b", "level 2"),
            ("a/{de vice}", "level 2 names"),
            ("{x}/{x}", "twice"),
            ("$share/g/a/b", "--share-group"),
        ] {
            let e = TopicTemplate::parse(text).expect_err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
