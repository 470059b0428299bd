//! The rollout engine's node-life rules, one scenario each: what a node's own trouble
//! (NotReady, a failed download, a silent agent, another kernel) does and does not do to a
//! release, and what happens when a release that an earlier rollout proved fails later.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod engine_support;

use engine_support::*;
use kpersist_crds::{FailurePolicy, NodeErrorReason, PatchAction, PolicyPhase};

/// Two waves: a one-node canary baking `bake`, then everyone.
fn canary_fleet(n: usize, bake: &str) -> Sim {
    fleet(n, &[(Some(1), None, bake), (None, Some(100), "0s")])
}

fn bad_releases(sim: &Sim) -> Vec<String> {
    sim.policy
        .status
        .as_ref()
        .map(|s| s.bad_releases.iter().map(|b| b.release.clone()).collect())
        .unwrap_or_default()
}

fn asked(sim: &Sim, node: &str) -> Option<(PatchAction, String)> {
    sim.node(node).desired().map(|d| {
        (
            d.action,
            d.release.as_ref().map(|r| r.id.clone()).unwrap_or_default(),
        )
    })
}

fn generation(sim: &Sim, node: &str) -> Option<i64> {
    sim.node(node).view.lpn.as_ref()?.metadata.generation
}

/// Steps until `done` holds, or panics after `steps` steps.
fn step_until(sim: &mut Sim, steps: usize, seconds: i64, done: impl Fn(&Sim) -> bool) {
    for _ in 0..steps {
        sim.step(seconds);
        if done(sim) {
            return;
        }
    }
    panic!(
        "condition never held; phase {:?}, status {:?}",
        sim.phase(),
        sim.policy.status.as_ref().map(|s| &s.conditions)
    );
}

#[test]
fn a_not_ready_blip_during_the_bake_marks_nothing_bad() {
    let mut sim = canary_fleet(4, "10m");
    let canary = sim.step(30).desired[0].0.clone();
    sim.step(30);
    let now = sim.now;
    sim.node_mut(&canary).not_ready(now);
    let d = sim.step(60);
    assert_eq!(d.status.phase, Some(PolicyPhase::Baking));
    sim.node_mut(&canary).ready();
    run_until(&mut sim, &[PolicyPhase::Complete], 60);
    assert!(bad_releases(&sim).is_empty());
    assert!(sim.nodes.iter().all(|n| n.applied_id() == Some(id(0, 2))));
}

#[test]
fn not_ready_past_the_grace_is_the_nodes_problem_and_the_wave_goes_on() {
    let mut sim = canary_fleet(4, "0s");
    let canary = sim.step(30).desired[0].0.clone();
    let long_ago = at("2026-01-01T00:00:00Z");
    let node = sim.node_mut(&canary);
    node.silent = true;
    node.not_ready(long_ago);
    step_until(&mut sim, 20, 30, |sim| {
        sim.nodes
            .iter()
            .filter(|n| n.view.name != canary)
            .all(|n| n.applied_id() == Some(id(0, 2)))
    });
    let status = sim.policy.status.as_ref().unwrap();
    assert!(status.bad_releases.is_empty());
    assert_eq!(status.nodes.node_problems, 1);
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded.reason, "NodeProblems");
    assert!(
        degraded
            .message
            .contains(&format!("{canary} (NodeNotReady)"))
    );
}

#[test]
fn a_cordoned_node_is_handed_nothing_and_its_not_ready_is_nobodys_problem() {
    let mut sim = canary_fleet(3, "0s");
    let long_ago = at("2026-01-01T00:00:00Z");
    let node = sim.node_mut("node-01");
    node.view.leaving = true;
    node.not_ready(long_ago);
    for _ in 0..20 {
        sim.step(30);
    }
    assert_eq!(asked(&sim, "node-01"), None);
    let status = sim.policy.status.as_ref().unwrap();
    assert_eq!(status.nodes.node_problems, 0);
    assert!(status.bad_releases.is_empty());
}

