//! The rollout engine's rules, one scenario each, driven through `decide` with simulated
//! agents.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod engine_support;

use engine_support::*;
use kpersist_crds::{FailurePolicy, MaintenanceWindow, PatchAction, PolicyPhase};
use kpersist_operator::engine::{GateVerdict, RolloutEvent};

fn applies_of(sim: &Sim, release: &str) -> usize {
    sim.nodes
        .iter()
        .filter(|n| {
            n.desired().is_some_and(|d| {
                d.action == PatchAction::Apply
                    && d.release.as_ref().is_some_and(|r| r.id == release)
            })
        })
        .count()
}

#[test]
fn canary_first_then_waves_after_each_bake() {
    let mut sim = fleet(
        10,
        &[
            (Some(1), None, "10m"),
            (None, Some(50), "10m"),
            (None, Some(100), "0s"),
        ],
    );
    let first = sim.decide();
    assert_eq!(
        reasons(&first.events),
        vec!["RolloutStarted", "WaveStarted"]
    );
    assert_eq!(
        first.desired.len(),
        1,
        "only the canary: {:?}",
        first.desired
    );
    let (canary, desired) = &first.desired[0];
    let desired = desired.as_ref().expect("an apply");
    assert_eq!(desired.action, PatchAction::Apply);
    assert_eq!(desired.wave, Some(1));
    assert_eq!(
        desired.release.as_ref().map(|r| r.id.clone()),
        Some(id(0, 2))
    );
    assert_eq!(
        desired.previous.as_ref().map(|r| r.id.clone()),
        Some(id(0, 1)),
        "the revert target is recorded with the node"
    );
    assert_eq!(
        desired.release.as_ref().map(|r| r.module_url.clone()),
        Some(format!("{BASE_URL}/modules/k0-v2.ko"))
    );
    assert_eq!(first.status.phase, Some(PolicyPhase::Progressing));
    assert_eq!(first.status.wave_summary.as_deref(), Some("1/3"));
    sim.apply(&first);
    sim.agents();
    sim.agents();
    sim.advance(30);
    // The canary applied: the bake starts and nobody else gets the release during it.
    let baking = sim.step(60);
    assert_eq!(baking.status.phase, Some(PolicyPhase::Baking));
    assert!(baking.desired.is_empty());
    let requeue = baking.requeue_after.expect("wakes at the end of the bake");
    assert_eq!(requeue.as_secs(), 600);
    for _ in 0..8 {
        assert!(
            sim.step(60).desired.is_empty(),
            "wave 2 started during the bake"
        );
    }
    sim.advance(60);
    let second = sim.decide();
    assert_eq!(reasons(&second.events), vec!["WaveDone", "WaveStarted"]);
    assert_eq!(second.desired.len(), 4, "50% of 10 is 5 in total, 4 more");
    assert!(
        second
            .desired
            .iter()
            .all(|(n, d)| n != canary && d.as_ref().and_then(|d| d.wave) == Some(2))
    );
    sim.apply(&second);
    let events = run_until(&mut sim, &[PolicyPhase::Complete], 60);
    assert!(
        reasons(&events).contains(&"RolloutComplete"),
        "{:?}",
        reasons(&events)
    );
    assert!(sim.nodes.iter().all(|n| n.applied_id() == Some(id(0, 2))));
    let status = sim.policy.status.clone().unwrap_or_default();
    assert_eq!(status.patched_summary.as_deref(), Some("10/10"));
    assert_eq!(status.target_summary.as_deref(), Some("v2"));
    assert!(status.rollout.is_none());
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "UpToDate")
    );
}

#[test]
fn max_in_flight_bounds_unfinished_applies() {
    let mut sim = fleet(10, &[(None, Some(100), "0s")]);
    sim.policy.spec.rollout.max_in_flight = 3;
    sim.nodes.iter_mut().for_each(|n| n.work_ticks = 3);
    for _ in 0..40 {
        let decision = sim.step(10);
        let unfinished = sim
            .nodes
            .iter()
            .filter(|n| n.desired().is_some() && n.applied_id() != Some(id(0, 2)))
            .count();
        assert!(unfinished <= 3, "{unfinished} in flight");
        if decision.status.phase == Some(PolicyPhase::Complete) {
            return;
        }
    }
    panic!("rollout did not complete");
}

