//! Where a configuration problem is, and the checks every configuration file shares.
//!
//! Job files, rules files, bench targets and scenarios report problems the same way:
//! `file:line:column: field: reason`, all problems of a file at once. A value that came from
//! the environment names its variable instead of a line.

use serde::de::DeserializeOwned;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// One problem in a configuration file, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file (or `<embedded default job>`, or `environment variable NAME`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The field, as a dotted path (`kafka.topics`); empty when the problem is the file's.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.reason)
        } else {
            write!(f, ": {}: {}", self.field, self.reason)
        }
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors {
    /// What the file is, for the headline (`job file`, `rules file`).
    pub what: &'static str,
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// One problem with the whole file (unreadable, say).
    pub fn file(what: &'static str, file: &str, reason: impl Into<String>) -> Self {
        Self {
            what,
            errors: vec![ConfigError {
                file: file.to_string(),
                line: None,
                column: None,
                field: String::new(),
                reason: reason.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "invalid {} ({n} problem{})",
            self.what,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads a configuration file; an unreadable one is a [`ConfigErrors`] naming it.
pub fn read(what: &'static str, path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::file(
            what,
            &path.display().to_string(),
            format!("cannot read: {e}"),
        )
    })
}

/// Deserializes TOML; a syntax error or an unknown field is reported at its line.
pub fn from_toml<T: DeserializeOwned>(
    what: &'static str,
    text: &str,
    file: &str,
) -> Result<T, ConfigErrors> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|s| line_col(text, s.start))
            .map_or((None, None), |(l, c)| (Some(l), Some(c)));
        ConfigErrors {
            what,
            errors: vec![ConfigError {
                file: file.to_string(),
                line,
                column,
                field: String::new(),
                reason: e.message().trim().to_string(),
            }],
        }
    })
}

/// Spans at or above this offset stand for environment variables, not file text (see
/// [`Checker::env_span`]): overrides are written into the raw layer like file values, so one
/// validation pass checks both.
const ENV_SPANS: usize = usize::MAX / 2;

/// Collects the problems of one file while its raw layer is validated.
pub struct Checker<'a> {
    what: &'static str,
    file: &'a str,
    text: &'a str,
    env: Vec<String>,
    errors: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    /// A checker for `text`, read from `file`.
    pub fn new(what: &'static str, file: &'a str, text: &'a str) -> Self {
        Self {
            what,
            file,
            text,
            env: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// The span an override from environment variable `var` carries.
    pub fn env_span(&mut self, var: &str) -> Range<usize> {
        let i = ENV_SPANS + self.env.len();
        self.env.push(var.to_string());
        i..i
    }

    /// A problem with the value at `span` (from the file or the environment).
    pub fn at(&mut self, span: Range<usize>, field: &str, reason: impl Into<String>) {
        let (file, line, column) = match span.start.checked_sub(ENV_SPANS) {
            Some(i) => (format!("environment variable {}", self.env[i]), None, None),
            None => {
                let (l, c) = line_col(self.text, span.start);
                (self.file.to_string(), Some(l), Some(c))
            }
        };
        self.errors.push(ConfigError {
            file,
            line,
            column,
            field: field.to_string(),
            reason: reason.into(),
        });
    }

    /// A duration greater than zero (`"500ms"`, `"30s"`), or `default` when absent.
    pub fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        match self.any_duration(v, field) {
            Some(d) if d.is_zero() => {
                self.at(
                    v.as_ref().expect("present").span(),
                    field,
                    "must be greater than zero",
                );
                default
            }
            Some(d) => d,
            None => default,
        }
    }

    /// A duration that may be zero (`sustained = "0s"`: at once), or `default` when absent.
    pub fn duration_or_zero(
        &mut self,
        v: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        self.any_duration(v, field).unwrap_or(default)
    }

    fn any_duration(&mut self, v: &Option<Spanned<String>>, field: &str) -> Option<Duration> {
        let v = v.as_ref()?;
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.at(
                    v.span(),
                    field,
                    format!(
                        "\"{}\" is not a duration ({e}); write e.g. \"500ms\", \"30s\", \"24h\"",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// A positive integer, or `default` when absent.
    pub fn positive(&mut self, v: &Option<Spanned<i64>>, field: &str, default: u64) -> u64 {
        match v {
            None => default,
            Some(v) if *v.get_ref() > 0 => *v.get_ref() as u64,
            Some(v) => {
                self.at(
                    v.span(),
                    field,
                    format!("must be a positive integer, found {}", v.get_ref()),
                );
                default
            }
        }
    }

    /// A file that exists (or is embedded in the binary), resolved against `base`.
    pub fn existing_file(&mut self, base: &Path, v: &Spanned<String>, field: &str) -> PathBuf {
        let p = resolve_path(base, v.get_ref());
        if !p.is_file() && super::embedded_template(&p).is_none() {
            self.at(v.span(), field, format!("file not found: {}", p.display()));
        }
        p
    }

    /// True when no problem was found so far.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    /// `value` when no problem was found, else every problem.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors {
                what: self.what,
                errors: self.errors,
            })
        }
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Paths in a configuration file are relative to the working directory when they exist
/// there (jobs run from the project root), else to the file's directory.
pub fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() || p.exists() {
        p
    } else {
        let beside = base.join(&p);
        if beside.exists() {
            beside
        } else {
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_file_line_column_or_variable() {
        let text = "a = 1\nb = \"x\"\n";
        let mut c = Checker::new("test file", "t.toml", text);
        c.at(10..11, "b", "bad");
        let s = c.env_span("VITALFLOW_X");
        c.at(s, "c", "worse");
        let e = c.finish(()).expect_err("two problems").to_string();
        assert_eq!(
            e,
            "invalid test file (2 problems)\n  t.toml:2:5: b: bad\n  environment variable VITALFLOW_X: c: worse"
        );
    }

    #[test]
    fn zero_durations_are_refused_only_where_they_mean_nothing() {
        let zero = Some(Spanned::new(0..3, "0s".to_string()));
        let mut c = Checker::new("test file", "t.toml", "x = \"0s\"");
        assert_eq!(
            c.duration_or_zero(&zero, "sustained", Duration::from_secs(9)),
            Duration::ZERO
        );
        assert!(c.is_clean());
        assert_eq!(
            c.duration(&zero, "epoch", Duration::from_secs(9)),
            Duration::from_secs(9)
        );
        assert!(!c.is_clean());
    }
}
