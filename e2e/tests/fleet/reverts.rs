//! Reverts that must finish: nodes whose running release the repository pruned are still
//! moved on, and sent back to it from their agents' cache; a policy deleted while it rolls
//! back waits for its reverts before it clears its requests.

use k8s_openapi::api::events::v1::Event;
use kpersist_crds::{LivePatchPolicy, NodeErrorReason, PatchAction, PolicyPhase};
use kpersist_e2e::sim_fleet::SimFleet;
use kpersist_e2e::wait::{Check, wait_until};
use kube::Api;
use kube::api::{DeleteParams, ListParams};

use crate::node_life_checks::{asked, reverts_seen, wait_error};
use crate::support::{
    K1, ROLLOUT, describe, fail, fleet_on_v1, id, k1_nodes, publish_k1_v2, serial, three_waves,
    wait_applied, wait_policy_gone, wait_policy_status,
};

/// The first `n` nodes asked to apply `release`, in order, once that many have been.
async fn first_asked(fleet: &mut SimFleet, release: &str, n: usize) -> Vec<String> {
    let what = format!("{n} node(s) to be asked for {release}");
    let watch = &fleet.watch;
    let waited = wait_until(&what, ROLLOUT, || {
        let order = watch.desired_order(release);
        async move {
            Ok(if order.len() >= n {
                Check::Done(order.into_iter().take(n).map(|(name, _)| name).collect())
            } else {
                Check::NotYet(format!("{} asked so far", order.len()))
            })
        }
    })
    .await;
    waited.unwrap_or_else(|e| fail(fleet, e))
}

#[tokio::test]
async fn a_repository_that_pruned_the_running_release_still_upgrades_and_reverts_its_nodes() {
    let _turn = serial().await;
    let mut fleet = SimFleet::start(k1_nodes(3)).await.expect("fleet");
    fleet_on_v1(&mut fleet, "1s", 1).await;
    // Waves that bake long enough to arm a fault on the last node before it is asked.
    let waves = serde_json::to_value(three_waves("10s")).expect("waves");
    let patched = fleet
        .patch_policy("fleet", serde_json::json!({"rollout": {"waves": waves}}))
        .await;
    patched.unwrap_or_else(|e| fail(&mut fleet, e));

    // The publisher ships v2 and prunes v1, which every node runs: its module is gone from
    // the repository.
    let (v1, v2) = (id(K1, 1), id(K1, 2));
    publish_k1_v2(&fleet);
    fleet.publisher.prune(K1.0, 1).expect("prune v1");
    let asked_first = first_asked(&mut fleet, &v2, 2).await;
    let second = asked_first[1].clone();
    // The second node was asked while v1 was pruned: it runs v2 all the same.
    wait_applied_release(&mut fleet, &second, &v2).await;
    let last = ["node-1", "node-2", "node-3"]
        .into_iter()
        .find(|n| !asked_first.iter().any(|a| a == n))
        .expect("a node not asked yet")
        .to_string();
    let armed = fleet.set_faults(&last, vec![format!("{v2}=stall")]).await;
    armed.unwrap_or_else(|e| fail(&mut fleet, e));

    // The last node stalls on v2: v2 is bad and the two nodes that run it go back to the
    // pruned v1, which their agents load from their cache.
    wait_error(&mut fleet, &last, NodeErrorReason::TransitionStalled).await;
    wait_policy_status(&mut fleet, "to mark v2 bad and finish the revert", |s| {
        s.bad_releases.iter().any(|b| b.release == v2) && s.phase == Some(PolicyPhase::Failed)
    })
    .await;
    wait_applied(&mut fleet, 1, "every node back on the pruned v1").await;
    let nodes = fleet.watch.current();
    for name in &asked_first {
        assert_eq!(
            asked(&nodes[name]),
            Some((PatchAction::Revert, v1.clone())),
            "{name} was sent back to v1:{}",
            describe(&nodes)
        );
    }
    assert!(
        fleet.watch.ever_applied(&v2).contains(&second),
        "{second} moved on from the pruned v1"
    );
}