#[test]
fn a_failed_download_is_the_nodes_trouble_and_is_asked_again_later() {
    let mut sim = canary_fleet(3, "0s");
    let canary = sim.step(30).desired[0].0.clone();
    sim.node_mut(&canary)
        .faults
        .insert(id(0, 2), Fault::Trouble(NodeErrorReason::DownloadFailed));
    run_until(&mut sim, &[PolicyPhase::Complete], 30);
    assert!(bad_releases(&sim).is_empty());
    let status = sim.policy.status.as_ref().unwrap();
    assert_eq!(status.nodes.node_problems, 1);
    let first = generation(&sim, &canary);

    // The repository is reachable from the node again; the retry comes by itself.
    sim.node_mut(&canary).faults.clear();
    step_until(&mut sim, 80, 60, |sim| {
        sim.node(&canary).applied_id() == Some(id(0, 2))
    });
    let now = generation(&sim, &canary);
    assert!(now > first, "the node was not asked again");
    assert!(bad_releases(&sim).is_empty());
}

#[test]
fn a_silent_agent_is_resolved_by_the_node_deadline() {
    let mut sim = canary_fleet(3, "0s");
    // The canary's agent is gone before it sees the request.
    let d = sim.decide();
    sim.apply(&d);
    let canary = d.desired[0].0.clone();
    sim.node_mut(&canary).silent = true;
    sim.agents();
    sim.advance(30);
    let d = sim.step(30);
    // The decision wakes up by the deadline (default: 2 min + 60 s + 2 min) by itself.
    let wake = d
        .requeue_after
        .expect("a requeue while a node is in flight");
    assert!(wake.as_secs() <= 300, "requeue {wake:?}");
    step_until(&mut sim, 20, 30, |sim| {
        sim.policy
            .status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .is_some_and(|r| r.wave == 2)
            || sim.phase() == Some(PolicyPhase::Complete)
    });
    let status = sim.policy.status.as_ref().unwrap();
    assert!(status.bad_releases.is_empty());
    let degraded = condition(status, "Degraded");
    assert!(
        degraded
            .message
            .contains(&format!("{canary} (AgentSilent)")),
        "{degraded:?}"
    );
}

#[test]
fn a_node_rebooted_into_another_kernel_follows_its_new_build_without_a_failure() {
    let mut spec = policy_spec();
    spec.rollout.waves = waves(&[(Some(1), None, "5m"), (None, Some(100), "0s")]);
    let nodes = (0..3)
        .map(|i| SimNode::new(&format!("node-{i:02}"), 0, Some(1)))
        .collect();
    let t = start_time();
    let releases = (0..2)
        .flat_map(|k| (1..=2).map(move |v| release(k, v, t)))
        .collect();
    let mut sim = Sim::new(spec, nodes, releases);
    let canary = sim.step(30).desired[0].0.clone();
    sim.node_mut(&canary).work_ticks = 5;
    sim.step(30);
    let now = sim.now;
    sim.node_mut(&canary).reboot_into(1, now);
    run_until(&mut sim, &[PolicyPhase::Complete], 60);
    assert!(bad_releases(&sim).is_empty());
    assert_eq!(sim.node(&canary).applied_id(), Some(id(1, 2)));
    let status = sim.policy.status.as_ref().unwrap();
    assert_eq!(status.nodes.failed, 0);
}

/// A fleet that finished rolling v2 out, so v2 is proven.
fn proven_fleet() -> Sim {
    let mut sim = canary_fleet(3, "0s");
    run_until(&mut sim, &[PolicyPhase::Complete], 60);
    assert!(sim.nodes.iter().all(|n| n.applied_id() == Some(id(0, 2))));
    // Let the status record the end of the rollout.
    sim.step(60);
    sim
}

fn edit(sim: &mut Sim, change: impl FnOnce(&mut kpersist_crds::LivePatchPolicySpec)) {
    change(&mut sim.policy.spec);
    let generation = sim.policy.metadata.generation.unwrap_or(1);
    sim.policy.metadata.generation = Some(generation + 1);
}

