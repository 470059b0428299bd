//! Helpers of the node-life scenarios: the waits and checks they share, read from the API
//! objects and the fleet's watch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use kpersist_crds::{
    LivePatchNode, LivePatchPolicy, LivePatchPolicyStatus, NodeErrorReason, PatchAction,
    PolicyPhase, Wave,
};
use kpersist_e2e::monitor::Object;
use kpersist_e2e::sim_fleet::SimFleet;
use kpersist_e2e::wait::{Check, wait_until};
use kube::Api;

use crate::support::{
    K1, ROLLOUT, all_applied, describe, describe_policy, expected_releases, fail, id, start_v1,
    three_waves, wait_policy_status,
};

/// A canary of one node baking `bake`, then every other node.
pub fn canary_then_all(bake: &str) -> Vec<Wave> {
    let mut waves = three_waves(bake);
    waves.remove(1);
    waves[1].bake = "1s".into();
    waves
}

/// Whether the policy is done with its rollout.
pub fn settled(status: &LivePatchPolicyStatus) -> bool {
    matches!(
        status.phase,
        Some(PolicyPhase::Complete | PolicyPhase::Idle)
    )
}

/// Asserts the policy holds no release at fault: nothing bad, no late failure, no node
/// failed.
pub fn assert_blameless(status: &LivePatchPolicyStatus) {
    assert!(status.bad_releases.is_empty(), "{status:?}");
    assert!(status.late_failures.is_empty(), "{status:?}");
    assert_eq!(status.nodes.failed, 0, "{status:?}");
}