/// Waits until `node` reports running `release`.
async fn wait_applied_release(fleet: &mut SimFleet, node: &str, release: &str) {
    let what = format!("{node} to run {release}");
    let waited = fleet
        .wait_nodes(&what, ROLLOUT, |nodes| {
            let runs = nodes
                .get(node)
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.applied.as_ref())
                .is_some_and(|a| a.id == release);
            if runs {
                Check::Done(())
            } else {
                Check::NotYet(describe(nodes))
            }
        })
        .await;
    waited.unwrap_or_else(|e| fail(fleet, e));
}

#[tokio::test]
async fn a_policy_deleted_while_rolling_back_finishes_its_reverts_first() {
    let _turn = serial().await;
    let mut fleet = SimFleet::start(k1_nodes(3)).await.expect("fleet");
    fleet_on_v1(&mut fleet, "1s", 1).await;
    let v2 = id(K1, 2);
    for node in ["node-1", "node-2", "node-3"] {
        let armed = fleet.set_faults(node, vec![format!("{v2}=stall")]).await;
        armed.unwrap_or_else(|e| fail(&mut fleet, e));
    }

    // The canary stalls on v2; its agent is gone before the revert reaches it.
    publish_k1_v2(&fleet);
    let canary = first_asked(&mut fleet, &v2, 1).await.remove(0);
    wait_error(&mut fleet, &canary, NodeErrorReason::TransitionStalled).await;
    fleet.silence_agent(&canary).await.expect("silence");
    wait_policy_status(&mut fleet, "to roll back", |s| {
        s.phase == Some(PolicyPhase::RollingBack)
    })
    .await;

    let policies: Api<LivePatchPolicy> = Api::all(fleet.cluster.admin.clone());
    policies
        .delete("fleet", &DeleteParams::default())
        .await
        .expect("delete the policy");
    let announced = wait_event(&mut fleet, "DeletionWaitsForReverts").await;
    assert!(announced.contains("1 node"), "{announced}");
    let nodes = fleet.watch.current();
    assert_eq!(
        asked(&nodes[&canary]).map(|a| a.0),
        Some(PatchAction::Revert),
        "the revert is still asked while the policy waits:{}",
        describe(&nodes)
    );
    assert!(
        policies.get_opt("fleet").await.expect("read").is_some(),
        "the policy stays until its reverts finish"
    );

    // The agent comes back, finishes the revert, and only then is the request cleared.
    fleet.start_agent(&canary).expect("agent back");
    let waited = fleet
        .wait_nodes("every request cleared", ROLLOUT, |nodes| {
            if nodes.values().all(|n| n.spec.desired.is_none()) {
                Check::Done(())
            } else {
                Check::NotYet(describe(nodes))
            }
        })
        .await;
    waited.unwrap_or_else(|e| fail(&mut fleet, e));
    let finished = fleet.watch.log().into_iter().any(|seen| match seen.object {
        kpersist_e2e::monitor::Object::Node(node) => {
            node.metadata.name.as_deref() == Some(canary.as_str())
                && asked(&node).is_some_and(|a| a.0 == PatchAction::Revert)
                && node.status.as_ref().and_then(|s| s.observed_generation)
                    == node.metadata.generation
        }
        _ => false,
    });
    assert!(
        finished,
        "{canary}'s agent finished the revert before it was cleared"
    );
    assert_eq!(reverts_seen(&fleet), vec![canary.clone()]);
    wait_policy_gone(&mut fleet).await;
}

/// Waits for an Event with `reason`; returns its note.
async fn wait_event(fleet: &mut SimFleet, reason: &str) -> String {
    let events: Api<Event> = Api::all(fleet.cluster.admin.clone());
    let what = format!("an Event {reason}");
    let waited = wait_until(&what, ROLLOUT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await?;
            Ok(
                match list
                    .items
                    .into_iter()
                    .find(|e| e.reason.as_deref() == Some(reason))
                {
                    Some(event) => Check::Done(event.note.unwrap_or_default()),
                    None => Check::NotYet("not yet".into()),
                },
            )
        }
    })
    .await;
    waited.unwrap_or_else(|e| fail(fleet, e))
}
