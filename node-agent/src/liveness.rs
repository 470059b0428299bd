//! Whether the agent is really working, for `/healthz` and the `Ready` condition: the last
//! read of the kernel's livepatch interface succeeded and is recent, and the watch of the
//! node's object is not failing for long. The record is shared by the tasks that observe;
//! [`assess`] judges it and is pure (the caller passes the time).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the agent reads the livepatch state from sysfs when nothing happens.
pub const OBSERVE_EVERY: Duration = Duration::from_secs(30);

/// How old the last successful kernel read may be before the agent is not live: four
/// rounds, so that one slow sysfs read does not fail it.
pub const MAX_OBSERVATION_AGE: Duration = Duration::from_secs(120);

/// How long the watch of the node's object may keep failing (every restart refused)
/// before the agent is not live. Long, as an API server outage fails every agent at once
/// and restarting them all would not bring it back sooner.
pub const MAX_WATCH_FAILING: Duration = Duration::from_secs(600);

/// A watch that fails retries within a minute (its jittered backoff waits 60 s at most), so
/// it reports an error at least that often while it keeps failing; one quiet for this long
/// since its last error has come back (a watch restarted on an unchanged object delivers
/// nothing).
pub const WATCH_QUIET_AFTER_FAILING: Duration = Duration::from_secs(120);

/// A run of watch failures with nothing delivered in between.
#[derive(Clone, Debug)]
pub struct WatchFailure {
    /// The first failure of the run.
    pub since: Instant,
    /// The latest failure.
    pub last: Instant,
    /// The latest error.
    pub error: String,
}

/// What the agent's tasks saw last.
#[derive(Clone, Debug)]
pub struct Record {
    /// When the agent started.
    pub started: Instant,
    /// When the kernel was last read successfully.
    pub observed: Option<Instant>,
    /// The error of the last kernel read, if it failed.
    pub observe_error: Option<String>,
    /// When the watch last delivered something (an event, a list).
    pub watch_ok: Option<Instant>,
    /// The watch's failures since it last delivered something.
    pub watch_failing: Option<WatchFailure>,
}

/// The shared liveness record.
#[derive(Clone, Debug)]
pub struct Liveness {
    record: Arc<Mutex<Record>>,
}