#[test]
fn failed_wave_reverts_and_marks_the_release_bad() {
    let mut sim = fleet(6, &[(Some(2), None, "5m"), (None, Some(100), "0s")]);
    for node in &mut sim.nodes {
        node.faults.insert(id(0, 2), Fault::Stall);
    }
    let events = run_until(&mut sim, &[PolicyPhase::Failed], 30);
    let names = reasons(&events);
    for expected in [
        "WaveFailed",
        "ReleaseMarkedBad",
        "RevertStarted",
        "RevertComplete",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let status = sim.policy.status.clone().unwrap_or_default();
    assert_eq!(status.bad_releases.len(), 1);
    assert_eq!(status.bad_releases[0].release, id(0, 2));
    assert!(
        status.bad_releases[0].reason.contains("TransitionStalled"),
        "{}",
        status.bad_releases[0].reason
    );
    let reverted: Vec<&SimNode> = sim
        .nodes
        .iter()
        .filter(|n| n.desired().is_some_and(|d| d.action == PatchAction::Revert))
        .collect();
    assert_eq!(reverted.len(), 2, "the two canaries took the release");
    for node in reverted {
        assert_eq!(node.applied_id(), Some(id(0, 1)), "{}", node.view.name);
    }
    // The bad release is never offered again, however long we wait.
    for _ in 0..20 {
        let decision = sim.step(600);
        assert!(decision.desired.is_empty(), "{:?}", decision.desired);
    }
    assert_eq!(sim.phase(), Some(PolicyPhase::Failed));
    let status = sim.policy.status.clone().unwrap_or_default();
    assert_eq!(
        condition(&status, "Degraded").status,
        kpersist_crds::ConditionStatus::True
    );
    // A later release reaches every node, the reverted ones included.
    let t = sim.now;
    if let Some(repo) = sim.repository.as_mut() {
        repo.index.releases.push(release(0, 3, t));
    }
    run_until(&mut sim, &[PolicyPhase::Complete], 600);
    assert!(sim.nodes.iter().all(|n| n.applied_id() == Some(id(0, 3))));
}

#[test]
fn a_node_that_ran_no_release_is_reverted_to_none() {
    let mut spec = policy_spec();
    spec.rollout.waves = waves(&[(None, Some(100), "0s")]);
    let mut nodes: Vec<SimNode> = (0..3)
        .map(|i| SimNode::new(&format!("node-{i}"), 0, None))
        .collect();
    nodes[1].faults.insert(id(0, 1), Fault::Taint);
    let mut sim = Sim::new(spec, nodes, vec![release(0, 1, start_time())]);
    run_until(&mut sim, &[PolicyPhase::Failed], 30);
    for node in &sim.nodes {
        let desired = node.desired().expect("asked to revert");
        assert_eq!(desired.action, PatchAction::Revert);
        assert_eq!(desired.release, None);
        assert_eq!(node.applied_id(), None, "{}", node.view.name);
    }
}

#[test]
fn failures_within_max_failures_do_not_stop_the_rollout() {
    let mut sim = fleet(4, &[(None, Some(100), "1m")]);
    sim.policy.spec.rollout.max_failures = 1;
    sim.nodes[2].faults.insert(id(0, 2), Fault::Taint);
    run_until(&mut sim, &[PolicyPhase::Complete], 30);
    let status = sim.policy.status.clone().unwrap_or_default();
    assert!(status.bad_releases.is_empty());
    assert_eq!(status.nodes.failed, 1);
    assert_eq!(status.nodes.patched, 3);
    // The failed node is not asked again once the rollout is over.
    for _ in 0..5 {
        assert!(sim.step(600).desired.is_empty());
    }
}

#[test]
fn pause_policy_stops_until_the_policy_is_edited() {
    let mut sim = fleet(4, &[(Some(1), None, "1m"), (None, Some(100), "0s")]);
    sim.policy.spec.rollout.failure_policy = FailurePolicy::Pause;
    for node in &mut sim.nodes {
        node.faults.insert(id(0, 2), Fault::Crash);
    }
    let events = run_until(&mut sim, &[PolicyPhase::Paused], 30);
    assert!(reasons(&events).contains(&"RolloutPaused"));
    let rollout = sim
        .policy
        .status
        .as_ref()
        .and_then(|s| s.rollout.clone())
        .expect("rollout kept");
    assert_eq!(rollout.failed_wave, Some(1));
    assert!(
        rollout
            .paused_reason
            .unwrap_or_default()
            .contains("CrashSuspected")
    );
    for _ in 0..5 {
        let d = sim.step(600);
        assert!(d.desired.is_empty() && d.events.is_empty(), "{d:?}");
    }
    // A person allows one failure: the rollout carries on.
    sim.policy.spec.rollout.max_failures = 1;
    sim.policy.metadata.generation = Some(2);
    let resumed = sim.step(120);
    assert_eq!(reasons(&resumed.events), vec!["RolloutResumed"]);
    assert_eq!(resumed.status.phase, Some(PolicyPhase::Baking));
    let next = sim.decide();
    assert_eq!(reasons(&next.events), vec!["WaveDone", "WaveStarted"]);
    assert!(!next.desired.is_empty());
}

#[test]
fn unsupported_kernels_and_nodes_are_not_failures() {
    let mut sim = fleet(3, &[(None, Some(100), "0s")]);
    sim.nodes.push(SimNode::new("other-kernel", 7, None));
    let mut no_livepatch = SimNode::new("no-livepatch", 0, None);
    if let Some(s) = no_livepatch
        .view
        .lpn
        .as_mut()
        .and_then(|l| std::sync::Arc::make_mut(l).status.as_mut())
    {
        s.livepatch_supported = false;
    }
    sim.nodes.push(no_livepatch);
    run_until(&mut sim, &[PolicyPhase::Complete], 30);
    let status = sim.policy.status.clone().unwrap_or_default();
    assert_eq!(status.nodes.unsupported, 2);
    assert_eq!(status.nodes.patched, 3);
    assert!(sim.node("other-kernel").desired().is_none());
    assert!(sim.node("no-livepatch").desired().is_none());
}

#[test]
fn nodes_selected_twice_are_left_alone_and_reported() {
    let mut sim = fleet(3, &[(None, Some(100), "0s")]);
    sim.nodes[1].view.other_policies = vec!["gpu".into()];
    run_until(&mut sim, &[PolicyPhase::Complete], 30);
    assert!(sim.nodes[1].desired().is_none());
    let status = sim.policy.status.clone().unwrap_or_default();
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded.reason, "ConflictingPolicies");
    assert!(
        degraded.message.contains("node-01 (owned by gpu)"),
        "{}",
        degraded.message
    );
}

