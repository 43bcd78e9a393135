//! FHIR R4 REST client: authentication, retries and `batch` Bundles.
//!
//! Requests are blocking: each FHIR sink runs on a thread of its own, and a sink that waits
//! on its server is exactly the backpressure the job wants. 429, 5xx and network errors are
//! retried with exponential backoff and full jitter, honouring `Retry-After`; a 401 refreshes
//! an OAuth2 token once and is otherwise fatal, since retrying cannot fix credentials.

use crate::config::{FhirAuth, FhirSinkConfig};
use crate::metrics::Metrics;
use rand::RngExt as _;
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

const FHIR_JSON: &str = "application/fhir+json";

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FhirError {
    /// Credentials refused: retrying cannot help, the job stops.
    #[error("FHIR authentication failed: {0}")]
    Unauthorized(String),
    /// TLS handshake or certificate failure.
    #[error("TLS error talking to {url}: {reason}")]
    Tls {
        /// The URL asked.
        url: String,
        /// The TLS library's reason.
        reason: String,
    },
    /// Network error, timeout, 429 or 5xx still failing after the retries.
    #[error("FHIR server unavailable: {0}")]
    Unavailable(String),
    /// The server refused the request itself (4xx), with its OperationOutcome diagnostics.
    #[error("FHIR server answered {status}: {diagnostics}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// OperationOutcome issue diagnostics, or the body.
        diagnostics: String,
    },
    /// The server answered something that is not the FHIR JSON asked for.
    #[error("malformed FHIR response from {url}: {reason}")]
    Malformed {
        /// The URL asked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The longest an OAuth2 token is used before it is fetched again, seconds.
const MAX_TOKEN_LIFETIME_S: u64 = 86_400;

/// How long a token response's token lives: its `expires_in` (a number or a numeric
/// string; 5 minutes when absent), bounded so that a server's huge value cannot overflow
/// the clock, and a token is fetched again at least daily.
fn token_lifetime(body: &Value) -> Duration {
    Duration::from_secs(
        body.get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .unwrap_or(300)
            .min(MAX_TOKEN_LIFETIME_S),
    )
}

impl FhirError {
    /// True when no retry can succeed without an operator (credentials).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Unauthorized(_))
    }

    /// What the error is, without a server's answer to a request for data (its
    /// diagnostics or body may quote the resources refused): fit for the default log level.
    /// Credential and TLS failures keep their reasons: they come before any data is sent.
    pub fn summary(&self) -> String {
        match self {
            Self::Unauthorized(_) | Self::Tls { .. } => self.to_string(),
            Self::Unavailable(_) => "FHIR server unavailable".into(),
            Self::Rejected { status, .. } => format!("FHIR server answered {status}"),
            Self::Malformed { .. } => "malformed FHIR response".into(),
        }
    }
}

/// A response: status, ETag and JSON body (Null when empty).
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// `ETag` header.
    pub etag: Option<String>,
    /// JSON body.
    pub body: Value,
}

/// One entry's outcome in a `batch` Bundle response.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryResponse {
    /// HTTP status of the entry.
    pub status: u16,
    /// `response.etag`.
    pub etag: Option<String>,
    /// `response.location`.
    pub location: Option<String>,
    /// The returned resource (reads and searches), or Null.
    pub resource: Value,
    /// Diagnostics of `response.outcome`, when the entry failed.
    pub diagnostics: Option<String>,
}

struct Token {
    value: String,
    refresh_at: Instant,
}

/// A FHIR server, shared by the workers of a process.
pub struct FhirClient {
    base: String,
    http: Client,
    auth: FhirAuth,
    token: Mutex<Option<Token>>,
    max_retries: u32,
    metrics: Arc<Metrics>,
}

