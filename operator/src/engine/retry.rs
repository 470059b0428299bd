//! Clearing a bad release: a person lists it in `spec.rollout.retryReleases`. An entry
//! acts once, when first seen: the release leaves `status.badReleases`, and reverts from
//! it asked before then are no longer evidence against it. `status.retriedReleases`
//! records each release cleared and when, listed or not: an entry left in the spec does
//! not clear a later mark, an entry removed keeps its record (so the old reverts still
//! count for nothing), and listing the release again clears it again.

use jiff::Timestamp;
use kpersist_crds::{BadRelease, RetriedRelease};

/// What the listed retries do in this decision.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    /// `status.retriedReleases` to write: one entry per listed release.
    pub record: Vec<RetriedRelease>,
    /// Releases taken off the bad list now.
    pub cleared: Vec<String>,
}

impl Retries {
    /// Whether a revert from `release` asked at `asked_at` was asked before a person
    /// cleared the release (a revert with no time is taken as older).
    pub(crate) fn forgives(&self, release: &str, asked_at: Option<&str>) -> bool {
        self.record.iter().any(|r| {
            r.release == release
                && match (
                    asked_at.and_then(|t| t.parse::<Timestamp>().ok()),
                    r.at.parse::<Timestamp>().ok(),
                ) {
                    (Some(asked), Some(cleared)) => asked <= cleared,
                    _ => true,
                }
        })
    }
}

/// The retries `listed` in the spec, given the records of earlier clearings (`done`) and
/// the releases marked bad now (`bad`), at `now`.
pub(crate) fn retries(
    listed: &[String],
    done: &[RetriedRelease],
    bad: &[BadRelease],
    now: Timestamp,
) -> Retries {
    let mut out = Retries::default();
    for release in listed {
        if out.record.iter().any(|r| &r.release == release) {
            continue;
        }
        match done.iter().find(|r| &r.release == release && r.listed) {
            Some(earlier) => out.record.push(earlier.clone()),
            None => {
                if bad.iter().any(|b| &b.release == release) {
                    out.cleared.push(release.clone());
                }
                out.record.push(RetriedRelease {
                    release: release.clone(),
                    at: now.to_string(),
                    listed: true,
                });
            }
        }
    }
    for earlier in done {
        if !out.record.iter().any(|r| r.release == earlier.release) {
            out.record.push(RetriedRelease {
                listed: false,
                ..earlier.clone()
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn bad(release: &str) -> BadRelease {
        BadRelease {
            release: release.into(),
            reason: "wave 1 failed".into(),
            marked_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn a_listed_bad_release_is_cleared_once_and_remembered() {
        let now = at("2026-02-01T00:00:00Z");
        let listed = vec!["k/v3".to_string(), "k/v3".to_string(), "k/v4".to_string()];
        let first = retries(&listed, &[], &[bad("k/v3")], now);
        assert_eq!(first.cleared, ["k/v3"], "v4 was never bad");
        assert_eq!(first.record.len(), 2, "one entry per release");

        // Marked bad again later, with the entry still listed: it stays bad.
        let later = at("2026-03-01T00:00:00Z");
        let second = retries(&listed, &first.record, &[bad("k/v3")], later);
        assert!(second.cleared.is_empty());
        assert_eq!(second.record, first.record);

        // Removed from the spec: the record stays (old reverts still count for nothing),
        // unlisted; added back: cleared again.
        let removed = retries(&[], &second.record, &[bad("k/v3")], later);
        assert_eq!(removed.record.len(), 2);
        assert!(removed.record.iter().all(|r| !r.listed));
        assert!(removed.forgives("k/v3", Some("2026-01-15T00:00:00Z")));
        let again = retries(&listed[..1], &removed.record, &[bad("k/v3")], later);
        assert_eq!(again.cleared, ["k/v3"]);
    }

    #[test]
    fn only_reverts_asked_before_the_clearing_are_forgiven() {
        let now = at("2026-02-01T00:00:00Z");
        let r = retries(&["k/v3".to_string()], &[], &[bad("k/v3")], now);
        assert!(r.forgives("k/v3", Some("2026-01-15T00:00:00Z")));
        assert!(r.forgives("k/v3", None), "a revert with no time is older");
        assert!(!r.forgives("k/v3", Some("2026-02-02T00:00:00Z")));
        assert!(!r.forgives("k/v4", Some("2026-01-15T00:00:00Z")));
    }
}