#[test]
fn paused_and_dry_run_write_nothing() {
    let mut sim = fleet(5, &[(Some(1), None, "1m"), (None, Some(100), "0s")]);
    sim.policy.spec.rollout.paused = true;
    let d = sim.step(60);
    assert!(d.desired.is_empty());
    assert_eq!(d.status.phase, Some(PolicyPhase::Paused));
    assert!(reasons(&d.events).contains(&"RolloutPaused"));

    let mut sim = fleet(5, &[(Some(1), None, "1m"), (None, Some(100), "0s")]);
    sim.policy.spec.rollout.dry_run = true;
    let d = sim.step(60);
    assert!(d.desired.is_empty());
    assert_eq!(d.status.phase, Some(PolicyPhase::Idle));
    let planned: Vec<(u32, u32, usize)> = d
        .status
        .planned_waves
        .iter()
        .map(|w| (w.wave, w.nodes, w.first_nodes.len()))
        .collect();
    assert_eq!(planned, vec![(1, 1, 1), (2, 4, 4)]);
}

#[test]
fn maintenance_window_gates_new_nodes_only() {
    let mut sim = fleet(3, &[(Some(1), None, "30m"), (None, Some(100), "0s")]);
    // 2026-03-02 is a Monday; the fleet starts at 10:00 UTC = 11:00 in Berlin.
    sim.policy.spec.rollout.maintenance_windows = vec![MaintenanceWindow {
        days: vec![],
        start: "12:00".into(),
        end: "12:20".into(),
        time_zone: "Europe/Berlin".into(),
    }];
    let closed = sim.decide();
    assert!(closed.desired.is_empty());
    assert_eq!(closed.status.phase, Some(PolicyPhase::Paused));
    assert_eq!(closed.requeue_after.map(|d| d.as_secs()), Some(3600));
    sim.apply(&closed);
    sim.advance(3600);
    let open = sim.step(60);
    assert_eq!(open.desired.len(), 1);
    // The canary's 30m bake runs past the window's end; the next wave waits for tomorrow.
    for _ in 0..60 {
        sim.step(60);
    }
    assert_eq!(sim.phase(), Some(PolicyPhase::Paused));
    let rollout = sim
        .policy
        .status
        .as_ref()
        .and_then(|s| s.rollout.clone())
        .expect("rollout");
    assert_eq!(rollout.wave, 2, "the wave moved on after its bake");
    assert_eq!(applies_of(&sim, &id(0, 2)), 1);
    let requeue = sim
        .decide()
        .requeue_after
        .expect("wakes when the window opens");
    sim.advance(requeue.as_secs() as i64);
    assert_eq!(sim.step(60).desired.len(), 2);
}

