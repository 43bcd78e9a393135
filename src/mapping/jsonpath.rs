//! The IoMT connector's JSONPath dialect (Newtonsoft.Json's `SelectTokens`).
//!
//! Two evaluators share one entry point:
//! - a compiled matcher for the subset templates use in practice (child names, indexes,
//!   wildcards, `..name`, `[?()]` and `..[?()]` filters with existence tests, comparisons,
//!   `&&`/`||`). It walks borrowed `serde_json::Value`s without building path strings; the
//!   normalize bench shows it is what makes ≥ 250k msgs/s per core reachable (jsonpath-rust's
//!   `query` re-parses per call and builds a path string per visited node).
//! - `jsonpath-rust` (RFC 9535) for everything else, after rewriting the Newtonsoft spellings
//!   (`@name`, `$.['a b']`, no leading `$`) and re-ordering its results into Newtonsoft's
//!   document order. It is also the reference the compiled matcher is tested against.

use super::tree::{Scalar, Tree};
use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;
use std::collections::HashMap;

/// A compiled JSONPath expression in the connector's dialect.
#[derive(Debug, Clone)]
pub struct JsonPath {
    source: String,
    engine: Engine,
}

#[derive(Debug, Clone)]
enum Engine {
    Compiled(Vec<Seg>),
    Library(Box<LibraryPath>),
}

#[derive(Debug, Clone)]
struct LibraryPath {
    query: JpQuery,
    /// Newtonsoft's `$..[?(f)]rest` also tests the root; RFC 9535 does not, so the root is
    /// tested separately with `$[?(f)]` against a one-element array, then `$rest` runs on it.
    root_filter: Option<(JpQuery, JpQuery)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Name(String),
    Index(i64),
    Wildcard,
    Filter(Filter),
    ScanName(String),
    ScanFilter(Filter),
}

#[derive(Debug, Clone, PartialEq)]
enum Filter {
    Or(Vec<Filter>),
    And(Vec<Filter>),
    Exists(Vec<Step>),
    Cmp(Operand, CmpOp, Operand),
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Name(String),
    Index(i64),
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Path(Vec<Step>),
    Lit(Value),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

const MATCHED_TOKEN: &str = "matchedToken";

/// Why an expression did not compile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid JSONPath `{path}`: {reason}")]
pub struct JsonPathError {
    /// The expression as written in the template.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The subset parser gave up: the expression goes to jsonpath-rust instead.
struct Unsupported;

impl JsonPath {
    /// Compiles an expression; the compiled matcher is used when it covers the expression.
    pub fn compile(source: &str) -> Result<Self, JsonPathError> {
        match Parser::new(source).parse_path() {
            Ok(segs) => Ok(Self {
                source: source.to_string(),
                engine: Engine::Compiled(segs),
            }),
            Err(_) => Self::compile_library(source),
        }
    }

    /// Compiles with jsonpath-rust only (the reference path, used to cross-check the matcher).
    pub fn compile_library(source: &str) -> Result<Self, JsonPathError> {
        let rewritten = rewrite_for_rfc9535(source);
        let query = parse_json_path(&rewritten).map_err(|e| JsonPathError {
            path: source.to_string(),
            reason: first_line(&e.to_string()),
        })?;
        let root_filter = rewritten.strip_prefix("$..[?").and_then(|rest| {
            let end = bracket_end(rest)?;
            let filter = parse_json_path(&format!("$[?{}", &rest[..=end])).ok()?;
            let then = parse_json_path(&format!("${}", &rest[end + 1..])).ok()?;
            Some((filter, then))
        });
        Ok(Self {
            source: source.to_string(),
            engine: Engine::Library(Box::new(LibraryPath { query, root_filter })),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when the fast compiled matcher evaluates this expression.
    pub fn is_compiled(&self) -> bool {
        matches!(self.engine, Engine::Compiled(_))
    }

    /// Every selected token, in Newtonsoft's document order.
    pub fn select<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut out = Vec::new();
        self.for_each(root, &mut |v| {
            out.push(v);
            true
        });
        out
    }

    /// The single selected token: `Ok(None)` when nothing is selected, `Err(n)` when more than
    /// one is (the connector's "Multiple tokens were returned").
    pub fn select_single<'a>(&self, root: &'a Value) -> Result<Option<&'a Value>, usize> {
        single(|f| self.for_each(root, f))
    }

