//! The current rule set, and the watcher that reloads it when its file changes: a change
//! that does not validate keeps the previous rules and says why.

use super::rules::{self, RuleErrors, RuleSet, Vitals};
use crate::metrics::Metrics;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// The rules in force, shared by the workers of a process.
pub struct Rules {
    path: PathBuf,
    vitals: Arc<Vitals>,
    current: RwLock<Arc<RuleSet>>,
    version: AtomicU64,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Rules {
    /// Loads the rules file (or the copy built into the binary, for the embedded default).
    pub fn load(path: &Path, vitals: Arc<Vitals>) -> Result<Arc<Self>, RuleErrors> {
        let set = if path.is_file() {
            rules::load(path, &vitals)?
        } else {
            match crate::config::embedded_template(path) {
                Some(text) => {
                    rules::parse(text, &format!("{} (embedded)", path.display()), &vitals)?
                }
                None => rules::load(path, &vitals)?,
            }
        };
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            vitals,
            current: RwLock::new(Arc::new(set)),
            version: AtomicU64::new(1),
        }))
    }

    /// The rules in force and their version (it grows with every reload).
    pub fn get(&self) -> (u64, Arc<RuleSet>) {
        let set = self
            .current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        (self.version.load(Ordering::Acquire), set)
    }

    /// The vitals rules may name.
    pub fn vitals(&self) -> &Vitals {
        &self.vitals
    }

    /// The same, shared.
    pub fn shared_vitals(&self) -> Arc<Vitals> {
        self.vitals.clone()
    }

    /// Re-reads the file now; Err (rules unchanged) when it does not validate.
    pub fn reload(&self) -> Result<(), RuleErrors> {
        let set = rules::load(&self.path, &self.vitals)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Polls the file twice a second until `stop`, reloading it when it changes.
    pub fn watch(self: &Arc<Self>, stop: Arc<AtomicBool>, metrics: Arc<Metrics>) {
        if !self.path.is_file() {
            return;
        }
        let rules = self.clone();
        std::thread::Builder::new()
            .name("rules-watcher".into())
            .spawn(move || {
                let mut seen = modified(&rules.path);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(500));
                    let now = modified(&rules.path);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    match rules.reload() {
                        Ok(()) => {
                            Metrics::add(&metrics.rule_reloads, 1);
                            tracing::info!(file = %rules.path.display(), "alert rules reloaded");
                        }
                        Err(e) => {
                            Metrics::add(&metrics.rule_reload_errors, 1);
                            tracing::error!("{e}; the previous rules stay in force");
                        }
                    }
                }
            })
            .expect("spawn the rules watcher");
    }
}
