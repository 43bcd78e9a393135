//! Template load errors: which file, where in it (JSON pointer and line), which template, what rule.

use serde::Serialize;
use std::fmt;

/// One problem found while loading a mapping file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateError {
    /// The mapping file, when loaded from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// JSON pointer to the offending member (RFC 6901).
    pub pointer: String,
    /// 1-based line of that member in the file, when it can be located.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// Index of the template in the collection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_index: Option<usize>,
    /// The template's `templateType`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_type: Option<String>,
    /// The template's `typeName`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// The rule broken, in words.
    pub reason: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}")?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
        }
        write!(
            f,
            "at {}",
            if self.pointer.is_empty() {
                "/"
            } else {
                &self.pointer
            }
        )?;
        if let Some(i) = self.template_index {
            write!(f, " (template #{i}")?;
            if let Some(t) = &self.template_type {
                write!(f, " {t}")?;
            }
            if let Some(n) = &self.type_name {
                write!(f, " \"{n}\"")?;
            }
            write!(f, ")")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Every problem found in one mapping file; the mapping is unusable if there is any.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateErrors(pub Vec<TemplateError>);

impl fmt::Display for TemplateErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TemplateErrors {}

impl TemplateErrors {
    /// Sets the file name and resolves each pointer to a line in `text`.
    pub fn locate(mut self, file: Option<&str>, text: &str) -> Self {
        for e in &mut self.0 {
            e.file = file.map(str::to_string);
            if e.line.is_none() {
                e.line = line_of_pointer(text, &e.pointer);
            }
        }
        self
    }
}

fn file_error(file: Option<&str>, line: Option<usize>, reason: String) -> TemplateErrors {
    TemplateErrors(vec![TemplateError {
        file: file.map(str::to_string),
        pointer: String::new(),
        line,
        template_index: None,
        template_type: None,
        type_name: None,
        reason,
    }])
}

/// Parses mapping file text and builds a mapping from it; errors carry file and line.
pub(crate) fn load_text<T>(
    text: &str,
    file: Option<&str>,
    build: impl FnOnce(&serde_json::Value) -> Result<T, TemplateErrors>,
) -> Result<T, TemplateErrors> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| file_error(file, Some(e.line()), format!("invalid JSON: {e}")))?;
    build(&value).map_err(|e| e.locate(file, text))
}

/// Reads a mapping file and builds a mapping from it.
pub(crate) fn load_file<T>(
    path: &std::path::Path,
    build: impl FnOnce(&serde_json::Value) -> Result<T, TemplateErrors>,
) -> Result<T, TemplateErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| file_error(Some(&name), None, format!("cannot read: {e}")))?;
    load_text(&text, Some(&name), build)
}

/// Collects errors while a mapping is checked, tagging them with the current template.
#[derive(Default)]
pub(crate) struct Collector {
    pub errors: Vec<TemplateError>,
    pub template_index: Option<usize>,
    pub template_type: Option<String>,
    pub type_name: Option<String>,
}

impl Collector {
    /// Records a problem at `pointer`.
    pub fn push(&mut self, pointer: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(TemplateError {
            file: None,
            pointer: pointer.into(),
            line: None,
            template_index: self.template_index,
            template_type: self.template_type.clone(),
            type_name: self.type_name.clone(),
            reason: reason.into(),
        });
    }

    /// Forgets the current template (errors after this are about the collection itself).
    pub fn enter(&mut self, index: usize, template_type: Option<String>) {
        self.template_index = Some(index);
        self.template_type = template_type;
        self.type_name = None;
    }
}

/// Appends an RFC 6901 reference token to a pointer.
pub(crate) fn child(pointer: &str, token: impl fmt::Display) -> String {
    let token = token.to_string().replace('~', "~0").replace('/', "~1");
    format!("{pointer}/{token}")
}