#[test]
fn decisions_depend_on_the_api_objects_only() {
    let mut sim = fleet(8, &[(Some(2), None, "5m"), (None, Some(100), "0s")]);
    sim.policy.spec.rollout.max_in_flight = 1;
    let first = sim.decide();
    assert_eq!(first, sim.decide(), "same objects, same decision");
    // The node write lands but the status write is lost: the next decision must not hand
    // the release to more nodes than the wave and maxInFlight allow.
    for (name, desired) in &first.desired {
        sim.node_mut(name).write_desired(desired.clone());
    }
    let again = sim.decide();
    assert!(again.desired.is_empty(), "{:?}", again.desired);
    assert_eq!(again.status.rollout.map(|r| r.assigned), Some(1));
}

#[test]
fn a_newer_release_waits_for_the_running_rollout() {
    let mut sim = fleet(4, &[(Some(1), None, "10m"), (None, Some(100), "0s")]);
    sim.step(60);
    sim.step(60);
    let t = sim.now;
    if let Some(repo) = sim.repository.as_mut() {
        repo.index.releases.push(release(0, 3, t));
    }
    let events = run_for(&mut sim, 100, 60);
    assert_eq!(sim.phase(), Some(PolicyPhase::Complete));
    let started: Vec<&RolloutEvent> = events
        .iter()
        .filter(|e| e.reason() == "RolloutStarted")
        .collect();
    assert_eq!(
        started.len(),
        1,
        "v3 starts its own rollout after v2: {started:?}"
    );
    assert!(
        matches!(started[0], RolloutEvent::RolloutStarted { releases, .. } if releases == &vec![id(0, 3)])
    );
    let complete = events
        .iter()
        .filter(|e| e.reason() == "RolloutComplete")
        .count();
    assert_eq!(complete, 2);
    assert!(sim.nodes.iter().all(|n| n.applied_id() == Some(id(0, 3))));
}

