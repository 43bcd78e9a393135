//! JMESPath with the IoMT connector's custom functions, on the `jmespath` crate.
//!
//! Numeric rules follow the connector: two integer operands give 64-bit integer arithmetic
//! (add/subtract/multiply wrap, divide truncates, pow fails on overflow); any float operand
//! gives float arithmetic. Dates from `fromUnixTimestamp*` are RFC 3339 strings, which the
//! timestamp expressions then parse.

use chrono::{TimeZone, Utc};
use jmespath::ast::Ast;
use jmespath::{Context, ErrorReason, JmespathError, Rcvar, Runtime, Variable};
use serde_json::Number;
use std::sync::LazyLock;

/// The shared runtime: built-ins plus the connector's functions.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    let mut rt = Runtime::new();
    rt.register_builtin_functions();
    for op in [
        Arith::Add,
        Arith::Subtract,
        Arith::Multiply,
        Arith::Divide,
        Arith::Pow,
    ] {
        rt.register_function(op.name(), Box::new(op));
    }
    rt.register_function("insertString", Box::new(insert_string));
    rt.register_function("fromUnixTimestamp", Box::new(FromUnix { millis: false }));
    rt.register_function("fromUnixTimestampMs", Box::new(FromUnix { millis: true }));
    rt
});

/// Function arities checked at compile time (the `jmespath` crate only checks when called).
const ARITIES: &[(&str, usize, bool)] = &[
    ("abs", 1, false),
    ("avg", 1, false),
    ("ceil", 1, false),
    ("contains", 2, false),
    ("ends_with", 2, false),
    ("floor", 1, false),
    ("join", 2, false),
    ("keys", 1, false),
    ("length", 1, false),
    ("map", 2, false),
    ("max", 1, false),
    ("max_by", 2, false),
    ("merge", 1, true),
    ("min", 1, false),
    ("min_by", 2, false),
    ("not_null", 1, true),
    ("reverse", 1, false),
    ("sort", 1, false),
    ("sort_by", 2, false),
    ("starts_with", 2, false),
    ("sum", 1, false),
    ("to_array", 1, false),
    ("to_number", 1, false),
    ("to_string", 1, false),
    ("type", 1, false),
    ("values", 1, false),
    ("add", 2, false),
    ("subtract", 2, false),
    ("multiply", 2, false),
    ("divide", 2, false),
    ("pow", 2, false),
    ("insertString", 3, false),
    ("fromUnixTimestamp", 1, false),
    ("fromUnixTimestampMs", 1, false),
];

/// A compiled JMESPath expression.
pub struct JmesPath {
    expr: jmespath::Expression<'static>,
    projection: bool,
}

impl std::fmt::Debug for JmesPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JmesPath({:?})", self.expr.as_str())
    }
}

/// A JMESPath compile or evaluation error, with the reason in one line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("JMESPath `{expression}`: {reason}")]
pub struct JmesError {
    /// The expression.
    pub expression: String,
    /// What went wrong.
    pub reason: String,
}

impl JmesPath {
    /// Compiles and checks every function name and arity.
    pub fn compile(source: &str) -> Result<Self, JmesError> {
        let expr = RUNTIME.compile(source).map_err(|e| err(source, &e))?;
        check_functions(expr.as_ast()).map_err(|reason| JmesError {
            expression: source.to_string(),
            reason,
        })?;
        let projection = matches!(
            expr.as_ast(),
            Ast::Projection { .. } | Ast::Flatten { .. } | Ast::ObjectValues { .. }
        );
        Ok(Self { expr, projection })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        self.expr.as_str()
    }

    /// True when the top of the expression is a projection (one match per element).
    pub fn is_projection(&self) -> bool {
        self.projection
    }

    /// Evaluates against a converted value.
    pub fn search(&self, data: &Rcvar) -> Result<Rcvar, JmesError> {
        self.expr
            .search(data.clone())
            .map_err(|e| err(self.source(), &e))
    }
}

fn err(expression: &str, e: &JmespathError) -> JmesError {
    let reason = match &e.reason {
        ErrorReason::Parse(s) => s.clone(),
        ErrorReason::Runtime(r) => r.to_string(),
    };
    JmesError {
        expression: expression.to_string(),
        reason: format!("{reason} (column {})", e.column),
    }
}

