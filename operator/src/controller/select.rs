//! Which nodes a policy selects and what the engine is told about each, built from the
//! reflector stores; which policies a Node or LivePatchNode change concerns; and the
//! trimming that keeps those stores small. No client required.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kpersist_crds::{LivePatchNode, LivePatchPolicy, NodePatchState, PatchAction};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::engine::NodeView;

/// The parsed selector of a policy; `None` when it does not parse (validation reports it,
/// and such a policy selects nothing).
pub fn selector_of(policy: &LivePatchPolicy) -> Option<Selector> {
    Selector::try_from(policy.spec.node_selector.clone()).ok()
}

/// Whether `policy` selects a node with these labels. A policy being deleted selects
/// nothing, so its nodes are free for another policy at once.
pub fn selects(policy: &LivePatchPolicy, labels: &BTreeMap<String, String>) -> bool {
    policy.metadata.deletion_timestamp.is_none()
        && selector_of(policy).is_some_and(|s| s.matches(labels))
}

/// Whether `a` owns a node that `b` selects too: the older policy does (the name decides
/// between two created in the same second). Every replica and every reconcile reads the
/// same order, so ownership never flips while both policies stand.
pub fn outranks(a: &LivePatchPolicy, b: &LivePatchPolicy) -> bool {
    rank(a) < rank(b)
}

fn rank(policy: &LivePatchPolicy) -> (Option<Time>, String) {
    (
        policy.metadata.creation_timestamp.clone(),
        policy.name_any(),
    )
}

/// Whether the Node's `Ready` condition is True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Since when the Node's `Ready` condition has not been True, when it is not and the
/// time is known.
pub fn node_not_ready_since(node: &Node) -> Option<jiff::Timestamp> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))?;
    if ready.status == "True" {
        return None;
    }
    let since = ready.last_transition_time.as_ref()?;
    Some(since.0)
}

/// Whether the Node is cordoned or being deleted.
pub fn node_leaving(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_some()
        || node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
}

