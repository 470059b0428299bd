//! The engine at fleet scale: the policy status it writes stays small however many nodes
//! the policy selects (etcd refuses objects past 1.5 MiB), and which nodes a rollout has
//! handed a release is read from the nodes, so a later rollout of the same release is not
//! confused with the one before it.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod engine_support;

use engine_support::*;
use kpersist_crds::{LivePatchPolicyStatus, PatchAction, PlannedWave, PolicyPhase};

/// The most a policy status may take, serialized, at any fleet size: a few KiB of
/// conditions, targets and counts, far below etcd's 1.5 MiB request limit.
const STATUS_BOUND: usize = 16 * 1024;

const FLEET: usize = 50_000;

fn size(status: &LivePatchPolicyStatus) -> usize {
    serde_json::to_vec(status)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

#[test]
fn a_large_fleet_mid_rollout_has_a_small_status() {
    let sim = mid_rollout(FLEET);
    let decision = sim.decide();
    let rollout = decision.status.rollout.clone().expect("a rollout runs");
    assert!(
        rollout.assigned > 1_000,
        "the rollout has handed out many releases: {rollout:?}"
    );
    let bytes = size(&decision.status);
    assert!(
        bytes <= STATUS_BOUND,
        "the status of a {FLEET}-node decision takes {bytes} bytes, more than {STATUS_BOUND}"
    );
}

#[test]
fn a_large_dry_run_plans_counts_and_names_a_few() {
    let mut spec = policy_spec();
    spec.rollout.dry_run = true;
    let nodes = (0..FLEET)
        .map(|i| SimNode::new(&format!("node-{i:05}"), 0, Some(1)))
        .collect();
    let t = start_time();
    let sim = Sim::new(spec, nodes, vec![release(0, 1, t), release(0, 2, t)]);
    let decision = sim.decide();
    let planned = &decision.status.planned_waves;
    let total: u32 = planned.iter().map(|w| w.nodes).sum();
    assert_eq!(total as usize, FLEET, "every node is planned: {planned:?}");
    assert_eq!(planned[0].nodes, 1, "the canary wave: {planned:?}");
    assert!(
        planned
            .iter()
            .all(|w| w.first_nodes.len() == (w.nodes as usize).min(PlannedWave::SAMPLE)),
        "each wave names its first nodes: {planned:?}"
    );
    let bytes = size(&decision.status);
    assert!(
        bytes <= STATUS_BOUND,
        "the dry-run status of {FLEET} nodes takes {bytes} bytes, more than {STATUS_BOUND}"
    );
}

/// A node NotReady during a rollout is skipped; once Ready it gets the same release in a
/// rollout of its own, which must judge it alone: the earlier rollout's nodes, with a
/// failure that rollout allowed, are not counted again. Its own failure of the release the
/// first rollout proved is a late failure: the policy pauses until a person edits it.
#[test]
fn a_later_rollout_of_the_same_release_leaves_the_earlier_ones_nodes_out() {
    let mut spec = policy_spec();
    spec.rollout.waves = waves(&[(Some(1), None, "0s"), (None, Some(100), "0s")]);
    spec.rollout.max_failures = 1;
    let t = start_time();
    let nodes = (0..4)
        .map(|i| SimNode::new(&format!("node-{i:02}"), 0, Some(1)))
        .collect();
    let mut sim = Sim::new(spec, nodes, vec![release(0, 1, t), release(0, 2, t)]);
    sim.node_mut("node-03").view.ready = false;
    // Two nodes fail on v2: one in the first rollout (allowed), one in the second.
    for name in ["node-03", first_non_canary(&sim)] {
        sim.node_mut(name).faults.insert(id(0, 2), Fault::Stall);
    }
    let first = run_to(&mut sim, PolicyPhase::Complete);
    assert_eq!(first.wave_offset, 0);

    sim.node_mut("node-03").view.ready = true;
    let decision = sim.step(30);
    let rollout = decision.status.rollout.clone().expect("a second rollout");
    assert_eq!(
        rollout.wave_offset, 2,
        "numbered past the first rollout's waves"
    );
    assert_eq!(rollout.assigned, 1, "only node-03 is part of it");
    let desired = sim
        .node("node-03")
        .desired()
        .cloned()
        .expect("node-03 asked");
    assert_eq!(
        (desired.action, desired.wave),
        (PatchAction::Apply, Some(3)),
        "node-03 is the second rollout's canary"
    );
    run_to(&mut sim, PolicyPhase::Paused);
    let late = sim.policy.status.clone().unwrap_or_default().late_failures;
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].node, "node-03");
    sim.policy.metadata.generation = Some(2);
    let decision = sim.step(30);
    assert_eq!(decision.status.phase, Some(PolicyPhase::Complete));
    let status = sim.policy.status.clone().unwrap_or_default();
    assert!(status.bad_releases.is_empty(), "{:?}", status.bad_releases);
    assert_eq!(status.last_wave, 4);
}

/// The node the first rollout hands v2 in its second wave (not its canary).
fn first_non_canary(sim: &Sim) -> &'static str {
    let decision = sim.decide();
    let canary = decision.desired[0].0.clone();
    ["node-00", "node-01", "node-02"]
        .into_iter()
        .find(|n| *n != canary)
        .unwrap_or("node-00")
}

/// Steps until `phase` with every agent idle; returns the last rollout recorded.
fn run_to(sim: &mut Sim, phase: PolicyPhase) -> kpersist_crds::RolloutProgress {
    let mut last = None;
    for _ in 0..200 {
        let decision = sim.step(30);
        last = decision.status.rollout.clone().or(last);
        if decision.status.phase == Some(phase) && sim.nodes.iter().all(SimNode::settled) {
            return last.expect("a rollout ran");
        }
    }
    panic!("never reached {phase:?}: {:?}", sim.phase());
}
