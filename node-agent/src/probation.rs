//! Probation after an apply: for a while after its transition, an unclean end of the node's
//! boot is blamed on the release, so that a patch that panics the kernel later under load is
//! not loaded again at every boot. Three small files in the state directory tell at the next
//! start how the previous boot ended; the decision itself is pure ([`judge`]).

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// File name of the probation record inside the state directory.
pub const PROBATION_FILE: &str = "probation.json";
/// File name of the clean-stop mark inside the state directory.
pub const CLEAN_STOP_FILE: &str = "clean-stop.json";
/// File name of the count of unclean ends per release inside the state directory.
pub const UNCLEAN_ENDS_FILE: &str = "unclean-ends.json";
/// After this many unclean ends on probation, a release is refused on the node for good.
pub const UNCLEAN_ENDS_LIMIT: u32 = 2;

/// `<state-dir>/probation.json`: the release on probation, written (fsynced) once its
/// transition has finished and removed when the probation is over, when another load starts
/// and on a revert to no patch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProbationRecord {
    /// The release on probation.
    pub release_id: String,
    /// Its module (livepatch) name.
    pub module_name: String,
    /// The boot the probation belongs to.
    pub boot_id: String,
    /// When the transition finished and the probation began.
    pub started_at: Timestamp,
    /// When the probation ends.
    pub until: Timestamp,
    /// The `metadata.generation` of the spec that asked for the apply, if any.
    #[serde(default)]
    pub generation: Option<i64>,
}

impl ProbationRecord {
    /// A probation of `length` for the release `release_id` (module `module_name`) that
    /// began at `now` on boot `boot_id`, asked for by spec `generation`.
    pub fn begin(
        release_id: &str,
        module_name: &str,
        boot_id: &str,
        now: Timestamp,
        length: Duration,
        generation: Option<i64>,
    ) -> ProbationRecord {
        ProbationRecord {
            release_id: release_id.to_string(),
            module_name: module_name.to_string(),
            boot_id: boot_id.to_string(),
            started_at: now,
            // A length past the end of time keeps the release on probation forever.
            until: now.checked_add(length).unwrap_or(Timestamp::MAX),
            generation,
        }
    }
}

/// `<state-dir>/clean-stop.json`: written when the agent stops by itself (SIGTERM, as at a
/// node's orderly shutdown), removed at every start. Its presence at start for the boot of a
/// probation record means that boot ended cleanly.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CleanStop {
    /// The boot the agent stopped in.
    pub boot_id: String,
    /// When it stopped.
    pub stopped_at: Timestamp,
}

/// One entry of `<state-dir>/unclean-ends.json`: how often the node ended uncleanly while a
/// release was on probation, and whether the release waits for a new request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UncleanEnds {
    /// Release id.
    pub id: String,
    /// Unclean ends on probation so far; never decreases.
    pub count: u32,
    /// The boot that ended last.
    pub last_boot_id: String,
    /// When the probation of that boot began.
    pub last_started_at: Timestamp,
    /// Whether the release is not loaded until the spec asks again.
    #[serde(default)]
    pub held: bool,
    /// The spec generation the release was refused at: the newest of the one that asked for
    /// the apply that ended uncleanly and the one in force when the agent next read its spec.
    /// A newer one asks again.
    #[serde(default)]
    pub held_generation: Option<i64>,
    /// Whether the generation in force at the next reading of the spec is still to be
    /// recorded (the unclean end is found at start, before the spec is read).
    #[serde(default)]
    pub generation_pending: bool,
}

impl UncleanEnds {
    /// Whether the spec of `generation` still may not load this release.
    pub fn holds(&self, generation: Option<i64>) -> bool {
        // Option orders None first: without generations (local mode) nothing asks again.
        self.held && (self.generation_pending || generation <= self.held_generation)
    }
}

/// Records `generation`, the spec in force now, as the one each newly held release was
/// refused at, so that only a newer spec asks again (a spec changed for another reason
/// between the apply and the unclean end does not). Returns whether anything changed.
pub fn settle_held_generations(ends: &mut [UncleanEnds], generation: Option<i64>) -> bool {
    let mut changed = false;
    for entry in ends.iter_mut().filter(|e| e.generation_pending) {
        entry.held_generation = entry.held_generation.max(generation);
        entry.generation_pending = false;
        changed = true;
    }
    changed
}

/// How the boot of a probation record ended, as far as the state directory tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreviousBoot {
    /// No release is on probation.
    NoProbation,
    /// The probation belongs to this boot (only the agent restarted); `over` when it ended.
    ThisBoot {
        /// Whether the probation is over.
        over: bool,
    },
    /// That boot ended with the agent stopping cleanly: the release is not to blame.
    Clean,
    /// That boot ended with no clean stop while the release was on probation. A probation
    /// that ran out is removed by the agent, so a record still there means the end came
    /// within it, or the agent was not running to see it out: both count.
    Unclean(ProbationRecord),
}

/// Judges the probation `record` found at start on boot `boot_id`, with the `clean_stop`
/// mark found beside it.
pub fn judge(
    record: Option<&ProbationRecord>,
    clean_stop: Option<&CleanStop>,
    boot_id: &str,
    now: Timestamp,
) -> PreviousBoot {
    let Some(record) = record else {
        return PreviousBoot::NoProbation;
    };
    if record.boot_id == boot_id {
        return PreviousBoot::ThisBoot {
            over: now >= record.until,
        };
    }
    if clean_stop.is_some_and(|c| c.boot_id == record.boot_id) {
        return PreviousBoot::Clean;
    }
    PreviousBoot::Unclean(record.clone())
}

