//! Property tests of the rollout engine: random fleets (kernels, supported or not, agents
//! or not, nodes joining, leaving and flapping NotReady shorter and longer than the grace),
//! node life (reboots into the same or another kernel, silent agents, cordons, node
//! problems of every reason an agent reports, crashes on probation after a rollout), random
//! wave specs, and fault schedules (releases that stall, taint or crash on some nodes, a
//! failing Prometheus gate, a release published mid-rollout), run in a loop with simulated
//! agents. Every step checks the rollout's invariants, and every run must end in a terminal
//! phase.
//!
//! The number of cases comes from `PROPTEST_CASES` (default 10,000 for this file).

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod engine_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use engine_support::*;
use jiff::Timestamp;
use kpersist_crds::{
    Blame, ComparisonOperator, FailurePolicy, MaintenanceWindow, NodeErrorReason, NodePatchState,
    PatchAction, PolicyPhase, PrometheusGate, parse_duration,
};
use kpersist_operator::engine::{Decision, GateVerdict, RolloutEvent};
use proptest::prelude::*;

/// Steps after the last scheduled event within which the rollout must settle.
const SETTLE_BOUND: usize = 600;

#[derive(Clone, Debug)]
struct NodePlan {
    /// Kernel index; `UNSUPPORTED_KERNEL` has no release at all.
    kernel: usize,
    applied_v1: bool,
    selected: bool,
    conflicted: bool,
    has_agent: bool,
    livepatch: bool,
    /// Applying the broken release fails on this node.
    vulnerable: bool,
    /// NotReady from this step for this many steps.
    flap: Option<(usize, usize)>,
    join_at: Option<usize>,
    leave_at: Option<usize>,
    work_ticks: u32,
    /// Something that happens to the node at a step.
    life: Option<(usize, Life)>,
}

/// What happens to a node besides joining, leaving and NotReady.
#[derive(Clone, Copy, Debug)]
enum Life {
    /// It reboots into this kernel.
    RebootInto(usize),
    /// Its agent stops answering for good.
    Silent,
    /// It is cordoned.
    Cordon,
    /// It has trouble of its own with this reason for ten steps (the repository is
    /// unreachable from it, a host error, lockdown, another tool's livepatch, ...).
    Trouble(NodeErrorReason),
    /// Its trouble is over.
    Heals,
    /// It goes down on probation with the release it runs.
    Crash,
}

fn life(kernels: usize) -> impl Strategy<Value = Life> {
    prop_oneof![
        (0..kernels).prop_map(Life::RebootInto),
        Just(Life::Silent),
        Just(Life::Cordon),
        prop::sample::select(NODE_TROUBLE.to_vec()).prop_map(Life::Trouble),
        Just(Life::Crash),
    ]
}

const UNSUPPORTED_KERNEL: usize = 9;

/// Every reason an agent reports for a node's own trouble.
const NODE_TROUBLE: [NodeErrorReason; 6] = [
    NodeErrorReason::DownloadFailed,
    NodeErrorReason::HostError,
    NodeErrorReason::LockdownRefused,
    NodeErrorReason::ForeignLivepatch,
    NodeErrorReason::ModuleNameInUse,
    NodeErrorReason::UntrustedRelease,
];

#[derive(Clone, Debug)]
struct Scenario {
    kernels: usize,
    nodes: Vec<NodePlan>,
    /// (percent?, value, bake minutes), sorted into non-decreasing sizes.
    waves: Vec<(bool, u32, u32)>,
    max_in_flight: u32,
    max_failures: u32,
    failure_policy: FailurePolicy,
    paused: bool,
    dry_run: bool,
    /// Window opening hour and length in hours (UTC).
    window: Option<(u8, u8)>,
    /// The broken release version and how it fails.
    broken: Option<(u64, Fault)>,
    /// The gate fails while any node runs this version.
    gate_fails_on: Option<u64>,
    /// With a gate: the steps (from, length) during which it cannot be evaluated.
    gate_outage: Option<(usize, usize)>,
    /// Step at which v4 is published for kernel 0.
    publish_at: Option<usize>,
    pinned: Option<u64>,
    step_seconds: i64,
    /// Steps whose status write is lost, as when the operator dies or the status update
    /// conflicts. The node writes land first, except in a decision that marks a release
    /// bad, whose status the controller writes first: then nothing lands.
    lost_status: Vec<usize>,
}

fn node_plan(kernels: usize) -> impl Strategy<Value = NodePlan> {
    (
        prop_oneof![9 => 0..kernels, 1 => Just(UNSUPPORTED_KERNEL)],
        any::<bool>(),
        prop::bool::weighted(0.92),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.95),
        prop::bool::weighted(0.95),
        prop::bool::weighted(0.35),
        prop::option::weighted(0.2, (0usize..40, 1usize..8)),
        prop::option::weighted(0.1, 1usize..40),
        prop::option::weighted(0.08, 1usize..60),
        (
            1u32..=3,
            prop::option::weighted(0.2, (0usize..50, life(kernels))),
        ),
    )
        .prop_map(
            |(
                kernel,
                applied_v1,
                selected,
                conflicted,
                has_agent,
                livepatch,
                vulnerable,
                flap,
                join_at,
                leave_at,
                (work_ticks, life),
            )| {
                NodePlan {
                    kernel,
                    applied_v1,
                    selected,
                    conflicted,
                    has_agent,
                    livepatch,
                    vulnerable,
                    flap,
                    join_at,
                    leave_at,
                    work_ticks,
                    life,
                }
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1usize..=3).prop_flat_map(|kernels| {
        (
            Just(kernels),
            prop::collection::vec(node_plan(kernels), 1..=12),
            prop::collection::vec((any::<bool>(), 1u32..=100, 0u32..=20), 1..=4),
            1u32..=4,
            0u32..=2,
            prop_oneof![3 => Just(FailurePolicy::Revert), 1 => Just(FailurePolicy::Pause)],
            prop::bool::weighted(0.04),
            prop::bool::weighted(0.04),
            prop::option::weighted(0.15, (0u8..24, 1u8..6)),
            prop::option::weighted(
                0.5,
                (
                    2u64..=4,
                    prop_oneof![Just(Fault::Stall), Just(Fault::Taint), Just(Fault::Crash)],
                ),
            ),
            prop::option::weighted(0.15, 2u64..=4),
            (
                prop::option::weighted(0.3, 1usize..50),
                prop::option::weighted(0.05, 1u64..=4),
                20i64..=240,
                prop::collection::vec(0usize..60, 0..4),
                prop::option::weighted(0.5, (0usize..40, 1usize..12)),
            ),
        )
            .prop_map(
                |(
                    kernels,
                    nodes,
                    waves,
                    max_in_flight,
                    max_failures,
                    failure_policy,
                    paused,
                    dry_run,
                    window,
                    broken,
                    gate_fails_on,
                    (publish_at, pinned, step_seconds, lost_status, gate_outage),
                )| {
                    Scenario {
                        kernels,
                        nodes,
                        waves,
                        max_in_flight,
                        max_failures,
                        failure_policy,
                        paused,
                        dry_run,
                        window,
                        broken,
                        gate_fails_on,
                        gate_outage,
                        publish_at,
                        pinned,
                        step_seconds,
                        lost_status,
                    }
                },
            )
    })
}

