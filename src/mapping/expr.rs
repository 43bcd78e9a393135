//! Template expressions (JSONPath or JMESPath) and the scopes they are evaluated in.

use super::jmes::{self, JmesPath};
use super::jsonpath::{with_matched_token, JsonPath};
use jmespath::{Rcvar, Variable};
use serde_json::Value;
use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;

/// Expression language of a template expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Newtonsoft JSONPath dialect.
    JsonPath,
    /// JMESPath with the connector's custom functions.
    JmesPath,
}

impl Language {
    /// Parses a `language` / `defaultExpressionLanguage` value (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("jsonpath") {
            Some(Language::JsonPath)
        } else if s.eq_ignore_ascii_case("jmespath") {
            Some(Language::JmesPath)
        } else {
            None
        }
    }
}

/// A compiled expression.
#[derive(Debug)]
pub enum Expr {
    /// JSONPath.
    Path(JsonPath),
    /// JMESPath.
    Jmes(JmesPath),
}

/// Why an expression failed on a message.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    /// More than one token selected where one is allowed.
    Multiple(usize),
    /// The expression itself failed (JMESPath runtime error).
    Failed(String),
}

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalError::Multiple(n) => {
                write!(f, "multiple tokens were returned ({n}+), expected one")
            }
            EvalError::Failed(r) => write!(f, "{r}"),
        }
    }
}

impl Expr {
    /// Compiles `source` in `language`; the error is a one-line reason.
    pub fn compile(source: &str, language: Language) -> Result<Self, String> {
        match language {
            Language::JsonPath => JsonPath::compile(source)
                .map(Expr::Path)
                .map_err(|e| e.to_string()),
            Language::JmesPath => JmesPath::compile(source)
                .map(Expr::Jmes)
                .map_err(|e| e.to_string()),
        }
    }

    /// Same expression compiled for the reference (uncompiled jsonpath-rust) evaluator.
    pub fn compile_reference(source: &str, language: Language) -> Result<Self, String> {
        match language {
            Language::JsonPath => JsonPath::compile_library(source)
                .map(Expr::Path)
                .map_err(|e| e.to_string()),
            Language::JmesPath => Self::compile(source, language),
        }
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        match self {
            Expr::Path(p) => p.source(),
            Expr::Jmes(j) => j.source(),
        }
    }

    /// Type-match evaluation ("multiple" mode): every match.
    pub fn matches<'a>(&self, scope: &'a Scope<'a>) -> Result<Vec<Token<'a>>, EvalError> {
        match self {
            Expr::Path(p) => Ok(p
                .select(scope.json())
                .into_iter()
                .map(Token::Json)
                .collect()),
            Expr::Jmes(j) => {
                let r = j
                    .search(&scope.var())
                    .map_err(|e| EvalError::Failed(e.reason))?;
                Ok(match &*r {
                    Variable::Null => vec![],
                    Variable::Array(items) if j.is_projection() => items
                        .iter()
                        .filter(|v| !v.is_null())
                        .cloned()
                        .map(Token::Var)
                        .collect(),
                    _ => vec![Token::Var(r)],
                })
            }
        }
    }

    /// "Single" mode: the one selected value, `None` when absent or null.
    pub fn single<'s>(&self, scope: &'s Scope<'_>) -> Result<Option<Cow<'s, Value>>, EvalError> {
        match self {
            Expr::Path(p) => {
                let found = match scope {
                    Scope::Calculated { event, matched, .. } => {
                        p.select_single_scoped(event, matched.json())
                    }
                    _ => p.select_single(scope.json()).map(|v| v.map(Cow::Borrowed)),
                };
                match found {
                    Ok(Some(v)) if !v.is_null() => Ok(Some(v)),
                    Ok(_) => Ok(None),
                    Err(n) => Err(EvalError::Multiple(n)),
                }
            }
            Expr::Jmes(j) => {
                let r = j
                    .search(&scope.var())
                    .map_err(|e| EvalError::Failed(e.reason))?;
                match &*r {
                    Variable::Null => Ok(None),
                    Variable::Array(items) if j.is_projection() && items.len() > 1 => {
                        Err(EvalError::Multiple(items.len()))
                    }
                    Variable::Array(items) if j.is_projection() => {
                        Ok(items.first().map(|v| Cow::Owned(jmes::to_json(v))))
                    }
                    v => Ok(Some(Cow::Owned(jmes::to_json(v)))),
                }
            }
        }
    }
}

