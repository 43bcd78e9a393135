//! Request handling: pages, the JSON API, the live alert feed, metrics and health.

use super::auth::{Auth, Caller};
use super::Pages;
use crate::anomaly::ack::AckRequest;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tiny_http::{Header, Method, Request, Response};

/// The largest body a request may have (a debugger message with its templates).
const MAX_BODY: usize = 4 << 20;

const BOARD_HTML: &str = include_str!("assets/board.html");
const JOB_HTML: &str = include_str!("assets/job.html");
const DEBUGGER_HTML: &str = include_str!("assets/debugger.html");
const APP_CSS: &str = include_str!("assets/app.css");
const BOARD_JS: &str = include_str!("assets/board.js");
const JOB_JS: &str = include_str!("assets/job.js");
const DEBUGGER_JS: &str = include_str!("assets/debugger.js");
const COMMON_JS: &str = include_str!("assets/common.js");

pub(super) struct App {
    pages: Pages,
    auth: Auth,
    tls: bool,
}

type Reply = (u16, String, &'static str);

fn json_reply(status: u16, v: Value) -> Reply {
    (status, v.to_string(), "application/json")
}

fn error(status: u16, reason: &str) -> Reply {
    json_reply(status, json!({"error": reason}))
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

impl App {
    pub(super) fn new(pages: Pages, auth: Auth, tls: bool) -> Self {
        App { pages, auth, tls }
    }

    pub(super) fn handle(&self, mut request: Request) {
        let gzip = request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Accept-Encoding") && h.value.as_str().contains("gzip"));
        let url = request.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let path = path.to_string();
        let query = query.to_string();
        // Health stays open to the orchestrator's probes; everything else needs a caller.
        if path != "/health" {
            let auth = request
                .headers()
                .iter()
                .find(|h| h.field.equiv("Authorization"))
                .map(|h| h.value.as_str().to_string());
            let Some(caller) = self.auth.check(auth.as_deref()) else {
                let r = Response::from_string("authentication required\n")
                    .with_status_code(401)
                    .with_header(header("WWW-Authenticate", "Basic realm=\"vitalflow\""));
                let _ = request.respond(r);
                return;
            };
            if path == "/api/events" && *request.method() == Method::Get {
                self.events(request);
                return;
            }
            let reply = self.route(&mut request, &path, &query, &caller);
            self.respond(request, reply, gzip);
            return;
        }
        let reply = self.health();
        self.respond(request, reply, false);
    }

    fn respond(&self, request: Request, (status, body, kind): Reply, gzip: bool) {
        // The board's JSON is most of a page's weight (1.9 MB a read at 2,000 patients);
        // compressed it is a fraction of that (docs/board.md).
        let (body, encoding) = match gzip && body.len() >= 1024 {
            true => match compress(body.as_bytes()) {
                Some(z) => (z, Some("gzip")),
                None => (body.into_bytes(), None),
            },
            false => (body.into_bytes(), None),
        };
        let mut r = Response::from_data(body)
            .with_status_code(status)
            .with_header(header("Content-Type", kind))
            .with_header(header("X-Content-Type-Options", "nosniff"))
            .with_header(header("Referrer-Policy", "no-referrer"))
            .with_header(header(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ))
            .with_header(header("Cache-Control", "no-store"));
        if self.tls {
            r = r.with_header(header("Strict-Transport-Security", "max-age=31536000"));
        }
        if let Some(e) = encoding {
            r = r
                .with_header(header("Content-Encoding", e))
                .with_header(header("Vary", "Accept-Encoding"));
        }
        let _ = request.respond(r);
    }

    fn route(&self, request: &mut Request, path: &str, query: &str, caller: &Caller) -> Reply {
        let get = *request.method() == Method::Get;
        let post = *request.method() == Method::Post;
        let html = "text/html; charset=utf-8";
        match path {
            "/" if get && self.pages.board.is_some() => (200, BOARD_HTML.into(), html),
            // Without a job (`vitalflow debugger`) the debugger is the only page.
            "/" if get => (200, DEBUGGER_HTML.into(), html),
            "/job" if get => (200, JOB_HTML.into(), html),
            "/debugger" if get => (200, DEBUGGER_HTML.into(), html),
            "/assets/app.css" => (200, APP_CSS.into(), "text/css"),
            "/assets/common.js" => (200, COMMON_JS.into(), "text/javascript"),
            "/assets/board.js" => (200, BOARD_JS.into(), "text/javascript"),
            "/assets/job.js" => (200, JOB_JS.into(), "text/javascript"),
            "/assets/debugger.js" => (200, DEBUGGER_JS.into(), "text/javascript"),
            "/metrics" if get => match &self.pages.metrics {
                Some(m) => (200, m.render(), "text/plain; version=0.0.4"),
                None => error(404, "no job: no metrics"),
            },
            "/api/whoami" if get => json_reply(
                200,
                json!({
                    "user": match caller { Caller::User(u) => Some(u.as_str()), Caller::Local => None },
                    "job": self.pages.job,
                    "board": self.pages.board.is_some(),
                    "acks": self.pages.board.as_ref().is_some_and(|b| b.acks_taken().is_ok()),
                    "acksOff": self.pages.board.as_ref().and_then(|b| b.acks_taken().err()),
                }),
            ),
            "/api/board" if get => match &self.pages.board {
                Some(b) => {
                    let minutes = param(query, "trend")
                        .and_then(|m| m.parse::<usize>().ok())
                        .unwrap_or(60)
                        .min(crate::board::state::TREND_MINUTES);
                    let mut v = b.snapshot(minutes);
                    v["wall"] = json!(chrono::Utc::now().timestamp_millis());
                    json_reply(200, v)
                }
                None => error(404, "no job: no board"),
            },
            p if get && p.starts_with("/api/patient/") => match &self.pages.board {
                Some(b) => match b.patient(&p["/api/patient/".len()..]) {
                    Some(v) => json_reply(200, v),
                    None => error(404, "no such patient on the board"),
                },
                None => error(404, "no job: no board"),
            },
            "/api/job" if get => self.job(),
            p if get && p.starts_with("/api/dead-letters/") => {
                let index: Option<usize> = p["/api/dead-letters/".len()..].parse().ok();
                match (&self.pages.board, index) {
                    (Some(b), Some(i)) => {
                        let v = b.state().dead_letters(true);
                        match v["latest"].get(i) {
                            Some(d) => json_reply(200, d.clone()),
                            None => error(404, "no such dead letter (it may have scrolled off)"),
                        }
                    }
                    _ => error(404, "no such dead letter"),
                }
            }
            "/api/templates" if get => json_reply(
                200,
                json!({
                    "device": self.pages.templates.0,
                    "fhir": self.pages.templates.1,
                    "sample": self.pages.templates.2,
                }),
            ),
            "/api/debug" if post => match read_json(request) {
                Ok(body) => {
                    let text = |k: &str| body[k].as_str().unwrap_or("").to_string();
                    let report = crate::debugger::debug_texts(
                        &text("device"),
                        &text("fhir"),
                        text("message").as_bytes(),
                    );
                    json_reply(200, report)
                }
                Err(e) => e,
            },
            p if post && p.starts_with("/api/alerts/") => {
                let rest = &p["/api/alerts/".len()..];
                match rest.split_once('/') {
                    Some((id, action @ ("acknowledge" | "silence"))) => {
                        let (id, action) = (id.to_string(), action.to_string());
                        match read_json(request) {
                            Ok(body) => self.ack(&id, &action, &body, caller),
                            Err(e) => e,
                        }
                    }
                    _ => error(404, "POST /api/alerts/<id>/acknowledge or /silence"),
                }
            }
            _ => error(404, "not found: the pages are /, /job and /debugger"),
        }
    }

    fn health(&self) -> Reply {
        match &self.pages.metrics {
            Some(m) if !m.is_healthy() => json_reply(503, json!({"status": "failing"})),
            _ => json_reply(200, json!({"status": "ok"})),
        }
    }

    fn job(&self) -> Reply {
        let Some(m) = &self.pages.metrics else {
            return error(404, "no job");
        };
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let lag: Vec<Value> = m
            .lag
            .lock()
            .map(|l| {
                l.iter()
                    .map(|((t, p), v)| json!({"topic": t, "partition": p, "lag": v}))
                    .collect()
            })
            .unwrap_or_default();
        let q = m.epoch_latency_quantiles(&[0.5, 0.99]);
        // Every path `Latencies` has, by its name: a path added there shows here too.
        let latency: serde_json::Map<String, Value> = (m.latency.paths().iter())
            .map(|(name, h)| {
                let q = h.lock().map_or(Value::Null, |h| {
                    json!({"p50_ms": h.value_at_quantile(0.5) as f64 / 1e3,
                           "p99_ms": h.value_at_quantile(0.99) as f64 / 1e3, "count": h.len()})
                });
                (name.to_string(), q)
            })
            .collect();
        let (clock, dead, patients) = match &self.pages.board {
            Some(b) => {
                let s = b.state();
                (s.clock_ms(), s.dead_letters(false), s.patients())
            }
            None => (0, Value::Null, 0),
        };
        json_reply(
            200,
            json!({
                "job": self.pages.job,
                "wall": chrono::Utc::now().timestamp_millis(),
                "eventClock": clock,
                "patients": patients,
                "healthy": m.is_healthy(),
                "counters": {
                    "messagesIn": get(&m.messages_in),
                    "measurements": get(&m.measurements),
                    "observations": get(&m.observations_out) + get(&m.fhir_observations),
                    "alerts": get(&m.alerts_out),
                    "deadLetters": get(&m.dead_letters),
                    "lakeRows": get(&m.lake_rows),
                    "lakeCommits": get(&m.lake_commits),
                    "epochsDurable": get(&m.epochs_durable),
                    "commits": get(&m.commits),
                    "windowsOpen": get(&m.windows_open),
                    "failingSinks": get(&m.failing_sinks),
                    "readingPaused": get(&m.reading_paused),
                },
                "lastDurable": m.last_durable_ms.load(Ordering::Relaxed),
                "epochLatency": {"p50_ms": q[0].as_secs_f64() * 1e3, "p99_ms": q[1].as_secs_f64() * 1e3},
                "latency": latency,
                "lag": lag,
                "deadLetters": dead,
            }),
        )
    }

    fn ack(&self, id: &str, action: &str, body: &Value, caller: &Caller) -> Reply {
        let Some(board) = &self.pages.board else {
            return error(404, "no job: no board");
        };
        if let Err(why) = board.acks_taken() {
            return error(409, &why);
        }
        let by = match caller {
            Caller::User(u) => u.clone(),
            Caller::Local => match body["by"].as_str().map(str::trim) {
                Some(n) if !n.is_empty() && n.chars().count() <= 80 => n.to_string(),
                _ => return error(400, "who acknowledges: give your name (\"by\")"),
            },
        };
        let (alert, clock) = {
            let s = board.state();
            let alert = s.open_alerts().into_iter().find(|a| a.id == id);
            (alert, s.clock_ms())
        };
        let Some(alert) = alert else {
            return error(404, "no open alert with this id");
        };
        let request = AckRequest {
            alert: alert.id,
            patient: alert.patient,
            device: alert.device,
            rule: alert.rule,
            title: alert.title,
            severity: alert.severity,
            category: alert.category,
            since: alert.since,
            action: action.to_string(),
            minutes: body["minutes"]
                .as_u64()
                .map(|m| m.min(u64::from(u32::MAX)) as u32),
            by,
            note: body["note"]
                .as_str()
                .map(|n| n.trim().chars().take(500).collect::<String>())
                .filter(|n| !n.is_empty()),
            at_ms: clock,
        };
        if let Err(e) = request.check() {
            return error(400, &e);
        }
        match board.acknowledge(&request) {
            Ok(()) => json_reply(202, json!({"accepted": true, "at": clock})),
            Err(e) => error(503, &e),
        }
    }

    /// Server-sent events: each alert event as the job emits it, and a comment every 15 s so
    /// that proxies keep the connection and a dead one is noticed.
    fn events(&self, request: Request) {
        let Some(board) = self.pages.board.clone() else {
            self.respond(request, error(404, "no job: no board"), false);
            return;
        };
        let feed = board.subscribe();
        let response = Response::empty(200)
            .with_header(header("Content-Type", "text/event-stream"))
            .with_header(header("Cache-Control", "no-store"));
        // The upgrade hands over the connection: tiny_http would otherwise buffer a chunked
        // body until 8 KiB, holding an alert back from the screen.
        let mut stream = request.upgrade("sse", response);
        let _ = std::thread::Builder::new()
            .name("web-events".into())
            .spawn(move || {
                if stream.write_all(b"retry: 2000\n\n").is_err() {
                    return;
                }
                let _ = stream.flush();
                loop {
                    let frame = match feed.recv_timeout(Duration::from_secs(15)) {
                        Ok(e) => format!("event: alert\ndata: {e}\n\n"),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            ": keep-alive\n\n".into()
                        }
                        Err(_) => return,
                    };
                    if stream.write_all(frame.as_bytes()).is_err() || stream.flush().is_err() {
                        return;
                    }
                }
            });
    }
}

/// `data` gzipped (fast level: a page's read is built and sent every few seconds).
fn compress(data: &[u8]) -> Option<Vec<u8>> {
    use flate2::write::GzEncoder;
    let mut z = GzEncoder::new(
        Vec::with_capacity(data.len() / 8),
        flate2::Compression::fast(),
    );
    z.write_all(data).ok()?;
    z.finish().ok()
}

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn read_json(request: &mut Request) -> Result<Value, Reply> {
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| error(400, &format!("cannot read the request: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(error(413, "the request is over 4 MiB"));
    }
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body).map_err(|e| error(400, &format!("the request is not JSON: {e}")))
}