/// The scenario as a simulation: policy, fleet and repository.
fn build(s: &Scenario) -> Sim {
    let mut spec = policy_spec();
    // Waves must not shrink; percentages are clamped to 1..=100.
    let mut percents: Vec<u32> = s.waves.iter().filter(|w| w.0).map(|w| w.1).collect();
    let mut counts: Vec<u32> = s
        .waves
        .iter()
        .filter(|w| !w.0)
        .map(|w| w.1 % 15 + 1)
        .collect();
    percents.sort_unstable();
    counts.sort_unstable();
    let (mut p, mut c) = (percents.into_iter(), counts.into_iter());
    spec.rollout.waves = s
        .waves
        .iter()
        .map(|&(is_percent, _, bake)| {
            let (nodes, percent) = if is_percent {
                (None, p.next())
            } else {
                (c.next(), None)
            };
            kpersist_crds::Wave {
                nodes,
                percent,
                bake: format!("{bake}m"),
            }
        })
        .collect();
    // Well past what a simulated agent takes (at most four steps), so only silent agents
    // meet the deadline.
    spec.health.node_deadline = Some(format!("{}s", 12 * s.step_seconds));
    spec.rollout.max_in_flight = s.max_in_flight;
    spec.rollout.max_failures = s.max_failures;
    spec.rollout.failure_policy = s.failure_policy;
    spec.rollout.paused = s.paused;
    spec.rollout.dry_run = s.dry_run;
    if let Some((hour, length)) = s.window {
        spec.rollout.maintenance_windows = vec![MaintenanceWindow {
            days: vec![],
            start: format!("{hour:02}:00"),
            end: format!("{:02}:00", (hour + length) % 24),
            time_zone: "UTC".into(),
        }];
    }
    if s.gate_fails_on.is_some() {
        spec.health.prometheus = Some(PrometheusGate {
            url: "http://prometheus:9090".into(),
            query: "errors".into(),
            operator: ComparisonOperator::LessThan,
            threshold: 1.0,
            fail_on_empty: false,
            interval: "1m".into(),
            timeout: "10s".into(),
            ca_bundle: None,
            headers: Vec::new(),
        });
    }
    spec.repository.pinned_version = s.pinned;
    let published = start_time()
        .checked_sub(jiff::SignedDuration::from_hours(240))
        .unwrap_or(start_time());
    let releases = (0..s.kernels)
        .flat_map(|k| (1..=3).map(move |v| release(k, v, published)))
        .collect();
    let mut sim = Sim::new(spec, Vec::new(), releases);
    for (i, plan) in s.nodes.iter().enumerate() {
        if plan.join_at.is_none() {
            sim.nodes.push(sim_node(s, i, plan));
        }
    }
    sim
}

fn sim_node(s: &Scenario, index: usize, plan: &NodePlan) -> SimNode {
    let applied = (plan.applied_v1 && plan.kernel != UNSUPPORTED_KERNEL).then_some(1);
    let mut node = SimNode::new(&format!("node-{index:02}"), plan.kernel, applied);
    node.unselected = !plan.selected;
    if plan.conflicted {
        node.view.other_policies = vec!["other".into()];
    }
    if !plan.has_agent {
        node.view.lpn = None;
    } else if !plan.livepatch
        && let Some(status) = node
            .view
            .lpn
            .as_mut()
            .and_then(|l| std::sync::Arc::make_mut(l).status.as_mut())
    {
        status.livepatch_supported = false;
        status.state = Some(NodePatchState::Unsupported);
    }
    node.work_ticks = plan.work_ticks;
    if let (Some((version, fault)), true) = (s.broken, plan.vulnerable) {
        for k in 0..s.kernels {
            node.faults.insert(id(k, version), fault);
        }
    }
    node
}

/// What the checker remembers across steps.
#[derive(Default)]
struct Memory {
    /// The bad releases the policy status recorded after the last write.
    bad: BTreeSet<String>,
    /// Per node: the release of its last Apply and what it ran when that was written.
    last_apply: BTreeMap<String, (String, Option<String>)>,
    /// The rollout being watched (its startedAt) and, per wave, its nodes and since when
    /// all of them have settled.
    rollout: Option<String>,
    waves: BTreeMap<u32, (BTreeSet<String>, Option<Timestamp>)>,
    previous_phase: Option<PolicyPhase>,
    /// Nodes whose slot the engine freed (NotReady past the grace, or past the deadline)
    /// since their last request: one that comes back finishes its apply above
    /// maxInFlight.
    freed: BTreeSet<String>,
    /// (node, release) handed out since the last rollout ended, as recorded in the status:
    /// the nodes an automatic revert may take a release from.
    handed: BTreeSet<(String, String)>,
    rollout_end: Option<String>,
}