/// Adds the unclean end of `record` to `ends`; returns the release's entry as it is now.
pub fn count_unclean_end(ends: &mut Vec<UncleanEnds>, record: &ProbationRecord) -> UncleanEnds {
    let index = match ends.iter().position(|e| e.id == record.release_id) {
        Some(index) => index,
        None => {
            ends.push(UncleanEnds {
                id: record.release_id.clone(),
                count: 0,
                last_boot_id: String::new(),
                last_started_at: record.started_at,
                held: false,
                held_generation: None,
                generation_pending: false,
            });
            ends.len() - 1
        }
    };
    let entry = &mut ends[index];
    entry.count = entry.count.saturating_add(1);
    entry.last_boot_id = record.boot_id.clone();
    entry.last_started_at = record.started_at;
    entry.held = true;
    entry.held_generation = record.generation;
    entry.generation_pending = true;
    entry.clone()
}

/// What the status says about an unclean end on probation.
pub fn unclean_end_message(
    record: &ProbationRecord,
    entry: &UncleanEnds,
    now_boot: &str,
) -> String {
    let id = &record.release_id;
    let evidence = format!(
        "boot {} ended uncleanly while release {id} was on probation (transition finished {}, \
         probation until {}; no clean stop of the agent was recorded for that boot; now boot \
         {now_boot}); unclean end {} of {UNCLEAN_ENDS_LIMIT} with this release on this node",
        record.boot_id, record.started_at, record.until, entry.count
    );
    if entry.count >= UNCLEAN_ENDS_LIMIT {
        format!("{evidence}: {id} is refused on this node for good")
    } else {
        let asked = record.generation.map_or_else(String::new, |g| {
            format!(" (the apply was asked by generation {g})")
        });
        format!(
            "{evidence}: {id} is not loaded here again until spec asks again with a generation \
             newer than the one in force now{asked}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn record(boot: &str) -> ProbationRecord {
        ProbationRecord::begin(
            "k/v2",
            "kpersist_v2",
            boot,
            at(0),
            Duration::from_secs(3600),
            Some(4),
        )
    }

    #[test]
    fn a_boot_without_a_clean_stop_ended_uncleanly() {
        let r = record("b1");
        assert_eq!(judge(None, None, "b2", at(10)), PreviousBoot::NoProbation);
        assert_eq!(
            judge(Some(&r), None, "b2", at(10)),
            PreviousBoot::Unclean(r.clone())
        );
        // A clean stop of another boot says nothing about this one.
        let other = CleanStop {
            boot_id: "b0".into(),
            stopped_at: at(5),
        };
        assert_eq!(
            judge(Some(&r), Some(&other), "b2", at(10)),
            PreviousBoot::Unclean(r.clone())
        );
        let clean = CleanStop {
            boot_id: "b1".into(),
            stopped_at: at(5),
        };
        assert_eq!(
            judge(Some(&r), Some(&clean), "b2", at(10)),
            PreviousBoot::Clean
        );
    }

    #[test]
    fn the_same_boot_is_only_an_agent_restart() {
        let r = record("b1");
        assert_eq!(
            judge(Some(&r), None, "b1", at(10)),
            PreviousBoot::ThisBoot { over: false }
        );
        assert_eq!(
            judge(Some(&r), None, "b1", at(3600)),
            PreviousBoot::ThisBoot { over: true }
        );
    }

    #[test]
    fn unclean_ends_count_and_hold_until_a_newer_generation() {
        let mut ends = Vec::new();
        let first = count_unclean_end(&mut ends, &record("b1"));
        assert_eq!((first.count, first.held), (1, true));
        // Until the spec in force is read, every generation is held.
        assert!(first.holds(Some(9)));
        // The spec moved on to 6 (another wave) before the node came back: 6 is refused.
        assert!(settle_held_generations(&mut ends, Some(6)));
        assert!(!settle_held_generations(&mut ends, Some(8)));
        let first = ends[0].clone();
        assert!(first.holds(Some(6)) && first.holds(Some(3)) && first.holds(None));
        assert!(!first.holds(Some(7)));
        // A spec older than the apply's keeps the apply's generation.
        let mut older = Vec::new();
        count_unclean_end(&mut older, &record("b1"));
        settle_held_generations(&mut older, Some(2));
        assert_eq!(older[0].held_generation, Some(4));
        let message = unclean_end_message(&record("b1"), &first, "b2");
        assert!(
            message.contains("boot b1") && message.contains("by generation 4"),
            "{message}"
        );
        let second = count_unclean_end(&mut ends, &record("b3"));
        assert_eq!((second.count, ends.len()), (2, 1));
        let message = unclean_end_message(&record("b3"), &second, "b4");
        assert!(message.contains("for good"), "{message}");
    }

    #[test]
    fn an_endless_probation_does_not_overflow() {
        let r = ProbationRecord::begin("k/v1", "m", "b", at(0), Duration::MAX, None);
        assert_eq!(r.until, Timestamp::MAX);
    }
}