#[test]
fn a_joiner_failing_a_proven_release_pauses_the_policy_instead_of_reverting_the_fleet() {
    let mut sim = proven_fleet();
    let mut joiner = SimNode::new("joiner", 0, Some(1));
    joiner.faults.insert(id(0, 2), Fault::Stall);
    sim.nodes.push(joiner);
    let mut events = Vec::new();
    for _ in 0..10 {
        events.extend(sim.step(60).events);
    }
    assert!(reasons(&events).contains(&"LateFailure"), "{events:?}");
    assert_eq!(sim.phase(), Some(PolicyPhase::Paused));
    assert!(bad_releases(&sim).is_empty());
    for node in ["node-00", "node-01", "node-02"] {
        assert_eq!(asked(&sim, node), Some((PatchAction::Apply, id(0, 2))));
    }
    let status = sim.policy.status.as_ref().unwrap();
    assert_eq!(status.late_failures.len(), 1);
    assert_eq!(status.late_failures[0].node, "joiner");
    assert_eq!(condition(status, "Degraded").reason, "LateFailure");

    // A person looked and goes on: editing the policy acknowledges it.
    edit(&mut sim, |_| {});
    run_until(&mut sim, &[PolicyPhase::Complete], 60);
    assert!(bad_releases(&sim).is_empty());

    // Or decides to revoke the release fleet-wide.
    edit(&mut sim, |spec| {
        spec.rollout.late_failure_policy = FailurePolicy::Revert;
    });
    let d = sim.step(60);
    assert_eq!(d.status.phase, Some(PolicyPhase::RollingBack));
    assert_eq!(bad_releases(&sim), vec![id(0, 2)]);
    run_until(&mut sim, &[PolicyPhase::Failed], 60);
    for node in ["node-00", "node-01", "node-02"] {
        assert_eq!(sim.node(node).applied_id(), Some(id(0, 1)));
    }
}

#[test]
fn a_crash_on_probation_after_the_rollout_is_a_late_failure() {
    let mut sim = proven_fleet();
    let now = sim.now;
    sim.node_mut("node-01").crash_on_probation(now);
    let d = sim.step(60);
    assert!(reasons(&d.events).contains(&"LateFailure"));
    assert_eq!(d.status.phase, Some(PolicyPhase::Paused));
    assert!(d.status.bad_releases.is_empty());
    assert!(
        d.desired.is_empty(),
        "nothing is written while paused: {:?}",
        d.desired
    );
    assert_eq!(d.status.late_failures[0].release, id(0, 2));
}

#[test]
fn with_late_failure_policy_revert_a_late_crash_revokes_the_release_everywhere() {
    let mut sim = proven_fleet();
    edit(&mut sim, |spec| {
        spec.rollout.late_failure_policy = FailurePolicy::Revert;
    });
    let now = sim.now;
    sim.node_mut("node-01").crash_on_probation(now);
    let d = sim.step(60);
    assert_eq!(d.status.phase, Some(PolicyPhase::RollingBack));
    assert!(reasons(&d.events).contains(&"ReleaseMarkedBad"));
    run_until(&mut sim, &[PolicyPhase::Failed], 60);
    for node in ["node-00", "node-02"] {
        assert_eq!(sim.node(node).applied_id(), Some(id(0, 1)));
    }
}

#[test]
fn a_canary_failure_in_the_first_rollout_still_reverts_at_once() {
    let mut sim = canary_fleet(4, "10m");
    let canary = sim.step(30).desired[0].0.clone();
    sim.node_mut(&canary).faults.insert(id(0, 2), Fault::Stall);
    let events = run_until(&mut sim, &[PolicyPhase::Failed], 30);
    assert!(reasons(&events).contains(&"ReleaseMarkedBad"));
    assert!(!reasons(&events).contains(&"LateFailure"));
    assert_eq!(bad_releases(&sim), vec![id(0, 2)]);
}

#[test]
fn nodes_selected_by_two_policies_keep_ready_false() {
    let mut sim = canary_fleet(3, "0s");
    sim.node_mut("node-02").view.other_policies = vec!["other".into()];
    run_until(&mut sim, &[PolicyPhase::Complete], 60);
    let status = sim.policy.status.as_ref().unwrap();
    let ready = condition(status, "Ready");
    assert_eq!(ready.status, kpersist_crds::ConditionStatus::False);
    assert_eq!(ready.reason, "Conflict");
    assert_eq!(asked(&sim, "node-02"), None);
}