impl Liveness {
    /// A record of an agent started at `started`.
    pub fn new(started: Instant) -> Liveness {
        Liveness {
            record: Arc::new(Mutex::new(Record {
                started,
                observed: None,
                observe_error: None,
                watch_ok: None,
                watch_failing: None,
            })),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Record)) {
        // A panic elsewhere while holding the lock leaves a record still worth updating.
        change(&mut self.record.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// A copy of the record.
    pub fn record(&self) -> Record {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The kernel was read at `at`, successfully or with `error`.
    pub fn observed(&self, at: Instant, error: Option<String>) {
        self.update(|r| {
            if error.is_none() {
                r.observed = Some(at);
            }
            r.observe_error = error;
        });
    }

    /// The watch delivered something at `at`.
    pub fn watch_ok(&self, at: Instant) {
        self.update(|r| {
            r.watch_ok = Some(at);
            r.watch_failing = None;
        });
    }

    /// The watch failed at `at` with `error`.
    pub fn watch_failed(&self, at: Instant, error: String) {
        self.update(|r| {
            let since = match &r.watch_failing {
                // Quiet for long since the last failure: it came back meanwhile.
                Some(f) if at.saturating_duration_since(f.last) <= WATCH_QUIET_AFTER_FAILING => {
                    f.since
                }
                _ => at,
            };
            r.watch_failing = Some(WatchFailure {
                since,
                last: at,
                error,
            });
        });
    }

    /// Whether the agent is live now; see [`assess`].
    pub fn check(&self, now: Instant) -> Result<(), NotLive> {
        assess(&self.record(), now)
    }
}

/// Why the agent is not live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotLive {
    /// A word for the `Ready` condition: `KernelUnreadable`, `KernelObservationStale`,
    /// `WatchFailing`.
    pub reason: &'static str,
    /// What, with the error and the ages seen.
    pub message: String,
}

/// Judges `record` at `now`: the last kernel read must have succeeded and be younger than
/// [`MAX_OBSERVATION_AGE`] (counted from the start until there is one), and the watch must
/// not have kept failing for longer than [`MAX_WATCH_FAILING`]: failures with nothing
/// delivered in between, the latest within [`WATCH_QUIET_AFTER_FAILING`].
pub fn assess(record: &Record, now: Instant) -> Result<(), NotLive> {
    if let Some(error) = &record.observe_error {
        return Err(NotLive {
            reason: "KernelUnreadable",
            message: format!("the last read of the kernel's livepatch state failed: {error}"),
        });
    }
    let since = record.observed.unwrap_or(record.started);
    let age = now.saturating_duration_since(since);
    if age > MAX_OBSERVATION_AGE {
        let what = if record.observed.is_some() {
            "the last successful read of the kernel's livepatch state"
        } else {
            "the agent's start, with no read of the kernel's livepatch state yet,"
        };
        return Err(NotLive {
            reason: "KernelObservationStale",
            message: format!(
                "{what} was {}s ago (at most {}s allowed); a kernel call may be stuck",
                age.as_secs(),
                MAX_OBSERVATION_AGE.as_secs()
            ),
        });
    }
    if let Some(WatchFailure { since, last, error }) = &record.watch_failing {
        let failing = now.saturating_duration_since(*since);
        let still = now.saturating_duration_since(*last) <= WATCH_QUIET_AFTER_FAILING;
        if still && failing > MAX_WATCH_FAILING {
            return Err(NotLive {
                reason: "WatchFailing",
                message: format!(
                    "the watch of the LivePatchNode has failed for {}s (at most {}s allowed): \
                     {error}",
                    failing.as_secs(),
                    MAX_WATCH_FAILING.as_secs()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn a_fresh_successful_read_and_a_quiet_watch_are_live() {
        let t0 = Instant::now();
        let live = Liveness::new(t0);
        assert_eq!(live.check(at(t0, 10)), Ok(()), "starting up");
        live.observed(at(t0, 30), None);
        // No watch event for a long time is normal: nothing changed.
        assert_eq!(live.check(at(t0, 100)), Ok(()));
    }

    #[test]
    fn an_unreadable_or_stale_kernel_is_not_live() {
        let t0 = Instant::now();
        let live = Liveness::new(t0);
        assert_eq!(
            live.check(at(t0, 121)).map_err(|e| e.reason),
            Err("KernelObservationStale")
        );
        live.observed(at(t0, 130), None);
        live.observed(at(t0, 160), Some("EIO on /sys/kernel/livepatch".into()));
        let e = live.check(at(t0, 161)).unwrap_err();
        assert_eq!(e.reason, "KernelUnreadable");
        assert!(e.message.contains("EIO"), "{}", e.message);
        live.observed(at(t0, 190), None);
        assert_eq!(live.check(at(t0, 200)), Ok(()));
        let e = live.check(at(t0, 311)).unwrap_err();
        assert_eq!(e.reason, "KernelObservationStale");
        assert!(e.message.contains("121s ago"), "{}", e.message);
    }

    #[test]
    fn a_watch_failing_for_long_is_not_live_and_one_event_heals_it() {
        let t0 = Instant::now();
        let live = Liveness::new(t0);
        live.watch_ok(t0);
        for secs in (10..=610).step_by(60) {
            live.watch_failed(at(t0, secs), format!("connection refused at {secs}"));
        }
        live.observed(at(t0, 600), None);
        assert_eq!(live.check(at(t0, 610)), Ok(()));
        live.observed(at(t0, 611), None);
        let e = live.check(at(t0, 611)).unwrap_err();
        assert_eq!(e.reason, "WatchFailing");
        assert!(
            e.message.contains("601s") && e.message.contains("connection refused at 610"),
            "{}",
            e.message
        );
        live.watch_ok(at(t0, 612));
        assert_eq!(live.check(at(t0, 612)), Ok(()));
    }

    #[test]
    fn a_watch_quiet_since_its_last_failure_has_come_back() {
        let t0 = Instant::now();
        let live = Liveness::new(t0);
        live.watch_failed(t0, "connection reset".into());
        // Restarted on an unchanged object: nothing is delivered, no error either.
        live.observed(at(t0, 700), None);
        assert_eq!(live.check(at(t0, 700)), Ok(()));
        // A failure long after starts a new run rather than extending the old one.
        live.watch_failed(at(t0, 700), "connection reset".into());
        assert_eq!(live.check(at(t0, 700)), Ok(()));
        assert_eq!(
            live.record().watch_failing.map(|f| f.since),
            Some(at(t0, 700))
        );
    }
}
