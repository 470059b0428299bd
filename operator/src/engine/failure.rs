//! When a wave has failed and what is undone then: the failures counted against a wave's
//! `maxFailures`, the releases blamed, and the request that sends a node back to the
//! release it ran before.

use std::collections::{BTreeSet, HashSet};

use jiff::Timestamp;
use kpersist_crds::{BadRelease, DesiredPatch, PatchAction};

use super::{NodeView, RepositoryView};

use super::nodes::{NodeFacts, Progress, Standing};
use super::retry::Retries;
use super::settings::Settings;

/// A node of the current wave that counts as failed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeFailure<'a> {
    pub node: &'a str,
    pub reason: String,
}

/// The release's failures among the nodes handed the release in `wave`: the agent's
/// reason when it is the release's fault (TransitionStalled, NewTaint, KernelWarning, ...)
/// or a suspected crash. A node's trouble (download, host, NotReady, agent silent) is not
/// counted, and neither is a failure of a release an earlier rollout proved: that is a
/// late failure (see `late`). Nodes of earlier waves had their own bake and are not
/// counted again.
pub(crate) fn wave_failures<'a>(
    facts: &'a [NodeFacts<'_>],
    wave: u32,
    proven: &HashSet<String>,
) -> Vec<NodeFailure<'a>> {
    facts
        .iter()
        .filter_map(|f| match &f.standing {
            Standing::Member {
                wave: w,
                progress: Progress::Failed(reason),
            } if *w == wave && !asked_proven(f, proven) => Some(NodeFailure {
                node: &f.view.name,
                reason: reason.clone(),
            }),
            _ => None,
        })
        .collect()
}

fn asked_proven(f: &NodeFacts<'_>, proven: &HashSet<String>) -> bool {
    f.ours
        .and_then(|d| d.release.as_ref())
        .is_some_and(|r| proven.contains(&r.id))
}

/// Why a wave failed, for status, events and the bad-release record.
pub(crate) fn describe(
    failures: &[NodeFailure<'_>],
    gate: Option<&str>,
    max_failures: usize,
) -> String {
    const SHOWN: usize = 5;
    let mut parts = Vec::new();
    if !failures.is_empty() {
        let mut names: Vec<String> = failures
            .iter()
            .take(SHOWN)
            .map(|f| format!("{} ({})", f.node, f.reason))
            .collect();
        if failures.len() > SHOWN {
            names.push(format!("and {} more", failures.len() - SHOWN));
        }
        parts.push(format!(
            "{} node(s) failed where maxFailures allows {max_failures}: {}",
            failures.len(),
            names.join(", ")
        ));
    }
    if let Some(gate) = gate {
        parts.push(format!("the Prometheus gate failed: {gate}"));
    }
    parts.join("; ")
}

/// The releases a failed wave is blamed on: those its failed nodes were given, or with a
/// failed gate every release the wave's nodes were given but those an earlier rollout
/// proved (the gate cannot tell which release hurt, and revoking a proven release is a
/// person's decision).
pub(crate) fn failing_releases(
    facts: &[NodeFacts<'_>],
    wave: u32,
    failures: &[NodeFailure<'_>],
    gate_failed: bool,
    proven: &HashSet<String>,
) -> BTreeSet<String> {
    facts
        .iter()
        .filter(|f| matches!(f.standing, Standing::Member { wave: w, .. } if w == wave))
        .filter(|f| {
            failures.iter().any(|x| x.node == f.view.name)
                || (gate_failed && !asked_proven(f, proven))
        })
        .filter_map(|f| {
            f.ours
                .and_then(|d| d.release.as_ref())
                .map(|r| r.id.clone())
        })
        .collect()
}

/// The request that sends a node back from `applied` (this policy's `Apply`) to the
/// release it ran before, or to no livepatch when it ran none. It names the failed release
/// as `previous`, so the node itself remembers that release is bad.
pub(crate) fn revert_of(
    applied: &DesiredPatch,
    settings: &Settings,
    now: jiff::Timestamp,
) -> DesiredPatch {
    DesiredPatch {
        transition_timeout: settings.transition_timeout.clone(),
        kmsg_checks: settings.kmsg_checks,
        probation: settings.probation.clone(),
        replace_foreign: settings.replace_foreign,
        repository: settings.repository.clone(),
        ..applied.revert(now.to_string())
    }
}

/// Releases this policy reverted nodes from that the status does not list as bad: the
/// status write that recorded them was lost, while the node writes landed. Reverts asked
/// before a person cleared the release (`retries`) are not counted.
pub(crate) fn bad_releases_on_nodes(
    policy: &str,
    nodes: &[NodeView],
    listed: &[BadRelease],
    retries: &Retries,
    now: Timestamp,
) -> Vec<BadRelease> {
    let mut found: Vec<BadRelease> = Vec::new();
    for node in nodes {
        let desired = node.lpn.as_ref().and_then(|l| l.spec.desired.as_ref());
        let Some(revert) =
            desired.filter(|d| d.policy == policy && d.action == PatchAction::Revert)
        else {
            continue;
        };
        let Some(from) = revert.previous.as_ref() else {
            continue;
        };
        let known = listed.iter().chain(&found).any(|b| b.release == from.id)
            || retries.forgives(&from.id, revert.asked_at.as_deref());
        if !known {
            found.push(BadRelease {
                release: from.id.clone(),
                reason: format!(
                    "{} was reverted from it; the status recording why was lost",
                    node.name
                ),
                marked_at: now.to_string(),
            });
        }
    }
    found
}

/// The releases the repository withdrew (`yanked`) that `listed` does not hold yet, each
/// with the publisher's reason.
pub(crate) fn yanked(
    repository: Option<&RepositoryView>,
    listed: &[BadRelease],
) -> Vec<(String, String)> {
    let Some(repository) = repository else {
        return Vec::new();
    };
    repository
        .index
        .releases
        .iter()
        .filter_map(|r| Some((r.id(), r.yanked.clone()?)))
        .filter(|(id, _)| !listed.iter().any(|b| &b.release == id))
        .collect()
}

/// Marks every node this policy asked to apply `release` for revert; returns how many.
pub(crate) fn take_back(facts: &mut [NodeFacts<'_>], release: &str) -> u32 {
    let mut nodes = 0;
    for f in facts.iter_mut() {
        let holds = f
            .ours
            .filter(|d| d.action == PatchAction::Apply)
            .and_then(|d| d.release.as_ref())
            .is_some_and(|r| r.id == release);
        if holds {
            f.standing = Standing::RevertNeeded;
            nodes += 1;
        }
    }
    nodes
}
