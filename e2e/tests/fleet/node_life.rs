//! Node life on the real API server: a node's own trouble (a download that fails on a
//! joiner, a NotReady blip or NotReady past the grace, a reboot into another kernel, an
//! agent gone silent) never counts against a release and holds no wave up; a cordoned node
//! is handed nothing; nodes selected by two policies are patched by the older one only,
//! without their specs flipping back and forth.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kpersist_crds::{NodeErrorReason, PatchAction, PolicyPhase};
use kpersist_e2e::sim_fleet::{SimFleet, SimNode};
use kpersist_e2e::wait::Check;

use crate::node_life_checks::{
    asked, asking_policies_since, assert_blameless, canary_baking_with_grace, canary_then_all,
    degraded, desired_changes_since, policy_status, reverts_seen, settled, wait_applied_except,
    wait_asked, wait_canary_baking, wait_conflict, wait_error, wait_kernels_reported,
};
use crate::support::{
    K1, K2, all_applied, describe, expected_releases, fail, fleet_on_v1, id, k1_nodes,
    publish_k1_v2, publish_v1, serial, start_v1, three_waves, wait_applied, wait_policy_status,
};

/// Long enough for the operator to act on what it saw (a revert would be written at once).
const SETTLE: Duration = Duration::from_secs(8);

#[tokio::test]
async fn a_joiner_failing_its_download_does_not_revert_the_fleet() {
    let _turn = serial().await;
    let mut fleet = SimFleet::start(k1_nodes(3)).await.expect("fleet");
    fleet_on_v1(&mut fleet, "1s", 2).await;
    wait_policy_status(&mut fleet, "to end the v1 rollout", |s| {
        settled(s) && s.last_rollout_end.is_some()
    })
    .await;

    // The joiner cannot download v1's module; the fleet already runs v1.
    let on_v1 = expected_releases(&fleet, 1);
    fleet.repo.update_faults(|f| f.missing_modules = true);
    let joined = fleet.add_node(SimNode::new("joiner", K1.0, K1.1)).await;
    joined.unwrap_or_else(|e| fail(&mut fleet, e));
    wait_error(&mut fleet, "joiner", NodeErrorReason::DownloadFailed).await;
    wait_policy_status(&mut fleet, "to count the joiner as a node problem", |s| {
        s.nodes.node_problems == 1 && degraded(s).0 == "NodeProblems"
    })
    .await;
    tokio::time::sleep(SETTLE).await;

    let status = policy_status(&fleet, "fleet").await;
    assert_blameless(&status);
    assert!(settled(&status), "{status:?}");
    assert!(
        degraded(&status).1.contains("joiner (DownloadFailed)"),
        "Degraded names the joiner and why: {:?}",
        degraded(&status)
    );
    let v1 = id(K1, 1);
    let nodes = fleet.watch.current();
    for name in ["node-1", "node-2", "node-3"] {
        assert_eq!(
            asked(&nodes[name]),
            Some((PatchAction::Apply, v1.clone())),
            "{name} keeps v1:{}",
            describe(&nodes)
        );
    }
    assert_eq!(reverts_seen(&fleet), Vec::<String>::new());
    assert!(
        matches!(all_applied(&nodes, &on_v1), Check::Done(())),
        "the fleet still runs v1:{}",
        describe(&nodes)
    );

    // The joiner leaves: it is no one's problem any more.
    fleet
        .remove_node("joiner")
        .await
        .expect("remove the joiner");
    wait_policy_status(&mut fleet, "to forget the joiner", |s| {
        s.nodes.node_problems == 0 && s.nodes.total == 3 && degraded(s).0 == "Healthy"
    })
    .await;
}

#[tokio::test]
async fn a_not_ready_blip_during_a_bake_marks_nothing_bad() {
    let _turn = serial().await;
    let mut fleet = SimFleet::start(k1_nodes(3)).await.expect("fleet");
    let canary = canary_baking_with_grace(&mut fleet, "10s").await;

    // NotReady for half the grace, in the middle of the canary's bake.
    let blip = fleet.set_not_ready(&canary, jiff::Timestamp::now()).await;
    blip.unwrap_or_else(|e| fail(&mut fleet, e));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = policy_status(&fleet, "fleet").await;
    fleet.set_ready(&canary).await.expect("Ready again");
    assert_eq!(during.phase, Some(PolicyPhase::Baking), "{during:?}");
    assert_eq!(during.nodes.node_problems, 0, "{during:?}");

    wait_applied(&mut fleet, 1, "every node to apply v1").await;
    wait_policy_status(&mut fleet, "to complete with no node problem", |s| {
        settled(s) && s.nodes.node_problems == 0
    })
    .await;
    assert_blameless(&policy_status(&fleet, "fleet").await);
    assert_eq!(reverts_seen(&fleet), Vec::<String>::new());
}