    /// [`Self::select`] on any tree; only for compiled paths ([`Self::is_compiled`]: the
    /// compiled matcher walks any [`Tree`], jsonpath-rust only `serde_json::Value`).
    pub fn select_tree<'a, T: Tree>(&self, root: &'a T) -> Vec<&'a T> {
        let mut out = Vec::new();
        walk(self.compiled_segments(), root, &mut |v| {
            out.push(v);
            true
        });
        out
    }

    /// [`Self::select_single`] on any tree; only for compiled paths.
    pub fn select_single_tree<'a, T: Tree>(&self, root: &'a T) -> Result<Option<&'a T>, usize> {
        single(|f| {
            walk(self.compiled_segments(), root, f);
        })
    }

    fn compiled_segments(&self) -> &[Seg] {
        match &self.engine {
            Engine::Compiled(segs) => segs,
            Engine::Library(_) => panic!("`{}` needs jsonpath-rust: a Value tree", self.source),
        }
    }

    /// Single selection against a calculated-content scope: `event` plus `{"matchedToken": matched}`.
    ///
    /// Paths that start with a child name are resolved without copying the event; only other
    /// shapes (e.g. `$..x`) evaluate against a real copy, as the connector does.
    pub fn select_single_scoped<'a>(
        &self,
        event: &'a Value,
        matched: &Value,
    ) -> Result<Option<std::borrow::Cow<'a, Value>>, usize> {
        use std::borrow::Cow;
        if let Engine::Compiled(segs) = &self.engine {
            let shadowed = event.get(MATCHED_TOKEN).is_some();
            match segs.first() {
                Some(Seg::Name(n)) if n == MATCHED_TOKEN && !shadowed => {
                    return single(|f| {
                        walk(&segs[1..], matched, f);
                    })
                    .map(|v| v.map(|v| Cow::Owned(v.clone())));
                }
                Some(Seg::Name(n)) if n != MATCHED_TOKEN => {
                    return self.select_single(event).map(|v| v.map(Cow::Borrowed));
                }
                _ => {}
            }
        }
        let scoped = with_matched_token(event, matched.clone());
        self.select_single(&scoped)
            .map(|v| v.map(|v| Cow::Owned(v.clone())))
    }

    /// Calls `f` for each selected token until it returns false.
    fn for_each<'a>(&self, root: &'a Value, f: &mut dyn FnMut(&'a Value) -> bool) {
        match &self.engine {
            Engine::Compiled(segs) => {
                walk(segs, root, f);
            }
            Engine::Library(lib) => {
                for v in lib.select(root) {
                    if !f(v) {
                        return;
                    }
                }
            }
        }
    }
}

/// Several `$..[?(filter)]` paths (the usual type match) evaluated together in one pre-order
/// walk of a message, instead of one walk per template.
#[derive(Debug, Clone, Default)]
pub struct ScanSet {
    filters: Vec<Filter>,
    /// `(name, slot)` of the filters that only ask for a member, `$..[?(@name)]`: an object's
    /// members are compared with them once, not looked up once per filter.
    members: Vec<(String, usize)>,
    /// The slots of the other filters, evaluated on every node.
    others: Vec<usize>,
}