fn bake_of(sim: &Sim, wave: u32) -> Duration {
    let waves = &sim.policy.spec.rollout.waves;
    let index = (wave as usize).saturating_sub(1).min(waves.len() - 1);
    parse_duration(&waves[index].bake).unwrap_or_default()
}

/// Checks one decision against the state it was made from, before it is written.
fn check_decision(
    sim: &Sim,
    memory: &mut Memory,
    decision: &Decision,
) -> Result<(), TestCaseError> {
    // A rollout that ends now takes its hand-outs with it; one this decision starts keeps
    // the nodes it hands out below.
    if decision.status.last_rollout_end != memory.rollout_end {
        memory
            .rollout_end
            .clone_from(&decision.status.last_rollout_end);
        memory.handed.clear();
    }
    reverts_stay_in_the_running_rollout(sim, memory, decision)?;
    let n = &decision.status.nodes;
    let states = [
        n.patched,
        n.applying,
        n.reverting,
        n.pending,
        n.failed,
        n.unsupported,
        n.crash_suspected,
        n.node_problems,
        n.unknown,
        n.conflicted,
    ];
    prop_assert_eq!(
        states.iter().sum::<u32>(),
        n.total,
        "the node states do not partition the selected nodes: {:?}",
        n
    );
    let allowed: BTreeSet<&str> = sim
        .nodes
        .iter()
        .filter(|n| !n.unselected && n.view.other_policies.is_empty() && n.view.lpn.is_some())
        .map(|n| n.view.name.as_str())
        .collect();
    let spec = &sim.policy.spec.rollout;
    let now_bad: BTreeSet<String> = decision
        .status
        .bad_releases
        .iter()
        .map(|b| b.release.clone())
        .collect();
    prop_assert!(
        now_bad.is_superset(&memory.bad),
        "bad releases were forgotten"
    );
    let gate_failed = matches!(sim.gate, Some(GateVerdict::Fail(_)));
    no_wave_passes_an_unjudged_bake(sim, decision)?;
    for release in now_bad.difference(&recorded_bad(sim)) {
        prop_assert!(
            gate_failed || release_evidence(sim, release),
            "{} marked bad with no node reporting a release's fault on it",
            release
        );
    }
    every_holder_of_a_bad_release_is_sent_back(sim, decision, &now_bad)?;
    if spec.dry_run {
        prop_assert!(
            decision.desired.is_empty(),
            "dry run wrote {:?}",
            decision.desired
        );
    }
    first_exposures_within_the_canary(sim, memory, decision)?;
    overdue_nodes_are_resolved(sim, decision)?;
    no_node_joins_a_baking_wave(sim, decision)?;
    for (name, desired) in &decision.desired {
        prop_assert!(
            allowed.contains(name.as_str()),
            "touched {name}, which is not this policy's alone"
        );
        let Some(desired) = desired else { continue };
        if desired.action != PatchAction::Apply {
            continue;
        }
        prop_assert!(!spec.paused, "{name} started while paused");
        let release = desired
            .release
            .as_ref()
            .map(|r| r.id.clone())
            .unwrap_or_default();
        prop_assert!(
            !now_bad.contains(&release),
            "bad release {release} handed to {name}"
        );
        let Some(rollout) = &decision.status.rollout else {
            return Err(TestCaseError::fail(format!(
                "{name} handed {release} with no rollout"
            )));
        };
        // Nodes carry the rollout's wave numbered past the earlier rollouts' waves.
        let wave = desired
            .wave
            .unwrap_or(0)
            .saturating_sub(rollout.wave_offset);
        prop_assert_eq!(
            rollout.wave,
            wave,
            "{} handed a release outside the current wave",
            name
        );
        if memory.rollout.as_deref() != Some(rollout.started_at.as_str()) {
            memory.rollout = Some(rollout.started_at.clone());
            memory.waves.clear();
        }
        // A node handed a release again (it rebooted into another kernel) leaves the wave
        // it was in.
        for (nodes, _) in memory.waves.values_mut() {
            nodes.remove(name);
        }
        for (&earlier, (nodes, settled_since)) in memory.waves.range(..wave) {
            // A wave whose nodes all left it (the cluster, or the kernel their release was
            // for) has nothing left to bake.
            if !nodes.iter().any(|n| still_in_wave(sim, memory, n)) {
                continue;
            }
            let Some(since) = settled_since else {
                return Err(TestCaseError::fail(format!(
                    "{name} handed wave {wave} while wave {earlier} ({nodes:?}) is not done"
                )));
            };
            let baked = since.checked_add(bake_of(sim, earlier)).unwrap_or(*since);
            prop_assert!(
                baked <= sim.now,
                "wave {} started before wave {} baked",
                wave,
                earlier
            );
        }
        memory.freed.remove(name);
        memory.handed.insert((name.clone(), release.clone()));
        let entry = memory.waves.entry(wave).or_default();
        entry.0.insert(name.clone());
        entry.1 = None;
        let previous = sim.node(name).applied_id();
        memory.last_apply.insert(name.clone(), (release, previous));
    }
    Ok(())
}

/// Every selected node this policy asked to apply a release the decision holds bad is sent
/// back from it in the same decision: none is left on a bad release, whichever rollout or
/// wave gave it the release (in a dry run nothing is written at all).
fn every_holder_of_a_bad_release_is_sent_back(
    sim: &Sim,
    decision: &Decision,
    bad: &BTreeSet<String>,
) -> Result<(), TestCaseError> {
    if sim.policy.spec.rollout.dry_run {
        return Ok(());
    }
    for node in sim.nodes.iter().filter(|n| !n.unselected) {
        let Some(release) = node
            .desired()
            .filter(|d| d.policy == POLICY && d.action == PatchAction::Apply)
            .and_then(|d| d.release.as_ref())
            .filter(|r| bad.contains(&r.id))
        else {
            continue;
        };
        let sent_back = decision.desired.iter().any(|(name, d)| {
            *name == node.view.name
                && d.as_ref().is_some_and(|d| {
                    d.action == PatchAction::Revert
                        && d.previous.as_ref().is_some_and(|p| p.id == release.id)
                })
        });
        prop_assert!(
            sent_back,
            "{} holds bad {} and is not sent back",
            node.view.name,
            release.id
        );
    }
    Ok(())
}