#[tokio::test]
async fn not_ready_past_the_grace_is_a_node_problem_and_the_rollout_goes_on() {
    let _turn = serial().await;
    let mut fleet = SimFleet::start(k1_nodes(3)).await.expect("fleet");
    let canary = canary_baking_with_grace(&mut fleet, "10s").await;

    // The canary has been NotReady for a minute already: past the grace at once.
    let since = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
    let down = fleet.set_not_ready(&canary, since).await;
    down.unwrap_or_else(|e| fail(&mut fleet, e));
    let note = format!("{canary} (NodeNotReady)");
    wait_policy_status(&mut fleet, "to count the canary as a node problem", |s| {
        s.nodes.node_problems == 1 && degraded(s).1.contains(&note)
    })
    .await;

    // The other nodes get v1 without waiting for it, and nothing is blamed.
    wait_applied_except(&mut fleet, &canary, "every other node to apply v1").await;
    wait_policy_status(&mut fleet, "to complete", settled).await;
    assert_blameless(&policy_status(&fleet, "fleet").await);
    assert_eq!(reverts_seen(&fleet), Vec::<String>::new());

    // Ready again: the node problem is over.
    fleet.set_ready(&canary).await.expect("Ready again");
    wait_policy_status(&mut fleet, "to clear the node problem", |s| {
        s.nodes.node_problems == 0 && s.nodes.patched == 3
    })
    .await;
}

#[tokio::test]
async fn a_cordoned_node_is_handed_nothing_until_uncordoned() {
    let _turn = serial().await;
    let mut fleet = SimFleet::start(k1_nodes(3)).await.expect("fleet");
    let cordoned = "node-3";
    let v1 = id(K1, 1);
    fleet.cordon(cordoned, true).await.expect("cordon");
    let policy = fleet.policy("fleet", three_waves("1s"), 2);
    start_v1(&mut fleet, &policy).await;
    wait_applied_except(&mut fleet, cordoned, "every uncordoned node to apply v1").await;
    wait_policy_status(
        &mut fleet,
        "to complete with the cordoned node pending",
        |s| settled(s) && s.nodes.pending == 1,
    )
    .await;
    assert!(
        !fleet.watch.ever_desired(&v1).contains(cordoned),
        "the cordoned node was asked for v1"
    );
    let status = policy_status(&fleet, "fleet").await;
    assert_blameless(&status);
    assert_eq!(status.nodes.node_problems, 0, "{status:?}");

    fleet.cordon(cordoned, false).await.expect("uncordon");
    wait_applied(&mut fleet, 1, "the uncordoned node to apply v1 too").await;
}

#[tokio::test]
async fn a_node_rebooting_into_another_kernel_mid_rollout_follows_its_new_build() {
    let _turn = serial().await;
    let mut fleet = SimFleet::start(k1_nodes(3)).await.expect("fleet");
    let policy = fleet.policy("fleet", canary_then_all("15s"), 2);
    start_v1(&mut fleet, &policy).await;
    let canary = wait_canary_baking(&mut fleet, &id(K1, 1)).await;

    // The canary reboots into K2 while its bake runs.
    let rebooted = fleet.reboot_node(&canary, K2.0, K2.1).await;
    rebooted.unwrap_or_else(|e| fail(&mut fleet, e));
    wait_applied(
        &mut fleet,
        1,
        "the rebooted canary to run K2's v1 and the others K1's v1",
    )
    .await;
    wait_policy_status(&mut fleet, "to complete", settled).await;
    let status = policy_status(&fleet, "fleet").await;
    assert_blameless(&status);
    assert_eq!(status.nodes.node_problems, 0, "{status:?}");
    assert_eq!(status.nodes.patched, 3, "{status:?}");
    assert_eq!(
        fleet
            .watch
            .ever_desired(&id(K2, 1))
            .into_iter()
            .collect::<Vec<_>>(),
        vec![canary],
        "only the rebooted canary runs K2"
    );
    assert_eq!(reverts_seen(&fleet), Vec::<String>::new());
}