impl ScanSet {
    /// Takes `path` into the set when it is exactly `$..[?(filter)]` on the compiled matcher,
    /// returning its slot; other paths are left to [`JsonPath::select`].
    pub fn add(&mut self, path: &JsonPath) -> Option<usize> {
        match &path.engine {
            Engine::Compiled(segs) => match segs.as_slice() {
                [Seg::ScanFilter(f)] if self.filters.len() < 64 => {
                    let slot = self.filters.len();
                    match f {
                        Filter::Exists(steps) => match steps.as_slice() {
                            [Step::Name(n)] => self.members.push((n.clone(), slot)),
                            _ => self.others.push(slot),
                        },
                        _ => self.others.push(slot),
                    }
                    self.filters.push(f.clone());
                    Some(slot)
                }
                _ => None,
            },
            Engine::Library(_) => None,
        }
    }

    /// True when no path was taken.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Appends `(slot, node)` for every match of every path, in document pre-order and, at one
    /// node, in slot order: the matches of one slot come in the order `select` gives them.
    pub fn run<'a, T: Tree>(&self, node: &'a T, found: &mut Vec<(usize, &'a T)>) {
        // Bit `slot` set: the filter in that slot matches this node.
        let mut matched = 0u64;
        if !self.members.is_empty() {
            for (k, _) in node.members() {
                for (name, slot) in &self.members {
                    if super::tree::same_key(name, k) {
                        matched |= 1 << slot;
                    }
                }
            }
        }
        for &slot in &self.others {
            if self.filters[slot].matches(node) {
                matched |= 1 << slot;
            }
        }
        while matched != 0 {
            found.push((matched.trailing_zeros() as usize, node));
            matched &= matched - 1;
        }
        node.children().for_each(|v| self.run(v, found));
    }
}

/// Runs a selection and keeps its only result; stops early at the second.
fn single<'a, T>(run: impl FnOnce(&mut dyn FnMut(&'a T) -> bool)) -> Result<Option<&'a T>, usize> {
    let mut first = None;
    let mut count = 0usize;
    run(&mut |v| {
        count += 1;
        if first.is_none() {
            first = Some(v);
        }
        count < 2
    });
    if count > 1 {
        Err(count)
    } else {
        Ok(first)
    }
}

impl LibraryPath {
    fn select<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut found: Vec<&'a Value> = js_path_process(&self.query, root)
            .map(|refs| refs.into_iter().map(|r| r.val).collect())
            .unwrap_or_default();
        if let Some((filter, then)) = &self.root_filter {
            let wrapper = Value::Array(vec![root.clone()]);
            let root_matches = js_path_process(filter, &wrapper)
                .map(|r| !r.is_empty())
                .unwrap_or(false);
            if root_matches {
                if let Ok(refs) = js_path_process(then, root) {
                    found.extend(refs.into_iter().map(|r| r.val));
                }
            }
        }
        sort_document_order(root, &mut found);
        found
    }
}

/// Newtonsoft yields matches in pre-order (a node before its descendants, siblings in
/// document order); RFC 9535 yields descendant matches level by level. Sorting the results by
/// their own position is exact for paths ending in the scanned node; for `$..[?()].child`
/// Newtonsoft orders by the matched node instead, which can differ (fallback path only).
fn sort_document_order(root: &Value, found: &mut Vec<&Value>) {
    if found.len() < 2 {
        return;
    }
    let mut order: HashMap<*const Value, usize> = HashMap::new();
    let mut stack = vec![root];
    while let Some(v) = stack.pop() {
        let n = order.len();
        order.insert(v as *const Value, n);
        match v {
            Value::Array(a) => stack.extend(a.iter().rev()),
            Value::Object(o) => stack.extend(o.values().rev()),
            _ => {}
        }
    }
    found.sort_by_key(|v| {
        order
            .get(&(*v as *const Value))
            .copied()
            .unwrap_or(usize::MAX)
    });
    found.dedup_by(|a, b| std::ptr::eq(*a, *b));
}