#[test]
fn a_yanked_release_is_taken_back_and_never_offered_again() {
    let mut sim = fleet(4, &[(None, Some(100), "0s")]);
    let events = run_until(&mut sim, &[PolicyPhase::Complete], 60);
    assert!(events.iter().any(|e| e.reason() == "RolloutComplete"));
    assert!(sim.nodes.iter().all(|n| n.applied_id() == Some(id(0, 2))));

    // The publisher yanks v2 (and a release no node of this policy ran).
    let t = sim.now;
    if let Some(repo) = sim.repository.as_mut() {
        repo.index.releases[1].yanked = Some("breaks nfsd".into());
        let mut other = release(1, 1, t);
        other.yanked = Some("wrong build".into());
        repo.index.releases.push(other);
    }
    let decision = sim.decide();
    assert_eq!(decision.desired.len(), 4, "every node goes back");
    for (node, desired) in &decision.desired {
        let desired = desired.as_ref().unwrap_or_else(|| panic!("{node} cleared"));
        assert_eq!(desired.action, PatchAction::Revert, "{node}");
        let back_to = desired.release.as_ref().map(|r| r.id.clone());
        assert_eq!(back_to, Some(id(0, 1)), "{node} goes back to v1");
    }
    let bad: Vec<_> = decision.status.bad_releases.iter().collect();
    assert_eq!(bad.len(), 1, "only the release its nodes ran: {bad:?}");
    assert_eq!(bad[0].release, id(0, 2));
    assert!(
        bad[0]
            .reason
            .contains("yanked from the repository: breaks nfsd")
    );
    assert!(reasons(&decision.events).contains(&"ReleaseMarkedBad"));

    // The nodes go back to v1 and stay there: v2 is offered to no one. As after any
    // revert, the policy reports Failed (its bad release says why) until the next rollout.
    let events = run_until(&mut sim, &[PolicyPhase::Failed], 60);
    assert!(reasons(&events).contains(&"RevertComplete"), "{events:?}");
    run_for(&mut sim, 10, 60);
    assert!(sim.nodes.iter().all(|n| n.applied_id() == Some(id(0, 1))));
    let late = sim.decide();
    assert!(late.desired.is_empty(), "{:?}", late.desired);
}

#[test]
fn a_changed_pin_supersedes_the_rollout() {
    let mut sim = fleet(4, &[(Some(1), None, "10m"), (None, Some(100), "0s")]);
    let t = start_time();
    if let Some(repo) = sim.repository.as_mut() {
        repo.index.releases.push(release(0, 3, t));
    }
    sim.policy.spec.repository.pinned_version = Some(3);
    sim.step(60);
    sim.policy.spec.repository.pinned_version = Some(2);
    sim.policy.metadata.generation = Some(2);
    let d = sim.decide();
    assert!(
        reasons(&d.events).contains(&"RolloutStarted"),
        "{:?}",
        reasons(&d.events)
    );
    assert_eq!(d.status.rollout.map(|r| r.releases), Some(vec![id(0, 2)]));
}

#[test]
fn delay_holds_back_fresh_releases_and_wakes_when_they_clear() {
    let mut sim = fleet(2, &[(None, Some(100), "0s")]);
    sim.policy.spec.repository.delay = Some("72h".into());
    let old = sim
        .now
        .checked_sub(jiff::SignedDuration::from_hours(100))
        .expect("time");
    let fresh = sim
        .now
        .checked_sub(jiff::SignedDuration::from_hours(1))
        .expect("time");
    sim.repository = Some(repository(vec![release(0, 1, old), release(0, 2, fresh)]));
    let d = sim.decide();
    assert!(d.desired.is_empty());
    assert_eq!(
        d.status.targets.first().map(|t| t.release.clone()),
        Some(id(0, 1))
    );
    assert_eq!(d.requeue_after.map(|r| r.as_secs()), Some(71 * 3600));
}

#[test]
fn a_release_published_in_the_future_waits_for_its_time_without_a_delay() {
    let mut sim = fleet(2, &[(None, Some(100), "0s")]);
    let old = sim
        .now
        .checked_sub(jiff::SignedDuration::from_hours(1))
        .expect("time");
    let scheduled = sim
        .now
        .checked_add(jiff::SignedDuration::from_hours(2))
        .expect("time");
    sim.repository = Some(repository(vec![
        release(0, 1, old),
        release(0, 2, scheduled),
    ]));
    let d = sim.decide();
    assert_eq!(
        d.status.targets.first().map(|t| t.release.clone()),
        Some(id(0, 1)),
        "v2 is not offered before it is published"
    );
    assert_eq!(d.requeue_after.map(|r| r.as_secs()), Some(2 * 3600));
}