/// Whether node `name` is still in the cluster, on the kernel of the release it was
/// last handed.
fn still_in_wave(sim: &Sim, memory: &Memory, name: &str) -> bool {
    let Some(node) = sim.nodes.iter().find(|s| s.view.name == name) else {
        return false;
    };
    let kernel = node.view.kernel_release.as_deref().unwrap_or_default();
    memory
        .last_apply
        .get(name)
        .is_none_or(|(release, _)| release.starts_with(&format!("{kernel}/")))
}

/// Automatic revert protects the rollout that is running, not history: a decision sends a
/// node back from a release it runs only when the node was handed that release since the
/// last rollout ended, or the release was already recorded bad (a revert repeated after a
/// lost write), or the policy asks for late failures to be revoked.
fn reverts_stay_in_the_running_rollout(
    sim: &Sim,
    memory: &Memory,
    decision: &Decision,
) -> Result<(), TestCaseError> {
    if sim.policy.spec.rollout.late_failure_policy == FailurePolicy::Revert {
        return Ok(());
    }
    for (name, desired) in &decision.desired {
        let Some(from) = desired
            .as_ref()
            .filter(|d| d.action == PatchAction::Revert)
            .and_then(|d| d.previous.as_ref())
        else {
            continue;
        };
        let node = sim.node(name);
        let runs = node.applied_id().as_deref() == Some(from.id.as_str());
        let ours = memory.handed.contains(&(name.clone(), from.id.clone()))
            || in_recorded_rollout(sim, node, &from.id);
        prop_assert!(
            !runs || ours || memory.bad.contains(&from.id),
            "{} sent back from {}, which it runs since an earlier rollout",
            name,
            from.id
        );
    }
    Ok(())
}

/// Whether `node` holds an Apply of `release` numbered in a wave of the rollout the
/// recorded status says is running.
fn in_recorded_rollout(sim: &Sim, node: &SimNode, release: &str) -> bool {
    let Some(rollout) = sim.policy.status.as_ref().and_then(|s| s.rollout.as_ref()) else {
        return false;
    };
    node.desired()
        .filter(|d| d.action == PatchAction::Apply)
        .filter(|d| d.release.as_ref().is_some_and(|r| r.id == release))
        .and_then(|d| d.wave)
        .is_some_and(|w| w > rollout.wave_offset && w <= rollout.wave_offset + rollout.waves)
}

/// No wave waits forever: every node of this policy alone whose request is unfinished past
/// the node deadline (a silent or stuck agent) is resolved as a node problem, unless the
/// decision asks it something new (a revert), which starts a new deadline.
fn overdue_nodes_are_resolved(sim: &Sim, decision: &Decision) -> Result<(), TestCaseError> {
    let late = sim
        .nodes
        .iter()
        .filter(|n| !n.unselected && n.view.other_policies.is_empty())
        .filter(|n| overdue(n, sim))
        .filter(|n| {
            !decision
                .desired
                .iter()
                .any(|(name, _)| *name == n.view.name)
        })
        .count();
    let resolved = decision.status.nodes.node_problems as usize;
    prop_assert!(
        resolved >= late,
        "{} node(s) past the node deadline, {} resolved as node problems",
        late,
        resolved
    );
    Ok(())
}

/// A bake ends only on a passing gate: with a gate that has not said Pass (inconclusive,
/// or not asked yet), no decision finishes a wave or the rollout while the baking wave
/// still has nodes (a wave whose nodes all left has nothing to judge), and a gate that
/// cannot be evaluated blames nothing (the bad-release invariant asks for node evidence).
fn no_wave_passes_an_unjudged_bake(sim: &Sim, decision: &Decision) -> Result<(), TestCaseError> {
    if sim.policy.spec.health.prometheus.is_none() || sim.gate == Some(GateVerdict::Pass) {
        return Ok(());
    }
    let Some(rollout) = sim.policy.status.as_ref().and_then(|s| s.rollout.as_ref()) else {
        return Ok(());
    };
    let wave = rollout.wave_offset.saturating_add(rollout.wave);
    let members = sim.nodes.iter().any(|n| {
        n.desired()
            .is_some_and(|d| d.action == PatchAction::Apply && d.wave == Some(wave))
    });
    let baked = rollout.bake_started_at.is_some() && members;
    for event in &decision.events {
        let passed = matches!(
            event,
            RolloutEvent::WaveDone { .. } | RolloutEvent::RolloutComplete { .. }
        );
        prop_assert!(
            !(baked && passed),
            "{:?} while the gate said {:?}",
            event,
            sim.gate
        );
    }
    Ok(())
}

/// No bake is restarted by a newcomer: once the recorded status says the current wave's
/// bake began, no decision hands a node into that wave (a joiner, or a node rebooted into
/// another kernel, waits for a later wave).
fn no_node_joins_a_baking_wave(sim: &Sim, decision: &Decision) -> Result<(), TestCaseError> {
    let Some(rollout) = sim.policy.status.as_ref().and_then(|s| s.rollout.as_ref()) else {
        return Ok(());
    };
    let Some(since) = &rollout.bake_started_at else {
        return Ok(());
    };
    let baking = rollout.wave_offset.saturating_add(rollout.wave);
    for (name, desired) in &decision.desired {
        let wave = desired
            .as_ref()
            .filter(|d| d.action == PatchAction::Apply)
            .and_then(|d| d.wave);
        prop_assert!(
            wave != Some(baking),
            "{} handed into wave {}, whose bake began at {}",
            name,
            rollout.wave,
            since
        );
    }
    Ok(())
}