fn walk<'a, T: Tree>(segs: &[Seg], node: &'a T, f: &mut dyn FnMut(&'a T) -> bool) -> bool {
    let Some((seg, rest)) = segs.split_first() else {
        return f(node);
    };
    match seg {
        Seg::Name(name) => match node.member(name) {
            Some(v) => walk(rest, v, f),
            None => true,
        },
        Seg::Index(i) => match index(node, *i) {
            Some(v) => walk(rest, v, f),
            None => true,
        },
        Seg::Wildcard => node.children().all(|v| walk(rest, v, f)),
        // Enumerating a JObject yields JProperty tokens, which a filter never matches: filters
        // effectively apply to array elements only.
        Seg::Filter(filter) => match node.items() {
            Some(a) => a.iter().all(|v| !filter.matches(v) || walk(rest, v, f)),
            None => true,
        },
        Seg::ScanName(name) => scan_name(node, name, rest, f),
        Seg::ScanFilter(filter) => scan_filter(node, filter, rest, f),
    }
}

fn scan_name<'a, T: Tree>(
    node: &'a T,
    name: &str,
    rest: &[Seg],
    f: &mut dyn FnMut(&'a T) -> bool,
) -> bool {
    match node.items() {
        Some(a) => a.iter().all(|v| scan_name(v, name, rest, f)),
        None => node
            .members()
            .all(|(k, v)| (k != name || walk(rest, v, f)) && scan_name(v, name, rest, f)),
    }
}

fn scan_filter<'a, T: Tree>(
    node: &'a T,
    filter: &Filter,
    rest: &[Seg],
    f: &mut dyn FnMut(&'a T) -> bool,
) -> bool {
    if filter.matches(node) && !walk(rest, node, f) {
        return false;
    }
    node.children().all(|v| scan_filter(v, filter, rest, f))
}

fn index<T: Tree>(node: &T, i: i64) -> Option<&T> {
    let a = node.items()?;
    let i = if i < 0 { a.len() as i64 + i } else { i };
    usize::try_from(i).ok().and_then(|i| a.get(i))
}

fn resolve<'a, T: Tree>(node: &'a T, steps: &[Step]) -> Option<&'a T> {
    steps.iter().try_fold(node, |v, s| match s {
        Step::Name(n) => v.member(n),
        Step::Index(i) => index(v, *i),
    })
}

impl Filter {
    fn matches<T: Tree>(&self, node: &T) -> bool {
        match self {
            Filter::Or(fs) => fs.iter().any(|f| f.matches(node)),
            Filter::And(fs) => fs.iter().all(|f| f.matches(node)),
            Filter::Exists(steps) => resolve(node, steps).is_some(),
            Filter::Cmp(l, op, r) => {
                let l = l.value(node);
                let r = r.value(node);
                match (l, r) {
                    (Some(l), Some(r)) => compare(l, *op, r),
                    // Newtonsoft: a missing operand only satisfies `!=`.
                    (None, Some(_)) | (Some(_), None) => *op == CmpOp::Ne,
                    (None, None) => false,
                }
            }
        }
    }
}

impl Operand {
    fn value<'a, T: Tree>(&'a self, node: &'a T) -> Option<Scalar<'a>> {
        match self {
            Operand::Path(steps) => resolve(node, steps).map(Tree::scalar),
            Operand::Lit(v) => Some(v.scalar()),
        }
    }
}

fn compare(l: Scalar<'_>, op: CmpOp, r: Scalar<'_>) -> bool {
    use std::cmp::Ordering;
    let ord = match (l, r) {
        (Scalar::Num(a), Scalar::Num(b)) => a.partial_cmp(&b),
        (Scalar::Str(a), Scalar::Str(b)) => Some(a.cmp(b)),
        (Scalar::Bool(a), Scalar::Bool(b)) => Some(a.cmp(&b)),
        (Scalar::Null, Scalar::Null) => Some(Ordering::Equal),
        _ => None,
    };
    match (op, ord) {
        (CmpOp::Eq, Some(o)) => o == Ordering::Equal,
        (CmpOp::Ne, Some(o)) => o != Ordering::Equal,
        (CmpOp::Ne, None) => true,
        (CmpOp::Lt, Some(o)) => o == Ordering::Less,
        (CmpOp::Le, Some(o)) => o != Ordering::Greater,
        (CmpOp::Gt, Some(o)) => o == Ordering::Greater,
        (CmpOp::Ge, Some(o)) => o != Ordering::Less,
        _ => false,
    }
}