#[test]
fn invalid_policy_fails_with_the_field_named() {
    let mut sim = fleet(2, &[(Some(1), Some(10), "1m")]);
    let d = sim.step(60);
    assert!(d.desired.is_empty());
    assert_eq!(d.status.phase, Some(PolicyPhase::Failed));
    let ready = condition(&d.status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidPolicy")
    );
    assert!(
        ready
            .message
            .contains("spec.rollout.waves[0]: give exactly one of nodes and percent"),
        "{}",
        ready.message
    );
    assert_eq!(reasons(&d.events), vec!["InvalidPolicy"]);
    assert!(
        sim.step(60).events.is_empty(),
        "reported once per generation"
    );
}

#[test]
fn an_inconclusive_gate_holds_the_wave_and_a_failing_one_fails_it() {
    let mut sim = fleet(4, &[(Some(1), None, "10m"), (None, Some(100), "0s")]);
    sim.policy.spec.health.prometheus = Some(kpersist_crds::PrometheusGate {
        url: "http://prometheus:9090".into(),
        query: "up".into(),
        operator: kpersist_crds::ComparisonOperator::GreaterThan,
        threshold: 0.0,
        fail_on_empty: false,
        interval: "30s".into(),
        timeout: "10s".into(),
        ca_bundle: None,
        headers: Vec::new(),
    });
    sim.step(30);
    sim.step(30);
    assert_eq!(sim.step(30).status.phase, Some(PolicyPhase::Baking));
    // Without a verdict the wave does not pass, even after its bake.
    sim.advance(3600);
    assert_eq!(sim.step(30).status.phase, Some(PolicyPhase::Baking));
    // A gate that cannot be evaluated holds the wave, visibly, and blames nothing.
    sim.gate = Some(GateVerdict::Inconclusive("connection refused".into()));
    let d = sim.step(30);
    assert_eq!(d.status.phase, Some(PolicyPhase::Paused));
    assert!(d.status.bad_releases.is_empty());
    assert!(d.desired.is_empty(), "a held wave hands nothing out");
    assert!(
        d.status
            .rollout
            .as_ref()
            .is_some_and(|r| r.gate_inconclusive.as_deref() == Some("connection refused")),
        "the hold is recorded for the controller to keep asking the gate"
    );
    let paused = condition(&d.status, "Ready");
    assert!(
        paused
            .message
            .contains("cannot be evaluated (connection refused)"),
        "{paused:?}"
    );
    sim.gate = Some(GateVerdict::Fail("up = 0 on node-03".into()));
    let d = sim.step(30);
    assert_eq!(d.status.phase, Some(PolicyPhase::RollingBack));
    assert!(
        d.status.bad_releases[0]
            .reason
            .contains("Prometheus gate failed: up = 0")
    );
}

#[test]
fn nodes_joining_mid_rollout_are_patched_and_leaving_ones_forgotten() {
    let mut sim = fleet(4, &[(Some(1), None, "5m"), (None, Some(100), "0s")]);
    sim.step(60);
    sim.nodes.push(SimNode::new("late", 0, Some(1)));
    sim.nodes.remove(3);
    run_until(&mut sim, &[PolicyPhase::Complete], 60);
    assert_eq!(sim.node("late").applied_id(), Some(id(0, 2)));
    assert_eq!(sim.policy.status.as_ref().map(|s| s.nodes.total), Some(4));
}

#[test]
fn without_an_index_nothing_starts_but_reverts_go_on() {
    let mut sim = fleet(3, &[(Some(1), None, "5m"), (None, Some(100), "0s")]);
    sim.repository = None;
    let d = sim.step(60);
    assert!(d.desired.is_empty());
    let ready = condition(&d.status, "Ready");
    assert_eq!(ready.reason, "NoRepositoryIndex");

    let mut sim = fleet(3, &[(Some(1), None, "5m"), (None, Some(100), "0s")]);
    for node in &mut sim.nodes {
        node.faults.insert(id(0, 2), Fault::Stall);
    }
    sim.step(30);
    sim.repository = None;
    sim.step(30);
    let d = sim.step(30);
    assert_eq!(d.status.phase, Some(PolicyPhase::RollingBack));
    assert_eq!(d.desired.len(), 1);
}