/// A token selected by a type match: borrowed JSON, or a JMESPath result.
#[derive(Debug, Clone)]
pub enum Token<'a> {
    /// Selected by JSONPath.
    Json(&'a Value),
    /// Produced by JMESPath.
    Var(Rcvar),
}

/// What a template's expressions are evaluated against.
pub enum Scope<'a> {
    /// The match itself (JsonPathContent, IotJsonPathContent, IotCentralJsonPathContent) or the
    /// whole event (type matches).
    Json {
        /// The value.
        value: &'a Value,
        /// Its JMESPath form, converted on first use.
        var: OnceCell<Rcvar>,
    },
    /// CalculatedContent: the whole event plus the match as `matchedToken`.
    Calculated {
        /// The whole event.
        event: &'a Value,
        /// The event as JMESPath, shared across matches of one message.
        event_var: &'a OnceCell<Rcvar>,
        /// The match.
        matched: MatchedToken<'a>,
        /// `event + {matchedToken}` as JMESPath, built on first use.
        scoped_var: OnceCell<Rcvar>,
        /// `event + {matchedToken}` as JSON, built only for expressions that need the copy.
        scoped_json: OnceCell<Value>,
    },
}

/// The match a calculated template's expressions see as `matchedToken`.
pub struct MatchedToken<'a> {
    token: Token<'a>,
    json: OnceCell<Cow<'a, Value>>,
}

impl<'a> MatchedToken<'a> {
    /// Wraps a type-match result.
    pub fn new(token: Token<'a>) -> Self {
        Self {
            token,
            json: OnceCell::new(),
        }
    }

    fn json(&self) -> &Value {
        self.json.get_or_init(|| match &self.token {
            Token::Json(v) => Cow::Borrowed(*v),
            Token::Var(v) => Cow::Owned(jmes::to_json(v)),
        })
    }

    fn var(&self) -> Rcvar {
        match &self.token {
            Token::Var(v) => v.clone(),
            Token::Json(v) => jmes::to_variable(v),
        }
    }
}

impl<'a> Scope<'a> {
    /// A plain JSON scope.
    pub fn json_value(value: &'a Value) -> Self {
        Scope::Json {
            value,
            var: OnceCell::new(),
        }
    }

    /// The cached JMESPath form of a plain JSON scope, shared with calculated scopes of the
    /// same event so a message is converted at most once.
    pub fn var_cell(&self) -> Option<&OnceCell<Rcvar>> {
        match self {
            Scope::Json { var, .. } => Some(var),
            Scope::Calculated { .. } => None,
        }
    }

    /// The scope as JSON (for calculated scopes, the event with `matchedToken` added).
    fn json(&self) -> &Value {
        match self {
            Scope::Json { value, .. } => value,
            Scope::Calculated {
                event,
                matched,
                scoped_json,
                ..
            } => scoped_json.get_or_init(|| with_matched_token(event, matched.json().clone())),
        }
    }

    fn var(&self) -> Rcvar {
        match self {
            Scope::Json { value, var } => var.get_or_init(|| jmes::to_variable(value)).clone(),
            Scope::Calculated {
                event,
                event_var,
                matched,
                scoped_var,
                ..
            } => scoped_var
                .get_or_init(|| {
                    let event = event_var.get_or_init(|| jmes::to_variable(event));
                    let mut map = match &**event {
                        Variable::Object(m) => m.clone(),
                        _ => BTreeMap::new(),
                    };
                    map.insert("matchedToken".to_string(), matched.var());
                    Rcvar::new(Variable::Object(map))
                })
                .clone(),
        }
    }
}