/// Recursive-descent parser for the compiled subset. Anything outside it is `Unsupported`
/// and handed to jsonpath-rust, which also owns the error message for invalid paths.
struct Parser<'s> {
    s: &'s [u8],
    src: &'s str,
    pos: usize,
}

const NAME_END: &[u8] = b".[]() \t\r\n";
const FILTER_NAME_END: &[u8] = b".[]() \t\r\n=!<>&|,";

impl<'s> Parser<'s> {
    fn new(src: &'s str) -> Self {
        Self {
            s: src.as_bytes(),
            src,
            pos: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    fn parse_path(&mut self) -> Result<Vec<Seg>, Unsupported> {
        let mut segs = Vec::new();
        self.skip_ws();
        if self.s.is_empty() {
            return Err(Unsupported);
        }
        if !self.eat(b'$') {
            // Newtonsoft accepts a path without `$`: it starts with a name or a bracket.
            if self.peek() != Some(b'[') {
                segs.push(Seg::Name(self.name(NAME_END)?));
            }
        }
        loop {
            match self.peek() {
                None => return Ok(segs),
                Some(b'.') => {
                    self.pos += 1;
                    if self.eat(b'.') {
                        segs.push(self.scan_segment()?);
                    } else if self.peek() == Some(b'[') {
                        // `$.['name']`: Newtonsoft accepts a dot before a bracket.
                    } else if self.eat(b'*') {
                        segs.push(Seg::Wildcard);
                    } else {
                        segs.push(Seg::Name(self.name(NAME_END)?));
                    }
                }
                Some(b'[') => segs.push(self.bracket()?),
                Some(_) => return Err(Unsupported),
            }
        }
    }

    fn scan_segment(&mut self) -> Result<Seg, Unsupported> {
        if self.peek() == Some(b'[') {
            match self.bracket()? {
                Seg::Filter(f) => Ok(Seg::ScanFilter(f)),
                Seg::Name(n) => Ok(Seg::ScanName(n)),
                _ => Err(Unsupported),
            }
        } else {
            Ok(Seg::ScanName(self.name(NAME_END)?))
        }
    }

    fn name(&mut self, end: &[u8]) -> Result<String, Unsupported> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if end.contains(&b) || b == b'\'' || b == b'"' || b == b'*' || b == b'$' || b == b'@' {
                break;
            }
            self.pos += 1;
        }
        if self.pos == start {
            return Err(Unsupported);
        }
        Ok(self.src[start..self.pos].to_string())
    }

    fn bracket(&mut self) -> Result<Seg, Unsupported> {
        self.pos += 1; // '['
        self.skip_ws();
        let seg = match self.peek() {
            Some(b'\'' | b'"') => Seg::Name(self.quoted()?),
            Some(b'*') => {
                self.pos += 1;
                Seg::Wildcard
            }
            Some(b'?') => {
                self.pos += 1;
                self.skip_ws();
                if !self.eat(b'(') {
                    return Err(Unsupported);
                }
                let f = self.or_expr()?;
                self.skip_ws();
                if !self.eat(b')') {
                    return Err(Unsupported);
                }
                Seg::Filter(f)
            }
            Some(b'-' | b'0'..=b'9') => Seg::Index(self.integer()?),
            _ => return Err(Unsupported),
        };
        self.skip_ws();
        if !self.eat(b']') {
            return Err(Unsupported);
        }
        Ok(seg)
    }

    fn integer(&mut self) -> Result<i64, Unsupported> {
        let start = self.pos;
        self.eat(b'-');
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.src[start..self.pos].parse().map_err(|_| Unsupported)
    }