/// No release runs for the first time on more nodes than the canary wave has: a decision
/// that hands a release out while no node has run it for the canary wave's bake leaves at
/// most the canary wave's size of nodes applying or running it (counted over every selected node, an
/// upper bound of the rollout's population).
fn first_exposures_within_the_canary(
    sim: &Sim,
    memory: &Memory,
    decision: &Decision,
) -> Result<(), TestCaseError> {
    let spec = &sim.policy.spec.rollout;
    let selected = sim.nodes.iter().filter(|n| !n.unselected).count();
    let single_wave = spec.waves.len() == 1 && spec.waves[0].percent == Some(100);
    if single_wave || spec.dry_run {
        return Ok(());
    }
    let first = &spec.waves[0];
    let canary = match (first.nodes, first.percent) {
        (Some(n), _) => n as usize,
        (None, p) => (selected * p.unwrap_or(100) as usize).div_ceil(100),
    };
    let bake = parse_duration(&first.bake).unwrap_or_default();
    let written: BTreeMap<&str, &Option<kpersist_crds::DesiredPatch>> = decision
        .desired
        .iter()
        .map(|(n, d)| (n.as_str(), d))
        .collect();
    let mut holders: BTreeMap<String, usize> = BTreeMap::new();
    let mut baked: BTreeSet<String> = BTreeSet::new();
    for node in sim.nodes.iter().filter(|n| !n.unselected) {
        let status = node.view.lpn.as_ref().and_then(|l| l.status.as_ref());
        let running = status
            .filter(|s| {
                matches!(
                    s.state,
                    Some(
                        NodePatchState::Applied
                            | NodePatchState::Downloading
                            | NodePatchState::Applying
                    )
                )
            })
            .and_then(|s| s.applied.as_ref());
        if let Some(applied) = running {
            let since = applied
                .applied_at
                .as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok());
            if since.is_none_or(|t| t.checked_add(bake).is_ok_and(|end| end <= sim.now)) {
                baked.insert(applied.id.clone());
            }
            *holders.entry(applied.id.clone()).or_default() += 1;
        }
        let desired = match written.get(node.view.name.as_str()) {
            Some(d) => d.as_ref(),
            None => node.desired(),
        };
        let asked = desired
            .filter(|d| d.action == PatchAction::Apply)
            .and_then(|d| d.release.as_ref())
            .map(|r| r.id.clone())
            .filter(|id| running.is_none_or(|a| &a.id != id));
        let new_request = written.contains_key(node.view.name.as_str());
        let applying = new_request || (!node.settled() && !memory.freed.contains(&node.view.name));
        if let (Some(id), true) = (asked, applying) {
            *holders.entry(id).or_default() += 1;
        }
    }
    let handed: BTreeSet<String> = decision
        .desired
        .iter()
        .filter_map(|(_, d)| d.as_ref())
        .filter(|d| d.action == PatchAction::Apply)
        .filter_map(|d| d.release.as_ref().map(|r| r.id.clone()))
        .collect();
    for (release, count) in holders.into_iter().filter(|(r, _)| handed.contains(r)) {
        prop_assert!(
            baked.contains(&release) || count <= canary.max(1),
            "{} runs for the first time on {} nodes, more than the canary's {}",
            release,
            count,
            canary
        );
    }
    Ok(())
}

/// Whether a node reports a release's fault on `release` (the kernel refused it, its
/// transition stalled, it tainted, the node crashed with it), or holds a revert from it (a
/// decision whose status write was lost marked it bad).
fn release_evidence(sim: &Sim, release: &str) -> bool {
    sim.nodes.iter().any(|node| {
        let Some(lpn) = node.view.lpn.as_ref() else {
            return false;
        };
        let reverted_from = lpn.spec.desired.as_ref().is_some_and(|d| {
            d.action == PatchAction::Revert && d.previous.as_ref().is_some_and(|p| p.id == release)
        });
        let reported = lpn.status.as_ref().is_some_and(|s| {
            s.refused_releases.iter().any(|r| r == release)
                || s.last_error.as_ref().is_some_and(|e| {
                    e.reason.blame() == Blame::Release && e.release.as_deref() == Some(release)
                })
        });
        reverted_from || reported
    })
}

fn recorded_bad(sim: &Sim) -> BTreeSet<String> {
    sim.policy
        .status
        .iter()
        .flat_map(|s| &s.bad_releases)
        .map(|b| b.release.clone())
        .collect()
}

/// Checks the fleet after a decision was written.
fn check_fleet(
    sim: &Sim,
    memory: &Memory,
    phase: Option<PolicyPhase>,
) -> Result<(), TestCaseError> {
    let max = sim.policy.spec.rollout.max_in_flight as usize;
    // A node NotReady past the grace or unfinished past the deadline has its slot freed.
    let applying = sim
        .nodes
        .iter()
        .filter(|n| !memory.freed.contains(&n.view.name) && !n.resumed)
        .filter(|n| {
            n.desired().is_some_and(|d| d.action == PatchAction::Apply)
                && (!n.settled()
                    || matches!(
                        n.view
                            .lpn
                            .as_ref()
                            .and_then(|l| l.status.as_ref())
                            .and_then(|s| s.state),
                        Some(NodePatchState::Downloading | NodePatchState::Applying)
                    ))
        })
        .count();
    prop_assert!(
        applying <= max,
        "{} nodes applying, maxInFlight {}",
        applying,
        max
    );
    let revert_done = memory.previous_phase == Some(PolicyPhase::RollingBack)
        && phase != Some(PolicyPhase::RollingBack);
    if revert_done {
        // A node that rebooted lost its livepatches whatever it was asked; a silent one is
        // given up on at the deadline and reported as a node problem.
        for node in sim.nodes.iter().filter(|n| !n.rebooted && !n.silent) {
            let Some((release, previous)) = memory.last_apply.get(&node.view.name) else {
                continue;
            };
            if memory.bad.contains(release) {
                prop_assert_eq!(
                    &node.applied_id(),
                    previous,
                    "{} took bad {} and is not back on its previous release",
                    node.view.name,
                    release
                );
            }
        }
    }
    Ok(())
}