#[test]
fn a_node_that_crashed_on_a_release_gets_an_older_one() {
    let mut sim = fleet(1, &[(None, Some(100), "0s")]);
    sim.policy.spec.rollout.max_failures = 1;
    let t = start_time();
    if let Some(repo) = sim.repository.as_mut() {
        repo.index.releases.push(release(0, 3, t));
    }
    // The node runs nothing, crashes on v3 and is then moved to v2.
    sim.nodes[0].run_no_release();
    sim.nodes[0].faults.insert(id(0, 3), Fault::Crash);
    let events = run_for(&mut sim, 30, 30);
    assert_eq!(sim.phase(), Some(PolicyPhase::Complete));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.reason() == "RolloutComplete")
            .count(),
        2
    );
    assert_eq!(sim.nodes[0].applied_id(), Some(id(0, 2)));
    assert_eq!(sim.nodes[0].status().refused_releases, vec![id(0, 3)]);
}

#[test]
fn a_crash_counts_even_when_the_node_has_no_target_left() {
    // Pinned to v2, the node that crashed on v2 refuses it and has no target any more; it
    // still counts against its wave.
    let mut sim = fleet(3, &[(None, Some(100), "0s")]);
    sim.policy.spec.repository.pinned_version = Some(2);
    for node in &mut sim.nodes {
        node.faults.insert(id(0, 2), Fault::Crash);
    }
    run_until(&mut sim, &[PolicyPhase::Failed], 30);
    let status = sim.policy.status.clone().unwrap_or_default();
    assert_eq!(status.bad_releases.len(), 1);
    assert!(
        status.bad_releases[0].reason.contains("CrashSuspected"),
        "{}",
        status.bad_releases[0].reason
    );
}

#[test]
fn a_lost_status_write_does_not_forget_a_bad_release() {
    let mut sim = fleet(3, &[(None, Some(100), "0s")]);
    for node in &mut sim.nodes {
        node.faults.insert(id(0, 2), Fault::Stall);
    }
    run_until(&mut sim, &[PolicyPhase::Failed], 30);
    // The status is lost entirely; the nodes' revert requests still name the release.
    sim.policy.status = None;
    let d = sim.step(60);
    let bad: Vec<&str> = d
        .status
        .bad_releases
        .iter()
        .map(|b| b.release.as_str())
        .collect();
    assert_eq!(bad, vec![id(0, 2).as_str()]);
    assert!(d.desired.is_empty(), "{:?}", d.desired);
}

#[test]
fn the_decision_that_marks_a_release_bad_says_so_and_reverts_survive_lost_node_writes() {
    let mut sim = fleet(3, &[(None, Some(100), "0s")]);
    for node in &mut sim.nodes {
        node.faults.insert(id(0, 2), Fault::Stall);
    }
    let mut marking = None;
    for _ in 0..30 {
        let d = sim.decide();
        if d.marks_releases_bad(sim.policy.status.as_ref()) {
            marking = Some(d);
            break;
        }
        assert!(d.status.bad_releases.is_empty(), "{:?}", d.status);
        sim.apply(&d);
        sim.agents();
        sim.advance(60);
    }
    let marking = marking.expect("the stalled wave fails and marks its release bad");
    assert!(
        !marking.desired.is_empty(),
        "the same decision sends nodes back"
    );
    // The controller writes this status first; the node writes after it fail.
    sim.policy.status = Some(marking.status.clone());
    let again = sim.decide();
    assert!(!again.marks_releases_bad(sim.policy.status.as_ref()));
    assert_eq!(
        again.desired, marking.desired,
        "the reverts are asked again"
    );
    run_until(&mut sim, &[PolicyPhase::Failed], 30);
    for node in &sim.nodes {
        assert_ne!(node.applied_id(), Some(id(0, 2)), "{}", node.view.name);
    }
}