fn check_functions(ast: &Ast) -> Result<(), String> {
    let children: Vec<&Ast> = match ast {
        Ast::Function { name, args, .. } => {
            let Some(&(_, n, variadic)) = ARITIES.iter().find(|(f, _, _)| f == name) else {
                return Err(format!("unknown function {name}()"));
            };
            if args.len() < n || (!variadic && args.len() > n) {
                return Err(format!(
                    "{name}() takes {}{n} argument{}, got {}",
                    if variadic { "at least " } else { "" },
                    if n == 1 { "" } else { "s" },
                    args.len()
                ));
            }
            args.iter().collect()
        }
        Ast::Comparison { lhs, rhs, .. }
        | Ast::Projection { lhs, rhs, .. }
        | Ast::And { lhs, rhs, .. }
        | Ast::Or { lhs, rhs, .. }
        | Ast::Subexpr { lhs, rhs, .. } => vec![lhs, rhs],
        Ast::Condition {
            predicate, then, ..
        } => vec![predicate, then],
        Ast::Expref { ast, .. } => vec![ast],
        Ast::Flatten { node, .. } | Ast::Not { node, .. } | Ast::ObjectValues { node, .. } => {
            vec![node]
        }
        Ast::MultiList { elements, .. } => elements.iter().collect(),
        Ast::MultiHash { elements, .. } => elements.iter().map(|kv| &kv.value).collect(),
        _ => vec![],
    };
    children.into_iter().try_for_each(check_functions)
}

fn fail(ctx: &Context<'_>, reason: String) -> JmespathError {
    JmespathError::from_ctx(ctx, ErrorReason::Parse(reason))
}

fn arity(ctx: &Context<'_>, name: &str, args: &[Rcvar], n: usize) -> Result<(), JmespathError> {
    if args.len() == n {
        Ok(())
    } else {
        Err(fail(
            ctx,
            format!("{name}() takes {n} arguments, got {}", args.len()),
        ))
    }
}

#[derive(Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

fn number(ctx: &Context<'_>, name: &str, v: &Variable) -> Result<Num, JmespathError> {
    match v {
        Variable::Number(n) => Ok(match n.as_i64() {
            Some(i) => Num::Int(i),
            None => Num::Float(n.as_f64().unwrap_or(f64::NAN)),
        }),
        other => Err(fail(
            ctx,
            format!(
                "invalid type: {name}() expects numbers, got {}",
                other.get_type()
            ),
        )),
    }
}

fn float_result(ctx: &Context<'_>, name: &str, f: f64) -> Result<Rcvar, JmespathError> {
    Number::from_f64(f)
        .map(|n| Rcvar::new(Variable::Number(n)))
        .ok_or_else(|| fail(ctx, format!("{name}() result is not a finite number")))
}

#[derive(Clone, Copy)]
enum Arith {
    Add,
    Subtract,
    Multiply,
    Divide,
    Pow,
}

impl Arith {
    fn name(self) -> &'static str {
        match self {
            Arith::Add => "add",
            Arith::Subtract => "subtract",
            Arith::Multiply => "multiply",
            Arith::Divide => "divide",
            Arith::Pow => "pow",
        }
    }
}

impl jmespath::functions::Function for Arith {
    fn evaluate(&self, args: &[Rcvar], ctx: &mut Context<'_>) -> jmespath::SearchResult {
        let name = self.name();
        arity(ctx, name, args, 2)?;
        let a = number(ctx, name, &args[0])?;
        let b = number(ctx, name, &args[1])?;
        let int = |i: i64| Ok(Rcvar::new(Variable::Number(Number::from(i))));
        match (a, b) {
            (Num::Int(a), Num::Int(b)) => match self {
                Arith::Add => int(a.wrapping_add(b)),
                Arith::Subtract => int(a.wrapping_sub(b)),
                Arith::Multiply => int(a.wrapping_mul(b)),
                Arith::Divide if b == 0 => Err(fail(ctx, "divide-by-zero: divide() by 0".into())),
                Arith::Divide => int(a.wrapping_div(b)),
                Arith::Pow if b < 0 => float_result(ctx, name, (a as f64).powf(b as f64)),
                Arith::Pow => {
                    let e = u32::try_from(b).map_err(|_| fail(ctx, "overflow: pow()".into()))?;
                    match a.checked_pow(e) {
                        Some(v) => int(v),
                        None => Err(fail(
                            ctx,
                            format!("overflow: pow({a}, {b}) exceeds 64 bits"),
                        )),
                    }
                }
            },
            (a, b) => {
                let f = |n: Num| match n {
                    Num::Int(i) => i as f64,
                    Num::Float(f) => f,
                };
                let (a, b) = (f(a), f(b));
                let r = match self {
                    Arith::Add => a + b,
                    Arith::Subtract => a - b,
                    Arith::Multiply => a * b,
                    Arith::Divide if b == 0.0 => {
                        return Err(fail(ctx, "divide-by-zero: divide() by 0".into()))
                    }
                    Arith::Divide => a / b,
                    Arith::Pow => a.powf(b),
                };
                float_result(ctx, name, r)
            }
        }
    }
}

