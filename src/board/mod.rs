//! The ward board: views the dataflow keeps up to date (`state`), and the hub the web pages
//! read them from, with a live feed of alert events for the pages' server-sent events.

pub mod state;

use crate::anomaly::ack::AckRequest;
use sha2::{Digest, Sha256};
use state::{BoardState, BoardUpdate};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, MutexGuard};

/// Events a live page may fall behind by before it is dropped (it reconnects and reloads).
const FEED_BACKLOG: usize = 1024;

/// Where a board's acknowledgements go: the job's acknowledgements input.
pub type AckInput = Box<dyn Fn(&AckRequest) -> Result<(), String> + Send + Sync>;

/// The board of one job: its views and the pages following them live.
pub struct Board {
    state: Mutex<BoardState>,
    feeds: Mutex<Vec<SyncSender<String>>>,
    /// Where acknowledgements go, or why the board takes none.
    acks: Mutex<Result<AckInput, String>>,
    /// Makes tile keys opaque: a key names a patient on this board, in this run, only.
    salt: [u8; 16],
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Board")
    }
}

impl Default for Board {
    fn default() -> Self {
        Self::new()
    }
}

impl Board {
    /// An empty board.
    pub fn new() -> Self {
        let mut salt = [0u8; 16];
        rand::fill(&mut salt);
        Board {
            state: Mutex::new(BoardState::default()),
            feeds: Mutex::new(Vec::new()),
            acks: Mutex::new(Err("the job has not started yet".into())),
            salt,
        }
    }

    /// Applies updates; alert events also go to every live page.
    pub fn apply(&self, updates: impl IntoIterator<Item = BoardUpdate>) {
        let mut events = Vec::new();
        {
            let mut s = self.state();
            for u in updates {
                if let BoardUpdate::Alert(a) = &u {
                    let v = state::alert_json(a, &|p: &str| self.key(p));
                    events.push(v.to_string());
                }
                s.apply(u);
            }
        }
        if events.is_empty() {
            return;
        }
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        feeds.retain(|f| {
            events.iter().all(|e| match f.try_send(e.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            })
        });
    }

    /// Takes acknowledgements into `input` from now on.
    pub fn take_acks(&self, input: AckInput) {
        *self.acks.lock().unwrap_or_else(|e| e.into_inner()) = Ok(input);
    }

    /// Takes no acknowledgements, for this reason (shown on the board).
    pub fn refuse_acks(&self, why: &str) {
        *self.acks.lock().unwrap_or_else(|e| e.into_inner()) = Err(why.to_string());
    }

    /// Whether the board takes acknowledgements, and if not why.
    pub fn acks_taken(&self) -> Result<(), String> {
        match &*self.acks.lock().unwrap_or_else(|e| e.into_inner()) {
            Ok(_) => Ok(()),
            Err(why) => Err(why.clone()),
        }
    }

    /// Writes an acknowledgement to the job's input; Ok once the input holds it.
    pub fn acknowledge(&self, request: &AckRequest) -> Result<(), String> {
        match &*self.acks.lock().unwrap_or_else(|e| e.into_inner()) {
            Ok(input) => input(request),
            Err(why) => Err(why.clone()),
        }
    }

    /// The views, locked for reading.
    pub fn state(&self) -> MutexGuard<'_, BoardState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A live feed of alert events (JSON), from now on.
    pub fn subscribe(&self) -> Receiver<String> {
        let (tx, rx) = sync_channel(FEED_BACKLOG);
        self.feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    /// A patient's tile key: opaque, so that no identifier appears in a URL.
    pub fn key(&self, patient: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(patient.as_bytes());
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The board as the page draws it.
    pub fn snapshot(&self, trend_minutes: usize) -> serde_json::Value {
        self.state().snapshot(&|p: &str| self.key(p), trend_minutes)
    }

    /// One patient by tile key, with four hours of trends.
    pub fn patient(&self, key: &str) -> Option<serde_json::Value> {
        self.state()
            .patient(&|p: &str| self.key(p), key, state::TREND_MINUTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::lifecycle::Category;
    use crate::anomaly::rules::Severity;

    #[test]
    fn live_pages_get_alert_events_and_keys_hide_identifiers() {
        let b = Board::new();
        let feed = b.subscribe();
        b.apply([BoardUpdate::Alert(state::BoardAlert {
            id: "a".into(),
            patient: "MRN-1".into(),
            device: "d".into(),
            rule: "r".into(),
            title: "t".into(),
            severity: Severity::Critical,
            category: Category::Physiological,
            state: "open".into(),
            since: String::new(),
            at: String::new(),
            at_ms: 1,
            text: "x".into(),
            by: None,
            note: None,
            until: None,
            emitted_us: 0,
        })]);
        let e: serde_json::Value =
            serde_json::from_str(&feed.recv().expect("event")).expect("json");
        assert_eq!(e["id"], "a");
        assert_eq!(e["key"], b.key("MRN-1"));
        assert!(!b.key("MRN-1").contains("MRN"));
        assert_ne!(
            b.key("MRN-1"),
            Board::new().key("MRN-1"),
            "salted per board"
        );
    }
}