/// Installs rustls' ring provider for the process (reqwest is built without one, so TLS
/// pulls in no second crypto library); idempotent.
pub fn install_crypto() {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Another part of the process may have installed one already: either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Joins OperationOutcome diagnostics (or details text) into one line.
pub fn outcome_diagnostics(o: &Value) -> Option<String> {
    let issues = o.get("issue")?.as_array()?;
    let texts: Vec<String> = issues
        .iter()
        .filter_map(|i| {
            let text = i
                .get("diagnostics")
                .or_else(|| i.pointer("/details/text"))
                .and_then(Value::as_str)?;
            let code = i.get("code").and_then(Value::as_str).unwrap_or("error");
            Some(format!("{code}: {text}"))
        })
        .collect();
    (!texts.is_empty()).then(|| texts.join("; "))
}

/// The version in a weak ETag (`W/"3"` → `3`).
pub fn etag_version(etag: &str) -> &str {
    etag.trim_start_matches("W/").trim_matches('"')
}

fn tls_reason(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        let text = s.to_string();
        if text.contains("certificate") || text.contains("InvalidContentType") {
            return Some(text);
        }
        source = s.source();
    }
    None
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

impl FhirClient {
    /// A client for the configured server. Checks the settings, not the server (see
    /// [`FhirClient::check_server`]).
    pub fn new(cfg: &FhirSinkConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        install_crypto();
        match &cfg.auth {
            FhirAuth::Bearer { token } if token.is_empty() => anyhow::bail!(
                "sinks.fhir.auth.type = \"bearer\" needs the token in VITALFLOW_FHIR_TOKEN"
            ),
            FhirAuth::OAuth2 { client_secret, .. } if client_secret.is_empty() => anyhow::bail!(
                "sinks.fhir.auth.type = \"oauth2\" needs the client secret in VITALFLOW_FHIR_CLIENT_SECRET"
            ),
            _ => {}
        }
        let plain = |u: &str| u.trim().to_ascii_lowercase().starts_with("http://");
        // The server gets the token; a token endpoint gets the client secret itself.
        let mut receivers = vec![cfg.url.as_str()];
        if let FhirAuth::OAuth2 { token_url, .. } = &cfg.auth {
            receivers.push(token_url.as_str());
        }
        if cfg.auth != FhirAuth::None && !cfg.allow_http_credentials {
            if let Some(url) = receivers.into_iter().find(|u| plain(u)) {
                anyhow::bail!(
                    "sinks.fhir: credentials would go to {url} over plain http://, readable by \
                     anyone on the path: use https://, or set allow_http = true under \
                     [sinks.fhir.auth] (a trusted network only)"
                );
            }
        }
        let mut b = Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("vitalflow/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(4);
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        Ok(Self {
            base: cfg.url.trim_end_matches('/').to_string(),
            http: b
                .build()
                .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?,
            auth: cfg.auth.clone(),
            token: Mutex::new(None),
            max_retries: cfg.max_retries,
            metrics,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Reads the CapabilityStatement: the server answers, TLS and credentials work, and it
    /// speaks FHIR R4. Retries until `patience` has passed while it is unreachable.
    pub fn check_server(&self, patience: Duration) -> Result<(), FhirError> {
        let deadline = Instant::now() + patience;
        loop {
            match self.send(Method::GET, "metadata", None, &[]) {
                Ok(r) if r.status == 200 => {
                    let version = r.body.get("fhirVersion").and_then(Value::as_str);
                    return match version {
                        Some(v) if v.starts_with("4.0") => Ok(()),
                        Some(v) => Err(FhirError::Malformed {
                            url: format!("{}/metadata", self.base),
                            reason: format!("the server speaks FHIR {v}, vitalflow writes R4 (4.0.x)"),
                        }),
                        None => Err(FhirError::Malformed {
                            url: format!("{}/metadata", self.base),
                            reason: "no CapabilityStatement.fhirVersion: is this a FHIR server base URL?".into(),
                        }),
                    };
                }
                Ok(r) => {
                    return Err(FhirError::Rejected {
                        status: r.status,
                        diagnostics: format!("GET {}/metadata", self.base),
                    })
                }
                Err(FhirError::Unavailable(e)) if Instant::now() < deadline => {
                    tracing::warn!(url = %self.base, "FHIR server not reachable yet: {e}");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn token(&self, force: bool) -> Result<Option<String>, FhirError> {
        match &self.auth {
            FhirAuth::None => Ok(None),
            FhirAuth::Bearer { token } => Ok(Some(token.clone())),
            FhirAuth::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                let mut t = self.token.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(tok) = t.as_ref() {
                    if !force && Instant::now() < tok.refresh_at {
                        return Ok(Some(tok.value.clone()));
                    }
                }
                let fresh = self.fetch_token(token_url, client_id, client_secret, scope)?;
                let value = fresh.value.clone();
                *t = Some(fresh);
                Ok(Some(value))
            }
        }
    }

    fn fetch_token(
        &self,
        token_url: &str,
        client_id: &str,
        client_secret: &str,
        scope: &Option<String>,
    ) -> Result<Token, FhirError> {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", client_secret),
        ];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let mut attempt = 0;
        let resp = loop {
            Metrics::add(&self.metrics.fhir_requests, 1);
            match self.http.post(token_url).form(&form).send() {
                Ok(r) if r.status().is_server_error() && attempt < self.max_retries => {}
                Ok(r) => break r,
                Err(e) if attempt < self.max_retries && tls_reason(&e).is_none() => {
                    tracing::warn!(%token_url, "token endpoint: {}", error_chain(&e));
                }
                Err(e) => {
                    return Err(match tls_reason(&e) {
                        Some(reason) => FhirError::Tls {
                            url: token_url.into(),
                            reason,
                        },
                        None => FhirError::Unavailable(format!(
                            "token endpoint {token_url}: {}",
                            error_chain(&e)
                        )),
                    })
                }
            }
            std::thread::sleep(self.backoff(attempt, None));
            attempt += 1;
        };
        let status = resp.status();
        let body: Value = resp
            .bytes()
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        if status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED {
            let error = body.get("error").and_then(Value::as_str).unwrap_or("");
            let description = body
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(FhirError::Unauthorized(format!(
                "the token endpoint {token_url} refused client \"{client_id}\" ({} {error} {description}); check client_id, VITALFLOW_FHIR_CLIENT_SECRET and scope",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            return Err(FhirError::Unavailable(format!(
                "token endpoint {token_url} answered {status}"
            )));
        }
        let Some(value) = body.get("access_token").and_then(Value::as_str) else {
            return Err(FhirError::Malformed {
                url: token_url.into(),
                reason: "the token response has no access_token".into(),
            });
        };
        let lifetime = token_lifetime(&body);
        // Refresh a minute early, or at 90% of a short lifetime: never send an expired token.
        let margin = Duration::from_secs(60).min(lifetime / 10);
        tracing::info!(%token_url, expires_in_s = lifetime.as_secs(), "OAuth2 token obtained");
        Ok(Token {
            value: value.to_string(),
            refresh_at: Instant::now() + lifetime - margin,
        })
    }

    fn backoff(&self, attempt: u32, server_said: Option<Duration>) -> Duration {
        if let Some(d) = server_said {
            return d.min(Duration::from_secs(60));
        }
        let cap =
            Duration::from_millis(200 * (1u64 << attempt.min(6))).min(Duration::from_secs(10));
        // Full jitter: many workers retrying after one outage must not retry in step.
        cap.mul_f64(rand::rng().random_range(0.5..1.0))
    }

    fn request(&self, method: &Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        };
        let mut r = self
            .http
            .request(method.clone(), url)
            .header(ACCEPT, HeaderValue::from_static(FHIR_JSON));
        if let Some(t) = token {
            r = r.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        r
    }

    /// Sends one request, retried on 429, 5xx and network errors; any other status is
    /// returned for the caller to judge.
    pub fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Response, FhirError> {
        // As errors and logs show it: identifiers in the path tagged (crate::privacy).
        let url = format!(
            "{}/{}",
            self.base,
            crate::privacy::path(path.trim_start_matches('/'))
        );
        let payload = body.map(|b| serde_json::to_vec(b).expect("JSON"));
        let mut attempt = 0;
        let mut refreshed = false;
        loop {
            let token = self.token(false)?;
            let mut req = self.request(&method, path, token.as_deref());
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            if let Some(p) = &payload {
                req = req
                    .header(CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))
                    .body(p.clone());
            }
            Metrics::add(&self.metrics.fhir_requests, 1);
            let (retryable, wait) = match req.send() {
                Ok(r) => {
                    let status = r.status();
                    if status == StatusCode::UNAUTHORIZED {
                        if matches!(self.auth, FhirAuth::OAuth2 { .. }) && !refreshed {
                            // Tokens can be revoked or expire early: one fresh token, then give up.
                            refreshed = true;
                            self.token(true)?;
                            continue;
                        }
                        return Err(FhirError::Unauthorized(match self.auth {
                            FhirAuth::None => format!("{method} {url} answered 401: the server requires authentication; set [sinks.fhir.auth]"),
                            FhirAuth::Bearer { .. } => format!("{method} {url} answered 401: the bearer token in VITALFLOW_FHIR_TOKEN was refused"),
                            FhirAuth::OAuth2 { .. } => format!("{method} {url} answered 401 with a freshly issued token: check the client's scope and grants"),
                        }));
                    }
                    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                        let wait = retry_after(r.headers());
                        if attempt >= self.max_retries {
                            return Err(FhirError::Unavailable(format!(
                                "{method} {url} answered {status} after {} attempts",
                                attempt + 1
                            )));
                        }
                        tracing::debug!(%url, %status, "retrying");
                        (true, wait)
                    } else {
                        let etag = r
                            .headers()
                            .get("etag")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let bytes = r.bytes().map_err(|e| {
                            FhirError::Unavailable(format!(
                                "{method} {url}: {}",
                                error_chain(&e.without_url())
                            ))
                        })?;
                        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
                            Value::Null
                        } else {
                            serde_json::from_slice(&bytes).map_err(|e| FhirError::Malformed {
                                url: url.clone(),
                                // Not the body itself: it may hold patient data.
                                reason: format!(
                                    "{status} with a body of {} bytes that is not JSON ({e})",
                                    bytes.len()
                                ),
                            })?
                        };
                        return Ok(Response {
                            status: status.as_u16(),
                            etag,
                            body,
                        });
                    }
                }
                Err(e) => {
                    // reqwest names the URL asked, identifiers and all.
                    let e = e.without_url();
                    if let Some(reason) = tls_reason(&e) {
                        return Err(FhirError::Tls { url, reason });
                    }
                    if attempt >= self.max_retries {
                        return Err(FhirError::Unavailable(format!(
                            "{method} {url}: {}",
                            error_chain(&e)
                        )));
                    }
                    tracing::debug!(%url, "retrying after: {}", error_chain(&e));
                    (true, None)
                }
            };
            debug_assert!(retryable);
            Metrics::add(&self.metrics.fhir_retries, 1);
            std::thread::sleep(self.backoff(attempt, wait));
            attempt += 1;
        }
    }

    /// Posts a `batch` Bundle of `entries` and returns one outcome per entry, in order.
    pub fn batch(&self, entries: Vec<Value>) -> Result<Vec<EntryResponse>, FhirError> {
        let n = entries.len();
        let bundle = json!({ "resourceType": "Bundle", "type": "batch", "entry": entries });
        let r = self.send(Method::POST, "", Some(&bundle), &[])?;
        let malformed = |reason: String| FhirError::Malformed {
            url: self.base.clone(),
            reason,
        };
        if !(200..300).contains(&r.status) {
            let diagnostics = outcome_diagnostics(&r.body).unwrap_or_else(|| r.body.to_string());
            return Err(FhirError::Rejected {
                status: r.status,
                diagnostics: format!("batch Bundle refused: {diagnostics}"),
            });
        }
        if r.body.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(malformed(
                "a batch answered with something other than a Bundle".into(),
            ));
        }
        let out: Vec<EntryResponse> = r
            .body
            .get("entry")
            .and_then(Value::as_array)
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let resp = e.get("response");
                let status = resp
                    .and_then(|r| r.get("status"))
                    .and_then(Value::as_str)
                    .and_then(|s| s.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                let text = |k: &str| {
                    resp.and_then(|r| r.get(k))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                EntryResponse {
                    status,
                    etag: text("etag"),
                    location: text("location"),
                    resource: e.get("resource").cloned().unwrap_or(Value::Null),
                    diagnostics: resp
                        .and_then(|r| r.get("outcome"))
                        .and_then(outcome_diagnostics),
                }
            })
            .collect();
        if out.len() != n || out.iter().any(|e| e.status == 0) {
            return Err(malformed(format!(
                "the batch response has {} entries with a status for {n} requests",
                out.iter().filter(|e| e.status != 0).count()
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_join_every_issue() {
        let o = json!({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": "Observation.status: unknown code"},
            {"severity": "error", "code": "required", "details": {"text": "subject missing"}}
        ]});
        assert_eq!(
            outcome_diagnostics(&o).as_deref(),
            Some("invalid: Observation.status: unknown code; required: subject missing")
        );
        assert_eq!(outcome_diagnostics(&json!({"issue": []})), None);
    }

    #[test]
    fn a_client_secret_never_goes_to_a_plain_http_token_endpoint() {
        let mut cfg = FhirSinkConfig::new("https://fhir.example.org");
        cfg.auth = FhirAuth::OAuth2 {
            token_url: "http://auth.example.org/token".into(),
            client_id: "vitalflow".into(),
            client_secret: "s3cret".into(),
            scope: None,
        };
        let e = FhirClient::new(&cfg, Arc::new(Metrics::default()))
            .err()
            .expect("refused");
        let text = format!("{e:#}");
        assert!(
            text.contains("http://auth.example.org/token") && text.contains("allow_http"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
        cfg.allow_http_credentials = true;
        assert!(FhirClient::new(&cfg, Arc::new(Metrics::default())).is_ok());
    }

    #[test]
    fn a_token_lifetime_is_bounded_whatever_the_server_says() {
        assert_eq!(
            token_lifetime(&json!({"expires_in": u64::MAX})),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            token_lifetime(&json!({"expires_in": "3600"})),
            Duration::from_secs(3600)
        );
        assert_eq!(token_lifetime(&json!({})), Duration::from_secs(300));
        // What the refresh does with it: no overflow.
        let _ = Instant::now() + token_lifetime(&json!({"expires_in": u64::MAX}));
    }

    #[test]
    fn versions_come_from_weak_etags() {
        assert_eq!(etag_version("W/\"3\""), "3");
        assert_eq!(etag_version("\"12\""), "12");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(
            "retry-after",
            HeaderValue::from_str(&later).expect("header"),
        );
        let d = retry_after(&h).expect("a date");
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }
}
