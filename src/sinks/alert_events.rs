//! The alert events an output holds, by event day: what a restart's replay must not write
//! again. Alert ids are stable, so an event is its (id, state, time); an output reads back
//! the events of the days it is about to write to, once per day, and skips those it holds.
//! Shared by the NDJSON alert files and the lakehouse `alerts` table.

use crate::anomaly::lifecycle::Alert;
use std::collections::{BTreeSet, HashSet};

/// (alert id, state, event time µs).
pub type EventKey = (String, String, i64);

/// Events kept in memory before the oldest days are forgotten (read again if touched).
const KEEP_EVENTS: usize = 100_000;

/// An alert's event key.
pub fn key(a: &Alert) -> EventKey {
    let state = serde_json::to_value(a.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let at = crate::time::parse_timestamp(&a.at).map_or(0, |t| t.timestamp_micros());
    (a.id.clone(), state, at)
}

/// The event key of an alert as written in JSON (a file line, a Kafka record).
pub fn key_of_json(v: &serde_json::Value) -> EventKey {
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let at = crate::time::parse_timestamp(&text("at")).map_or(0, |t| t.timestamp_micros());
    (text("id"), text("state"), at)
}

/// The UTC day (since 1970) of an event.
pub fn day(k: &EventKey) -> i32 {
    k.2.div_euclid(86_400_000_000) as i32
}

/// The events an output holds on the days read back so far.
#[derive(Default)]
pub struct WrittenEvents {
    keys: HashSet<EventKey>,
    loaded: BTreeSet<i32>,
}

impl WrittenEvents {
    /// The days of `alerts` not read back yet.
    pub fn days_to_load<'a>(&self, alerts: impl Iterator<Item = &'a Alert>) -> BTreeSet<i32> {
        alerts
            .map(|a| day(&key(a)))
            .filter(|d| !self.loaded.contains(d))
            .collect()
    }

    /// Records what the output holds on `days`.
    pub fn loaded(&mut self, days: BTreeSet<i32>, held: impl IntoIterator<Item = EventKey>) {
        self.keys.extend(held);
        self.loaded.extend(days);
    }

    /// Per alert, its key when it is to be written (not held, and the first of its key in
    /// `alerts`: a replay can raise one twice within a flush), else None.
    pub fn fresh<'a>(&self, alerts: impl Iterator<Item = &'a Alert>) -> Vec<Option<EventKey>> {
        let mut seen = HashSet::new();
        alerts
            .map(|a| {
                let k = key(a);
                (!self.keys.contains(&k) && seen.insert(k.clone())).then_some(k)
            })
            .collect()
    }

    /// Records events written; forgets the oldest days by event time once there are many.
    pub fn written(&mut self, keys: impl IntoIterator<Item = EventKey>) {
        self.keys.extend(keys);
        if self.keys.len() > KEEP_EVENTS {
            let newest = self.keys.iter().map(day).max().unwrap_or(0);
            self.loaded.retain(|d| *d >= newest - 1);
            let loaded = &self.loaded;
            self.keys.retain(|k| loaded.contains(&day(k)));
        }
    }
}
