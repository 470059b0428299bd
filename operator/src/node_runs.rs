//! Which of the agents' runs the operator has not counted yet, so each apply and revert
//! lands in the operator's latency histograms once (no client, no clock).
//!
//! A LivePatchNode's status carries its last run's timings, stamped with when the run
//! finished. A reconcile of a policy counts a node's run when it sees a stamp it has not
//! seen on that node before. What this misses, by design (the histograms are a sample of
//! the fleet's latency, not a ledger of runs):
//! - a node seen for the first time (this replica just started leading, or the node just
//!   joined the policy) is only remembered: its run may be one another replica counted (a
//!   replica forgets everything when it stops leading, see `Metrics::set_leader`);
//! - a node that runs twice between two reconciles of its policy is counted once;
//! - runs on nodes the policy no longer selects (their last revert) are not counted, and a
//!   node two policies select counts only for the older one, which owns it.

use std::collections::{BTreeMap, HashMap};

use kpersist_crds::PatchTimings;

/// The last run stamp seen on each node, per policy.
#[derive(Debug, Default)]
pub struct NodeRuns {
    policies: BTreeMap<String, Seen>,
}

/// One policy's nodes: the stamp last seen on each, and the look that saw it.
#[derive(Debug, Default)]
struct Seen {
    look: u64,
    nodes: HashMap<String, (Option<String>, u64)>,
}

impl NodeRuns {
    /// The runs among `nodes` (name and last timings) not counted before; remembers the
    /// nodes given and forgets the policy's others, so departed nodes cost nothing.
    pub fn new_runs<'a>(
        &mut self,
        policy: &str,
        nodes: impl IntoIterator<Item = (&'a str, Option<&'a PatchTimings>)>,
    ) -> Vec<&'a PatchTimings> {
        let seen = self.policies.entry(policy.to_string()).or_default();
        seen.look += 1;
        let look = seen.look;
        let mut runs = Vec::new();
        for (node, timings) in nodes {
            let stamp = timings.and_then(|t| t.finished_at.as_deref());
            match seen.nodes.get_mut(node) {
                Some((known, at)) => {
                    *at = look;
                    if stamp.is_some() && known.as_deref() != stamp {
                        *known = stamp.map(str::to_string);
                        runs.extend(timings);
                    }
                }
                None => {
                    let first = (stamp.map(str::to_string), look);
                    seen.nodes.insert(node.to_string(), first);
                }
            }
        }
        seen.nodes.retain(|_, (_, at)| *at == look);
        runs
    }

    /// Forgets a deleted policy.
    pub fn forget(&mut self, policy: &str) {
        self.policies.remove(policy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(at: &str) -> PatchTimings {
        PatchTimings {
            finished_at: Some(at.to_string()),
            total_ms: Some(1200),
            ..PatchTimings::default()
        }
    }

    #[test]
    fn a_run_is_counted_once_and_only_on_a_node_seen_before() {
        let mut runs = NodeRuns::default();
        let (first, second) = (run("t1"), run("t2"));
        // A new leader's first look: nothing counted, whatever the nodes carry.
        assert!(
            runs.new_runs("p", [("a", None), ("b", Some(&first))])
                .is_empty()
        );
        // a finishes its first run, b a second one; both counted once.
        let counted = runs.new_runs("p", [("a", Some(&first)), ("b", Some(&second))]);
        assert_eq!(counted, [&first, &second]);
        assert!(
            runs.new_runs("p", [("a", Some(&first)), ("b", Some(&second))])
                .is_empty()
        );
        // A node that joins with a run behind it is only remembered.
        assert!(runs.new_runs("p", [("c", Some(&first))]).is_empty());
    }

    #[test]
    fn a_node_that_left_is_forgotten() {
        let mut runs = NodeRuns::default();
        runs.new_runs("p", [("a", None)]);
        runs.new_runs("p", [("b", None)]);
        // a left in the look before: back now, it is first seen again.
        assert!(runs.new_runs("p", [("a", Some(&run("t1")))]).is_empty());
    }

    #[test]
    fn timings_without_a_stamp_are_not_runs_and_policies_are_apart() {
        let mut runs = NodeRuns::default();
        let unstamped = PatchTimings::default();
        runs.new_runs("p", [("a", None)]);
        assert!(runs.new_runs("p", [("a", Some(&unstamped))]).is_empty());
        let stamped = run("t1");
        assert!(runs.new_runs("q", [("a", Some(&stamped))]).is_empty());
        assert_eq!(runs.new_runs("p", [("a", Some(&stamped))]), [&stamped]);
        runs.forget("p");
        assert!(runs.new_runs("p", [("a", Some(&run("t2")))]).is_empty());
    }
}