#[tokio::test]
async fn overlapping_policies_leave_each_node_to_the_older_one_without_flip_flop() {
    let _turn = serial().await;
    let mut fleet = SimFleet::start(k1_nodes(3)).await.expect("fleet");
    fleet_on_v1(&mut fleet, "1s", 2).await;
    let other = fleet.policy("other", three_waves("1s"), 2);
    fleet.create_policy(&other).await.expect("second policy");
    wait_conflict(&mut fleet, "other").await;

    // A newer release tempts both policies: the older one rolls it out, the newer one
    // writes nothing, and each node's request changes once.
    let start = Instant::now();
    publish_k1_v2(&fleet);
    wait_applied(&mut fleet, 2, "the older policy to roll v2 out").await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        asking_policies_since(&fleet, start),
        BTreeSet::from(["fleet".to_string()]),
        "only the older policy may ask anything of the shared nodes"
    );
    let mut changes = desired_changes_since(&fleet, start);
    changes.sort();
    assert_eq!(
        changes,
        ["node-1", "node-2", "node-3"],
        "each node's spec.desired changes once, from v1 to v2"
    );
    wait_conflict(&mut fleet, "other").await;
    let owner = policy_status(&fleet, "fleet").await;
    let ready = owner.conditions.iter().find(|c| c.type_ == "Ready");
    assert!(
        ready.is_some_and(
            |c| c.status == kpersist_crds::ConditionStatus::True && c.reason == "UpToDate"
        ),
        "the owner is up to date: {ready:?}"
    );
}

#[tokio::test]
async fn a_node_leaving_the_selector_keeps_its_patch_and_loses_the_request() {
    let _turn = serial().await;
    let mut fleet = SimFleet::start(k1_nodes(3)).await.expect("fleet");
    fleet_on_v1(&mut fleet, "1s", 2).await;
    fleet.relabel("node-3", "elsewhere").await.expect("relabel");
    let v1 = id(K1, 1);
    let waited = fleet
        .wait_nodes(
            "node-3's request cleared",
            SETTLE * 4,
            |nodes| match nodes.get("node-3") {
                Some(n) if n.spec.desired.is_none() => Check::Done(n.clone()),
                _ => Check::NotYet(describe(nodes)),
            },
        )
        .await;
    let left = waited.unwrap_or_else(|e| fail(&mut fleet, e));
    let applied = left.status.and_then(|s| s.applied).map(|a| a.id);
    assert_eq!(applied, Some(v1), "the patch stays loaded");
    wait_policy_status(&mut fleet, "two selected nodes counted", |status| {
        status.nodes.total == 2
    })
    .await;
    assert_eq!(reverts_seen(&fleet), Vec::<String>::new());
}

#[tokio::test]
async fn a_silent_agent_is_resolved_by_the_node_deadline() {
    const DEADLINE: Duration = Duration::from_secs(20);
    let _turn = serial().await;
    let mut fleet = SimFleet::start(k1_nodes(4)).await.expect("fleet");
    let silent = "node-2";
    publish_v1(&fleet);
    fleet.start_agents().expect("agents");
    wait_kernels_reported(&mut fleet).await;
    fleet.silence_agent(silent).await.expect("silence");
    fleet.start_operator().expect("operator");
    let mut policy = fleet.policy("fleet", three_waves("1s"), 2);
    policy.spec.health.node_deadline = Some("20s".into());
    fleet.create_policy(&policy).await.expect("policy");

    let v1 = id(K1, 1);
    let asked = wait_asked(&mut fleet, silent, &v1).await;
    let note = format!("{silent} (AgentSilent)");
    wait_policy_status(&mut fleet, "to give up on the silent node", |s| {
        s.nodes.node_problems == 1 && degraded(s).1.contains(&note)
    })
    .await;
    let waited = asked.elapsed();
    assert!(
        waited <= DEADLINE + Duration::from_secs(15),
        "the silent node was resolved {waited:?} after it was asked; the deadline is {DEADLINE:?}"
    );

    // The waves went on without it.
    wait_applied_except(&mut fleet, silent, "every other node to apply v1").await;
    wait_policy_status(&mut fleet, "to complete with one node problem", |s| {
        settled(s) && s.nodes.node_problems == 1
    })
    .await;
    assert_blameless(&policy_status(&fleet, "fleet").await);
}
