//! Which of the agents' runs the operator has not counted yet, so each apply and revert
//! lands in the operator's latency histograms once (no client, no clock).
//!
//! A LivePatchNode's status carries its last run's timings, stamped with when the run
//! finished. A reconcile counts a node's run when it sees a stamp it has not seen on that
//! node before. A node seen for the first time (this replica just started leading, or the
//! node just joined the policy) is only remembered: its run may be one another replica
//! counted. A node that runs twice between two reconciles of its policy is counted once.

use std::collections::{BTreeMap, HashMap};

use kpersist_crds::PatchTimings;

/// The last run stamp seen on each node, per policy.
#[derive(Debug, Default)]
pub struct NodeRuns {
    seen: BTreeMap<String, HashMap<String, Option<String>>>,
}

impl NodeRuns {
    /// The runs among `nodes` (name and last timings) not counted before; remembers the
    /// nodes given and forgets the policy's others, so departed nodes cost nothing.
    pub fn new_runs<'a>(
        &mut self,
        policy: &str,
        nodes: impl IntoIterator<Item = (&'a str, Option<&'a PatchTimings>)>,
    ) -> Vec<&'a PatchTimings> {
        let before = self.seen.remove(policy);
        let mut now = HashMap::new();
        let mut runs = Vec::new();
        for (node, timings) in nodes {
            let stamp = timings.and_then(|t| t.finished_at.clone());
            let known = before.as_ref().and_then(|seen| seen.get(node));
            if let (Some(known), Some(timings)) = (known, timings)
                && stamp.is_some()
                && *known != stamp
            {
                runs.push(timings);
            }
            now.insert(node.to_string(), stamp);
        }
        self.seen.insert(policy.to_string(), now);
        runs
    }

    /// Forgets a deleted policy.
    pub fn forget(&mut self, policy: &str) {
        self.seen.remove(policy);
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
