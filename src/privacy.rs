//! Patient data out of the logs: identifiers become keyed tags.
//!
//! Log lines at any level vitalflow logs by default carry no patient, device or encounter
//! identifier, no measured value and no Observation id (which is a hash of the patient and
//! device identifiers, and so links to them). Where a line needs to correlate (which
//! Observation the server refused, which alert), it names a [`tag`]: a keyed hash, the same
//! for the same identifier within a run, or across runs and processes when they share
//! `VITALFLOW_LOG_KEY`. The data itself (dead letters, outputs) keeps the identifiers.
//!
//! The key is prefixed to the value under SHA-256 rather than used in an HMAC: the tag only
//! has to be unlinkable without the key, and the length extension that HMAC guards against
//! forges nothing here.

use sha2::{Digest, Sha256};
use std::sync::OnceLock;

fn key() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| match std::env::var("VITALFLOW_LOG_KEY") {
        Ok(k) if !k.is_empty() => k.into_bytes(),
        _ => {
            use rand::RngExt as _;
            let mut k = vec![0u8; 32];
            rand::rng().fill(&mut k[..]);
            k
        }
    })
}

/// An error whose full text may carry patient data (a server's diagnostics can echo the
/// resource it refused): it shows only its summary, which the default log level may print;
/// the full text goes to the `debug` level when the error is made (and to dead letters,
/// where the data belongs).
pub struct Redacted {
    summary: String,
}

impl Redacted {
    /// An error shown as `summary`, whose `detail` is logged at debug level only.
    pub fn new(summary: String, detail: &str) -> Self {
        tracing::debug!("{summary}: {detail}");
        Self { summary }
    }
}

impl std::fmt::Display for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redacted({:?})", self.summary)
    }
}

impl std::error::Error for Redacted {}

/// A keyed tag for an identifier: `#` and 12 hex digits.
pub fn tag(value: &str) -> String {
    let mut h = Sha256::new();
    h.update(key());
    h.update(value.as_bytes());
    let d = h.finalize();
    let mut out = String::with_capacity(13);
    out.push('#');
    for b in &d[..6] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A FHIR request path as logs show it: resource types and parameter names kept, ids and
/// parameter values tagged (`Observation/#3f…`, `Device?identifier=#a1…`).
pub fn path(p: &str) -> String {
    let (path, query) = p.split_once('?').unwrap_or((p, ""));
    let mut out: Vec<String> = Vec::new();
    for (i, seg) in path.split('/').enumerate() {
        // FHIR paths alternate type / id: `Observation/{id}/_history/{version}`.
        let is_type = i % 2 == 0 || seg.starts_with('_') || seg.starts_with('$');
        out.push(if is_type || seg.is_empty() {
            seg.to_string()
        } else {
            tag(seg)
        });
    }
    let mut shown = out.join("/");
    if !query.is_empty() {
        let params: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => format!("{k}={}", tag(v)),
                None => kv.to_string(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&params.join("&"));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_their_shape_and_lose_their_identifiers() {
        let p = path("Observation/abc123/_history/2");
        assert!(
            p.starts_with("Observation/#") && p.contains("/_history/#"),
            "{p}"
        );
        assert!(!p.contains("abc123"), "{p}");
        let q = path("Device?identifier=urn:oid:1|BM-0007&_count=1");
        assert!(
            q.starts_with("Device?identifier=#") && q.contains("&_count=#"),
            "{q}"
        );
        assert!(!q.contains("BM-0007"), "{q}");
        assert_eq!(tag("P-7"), tag("P-7"), "stable within a run");
        assert_ne!(tag("P-7"), tag("P-8"));
        assert_eq!(path("metadata"), "metadata");
    }
}