/// Refreshes since when each watched wave's nodes have all settled, and which nodes had
/// their slot freed.
fn note_settled(sim: &Sim, memory: &mut Memory) {
    for node in &sim.nodes {
        if past_grace(node, sim) || overdue(node, sim) {
            memory.freed.insert(node.view.name.clone());
        }
    }
    for (nodes, since) in memory.waves.values_mut() {
        // A node of a settled wave that crashed and took its request up again by itself
        // does not reopen the wave: the rollout had moved on, and the reboot is the node's.
        let was_settled = since.is_some();
        let all = nodes.iter().all(|n| {
            sim.nodes
                .iter()
                .find(|s| &s.view.name == n)
                .is_none_or(|node| {
                    idle_or_silent(node)
                        || past_grace(node, sim)
                        || overdue(node, sim)
                        || (was_settled && node.resumed)
                })
        });
        *since = match (all, *since) {
            (true, Some(t)) => Some(t),
            (true, None) => Some(sim.now),
            (false, _) => None,
        };
    }
}

/// Applies the scenario's schedule for `step`; returns whether anything is still to come.
fn schedule(s: &Scenario, sim: &mut Sim, step: usize) -> bool {
    let mut pending = false;
    for (i, plan) in s.nodes.iter().enumerate() {
        let name = format!("node-{i:02}");
        if plan.join_at == Some(step) {
            sim.nodes.push(sim_node(s, i, plan));
        }
        if plan.leave_at == Some(step) {
            sim.nodes.retain(|n| n.view.name != name);
        }
        let now = sim.now;
        if let Some((from, length)) = plan.flap
            && let Some(node) = sim.nodes.iter_mut().find(|n| n.view.name == name)
        {
            if step == from {
                node.not_ready(now);
            } else if step == from + length {
                node.ready();
            }
        }
        let heal = match plan.life {
            Some((at, Life::Trouble(_))) => Some(at + 10),
            _ => None,
        };
        let happening = match plan.life {
            Some((at, life)) if at == step => Some(life),
            _ if heal == Some(step) => Some(Life::Heals),
            _ => None,
        };
        if let Some(life) = happening
            && let Some(node) = sim.nodes.iter_mut().find(|n| n.view.name == name)
        {
            live(node, life, now);
        }
        let last = [
            plan.join_at,
            plan.leave_at,
            plan.flap.map(|(f, l)| f + l),
            plan.life.map(|(at, _)| at),
            heal,
        ];
        pending |= last.into_iter().flatten().any(|at| at > step);
    }
    if s.publish_at == Some(step)
        && let Some(repo) = sim.repository.as_mut()
    {
        repo.index.releases.push(release(0, 4, sim.now));
    }
    let outage_ends = s.gate_outage.map(|(from, length)| from + length);
    pending | s.publish_at.is_some_and(|at| at > step) | outage_ends.is_some_and(|at| at > step)
}

/// Whether the scenario's gate cannot be evaluated at `step`.
fn in_outage(s: &Scenario, step: usize) -> bool {
    s.gate_outage
        .is_some_and(|(from, length)| (from..from + length).contains(&step))
}

/// Makes `life` happen to `node`.
fn live(node: &mut SimNode, life: Life, now: Timestamp) {
    match life {
        Life::RebootInto(k) => {
            let supported = node
                .view
                .lpn
                .as_ref()
                .and_then(|l| l.status.as_ref())
                .is_some_and(|s| s.livepatch_supported);
            if supported {
                node.reboot_into(k, now);
            }
        }
        Life::Silent => node.silent = true,
        Life::Cordon => node.view.leaving = true,
        Life::Trouble(reason) => {
            for k in 0..=UNSUPPORTED_KERNEL {
                for v in 1..=4 {
                    node.faults.insert(id(k, v), Fault::Trouble(reason));
                }
            }
        }
        Life::Heals => node.faults.retain(|_, f| !matches!(f, Fault::Trouble(_))),
        Life::Crash => node.crash_on_probation(now),
    }
}

/// Whether the node has been NotReady past the policy's grace: the engine no longer waits
/// for it.
fn past_grace(node: &SimNode, sim: &Sim) -> bool {
    let grace = parse_duration(&sim.policy.spec.health.not_ready_grace).unwrap_or_default();
    node.view
        .not_ready_since
        .and_then(|since| since.checked_add(grace).ok())
        .is_some_and(|end| end <= sim.now)
}

/// Whether the node's request is unfinished past the policy's node deadline.
fn overdue(node: &SimNode, sim: &Sim) -> bool {
    let deadline = sim
        .policy
        .spec
        .health
        .node_deadline
        .as_deref()
        .and_then(|d| parse_duration(d).ok())
        .unwrap_or_default();
    node.desired()
        .and_then(|d| d.asked_at.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok())
        .and_then(|asked| asked.checked_add(deadline).ok())
        .is_some_and(|end| end <= sim.now)
        && !node.settled()
}

/// Whether the node is done with its work, or will never do any (a silent agent).
fn idle_or_silent(node: &SimNode) -> bool {
    node.silent || node.settled()
}

fn gate(s: &Scenario, sim: &Sim, step: usize) -> Option<GateVerdict> {
    let version = s.gate_fails_on?;
    if in_outage(s, step) {
        return Some(GateVerdict::Inconclusive("Prometheus is down".into()));
    }
    let failing = sim.nodes.iter().any(|n| {
        n.view
            .lpn
            .as_ref()
            .and_then(|l| l.status.as_ref())
            .and_then(|st| st.applied.as_ref())
            .is_some_and(|a| a.version == version)
    });
    Some(if failing {
        GateVerdict::Fail(format!("errors >= 1 while v{version} runs"))
    } else {
        GateVerdict::Pass
    })
}

