//! The pages the binary serves: the ward board (`/`), the job page (`/job`), the mapping
//! debugger (`/debugger`), the JSON API behind them, `/metrics` and `/health`. Every asset is
//! in the binary: hospital networks are often closed to the internet.

pub mod auth;
mod routes;

use crate::board::Board;
use crate::metrics::Metrics;
use auth::Auth;
use std::net::SocketAddr;
use std::sync::Arc;

/// How the pages are served.
pub struct WebConfig {
    /// `host:port` to listen on.
    pub address: String,
    /// Who may use them.
    pub auth: Auth,
    /// Certificate and private key (PEM) for HTTPS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
}

impl WebConfig {
    /// From the address and the environment: `VITALFLOW_BOARD_TOKEN`,
    /// `VITALFLOW_BOARD_USERS` (a users file), `VITALFLOW_BOARD_TLS_CERT` and `_KEY`.
    /// A non-loopback address without credentials is refused.
    pub fn from_env(address: &str) -> anyhow::Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let users = match var("VITALFLOW_BOARD_USERS") {
            Some(path) => Some((
                std::fs::read_to_string(&path).map_err(|e| {
                    anyhow::anyhow!("VITALFLOW_BOARD_USERS: cannot read {path}: {e}")
                })?,
                path,
            )),
            None => None,
        };
        let auth = Auth::new(
            var("VITALFLOW_BOARD_TOKEN"),
            users.as_ref().map(|(t, p)| (p.as_str(), t.as_str())),
        )?;
        let tls = match (
            var("VITALFLOW_BOARD_TLS_CERT"),
            var("VITALFLOW_BOARD_TLS_KEY"),
        ) {
            (Some(c), Some(k)) => {
                let read =
                    |p: &str| std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {p}: {e}"));
                Some((read(&c)?, read(&k)?))
            }
            (None, None) => None,
            _ => anyhow::bail!(
                "VITALFLOW_BOARD_TLS_CERT and VITALFLOW_BOARD_TLS_KEY go together: set both"
            ),
        };
        let cfg = WebConfig {
            address: address.to_string(),
            auth,
            tls,
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// Refuses a non-loopback address without credentials.
    pub fn check(&self) -> anyhow::Result<()> {
        let addr: SocketAddr = self.address.parse().map_err(|_| {
            anyhow::anyhow!(
                "board address \"{}\" is not host:port (an IP address and a port)",
                self.address
            )
        })?;
        if !addr.ip().is_loopback() && !self.auth.required() {
            anyhow::bail!(
                "the board would listen on {addr}, beyond this machine, without authentication: set VITALFLOW_BOARD_TOKEN or VITALFLOW_BOARD_USERS (docs/board.md), or listen on 127.0.0.1"
            );
        }
        Ok(())
    }
}

/// What the pages show.
#[derive(Default)]
pub struct Pages {
    /// The job's board (none for `vitalflow debugger`).
    pub board: Option<Arc<Board>>,
    /// The job's metrics (none for `vitalflow debugger`).
    pub metrics: Option<Arc<Metrics>>,
    /// What the debugger starts with: device template, FHIR template and a message.
    pub templates: (String, String, String),
    /// The job's name.
    pub job: String,
}

/// Serves the pages from background threads; returns the bound address.
pub fn serve(cfg: WebConfig, pages: Pages) -> anyhow::Result<SocketAddr> {
    cfg.check()?;
    let server = match &cfg.tls {
        Some((certificate, private_key)) => tiny_http::Server::https(
            &cfg.address,
            tiny_http::SslConfig {
                certificate: certificate.clone(),
                private_key: private_key.clone(),
            },
        ),
        None => tiny_http::Server::http(&cfg.address),
    }
    .map_err(|e| anyhow::anyhow!("cannot serve the board on {}: {e}", cfg.address))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow::anyhow!("board address {} is not an IP address", cfg.address))?;
    let server = Arc::new(server);
    let app = Arc::new(routes::App::new(pages, cfg.auth, cfg.tls.is_some()));
    for i in 0..4 {
        let (server, app) = (server.clone(), app.clone());
        std::thread::Builder::new()
            .name(format!("web-{i}"))
            .spawn(move || {
                while let Ok(request) = server.recv() {
                    app.handle(request);
                }
            })?;
    }
    Ok(bound)
}