#[test]
fn each_kernel_builds_release_has_its_own_canary() {
    let mut spec = policy_spec();
    spec.rollout.waves = waves(&[(Some(1), None, "10m"), (None, Some(100), "0s")]);
    spec.rollout.max_in_flight = 10;
    let nodes = (0..6)
        .map(|i| SimNode::new(&format!("node-{i:02}"), i % 2, Some(1)))
        .collect();
    let t = start_time();
    let releases = (0..2)
        .flat_map(|k| (1..=2).map(move |v| release(k, v, t)))
        .collect();
    let mut sim = Sim::new(spec, nodes, releases);
    let mut first_seen: std::collections::BTreeMap<String, jiff::Timestamp> = Default::default();
    for _ in 0..60 {
        let d = sim.step(60);
        for (_, desired) in &d.desired {
            if let Some(r) = desired.as_ref().and_then(|d| d.release.as_ref()) {
                first_seen.entry(r.id.clone()).or_insert(sim.now);
            }
        }
        // Until a node has run a build's release for the canary bake, one node has it.
        for k in 0..2 {
            let holders = sim
                .nodes
                .iter()
                .filter(|n| {
                    n.desired()
                        .and_then(|d| d.release.as_ref())
                        .is_some_and(|r| r.id == id(k, 2))
                })
                .count();
            let proven = first_seen
                .get(&id(k, 2))
                .is_some_and(|at| sim.now.duration_since(*at).as_secs() >= 11 * 60);
            assert!(
                proven || holders <= 1,
                "{} on {holders} nodes before its canary baked",
                id(k, 2)
            );
        }
        if sim.phase() == Some(PolicyPhase::Complete) && sim.nodes.iter().all(SimNode::settled) {
            break;
        }
    }
    assert_eq!(sim.phase(), Some(PolicyPhase::Complete));
    for (i, node) in sim.nodes.iter().enumerate() {
        assert_eq!(node.applied_id(), Some(id(i % 2, 2)));
    }
}

#[test]
fn nodes_running_a_pruned_release_keep_ready_false_with_the_reason() {
    let mut spec = policy_spec();
    spec.rollout.waves = waves(&[(Some(1), None, "0s"), (None, Some(100), "0s")]);
    let nodes = (0..2)
        .map(|i| SimNode::new(&format!("node-{i:02}"), 0, Some(1)))
        .collect();
    // v1, which the nodes run, was pruned from the index.
    let mut sim = Sim::new(spec, nodes, vec![release(0, 2, start_time())]);
    for _ in 0..3 {
        assert!(sim.step(60).desired.is_empty());
    }
    let status = sim.policy.status.as_ref().unwrap();
    let ready = condition(status, "Ready");
    assert_eq!(ready.status, kpersist_crds::ConditionStatus::False);
    assert_eq!(ready.reason, "RunningReleasePruned");
    assert!(
        ready
            .message
            .contains("2 run a release that is no longer in the index")
    );
}

#[test]
fn nodes_whose_release_was_pruned_move_on_and_go_back_to_the_record_their_request_holds() {
    let mut sim = canary_fleet(3, "0s");
    run_until(&mut sim, &[PolicyPhase::Complete], 30);
    // The repository prunes v2, which every node runs at this policy's request, and
    // publishes v3, which fails on every node but the first to get it.
    if let Some(repo) = sim.repository.as_mut() {
        repo.index.releases.retain(|r| r.version != 2);
    }
    publish_v3(&mut sim);
    let canary = sim.step(30).desired[0].0.clone();
    let previous = sim.node(&canary).desired().and_then(|d| d.previous.clone());
    assert_eq!(
        previous.map(|p| p.id),
        Some(id(0, 2)),
        "the pruned release is recorded as the one to go back to"
    );
    for node in sim.nodes.iter_mut().filter(|n| n.view.name != canary) {
        node.faults.insert(id(0, 3), Fault::Stall);
    }
    run_until(&mut sim, &[PolicyPhase::Failed], 30);
    assert_eq!(bad_releases(&sim), vec![id(0, 3)]);
    let revert = sim
        .node(&canary)
        .desired()
        .cloned()
        .expect("the canary's revert");
    assert_eq!(revert.action, PatchAction::Revert);
    assert_eq!(revert.release.map(|r| r.id), Some(id(0, 2)));
    assert!(sim.nodes.iter().all(|n| n.applied_id() == Some(id(0, 2))));
}