    fn quoted(&mut self) -> Result<String, Unsupported> {
        let q = self.peek().ok_or(Unsupported)?;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let c = self.src[self.pos..].chars().next().ok_or(Unsupported)?;
            self.pos += c.len_utf8();
            match c {
                '\\' => {
                    let e = self.src[self.pos..].chars().next().ok_or(Unsupported)?;
                    self.pos += e.len_utf8();
                    out.push(e);
                }
                c if c as u32 == q as u32 => return Ok(out),
                c => out.push(c),
            }
        }
    }

    fn or_expr(&mut self) -> Result<Filter, Unsupported> {
        let mut parts = vec![self.and_expr()?];
        loop {
            self.skip_ws();
            if self.s[self.pos..].starts_with(b"||") {
                self.pos += 2;
                parts.push(self.and_expr()?);
            } else {
                break;
            }
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Filter::Or(parts)
        })
    }

    fn and_expr(&mut self) -> Result<Filter, Unsupported> {
        let mut parts = vec![self.atom()?];
        loop {
            self.skip_ws();
            if self.s[self.pos..].starts_with(b"&&") {
                self.pos += 2;
                parts.push(self.atom()?);
            } else {
                break;
            }
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Filter::And(parts)
        })
    }

    fn atom(&mut self) -> Result<Filter, Unsupported> {
        self.skip_ws();
        if self.eat(b'(') {
            let f = self.or_expr()?;
            self.skip_ws();
            return if self.eat(b')') {
                Ok(f)
            } else {
                Err(Unsupported)
            };
        }
        let left = self.operand()?;
        self.skip_ws();
        let op = match self.s.get(self.pos..self.pos + 2) {
            Some(b"==") => Some(CmpOp::Eq),
            Some(b"!=") => Some(CmpOp::Ne),
            Some(b"<=") => Some(CmpOp::Le),
            Some(b">=") => Some(CmpOp::Ge),
            _ => match self.peek() {
                Some(b'<') => Some(CmpOp::Lt),
                Some(b'>') => Some(CmpOp::Gt),
                Some(b'=' | b'!') => return Err(Unsupported),
                _ => None,
            },
        };
        let Some(op) = op else {
            return match left {
                Operand::Path(steps) => Ok(Filter::Exists(steps)),
                Operand::Lit(_) => Err(Unsupported),
            };
        };
        self.pos += if matches!(op, CmpOp::Lt | CmpOp::Gt) {
            1
        } else {
            2
        };
        let right = self.operand()?;
        Ok(Filter::Cmp(left, op, right))
    }

    fn operand(&mut self) -> Result<Operand, Unsupported> {
        self.skip_ws();
        match self.peek() {
            Some(b'@') => {
                self.pos += 1;
                let mut steps = Vec::new();
                // `@name` is Newtonsoft for `@.name`.
                if let Some(b) = self.peek() {
                    if !FILTER_NAME_END.contains(&b) {
                        steps.push(Step::Name(self.name(FILTER_NAME_END)?));
                    }
                }
                loop {
                    match self.peek() {
                        Some(b'.') => {
                            self.pos += 1;
                            if self.peek() == Some(b'[') {
                                continue;
                            }
                            steps.push(Step::Name(self.name(FILTER_NAME_END)?));
                        }
                        Some(b'[') => match self.bracket()? {
                            Seg::Name(n) => steps.push(Step::Name(n)),
                            Seg::Index(i) => steps.push(Step::Index(i)),
                            _ => return Err(Unsupported),
                        },
                        _ => break,
                    }
                }
                Ok(Operand::Path(steps))
            }
            Some(b'\'' | b'"') => Ok(Operand::Lit(Value::String(self.quoted()?))),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                self.pos += 1;
                while matches!(
                    self.peek(),
                    Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                ) {
                    self.pos += 1;
                }
                serde_json::from_str(&self.src[start..self.pos])
                    .map(Operand::Lit)
                    .map_err(|_| Unsupported)
            }
            _ => {
                for (word, lit) in [
                    ("true", Value::Bool(true)),
                    ("false", Value::Bool(false)),
                    ("null", Value::Null),
                ] {
                    if self.src[self.pos..].starts_with(word) {
                        self.pos += word.len();
                        return Ok(Operand::Lit(lit));
                    }
                }
                Err(Unsupported)
            }
        }
    }
}