fn insert_string(args: &[Rcvar], ctx: &mut Context<'_>) -> jmespath::SearchResult {
    arity(ctx, "insertString", args, 3)?;
    let (Some(original), Some(insert)) = (args[0].as_string(), args[1].as_string()) else {
        return Err(fail(
            ctx,
            "invalid type: insertString() expects (string, string, integer)".into(),
        ));
    };
    let Num::Int(pos) = number(ctx, "insertString", &args[2])? else {
        return Err(fail(
            ctx,
            "invalid type: insertString() position must be an integer".into(),
        ));
    };
    let len = original.chars().count();
    let pos = usize::try_from(pos)
        .ok()
        .filter(|p| *p <= len)
        .ok_or_else(|| {
            fail(
                ctx,
                format!("out of range: position {pos} outside 0..={len}"),
            )
        })?;
    let at = original
        .char_indices()
        .nth(pos)
        .map_or(original.len(), |(i, _)| i);
    let mut out = String::with_capacity(original.len() + insert.len());
    out.push_str(&original[..at]);
    out.push_str(insert);
    out.push_str(&original[at..]);
    Ok(Rcvar::new(Variable::String(out)))
}

struct FromUnix {
    millis: bool,
}

impl jmespath::functions::Function for FromUnix {
    fn evaluate(&self, args: &[Rcvar], ctx: &mut Context<'_>) -> jmespath::SearchResult {
        let name = if self.millis {
            "fromUnixTimestampMs"
        } else {
            "fromUnixTimestamp"
        };
        arity(ctx, name, args, 1)?;
        let t = match number(ctx, name, &args[0])? {
            Num::Int(i) if self.millis => Utc.timestamp_millis_opt(i).single(),
            Num::Int(i) => Utc.timestamp_opt(i, 0).single(),
            Num::Float(_) => None,
        }
        .ok_or_else(|| {
            fail(
                ctx,
                format!("invalid type: {name}() expects an integer Unix time"),
            )
        })?;
        Ok(Rcvar::new(Variable::String(crate::time::format_rfc3339(
            &t,
        ))))
    }
}

/// Converts a JSON value for evaluation.
pub fn to_variable(v: &serde_json::Value) -> Rcvar {
    // Conversion from JSON cannot fail: every JSON value has a JMESPath counterpart.
    Rcvar::new(Variable::try_from(v).unwrap_or(Variable::Null))
}

/// Converts a result back to JSON.
pub fn to_json(v: &Variable) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(expr: &str, given: serde_json::Value) -> Result<serde_json::Value, JmesError> {
        let e = JmesPath::compile(expr)?;
        e.search(&to_variable(&given)).map(|v| to_json(&v))
    }

    #[test]
    fn integer_and_float_arithmetic_stay_distinct() {
        assert_eq!(
            eval("add(a, b)", json!({"a": 40, "b": 50})).unwrap(),
            json!(90)
        );
        assert!(eval("add(a, b)", json!({"a": 0, "b": 0.0}))
            .unwrap()
            .is_f64());
        assert_eq!(eval("divide(`40`, `50`)", json!({})).unwrap(), json!(0));
        assert!(eval("pow(`40`, `50`)", json!({})).is_err());
        assert!(eval("divide(`1`, `0`)", json!({}))
            .unwrap_err()
            .reason
            .contains("divide-by-zero"));
    }

    #[test]
    fn arity_is_checked_at_compile_time() {
        assert!(JmesPath::compile("add()").is_err());
        assert!(JmesPath::compile("sort(a, b)").is_err());
        assert!(JmesPath::compile("nosuch(a)")
            .unwrap_err()
            .reason
            .contains("unknown function"));
        assert!(JmesPath::compile("a[?length(b) > `1`]").is_ok());
    }
}