fn run(s: &Scenario) -> Result<(), TestCaseError> {
    let mut sim = build(s);
    let mut memory = Memory::default();
    let mut quiet = 0;
    let mut step = 0;
    let mut last_event = 0;
    while step < last_event + SETTLE_BOUND {
        if schedule(s, &mut sim, step) {
            last_event = step + 1;
        }
        sim.gate = gate(s, &sim, step);
        note_settled(&sim, &mut memory);
        let decision = sim.decide();
        check_decision(&sim, &mut memory, &decision)?;
        if s.lost_status.contains(&step) {
            // The controller writes the status before the nodes when the decision marks a
            // release bad; a failed status write then ends the reconcile before any node
            // is written. Otherwise the node writes have landed when the status is lost.
            if !decision.marks_releases_bad(sim.policy.status.as_ref()) {
                let status = sim.policy.status.clone();
                sim.apply(&decision);
                sim.policy.status = status;
            }
        } else {
            sim.apply(&decision);
        }
        // Only a bad release the status recorded must never be forgotten: one decided in a
        // write that was lost can be forgotten when the failed node leaves before the
        // decision is repeated, since no API object holds it any more.
        memory.bad = recorded_bad(&sim);
        let phase = decision.status.phase;
        check_fleet(&sim, &memory, phase)?;
        memory.previous_phase = phase;
        // A wave an inconclusive gate holds is no end: it must go on once the gate answers.
        let held = decision
            .status
            .rollout
            .as_ref()
            .is_some_and(|r| r.gate_inconclusive.is_some());
        let terminal = !held
            && matches!(
                phase,
                Some(
                    PolicyPhase::Complete
                        | PolicyPhase::Failed
                        | PolicyPhase::Paused
                        | PolicyPhase::Idle
                )
            );
        let settled = sim.nodes.iter().all(idle_or_silent);
        quiet = if terminal && settled && decision.desired.is_empty() && step >= last_event {
            quiet + 1
        } else {
            0
        };
        if quiet >= 3 {
            return Ok(());
        }
        sim.agents();
        // With nothing moving, jump to when the engine wants to look again.
        let wait = match decision.requeue_after {
            Some(wait) if settled => wait.as_secs().clamp(1, 8 * 86_400) as i64,
            _ => 0,
        };
        sim.advance(s.step_seconds.max(wait));
        step += 1;
    }
    Err(TestCaseError::fail(format!(
        "no terminal state {SETTLE_BOUND} steps after the last scheduled event: phase {:?}, status {:?}",
        sim.phase(),
        sim.policy.status
    )))
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn rollouts_keep_their_invariants_and_finish(s in scenario()) {
        run(&s)?;
    }
}

/// One node on kernel 0 and one wave of one node, with nothing else scheduled.
fn one_node() -> Scenario {
    Scenario {
        kernels: 1,
        nodes: vec![NodePlan {
            kernel: 0,
            applied_v1: true,
            selected: true,
            conflicted: false,
            has_agent: true,
            livepatch: true,
            vulnerable: false,
            flap: None,
            join_at: None,
            leave_at: None,
            work_ticks: 1,
            life: None,
        }],
        waves: vec![(false, 1, 0)],
        max_in_flight: 1,
        max_failures: 0,
        failure_policy: FailurePolicy::Revert,
        paused: false,
        dry_run: false,
        window: None,
        broken: None,
        gate_fails_on: None,
        gate_outage: None,
        publish_at: None,
        pinned: None,
        step_seconds: 20,
        lost_status: vec![],
    }
}

/// A wave fails on its only node, the status write recording the bad release is lost, and
/// the node leaves the cluster before the next decision, taking its `Revert` (the other
/// record of the bad release) with it.
#[test]
fn a_lost_status_write_then_the_failed_node_leaving_forgets_no_recorded_bad_release() {
    let mut s = one_node();
    s.kernels = 2;
    let node = &mut s.nodes[0];
    node.applied_v1 = false;
    node.flap = Some((3, 2));
    node.leave_at = Some(5);
    node.work_ticks = 3;
    s.lost_status = vec![4];
    if let Err(error) = run(&s) {
        panic!("{error}");
    }
}

/// The checker's node-life invariant fails on a mutant decision: a release marked bad while
/// no node reports a release's fault on it (as an engine that blamed a download failure or
/// a NotReady node would do).
#[test]
fn the_checker_refuses_a_release_marked_bad_without_release_evidence() {
    let s = one_node();
    let mut sim = build(&s);
    sim.nodes[0]
        .faults
        .insert(id(0, 3), Fault::Trouble(NodeErrorReason::DownloadFailed));
    for _ in 0..4 {
        sim.step(20);
    }
    let mut memory = Memory::default();
    let honest = sim.decide();
    assert!(check_decision(&sim, &mut memory, &honest).is_ok());
    let mut mutant = honest.clone();
    mutant.status.bad_releases.push(kpersist_crds::BadRelease {
        release: id(0, 3),
        reason: "wave 1 failed: node-00 (DownloadFailed)".into(),
        marked_at: sim.now.to_string(),
    });
    let refused = check_decision(&sim, &mut Memory::default(), &mutant);
    assert!(
        refused.is_err_and(|e| e
            .to_string()
            .contains("no node reporting a release's fault")),
        "the checker accepted a release marked bad on a download failure"
    );
}

/// The first-exposure invariant fails on a mutant decision that hands a new release to
/// every node at once.
#[test]
fn the_checker_refuses_a_first_exposure_past_the_canary() {
    let mut s = one_node();
    let node = s.nodes[0].clone();
    s.nodes = vec![node; 3];
    s.waves = vec![(false, 0, 10), (true, 100, 0)];
    s.max_in_flight = 3;
    let sim = build(&s);
    let honest = sim.decide();
    assert_eq!(honest.desired.len(), 1, "the canary wave takes one node");
    assert!(check_decision(&sim, &mut Memory::default(), &honest).is_ok());
    let mut mutant = honest.clone();
    let template = honest.desired[0].1.clone();
    mutant.desired = sim
        .nodes
        .iter()
        .map(|n| (n.view.name.clone(), template.clone()))
        .collect();
    let refused = check_decision(&sim, &mut Memory::default(), &mutant);
    assert!(
        refused.is_err_and(|e| e.to_string().contains("more than the canary's 1")),
        "the checker accepted a release handed to every node at once"
    );
}

