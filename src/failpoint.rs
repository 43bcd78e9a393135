//! Named crash points for the kill -9 trials (tests/crash_trials.rs), in debug builds only.
//!
//! `VITALFLOW_FAILPOINT=<name>:<n>` makes the process SIGKILL itself the `n`th time it
//! passes the point `name`: a kill at the exact moment a uniformly random kill would rarely
//! hit (between a sink's write and its commit, between a commit and the offset commit);
//! `<name>:pause` stalls a second at the point instead, every time it passes.
//! `VITALFLOW_FAILPOINT_TRACE=1` prints `failpoint <name> passed` each time any point is
//! passed, so the trials can tell that every point they arm is still on a path the job takes
//! (a timed wait for one cannot: a run may have nothing left to commit). Release builds
//! compile every point to nothing. Written here rather than with the `fail` crate:
//! its points are compiled in by a cargo feature, which the binary the integration tests
//! run would need in every `cargo test`, and the trials need only this one action.

#[cfg(debug_assertions)]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// What an armed point does.
    enum Action {
        /// Kill the process the `n`th time the point is passed.
        KillAt(u64),
        /// Stall a second every time, for the races a loaded machine makes.
        Pause,
    }

    static ARMED: OnceLock<Option<(String, Action)>> = OnceLock::new();
    static TRACE: OnceLock<bool> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);

    pub fn hit(name: &str) {
        if *TRACE.get_or_init(|| std::env::var_os("VITALFLOW_FAILPOINT_TRACE").is_some()) {
            eprintln!("failpoint {name} passed");
        }
        let armed = ARMED.get_or_init(|| {
            let v = std::env::var("VITALFLOW_FAILPOINT").ok()?;
            let (point, n) = v.split_once(':').unwrap_or((v.as_str(), "1"));
            let action = match n {
                "pause" => Action::Pause,
                n => Action::KillAt(n.parse().unwrap_or(1)),
            };
            Some((point.to_string(), action))
        });
        let Some((point, action)) = armed else { return };
        if point != name {
            return;
        }
        match action {
            Action::Pause => std::thread::sleep(std::time::Duration::from_secs(1)),
            Action::KillAt(n) => {
                if HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
                    eprintln!("failpoint {name}: killing the process");
                    // SAFETY: sends a signal to this process; no memory is touched.
                    unsafe {
                        libc::kill(libc::getpid(), libc::SIGKILL);
                    }
                }
            }
        }
    }
}

/// Passes the crash point `name`: kills the process here when the trials armed it.
#[inline]
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    armed::hit(name);
    #[cfg(not(debug_assertions))]
    let _ = name;
}