/// Rewrites Newtonsoft spellings into RFC 9535 for jsonpath-rust: a leading `$` where it is
/// missing, `.[` as `[`, and every dot name (including `@name`) as a quoted bracket name,
/// since Newtonsoft allows characters such as `-` that RFC 9535 shorthand does not.
fn rewrite_for_rfc9535(src: &str) -> String {
    let src = src.trim();
    let full = if src.starts_with('$') {
        src.to_string()
    } else if src.starts_with('[') {
        format!("${src}")
    } else {
        format!("$.{src}")
    };
    let chars: Vec<char> = full.chars().collect();
    let mut out = String::with_capacity(full.len() + 8);
    let mut i = 0;
    let mut quote: Option<char> = None;
    let name_end = |c: char| ".[]() \t\r\n=!<>&|,'\"".contains(c);
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            out.push(c);
            if c == '\\' && i + 1 < chars.len() {
                out.push(chars[i + 1]);
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        match c {
            '\'' | '"' => {
                quote = Some(c);
                out.push(c);
            }
            '.' | '@' if next.is_some_and(|n| !name_end(n) && n != '*' && n != '.') => {
                // `@name` -> `@['name']`, `.name` -> `['name']`, `..name` -> `..['name']`.
                if c == '@' || out.ends_with('.') {
                    out.push(c);
                }
                let mut j = i + 1;
                let mut name = String::new();
                while j < chars.len() && !name_end(chars[j]) {
                    name.push(chars[j]);
                    j += 1;
                }
                out.push_str(&format!(
                    "['{}']",
                    name.replace('\\', "\\\\").replace('\'', "\\'")
                ));
                i = j;
                continue;
            }
            // `.[` -> `[` (but keep `..[`)
            '.' if next == Some('[') && !out.ends_with('.') => {}
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

/// Index of the `]` that closes the filter starting at `rest[0]` (after `[?`), if any.
fn bracket_end(rest: &str) -> Option<usize> {
    let mut depth = 1i32;
    let mut quote: Option<char> = None;
    for (i, c) in rest.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A copy of the event with `matchedToken` added (the connector's calculated-content scope).
pub fn with_matched_token(event: &Value, matched: Value) -> Value {
    let mut map = match event {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    map.insert("matchedToken".to_string(), matched);
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn both(path: &str, doc: &Value) -> Vec<Value> {
        let fast = JsonPath::compile(path).unwrap();
        assert!(fast.is_compiled(), "{path} should use the compiled matcher");
        let lib = JsonPath::compile_library(path).unwrap();
        let a: Vec<Value> = fast.select(doc).into_iter().cloned().collect();
        let b: Vec<Value> = lib.select(doc).into_iter().cloned().collect();
        assert_eq!(a, b, "compiled and jsonpath-rust disagree on {path}");
        a
    }

    #[test]
    fn scan_set_gives_each_path_what_select_gives() {
        let doc = json!({"a": {"hr": 1, "x": [{"hr": 2, "sp": 3}, {"sp": null}]}, "hr": 0,
            "arr": [[1], {"sp": 4, "hr": 5}]});
        let paths = [
            "$..[?(@hr)]",
            "$..[?(@sp)]",
            "$..[?(@sp == 4 || @hr < 2)]",
            "$..[?(@[0])]",
        ];
        let mut set = ScanSet::default();
        let compiled: Vec<JsonPath> = paths
            .iter()
            .map(|p| JsonPath::compile(p).unwrap())
            .collect();
        let slots: Vec<usize> = compiled.iter().map(|p| set.add(p).unwrap()).collect();
        assert!(set.add(&JsonPath::compile("$.a.hr").unwrap()).is_none());
        let mut found = Vec::new();
        set.run(&doc, &mut found);
        for (path, slot) in compiled.iter().zip(slots) {
            let shared: Vec<&Value> = found
                .iter()
                .filter(|(s, _)| *s == slot)
                .map(|(_, v)| *v)
                .collect();
            assert_eq!(shared, path.select(&doc), "{}", path.source());
            assert!(!shared.is_empty(), "{}", path.source());
        }
        // The same on a message parsed as the job parses it.
        let bytes = serde_json::to_vec(&doc).unwrap();
        let arena = bumpalo::Bump::new();
        let node = crate::mapping::tree::Node::parse_in(&bytes, &arena).unwrap();
        let mut on_node = Vec::new();
        set.run(&node, &mut on_node);
        let as_values = |f: Vec<(usize, &crate::mapping::tree::Node)>| -> Vec<(usize, Value)> {
            f.into_iter().map(|(s, n)| (s, n.to_value())).collect()
        };
        let on_value: Vec<(usize, Value)> =
            found.into_iter().map(|(s, v)| (s, v.clone())).collect();
        assert_eq!(as_values(on_node), on_value);
        for path in &compiled {
            let tree: Vec<Value> = path
                .select_tree(&node)
                .into_iter()
                .map(|n| n.to_value())
                .collect();
            let value: Vec<Value> = path.select(&doc).into_iter().cloned().collect();
            assert_eq!(tree, value, "{}", path.source());
        }
    }

    #[test]
    fn newtonsoft_dialect() {
        let doc = json!({"Body": {"heartRate": 60, "My Property": "x",
                         "a-b": 1, "list": [{"v": 1}, {"v": 2, "w": 3}]}, "heartRate": 1});
        assert_eq!(both("$..[?(@heartRate)]", &doc).len(), 2);
        assert_eq!(both("$.Body.['My Property']", &doc), vec![json!("x")]);
        assert_eq!(both("Body.a-b", &doc), vec![json!(1)]);
        assert_eq!(both("$.Body.list[?(@.v && @w)].w", &doc), vec![json!(3)]);
        assert_eq!(both("$.Body.list[?(@.v >= 2)].v", &doc), vec![json!(2)]);
        assert_eq!(both("$.Body.list[*].v", &doc), vec![json!(1), json!(2)]);
        assert_eq!(both("$..v", &doc), vec![json!(1), json!(2)]);
        assert_eq!(both("$.Body.list[-1].v", &doc), vec![json!(2)]);
        assert!(both("$.nothing.here", &doc).is_empty());
    }

    #[test]
    fn root_is_first_in_scan_filter() {
        let doc = json!({"hr": 1, "inner": {"hr": 2}});
        assert_eq!(
            both("$..[?(@hr)].hr", &doc),
            vec![json!(1), json!(2)],
            "root first, then descendants in document order"
        );
    }

    #[test]
    fn single_selection_reports_multiple() {
        let p = JsonPath::compile("$.a[*]").unwrap();
        assert_eq!(p.select_single(&json!({"a": [1, 2, 3]})), Err(2));
        assert_eq!(p.select_single(&json!({"a": [7]})), Ok(Some(&json!(7))));
        assert_eq!(p.select_single(&json!({})), Ok(None));
    }

    #[test]
    fn unsupported_syntax_falls_back_and_bad_syntax_fails() {
        let p = JsonPath::compile("$.a[0:2]").unwrap();
        assert!(!p.is_compiled());
        assert_eq!(p.select(&json!({"a": [1, 2, 3]})).len(), 2);
        let err = JsonPath::compile("$.a[?(@.b ==").unwrap_err();
        assert!(err.to_string().contains("$.a[?(@.b =="), "{err}");
    }
}