/// The overlap invariant fails on a mutant decision that writes to a node another policy
/// selects too (a spec that would flip between the two policies).
#[test]
fn the_checker_refuses_a_write_to_a_node_of_two_policies() {
    let mut s = one_node();
    s.nodes[0].conflicted = true;
    s.nodes.push(one_node().nodes[0].clone());
    let sim = build(&s);
    let honest = sim.decide();
    assert!(check_decision(&sim, &mut Memory::default(), &honest).is_ok());
    let template = honest
        .desired
        .iter()
        .find_map(|(_, d)| d.clone())
        .expect("the other node is handed a release");
    let mut mutant = honest.clone();
    mutant.desired = vec![("node-00".into(), Some(template))];
    let refused = check_decision(&sim, &mut Memory::default(), &mutant);
    assert!(
        refused.is_err_and(|e| e.to_string().contains("not this policy's alone")),
        "the checker accepted a write to a node of two policies"
    );
}

/// The deadline invariant fails on a mutant decision that leaves a silent node's request
/// unresolved past the node deadline.
#[test]
fn the_checker_refuses_a_silent_node_left_in_flight_past_the_deadline() {
    let mut s = one_node();
    s.publish_at = Some(0);
    let mut sim = build(&s);
    sim.step(20);
    sim.nodes[0].silent = true;
    for _ in 0..30 {
        sim.step(20);
    }
    assert!(
        overdue(&sim.nodes[0], &sim),
        "the silent node is past the deadline"
    );
    let honest = sim.decide();
    assert!(overdue_nodes_are_resolved(&sim, &honest).is_ok());
    let mut mutant = honest.clone();
    mutant.status.nodes.node_problems = 0;
    let refused = overdue_nodes_are_resolved(&sim, &mutant);
    assert!(
        refused.is_err_and(|e| e.to_string().contains("past the node deadline")),
        "the checker accepted a silent node left in flight"
    );
}

/// The bake invariant fails on a mutant decision that hands a node into the wave whose bake
/// has begun (as an engine that let a joiner into the running wave would).
#[test]
fn the_checker_refuses_a_node_handed_into_a_baking_wave() {
    let mut s = one_node();
    let node = s.nodes[0].clone();
    s.nodes = vec![node; 3];
    s.waves = vec![(false, 0, 10), (true, 100, 0)];
    s.max_in_flight = 3;
    let mut sim = build(&s);
    for _ in 0..10 {
        sim.step(20);
        if sim.phase() == Some(PolicyPhase::Baking) {
            break;
        }
    }
    assert_eq!(sim.phase(), Some(PolicyPhase::Baking), "the canary bakes");
    let honest = sim.decide();
    assert!(no_node_joins_a_baking_wave(&sim, &honest).is_ok());
    let canary = sim
        .nodes
        .iter()
        .find_map(|n| n.desired().cloned())
        .expect("the canary's request");
    let waiting = sim
        .nodes
        .iter()
        .find(|n| n.desired().is_none())
        .map(|n| n.view.name.clone())
        .expect("a node waits for wave 2");
    let mut mutant = honest.clone();
    mutant.desired = vec![(waiting, Some(canary))];
    let refused = no_node_joins_a_baking_wave(&sim, &mutant);
    assert!(
        refused.is_err_and(|e| e.to_string().contains("whose bake began")),
        "the checker accepted a node handed into a baking wave"
    );
}

/// The revert invariant fails on a mutant decision that sends back a node running a
/// release an earlier, finished rollout gave it (as an engine that revoked a proven
/// release on a later failure would).
#[test]
fn the_checker_refuses_a_revert_of_a_node_outside_the_running_rollout() {
    let s = one_node();
    let mut sim = build(&s);
    let mut memory = Memory::default();
    for _ in 0..10 {
        let decision = sim.decide();
        check_decision(&sim, &mut memory, &decision).expect("the honest rollout passes");
        sim.apply(&decision);
        sim.agents();
        sim.advance(20);
    }
    assert_eq!(
        sim.phase(),
        Some(PolicyPhase::Complete),
        "the rollout ended"
    );
    let honest = sim.decide();
    assert!(check_decision(&sim, &mut memory, &honest).is_ok());
    let applied = sim.nodes[0].desired().cloned().expect("the node's request");
    let mut mutant = honest.clone();
    mutant.desired = vec![("node-00".into(), Some(applied.revert(sim.now.to_string())))];
    let refused = check_decision(&sim, &mut memory, &mutant);
    assert!(
        refused.is_err_and(|e| e.to_string().contains("since an earlier rollout")),
        "the checker accepted a revert of a node outside the running rollout"
    );
}

/// The bad-release invariant fails on a mutant decision that marks a release bad and leaves
/// one of the nodes holding it where it is.
#[test]
fn the_checker_refuses_a_holder_of_a_bad_release_left_on_it() {
    let mut s = one_node();
    let node = s.nodes[0].clone();
    s.nodes = vec![node.clone(), node];
    s.nodes[1].vulnerable = true;
    s.broken = Some((3, Fault::Stall));
    s.waves = vec![(false, 1, 0)];
    let mut sim = build(&s);
    let decision = loop {
        let decision = sim.decide();
        if !decision.status.bad_releases.is_empty() {
            break decision;
        }
        assert!(
            sim.now < at("2026-03-03T00:00:00Z"),
            "v3 is never marked bad"
        );
        sim.apply(&decision);
        sim.agents();
        sim.advance(20);
    };
    let bad: BTreeSet<String> = [id(0, 3)].into();
    assert!(every_holder_of_a_bad_release_is_sent_back(&sim, &decision, &bad).is_ok());
    let mut mutant = decision.clone();
    mutant
        .desired
        .retain(|(_, d)| d.as_ref().is_none_or(|d| d.action != PatchAction::Revert));
    let refused = every_holder_of_a_bad_release_is_sent_back(&sim, &mutant, &bad);
    assert!(
        refused.is_err_and(|e| e.to_string().contains("is not sent back")),
        "the checker accepted a holder of a bad release left on it"
    );
}