/// The Degraded condition's reason and message.
pub fn degraded(status: &LivePatchPolicyStatus) -> (String, String) {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// The status of policy `name`, read from the API server.
pub async fn policy_status(fleet: &SimFleet, name: &str) -> LivePatchPolicyStatus {
    Api::<LivePatchPolicy>::all(fleet.cluster.admin.clone())
        .get(name)
        .await
        .expect("read the policy")
        .status
        .unwrap_or_default()
}

/// What this node's `spec.desired` asks: the action and the release id.
pub fn asked(node: &LivePatchNode) -> Option<(PatchAction, String)> {
    let desired = node.spec.desired.as_ref()?;
    let release = desired.release.as_ref().map(|r| r.id.clone());
    Some((desired.action, release.unwrap_or_default()))
}

/// Every node the watch ever saw asked to revert.
pub fn reverts_seen(fleet: &SimFleet) -> Vec<String> {
    let mut nodes: Vec<String> = fleet
        .watch
        .log()
        .into_iter()
        .filter_map(|seen| match seen.object {
            Object::Node(node) if asked(&node).is_some_and(|a| a.0 == PatchAction::Revert) => {
                node.metadata.name
            }
            _ => None,
        })
        .collect();
    nodes.dedup();
    nodes
}

/// Each node whose `spec.desired` the watch saw change after `start`, once per change.
pub fn desired_changes_since(fleet: &SimFleet, start: Instant) -> Vec<String> {
    let mut last = BTreeMap::new();
    let mut changed = Vec::new();
    for seen in fleet.watch.log() {
        let (Object::Node(node), false) = (seen.object, seen.deleted) else {
            continue;
        };
        let name = node.metadata.name.clone().unwrap_or_default();
        let previous = last.insert(name.clone(), node.spec.desired.clone());
        if seen.at >= start && previous.is_some_and(|p| p != node.spec.desired) {
            changed.push(name);
        }
    }
    changed
}

/// The policies any node's `spec.desired` named after `start`, as the watch saw them.
pub fn asking_policies_since(fleet: &SimFleet, start: Instant) -> BTreeSet<String> {
    fleet
        .watch
        .log()
        .into_iter()
        .filter(|seen| seen.at >= start && !seen.deleted)
        .filter_map(|seen| match seen.object {
            Object::Node(node) => node.spec.desired.map(|d| d.policy),
            Object::Policy(_) => None,
        })
        .collect()
}

/// Waits until policy `name` says Ready=False/Conflict and Degraded=ConflictingPolicies.
pub async fn wait_conflict(fleet: &mut SimFleet, name: &str) {
    let waited = fleet
        .wait_policy(name, "Ready=False/Conflict", ROLLOUT, |p| {
            let status = p.status.clone().unwrap_or_default();
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
            let conflict = ready.is_some_and(|c| {
                c.status == kpersist_crds::ConditionStatus::False && c.reason == "Conflict"
            });
            if conflict && degraded(&status).0 == "ConflictingPolicies" {
                Check::Done(())
            } else {
                Check::NotYet(describe_policy(p))
            }
        })
        .await;
    waited.unwrap_or_else(|e| fail(fleet, e))
}

/// Starts a v1 rollout whose one-node canary bakes 20 s, with `health.notReadyGrace` =
/// `grace`, and waits until the canary bakes; returns the canary.
pub async fn canary_baking_with_grace(fleet: &mut SimFleet, grace: &str) -> String {
    let mut policy = fleet.policy("fleet", canary_then_all("20s"), 2);
    policy.spec.health.not_ready_grace = grace.into();
    start_v1(fleet, &policy).await;
    wait_canary_baking(fleet, &id(K1, 1)).await
}

/// Waits until the canary wave of `release` bakes; returns the canary, the one node that
/// runs it.
pub async fn wait_canary_baking(fleet: &mut SimFleet, release: &str) -> String {
    wait_policy_status(fleet, "to bake the canary wave", |s| {
        s.phase == Some(PolicyPhase::Baking) && s.rollout.as_ref().is_some_and(|r| r.wave == 1)
    })
    .await;
    let applied: Vec<String> = fleet.watch.ever_applied(release).into_iter().collect();
    assert_eq!(applied.len(), 1, "one canary runs {release}: {applied:?}");
    applied[0].clone()
}

/// Waits until `node`'s agent reports an error with `reason`.
pub async fn wait_error(fleet: &mut SimFleet, node: &str, reason: NodeErrorReason) {
    let what = format!("{node} to report {reason:?}");
    wait_nodes_hold(fleet, &what, |nodes| {
        let status = nodes.get(node).and_then(|n| n.status.as_ref());
        status
            .and_then(|s| s.last_error.as_ref())
            .is_some_and(|e| e.reason == reason)
    })
    .await;
}

/// Waits until every agent has reported its kernel in its LivePatchNode.
pub async fn wait_kernels_reported(fleet: &mut SimFleet) {
    let count = fleet.nodes().len();
    wait_nodes_hold(fleet, "every agent to report its kernel", |nodes| {
        let reported = nodes.values().filter_map(|n| n.status.as_ref());
        reported.filter(|s| s.kernel_release.is_some()).count() == count
    })
    .await;
}

/// Waits until every supported node but `except` runs K1 (or K2) at v1.
pub async fn wait_applied_except(fleet: &mut SimFleet, except: &str, what: &str) {
    let mut expected = expected_releases(fleet, 1);
    expected.remove(except);
    let done = fleet
        .wait_nodes(what, ROLLOUT, |nodes| all_applied(nodes, &expected))
        .await;
    done.unwrap_or_else(|e| fail(fleet, e))
}

/// Waits until `holds` is true of the LivePatchNodes; fails the test with them otherwise.
async fn wait_nodes_hold(
    fleet: &mut SimFleet,
    what: &str,
    holds: impl Fn(&BTreeMap<String, LivePatchNode>) -> bool,
) {
    let waited = fleet
        .wait_nodes(what, ROLLOUT, |nodes| {
            if holds(nodes) {
                Check::Done(())
            } else {
                Check::NotYet(describe(nodes))
            }
        })
        .await;
    waited.unwrap_or_else(|e| fail(fleet, e))
}

/// Waits until the watch sees `node` asked for `release`; returns when it first did.
pub async fn wait_asked(fleet: &mut SimFleet, node: &str, release: &str) -> Instant {
    let what = format!("{node} to be asked for {release}");
    let waited = wait_until(&what, ROLLOUT, || {
        let order = fleet.watch.desired_order(release);
        async move {
            Ok(match order.into_iter().find(|(n, _)| n == node) {
                Some((_, at)) => Check::Done(at),
                None => Check::NotYet("not yet asked".into()),
            })
        }
    })
    .await;
    waited.unwrap_or_else(|e| fail(fleet, e))
}