/// Finds the 1-based line where the value at `pointer` starts (its member name for object
/// members), by walking the JSON text. serde_json keeps no positions, and mapping files are
/// small and read once, so a direct scan is simplest.
pub fn line_of_pointer(text: &str, pointer: &str) -> Option<usize> {
    let tokens: Vec<String> = if pointer.is_empty() {
        vec![]
    } else {
        pointer
            .strip_prefix('/')?
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect()
    };
    let b = text.as_bytes();
    let mut pos = skip_ws(b, 0);
    let mut found_at = pos;
    for token in &tokens {
        match b.get(pos)? {
            b'{' => {
                pos += 1;
                loop {
                    pos = skip_ws(b, pos);
                    if b.get(pos)? == &b'}' {
                        // The member is missing: point at the object that lacks it.
                        return Some(line_at(b, found_at));
                    }
                    let key_start = pos;
                    let key_end = skip_value(b, pos)?;
                    let key: String = serde_json::from_slice(&b[key_start..key_end]).ok()?;
                    pos = skip_ws(b, key_end);
                    pos = skip_ws(b, pos + 1); // ':'
                    if &key == token {
                        found_at = key_start;
                        break;
                    }
                    pos = skip_ws(b, skip_value(b, pos)?);
                    if b.get(pos) == Some(&b',') {
                        pos += 1;
                    }
                }
            }
            b'[' => {
                let want: usize = token.parse().ok()?;
                pos += 1;
                for _ in 0..want {
                    pos = skip_ws(b, skip_value(b, skip_ws(b, pos))?);
                    if b.get(pos) != Some(&b',') {
                        return Some(line_at(b, found_at));
                    }
                    pos += 1;
                }
                pos = skip_ws(b, pos);
                found_at = pos;
            }
            _ => return Some(line_at(b, found_at)),
        }
    }
    Some(line_at(b, found_at))
}

fn line_at(b: &[u8], pos: usize) -> usize {
    1 + b[..pos.min(b.len())]
        .iter()
        .filter(|c| **c == b'\n')
        .count()
}

fn skip_ws(b: &[u8], mut pos: usize) -> usize {
    while pos < b.len() && b[pos].is_ascii_whitespace() {
        pos += 1;
    }
    pos
}

/// Returns the index just past the JSON value starting at `pos`.
fn skip_value(b: &[u8], pos: usize) -> Option<usize> {
    match b.get(pos)? {
        b'"' => {
            let mut i = pos + 1;
            while i < b.len() {
                match b[i] {
                    b'\\' => i += 2,
                    b'"' => return Some(i + 1),
                    _ => i += 1,
                }
            }
            None
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = pos;
            while i < b.len() {
                match b[i] {
                    b'"' => {
                        i = skip_value(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let mut i = pos;
            while i < b.len() && !matches!(b[i], b',' | b'}' | b']') && !b[i].is_ascii_whitespace()
            {
                i += 1;
            }
            Some(i)
        }
    }
}

/// Why a message could not be normalized: the template and field at fault and the reason.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NormalizeError {
    /// Index of the template in the collection.
    pub template_index: usize,
    /// Template type.
    pub template_type: &'static str,
    /// The template's `typeName`.
    pub type_name: String,
    /// The expression or value at fault (`deviceIdExpression`, `values[hr]`, ...).
    pub field: String,
    /// What went wrong.
    pub reason: String,
}

impl std::fmt::Display for NormalizeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "template #{} {} \"{}\", {}: {}",
            self.template_index, self.template_type, self.type_name, self.field, self.reason
        )
    }
}

impl std::error::Error for NormalizeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_lines() {
        let text = "{\n  \"templateType\": \"CollectionContent\",\n  \"template\": [\n    {\"a\": 1},\n    {\n      \"templateType\": \"X\",\n      \"template\": {\"b\": [1, 2]}\n    }\n  ]\n}\n";
        assert_eq!(line_of_pointer(text, ""), Some(1));
        assert_eq!(line_of_pointer(text, "/templateType"), Some(2));
        assert_eq!(line_of_pointer(text, "/template/0/a"), Some(4));
        assert_eq!(line_of_pointer(text, "/template/1/templateType"), Some(6));
        assert_eq!(line_of_pointer(text, "/template/1/template/b/1"), Some(7));
        // A missing member points at the object that lacks it.
        assert_eq!(line_of_pointer(text, "/template/1/missing"), Some(5));
    }
}