fn publish_v3(sim: &mut Sim) {
    let t = sim.now;
    if let Some(repo) = sim.repository.as_mut() {
        repo.index.releases.push(release(0, 3, t));
    }
}

/// The first node handed v3 in a fleet of `n` that all run v2.
fn v3_canary(n: usize) -> String {
    let mut sim = canary_fleet(n, "0s");
    run_until(&mut sim, &[PolicyPhase::Complete], 30);
    publish_v3(&mut sim);
    sim.step(30).desired[0].0.clone()
}

#[test]
fn each_release_has_its_own_canaries() {
    let mut sim = canary_fleet(40, "0s");
    let mut canaries = std::collections::BTreeSet::new();
    canaries.insert(sim.step(30).desired[0].0.clone());
    run_until(&mut sim, &[PolicyPhase::Complete], 30);
    publish_v3(&mut sim);
    canaries.insert(sim.step(30).desired[0].0.clone());
    assert_eq!(canaries.len(), 2, "v2 and v3 went to the same canary first");
}

#[test]
fn a_node_with_a_problem_of_its_own_today_is_nobodys_canary() {
    let ailing = v3_canary(6);
    let mut sim = canary_fleet(6, "0s");
    sim.node_mut(&ailing)
        .faults
        .insert(id(0, 2), Fault::Trouble(NodeErrorReason::DownloadFailed));
    run_until(&mut sim, &[PolicyPhase::Complete], 30);
    assert_eq!(sim.policy.status.as_ref().unwrap().nodes.node_problems, 1);
    sim.node_mut(&ailing).faults.clear();
    publish_v3(&mut sim);
    let first = sim.step(30).desired;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_ne!(
        first[0].0, ailing,
        "the node that failed its download went first"
    );
    run_until(&mut sim, &[PolicyPhase::Complete], 30);
    assert_eq!(sim.node(&ailing).applied_id(), Some(id(0, 3)));
}

#[test]
fn the_owner_waits_for_a_request_of_another_policy_the_agent_has_not_seen() {
    let mut sim = canary_fleet(1, "0s");
    run_until(&mut sim, &[PolicyPhase::Complete], 30);
    // A newer policy selecting node-00 too asked it to go back, just before it lost the
    // node to this (older) policy; the agent has not seen the request yet.
    let mut theirs = sim.node("node-00").desired().cloned().expect("a request");
    theirs.policy = "newer".into();
    theirs.action = PatchAction::Revert;
    theirs.asked_at = Some(sim.now.to_string());
    sim.node_mut("node-00").write_desired(Some(theirs.clone()));
    let t = sim.now;
    if let Some(repo) = sim.repository.as_mut() {
        repo.index.releases.push(release(0, 3, t));
    }
    for _ in 0..3 {
        let d = sim.decide();
        assert!(
            d.desired.iter().all(|(n, _)| n != "node-00"),
            "the owner wrote over a request the agent had not seen: {:?}",
            d.desired
        );
        sim.apply(&d);
    }
    assert_eq!(sim.node("node-00").desired(), Some(&theirs));
}