/// The engine's view of every node `policy` selects, sorted by name. `policies` is every
/// policy, used to tell the engine which nodes an older policy also selects (and so owns).
pub fn node_views(
    policy: &LivePatchPolicy,
    nodes: &[std::sync::Arc<Node>],
    lpns: &kube::runtime::reflector::Store<LivePatchNode>,
    policies: &[std::sync::Arc<LivePatchPolicy>],
) -> Vec<NodeView> {
    let Some(selector) = selector_of(policy) else {
        return Vec::new();
    };
    let name = policy.name_any();
    let mut older: Vec<_> = policies
        .iter()
        .filter(|p| p.name_any() != name && p.metadata.deletion_timestamp.is_none())
        .filter(|p| outranks(p, policy))
        .collect();
    older.sort_by_key(|p| rank(p));
    let others: Vec<_> = older
        .into_iter()
        .filter_map(|p| Some((p.name_any(), selector_of(p)?)))
        .collect();
    let mut views: Vec<NodeView> = nodes
        .iter()
        .filter(|node| selector.matches(node.labels()))
        .map(|node| {
            let node_name = node.name_any();
            let lpn = lpns.get(&kube::runtime::reflector::ObjectRef::new(&node_name));
            let other_policies = others
                .iter()
                .filter(|(_, s)| s.matches(node.labels()))
                .map(|(n, _)| n.clone())
                .collect();
            NodeView {
                ready: node_ready(node),
                not_ready_since: node_not_ready_since(node),
                leaving: node_leaving(node),
                kernel_release: node
                    .status
                    .as_ref()
                    .and_then(|s| s.node_info.as_ref())
                    .map(|i| i.kernel_version.clone())
                    .filter(|k| !k.is_empty()),
                build_id: None,
                lpn,
                other_policies,
                name: node_name,
            }
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    views
}

/// The policies a change of the node named `node` (with `labels`) concerns: those that
/// select it, and the one its LivePatchNode's `spec.desired` names (which may no longer
/// select it and must notice it left).
pub fn policies_for_node(
    node: &str,
    labels: Option<&BTreeMap<String, String>>,
    lpn: Option<&LivePatchNode>,
    policies: &[std::sync::Arc<LivePatchPolicy>],
) -> Vec<String> {
    let mut names: Vec<String> = match labels {
        Some(labels) => policies
            .iter()
            .filter(|p| selects(p, labels))
            .map(|p| p.name_any())
            .collect(),
        None => Vec::new(),
    };
    if let Some(owner) = lpn
        .and_then(|l| l.spec.desired.as_ref())
        .map(|d| d.policy.clone())
    {
        names.push(owner);
    }
    names.sort();
    names.dedup();
    tracing::trace!(node, ?names, "node change maps to policies");
    names
}

/// How many LivePatchNodes `policy` asked to revert have not finished (the agent has not
/// observed the request yet, or is still reverting).
pub fn pending_reverts(lpns: &[std::sync::Arc<LivePatchNode>], policy: &str) -> u32 {
    let pending = lpns
        .iter()
        .filter(|lpn| {
            lpn.spec
                .desired
                .as_ref()
                .is_some_and(|d| d.policy == policy && d.action == PatchAction::Revert)
        })
        .filter(|lpn| {
            lpn.status.as_ref().is_none_or(|s| {
                s.observed_generation != lpn.metadata.generation
                    || s.state == Some(NodePatchState::Reverting)
            })
        })
        .count();
    u32::try_from(pending).unwrap_or(u32::MAX)
}

/// The LivePatchNodes that left `policy`: their `spec.desired` names it, but `selected`
/// says their Node is no longer selected (its labels changed, or the selector did);
/// `selected` answers `None` for a Node it does not know, which is never taken as gone.
/// A node asked to apply one of `bad` is sent back from it first (asked at `now`, with
/// the policy's `repository` access), as any holder of a bad release is. Then, once its agent has finished with the request (a
/// revert too), the request is cleared, so nothing more happens to it on this policy's
/// behalf; its loaded patch stays.
pub fn departed(
    lpns: &[std::sync::Arc<LivePatchNode>],
    policy: &str,
    selected: impl Fn(&str) -> Option<bool>,
    bad: &std::collections::HashSet<&str>,
    now: jiff::Timestamp,
    repository: Option<&kpersist_crds::RepositoryAccess>,
) -> Vec<super::write::SpecWrite> {
    // Cheapest first: this runs on every reconcile over every LivePatchNode.
    lpns.iter()
        .filter(|lpn| {
            lpn.spec
                .desired
                .as_ref()
                .is_some_and(|d| d.policy == policy)
        })
        .filter(|lpn| selected(lpn.metadata.name.as_deref().unwrap_or_default()) == Some(false))
        .filter_map(|lpn| {
            let desired = lpn.spec.desired.as_ref()?;
            let on_bad = desired.action == PatchAction::Apply
                && desired
                    .release
                    .as_ref()
                    .is_some_and(|r| bad.contains(r.id.as_str()));
            let next = if on_bad {
                // The store's copy holds the CA bundle's digest, not the bundle.
                Some(kpersist_crds::DesiredPatch {
                    repository: repository.cloned(),
                    ..desired.revert(now.to_string())
                })
            } else if finished(lpn) {
                None
            } else {
                return None;
            };
            Some(super::write::SpecWrite::of(lpn, next))
        })
        .collect()
}

/// Whether the node's agent has finished with its request.
fn finished(lpn: &LivePatchNode) -> bool {
    lpn.status.as_ref().is_some_and(|s| {
        s.observed_generation == lpn.metadata.generation
            && !s.state.is_some_and(NodePatchState::is_in_flight)
    })
}

/// Drops what the controller never reads from a Node: at 10,000 nodes the images list and
/// managed fields alone are hundreds of megabytes. Kept: name, labels, deletion time,
/// whether it is cordoned, the Ready condition with its last transition, and the kernel
/// version.
pub fn trim_node(node: &mut Node) {
    let name = node.metadata.name.take();
    let labels = node.metadata.labels.take();
    let uid = node.metadata.uid.take();
    let resource_version = node.metadata.resource_version.take();
    let deletion_timestamp = node.metadata.deletion_timestamp.take();
    node.metadata = kube::api::ObjectMeta {
        name,
        labels,
        uid,
        resource_version,
        deletion_timestamp,
        ..Default::default()
    };
    let unschedulable = node.spec.take().and_then(|s| s.unschedulable);
    node.spec = unschedulable.map(|u| NodeSpec {
        unschedulable: Some(u),
        ..NodeSpec::default()
    });
    let status = node.status.take().unwrap_or_default();
    let ready = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ == "Ready")
        .map(|c| NodeCondition {
            type_: c.type_,
            status: c.status,
            last_transition_time: c.last_transition_time,
            ..NodeCondition::default()
        })
        .collect();
    let kernel_version = status
        .node_info
        .map(|i| i.kernel_version)
        .unwrap_or_default();
    node.status = Some(NodeStatus {
        conditions: Some(ready),
        node_info: Some(NodeSystemInfo {
            kernel_version,
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    });
}

/// Drops what the controller and the engine never read from a LivePatchNode: metadata
/// other than name, uid, generation, resourceVersion, deletion time and labels (a label
/// write replaces the whole map, so the copy must hold the others), and the parts of
/// the agent's status that are for people (conditions, loaded modules, boot id, agent
/// version, the applied release's CVEs and module name; its `appliedAt` stays, for each
/// release's first exposure, and the timings, which the latency metrics read).
/// `spec.desired` stays whole, as the engine compares it with the spec it wants to tell
/// whether a write is needed,
/// except for its CA bundle, a copy of the policy's on every node: that is kept as a digest,
/// which compares as well (see [`crate::engine::digest_ca_bundle`]).
pub fn trim_lpn(lpn: &mut LivePatchNode) {
    let meta = std::mem::take(&mut lpn.metadata);
    lpn.metadata = kube::api::ObjectMeta {
        name: meta.name,
        uid: meta.uid,
        generation: meta.generation,
        resource_version: meta.resource_version,
        deletion_timestamp: meta.deletion_timestamp,
        // The controller replaces the whole label map when it updates its own labels.
        labels: meta.labels,
        ..Default::default()
    };
    if let Some(desired) = lpn.spec.desired.as_mut() {
        crate::engine::digest_ca_bundle(desired);
    }
    if let Some(status) = lpn.status.as_mut() {
        status.boot_id = None;
        status.loaded = Vec::new();
        status.conditions = Vec::new();
        status.agent_version = None;
        if let Some(applied) = status.applied.as_mut() {
            applied.module_name = String::new();
            applied.cves = Vec::new();
        }
    }
}

/// Drops managed fields and annotations from any object kept in a store.
pub fn trim_metadata<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
    object.meta_mut().annotations = None;
}

/// A hash of what the controller reads from a Node, so heartbeats (which only bump
/// timestamps that trimming already removed, and the resourceVersion) trigger nothing.
pub fn node_relevance(node: &Node) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    node.labels().hash(&mut hasher);
    node_ready(node).hash(&mut hasher);
    node_not_ready_since(node).hash(&mut hasher);
    node_leaving(node).hash(&mut hasher);
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| &i.kernel_version)
        .hash(&mut hasher);
    Some(hasher.finish())
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
