//! The waits between retries that every agent of a fleet makes at once: after an API server
//! restart or a repository outage, thousands of agents fail together, and fixed delays
//! would bring them back in the same second. Each wait is an exponential step plus a random
//! part of up to the step again (`backon`'s jitter), so the agents spread out.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The most a download waits in all before it gives up (the operator's node deadline
/// counts on about two minutes).
pub const DOWNLOAD_RETRY_BUDGET: Duration = Duration::from_secs(120);

/// Retries of a download that failed on the way: 1 s doubling up to 15 s, each up to
/// twice that with jitter, until the next wait would pass [`DOWNLOAD_RETRY_BUDGET`]; so the
/// waits add up to between 90 s and 120 s.
pub fn download() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(15))
        .with_jitter()
        .without_max_times()
        .with_total_delay(Some(DOWNLOAD_RETRY_BUDGET))
}

/// The most the fetch of a policy's signed index waits in all before it gives up: it
/// comes before the download, within the room the node deadline leaves for checks.
pub const INDEX_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// Retries of the signed index's fetch: the download's steps, until the next wait would
/// pass [`INDEX_RETRY_BUDGET`].
pub fn index() -> ExponentialBuilder {
    download().with_total_delay(Some(INDEX_RETRY_BUDGET))
}

/// Retries of one API call (a status write, a read of the node's objects): 0.5 s doubling
/// up to 30 s, each up to twice that with jitter, `retries` times at most.
pub fn api_call(retries: usize) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .with_max_times(retries)
}

/// The most a read whose refusal would fail a request for good (the policy a request names)
/// waits in all: long enough for a restarted API server to sync its RBAC caches, short
/// enough to leave the node deadline room for the download and the transition.
pub const POLICY_READ_BUDGET: Duration = Duration::from_secs(60);

/// Retries of such a read: [`api_call`]'s steps, until the next wait would pass
/// [`POLICY_READ_BUDGET`].
pub fn policy_read() -> ExponentialBuilder {
    api_call(7).with_total_delay(Some(POLICY_READ_BUDGET))
}

/// Restarts of the watch of the node's object: as client-go's reflector (0.8 s doubling
/// up to 30 s, jittered), without end, starting over once the watch has run for two
/// minutes without failing.
pub fn watch_restart()
-> kube::runtime::utils::ResetTimerBackoff<kube::runtime::watcher::ExponentialBackoff> {
    let steps = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(steps.into(), Duration::from_secs(120))
}

/// The waits `builder` gives, for logs and tests.
pub fn delays(builder: ExponentialBuilder) -> impl Iterator<Item = Duration> {
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_call_waits_are_jittered_and_bounded() {
        let a: Vec<Duration> = delays(api_call(8)).collect();
        let b: Vec<Duration> = delays(api_call(8)).collect();
        assert_eq!(a.len(), 8);
        assert_ne!(a, b, "two agents must not wait alike");
        let mut step = Duration::from_millis(500);
        for wait in &a {
            assert!(
                *wait >= step && *wait <= step * 2,
                "{wait:?} for step {step:?}"
            );
            step = (step * 2).min(Duration::from_secs(30));
        }
    }

    #[test]
    fn download_waits_are_jittered_and_stay_within_about_two_minutes() {
        let sequences: Vec<Vec<Duration>> = (0..20).map(|_| delays(download()).collect()).collect();
        assert!(
            sequences.windows(2).any(|w| w[0] != w[1]),
            "download waits must differ between agents"
        );
        for waits in &sequences {
            let total: Duration = waits.iter().sum();
            assert!(
                total >= Duration::from_secs(90) && total <= DOWNLOAD_RETRY_BUDGET,
                "{total:?} over {waits:?}"
            );
            assert!(
                waits.iter().all(|w| *w <= Duration::from_secs(30)),
                "{waits:?}"
            );
        }
    }

    #[test]
    fn policy_read_waits_outlast_an_rbac_sync_within_a_minute() {
        for _ in 0..20 {
            let total: Duration = delays(policy_read()).sum();
            assert!(
                total >= Duration::from_secs(15) && total <= POLICY_READ_BUDGET,
                "{total:?}"
            );
        }
    }

    #[test]
    fn index_fetch_waits_stay_within_its_budget() {
        for _ in 0..20 {
            let total: Duration = delays(index()).sum();
            assert!(
                total >= Duration::from_secs(15) && total <= INDEX_RETRY_BUDGET,
                "{total:?}"
            );
        }
    }

    #[test]
    fn watch_restarts_never_stop_and_stay_under_a_minute() {
        use kube::runtime::utils::Backoff;
        let mut a = watch_restart();
        let mut b = watch_restart();
        let first: Vec<Duration> = (0..12).filter_map(|_| a.next()).collect();
        let second: Vec<Duration> = (0..12).filter_map(|_| b.next()).collect();
        assert_eq!(first.len(), 12);
        assert_ne!(first, second);
        assert!(
            first.iter().all(|w| *w <= Duration::from_secs(60)),
            "{first:?}"
        );
        a.reset();
        assert!(a.next().is_some_and(|w| w < Duration::from_secs(2)));
    }
}