#[test]
fn a_node_joining_during_a_bake_waits_for_the_next_wave_and_restarts_nothing() {
    // Three waves: a one-node canary, then half, then everyone, each baking ten minutes.
    let mut sim = fleet(
        4,
        &[
            (Some(1), None, "10m"),
            (None, Some(50), "10m"),
            (None, Some(100), "10m"),
        ],
    );
    step_until(&mut sim, 20, 30, |sim| {
        sim.phase() == Some(PolicyPhase::Baking)
    });
    let bake_of = |sim: &Sim| {
        sim.policy
            .status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .map(|r| (r.wave, r.bake_started_at.clone()))
    };
    let baking = bake_of(&sim);
    sim.nodes.push(SimNode::new("joiner", 0, Some(1)));
    let d = sim.step(60);
    assert!(
        d.desired.is_empty(),
        "nobody joins a wave that bakes: {:?}",
        d.desired
    );
    assert_eq!(bake_of(&sim), baking, "the canary's bake goes on");

    // The percentage wave is sized when it starts (half of five); nodes that join while it
    // bakes, which would make its half larger, wait for the last wave.
    step_until(&mut sim, 40, 60, |sim| {
        sim.phase() == Some(PolicyPhase::Baking) && bake_of(sim).is_some_and(|(w, _)| w == 2)
    });
    let second = bake_of(&sim);
    for name in ["late-1", "late-2"] {
        sim.nodes.push(SimNode::new(name, 0, Some(1)));
    }
    let d = sim.step(60);
    assert!(d.desired.is_empty(), "{:?}", d.desired);
    assert_eq!(bake_of(&sim), second, "wave 2's bake goes on");
    run_until(&mut sim, &[PolicyPhase::Complete], 60);
    assert!(sim.nodes.iter().all(|n| n.applied_id() == Some(id(0, 2))));
}

#[test]
fn a_bad_release_listed_in_retry_releases_rolls_out_again_once() {
    let mut sim = canary_fleet(3, "0s");
    for node in &mut sim.nodes {
        node.faults.insert(id(0, 2), Fault::Stall);
    }
    run_until(&mut sim, &[PolicyPhase::Failed], 30);
    assert_eq!(bad_releases(&sim), vec![id(0, 2)]);

    // A person clears it; it still stalls, so it is marked bad again, and the entry left in
    // the spec does not clear the new mark.
    sim.policy.spec.rollout.retry_releases = vec![id(0, 2)];
    sim.policy.metadata.generation = Some(2);
    let d = sim.step(30);
    assert!(
        reasons(&d.events).contains(&"BadReleaseCleared"),
        "{:?}",
        reasons(&d.events)
    );
    assert!(bad_releases(&sim).is_empty(), "cleared");
    run_until(&mut sim, &[PolicyPhase::Failed], 30);
    assert_eq!(bad_releases(&sim), vec![id(0, 2)], "marked bad again");
    run_for(&mut sim, 5, 30);
    assert_eq!(bad_releases(&sim), vec![id(0, 2)], "and it stays bad");

    // Fixed on the nodes, removed from the list and added back: it rolls out.
    for node in &mut sim.nodes {
        node.faults.clear();
    }
    sim.policy.spec.rollout.retry_releases.clear();
    sim.step(30);
    sim.policy.spec.rollout.retry_releases = vec![id(0, 2)];
    run_until(&mut sim, &[PolicyPhase::Complete], 30);
    assert!(bad_releases(&sim).is_empty());
    assert!(sim.nodes.iter().all(|n| n.applied_id() == Some(id(0, 2))));
}

#[test]
fn a_failing_gate_while_a_proven_release_catches_up_a_joiner_pauses_and_takes_nothing_back() {
    let mut sim = canary_fleet(3, "10m");
    run_until(&mut sim, &[PolicyPhase::Complete], 60);
    sim.nodes.push(SimNode::new("joiner", 0, Some(1)));
    step_until(&mut sim, 20, 30, |sim| {
        sim.phase() == Some(PolicyPhase::Baking)
            && sim.node("joiner").applied_id() == Some(id(0, 2))
    });
    sim.gate = Some(kpersist_operator::engine::GateVerdict::Fail(
        "error rate 5% >= 1%".into(),
    ));
    run_for(&mut sim, 3, 30);
    assert_eq!(sim.phase(), Some(PolicyPhase::Paused));
    assert!(
        bad_releases(&sim).is_empty(),
        "a proven release is not marked bad"
    );
    assert!(
        sim.nodes
            .iter()
            .all(|n| n.desired().is_none_or(|d| d.action == PatchAction::Apply)),
        "nothing is taken back"
    );
    let status = sim.policy.status.as_ref().unwrap();
    let progressing = condition(status, "Progressing");
    assert!(
        progressing.message.contains("proven by an earlier rollout"),
        "{}",
        progressing.message
    );
}
