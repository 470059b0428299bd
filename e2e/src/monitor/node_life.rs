//! What the recorded objects say of node life (docs/DESIGN.md, "Node life"): which nodes
//! the engine resolved as node problems, which failures are the node's own, and which
//! nodes rebooted away from the kernel their release was built for. Pure.

use std::collections::BTreeSet;

use kpersist_crds::{Blame, LivePatchNode, LivePatchPolicy, NodePatchState};

/// The nodes a policy status names as node problems: its Degraded condition with reason
/// `NodeProblems` lists them as `<node> (<reason>)` after the last `): `. Limits: the
/// condition names at most five nodes, and only when no weightier reason (failed nodes,
/// conflicting policies) takes the condition; the matrix's runs stay within both.
pub fn named_troubled(policy: &LivePatchPolicy) -> BTreeSet<String> {
    policy
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .filter(|c| c.type_ == "Degraded" && c.reason == "NodeProblems")
        .filter_map(|c| c.message.rsplit_once("): ").map(|(_, list)| list))
        .flat_map(|list| list.split(", "))
        .filter_map(|item| item.split_once(" (").map(|(name, _)| name.to_string()))
        .collect()
}

/// Whether the node's last error is its own trouble, not the release's fault.
pub fn node_blamed(node: &LivePatchNode) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.last_error.as_ref())
        .is_some_and(|e| e.reason.blame() == Blame::Node)
}

/// Whether the node runs another kernel build than the release it was asked to apply is
/// built for: it rebooted, and is no longer judged by that release.
pub fn moved_kernel(node: &LivePatchNode) -> bool {
    let built_for = node
        .spec
        .desired
        .as_ref()
        .and_then(|d| d.release.as_ref())
        .map(|r| r.build_id.as_str());
    let running = node.status.as_ref().and_then(|s| s.build_id.as_deref());
    matches!((built_for, running), (Some(b), Some(r)) if b != r)
}

/// The release a node reports a fault of, if it does: its last error blames the release
/// (the error's release, or else the one it was asked to apply), or it failed with no
/// error given.
pub fn release_fault(node: &LivePatchNode) -> Option<String> {
    let status = node.status.as_ref()?;
    let asked = || {
        node.spec
            .desired
            .as_ref()
            .and_then(|d| d.release.as_ref())
            .map(|r| r.id.clone())
    };
    match &status.last_error {
        Some(e) if e.reason.blame() == Blame::Release => e.release.clone().or_else(asked),
        Some(_) => None,
        None => matches!(
            status.state,
            Some(NodePatchState::Failed | NodePatchState::CrashSuspected)
        )
        .then(asked)
        .flatten(),
    }
}
