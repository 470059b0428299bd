//! A simulated fleet for the rollout engine's tests: policies, repository indexes and
//! LivePatchNodes built in memory, and agents that act on `spec.desired` the way the real
//! agent does (observe the generation, download, apply or revert, report), with faults.
// Each test crate uses a different part of this module.
#![allow(dead_code)]
// Test support: a failed unwrap, expect or panic is the test's report (clippy.toml exempts
// #[test] functions only, not helpers shared by test crates and benches).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use jiff::Timestamp;
use kpersist_crds::{
    AppliedRelease, DesiredPatch, HealthSpec, LivePatchNode, LivePatchNodeSpec,
    LivePatchNodeStatus, LivePatchPolicy, LivePatchPolicySpec, NodeError, NodeErrorReason,
    NodePatchState, PatchAction, PatchRelease, RepositorySpec, RolloutSpec, Wave,
};
use kpersist_crds::{Condition, LivePatchPolicyStatus, PolicyPhase};
use kpersist_kmod::repository::{Index, Release};
use kpersist_operator::engine::{
    Decision, EngineInput, GateVerdict, NodeView, RepositoryView, RolloutEvent, decide,
};

pub const POLICY: &str = "fleet";
/// A valid ed25519 public key (of the all-zero seed), base64.
pub const KEY: &str = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=";
pub const BASE_URL: &str = "https://patches.example.com/repo";

pub fn at(text: &str) -> Timestamp {
    text.parse()
        .unwrap_or_else(|e| panic!("bad test time {text}: {e}"))
}

pub fn start_time() -> Timestamp {
    at("2026-03-02T10:00:00Z")
}

pub fn kernel(k: usize) -> String {
    format!("6.1.0-{k}-amd64")
}

pub fn build(k: usize) -> String {
    format!("{:040x}", k + 1)
}

/// A release of kernel `k` with version `version`, published at `published`.
pub fn release(k: usize, version: u64, published: Timestamp) -> Release {
    Release {
        kernel_release: kernel(k),
        build_id: build(k),
        version,
        module: format!("modules/k{k}-v{version}.ko"),
        sha256: format!("{:064x}", k as u64 * 1000 + version),
        size: 4096,
        module_name: format!("kpersist_k{k}_v{version}"),
        cves: (0..version)
            .map(|i| format!("CVE-2026-{:04}", 1000 + i))
            .collect(),
        channels: vec!["stable".into()],
        published: published.to_string(),
        yanked: None,
    }
}

pub fn repository(releases: Vec<Release>) -> RepositoryView {
    RepositoryView {
        base_url: BASE_URL.into(),
        index: Index {
            releases,
            ..Index::empty(start_time())
        },
    }
}

pub fn id(k: usize, version: u64) -> String {
    PatchRelease::id_for(&kernel(k), version)
}

pub fn waves(spec: &[(Option<u32>, Option<u32>, &str)]) -> Vec<Wave> {
    spec.iter()
        .map(|&(nodes, percent, bake)| Wave {
            nodes,
            percent,
            bake: bake.into(),
        })
        .collect()
}

pub fn policy_spec() -> LivePatchPolicySpec {
    LivePatchPolicySpec {
        node_selector: Default::default(),
        repository: RepositorySpec {
            url: BASE_URL.into(),
            channel: "stable".into(),
            trusted_keys: vec![KEY.into()],
            trusted_keys_secret: None,
            ca_bundle: None,
            allowed_redirect_hosts: Vec::new(),
            check_interval: "1h".into(),
            delay: None,
            pinned_version: None,
        },
        rollout: RolloutSpec::default(),
        health: HealthSpec::default(),
    }
}

pub fn policy(spec: LivePatchPolicySpec) -> LivePatchPolicy {
    let mut policy = LivePatchPolicy::new(POLICY, spec);
    policy.metadata.generation = Some(1);
    policy
}

/// How a node's agent reacts to applying one release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The transition stalls; the agent reverses it and reports TransitionStalled.
    Stall,
    /// The release loads but the kernel taints; reported as NewTaint.
    Taint,
    /// The node goes down while applying; it comes back CrashSuspected and refuses it.
    Crash,
    /// The node's own trouble with this reason (a failed download, a host error, lockdown,
    /// another tool's livepatch, ...): the agent reports it and loads nothing.
    Trouble(NodeErrorReason),
}

/// One node of the simulated fleet with its agent.
#[derive(Clone, Debug)]
pub struct SimNode {
    pub view: NodeView,
    /// Not matched by the policy's selector: never passed to the engine.
    pub unselected: bool,
    /// Faults per release id.
    pub faults: BTreeMap<String, Fault>,
    /// Agent ticks an apply or revert takes.
    pub work_ticks: u32,
    /// The agent does nothing at all (its pod is gone, the node hangs).
    pub silent: bool,
    /// The node rebooted since it started (its livepatches are gone).
    pub rebooted: bool,
    /// The agent took its request up again by itself after a crash: work no write of the
    /// engine started, so neither its in-flight limit nor its waves answer for it.
    pub resumed: bool,
    work: Option<(Option<PatchRelease>, PatchAction, u32)>,
}

impl SimNode {
    /// A node on kernel `k` with an agent, running `applied` (a version of kernel `k`).
    pub fn new(name: &str, k: usize, applied: Option<u64>) -> SimNode {
        let mut lpn = LivePatchNode::new(name, LivePatchNodeSpec::default());
        lpn.metadata.generation = Some(1);
        lpn.status = Some(LivePatchNodeStatus {
            state: Some(if applied.is_some() {
                NodePatchState::Applied
            } else {
                NodePatchState::Idle
            }),
            kernel_release: Some(kernel(k)),
            build_id: Some(build(k)),
            livepatch_supported: true,
            applied: applied.map(|v| applied_release(&id(k, v), v)),
            observed_generation: Some(1),
            ..LivePatchNodeStatus::default()
        });
        SimNode {
            view: NodeView {
                name: name.into(),
                ready: true,
                not_ready_since: None,
                leaving: false,
                kernel_release: Some(kernel(k)),
                build_id: None,
                lpn: Some(std::sync::Arc::new(lpn)),
                other_policies: Vec::new(),
            },
            unselected: false,
            faults: BTreeMap::new(),
            work_ticks: 1,
            silent: false,
            rebooted: false,
            resumed: false,
            work: None,
        }
    }

    pub fn status(&self) -> &LivePatchNodeStatus {
        match self.view.lpn.as_ref().and_then(|l| l.status.as_ref()) {
            Some(status) => status,
            None => panic!("{} has no status", self.view.name),
        }
    }

    fn status_mut(&mut self) -> Option<&mut LivePatchNodeStatus> {
        self.view
            .lpn
            .as_mut()
            .and_then(|l| std::sync::Arc::make_mut(l).status.as_mut())
    }

    pub fn desired(&self) -> Option<&DesiredPatch> {
        self.view.lpn.as_ref().and_then(|l| l.spec.desired.as_ref())
    }

    pub fn applied_id(&self) -> Option<String> {
        self.view
            .lpn
            .as_ref()
            .and_then(|l| l.status.as_ref())
            .and_then(|s| s.applied.as_ref())
            .map(|a| a.id.clone())
    }

    /// Whether the agent has seen the current spec and is not working on it.
    pub fn settled(&self) -> bool {
        let Some(lpn) = &self.view.lpn else {
            return true;
        };
        let Some(status) = &lpn.status else {
            return true;
        };
        status.observed_generation == lpn.metadata.generation
            && !matches!(
                status.state,
                Some(
                    NodePatchState::Downloading
                        | NodePatchState::Applying
                        | NodePatchState::Reverting
                )
            )
    }

    /// Makes the node run no livepatch at all.
    pub fn run_no_release(&mut self) {
        if let Some(status) = self.status_mut() {
            status.applied = None;
            status.state = Some(NodePatchState::Idle);
        }
    }

    /// Writes `spec.desired` as the API server would: a changed spec bumps the generation.
    pub fn write_desired(&mut self, desired: Option<DesiredPatch>) {
        let Some(lpn) = self.view.lpn.as_mut().map(std::sync::Arc::make_mut) else {
            panic!(
                "engine wrote to {} which has no LivePatchNode",
                self.view.name
            );
        };
        if lpn.spec.desired != desired {
            lpn.spec.desired = desired;
            lpn.metadata.generation = Some(lpn.metadata.generation.unwrap_or(0) + 1);
            self.resumed = false;
        }
    }

    /// The Node goes NotReady at `since`.
    pub fn not_ready(&mut self, since: Timestamp) {
        self.view.ready = false;
        self.view.not_ready_since = Some(since);
    }

    /// The Node is Ready again.
    pub fn ready(&mut self) {
        self.view.ready = true;
        self.view.not_ready_since = None;
    }

    /// The node reboots into kernel `k`: its livepatches are gone, and the agent answers
    /// a request for another kernel's release with KernelMismatch, as the real one does.
    pub fn reboot_into(&mut self, k: usize, now: Timestamp) {
        self.rebooted = true;
        self.view.kernel_release = Some(kernel(k));
        self.work = None;
        let asked = self
            .desired()
            .filter(|d| d.action == PatchAction::Apply)
            .and_then(|d| d.release.clone());
        let Some(status) = self.status_mut() else {
            return;
        };
        status.kernel_release = Some(kernel(k));
        status.build_id = Some(build(k));
        status.applied = None;
        match asked.filter(|r| r.kernel_release != kernel(k)) {
            Some(release) => {
                status.state = Some(NodePatchState::Failed);
                status.last_error = Some(NodeError {
                    reason: NodeErrorReason::KernelMismatch,
                    message: format!("{} is for another kernel", release.id),
                    release: Some(release.id),
                    at: Some(now.to_string()),
                });
            }
            None => status.state = Some(NodePatchState::Idle),
        }
    }

    /// After its rollout, the node went down on probation with its release and the agent
    /// reports it on the next boot.
    pub fn crash_on_probation(&mut self, now: Timestamp) {
        let Some(release) = self.applied_id() else {
            return;
        };
        self.rebooted = true;
        // The agent starts again after the reboot and takes up a request for another
        // release from the beginning.
        let pending = self
            .desired()
            .filter(|d| d.action == PatchAction::Apply)
            .and_then(|d| d.release.clone())
            .filter(|r| r.id != release);
        self.resumed = pending.is_some();
        self.work = pending.map(|r| (Some(r), PatchAction::Apply, self.work_ticks));
        let Some(status) = self.status_mut() else {
            return;
        };
        status.applied = None;
        status.state = Some(NodePatchState::CrashSuspected);
        status.refused_releases.push(release.clone());
        status.last_error = Some(NodeError {
            reason: NodeErrorReason::CrashSuspected,
            message: "the boot ended uncleanly on probation".into(),
            release: Some(release),
            at: Some(now.to_string()),
        });
    }

    /// One step of the agent.
    pub fn agent_tick(&mut self, now: Timestamp) {
        if self.silent {
            return;
        }
        let Some(lpn) = self.view.lpn.as_ref() else {
            return;
        };
        let generation = lpn.metadata.generation;
        let desired = lpn.spec.desired.clone();
        let Some(observed) = lpn.status.as_ref().map(|s| s.observed_generation) else {
            return;
        };
        if observed != generation {
            let Some(status) = self.status_mut() else {
                return;
            };
            status.observed_generation = generation;
            let Some(desired) = desired else {
                return;
            };
            status.state = Some(match desired.action {
                PatchAction::Apply => NodePatchState::Downloading,
                PatchAction::Revert => NodePatchState::Reverting,
            });
            self.work = Some((desired.release, desired.action, self.work_ticks));
            return;
        }
        let Some((release, action, left)) = self.work.take() else {
            return;
        };
        if left > 1 {
            if action == PatchAction::Apply
                && let Some(status) = self.status_mut()
            {
                status.state = Some(NodePatchState::Applying);
            }
            self.work = Some((release, action, left - 1));
            return;
        }
        let fault = release
            .as_ref()
            .filter(|_| action == PatchAction::Apply)
            .and_then(|r| self.faults.get(&r.id).copied());
        let Some(status) = self.status_mut() else {
            return;
        };
        let error = |reason, release: &Option<PatchRelease>| NodeError {
            reason,
            message: format!("{reason:?}"),
            release: release.as_ref().map(|r| r.id.clone()),
            at: Some(now.to_string()),
        };
        match (action, fault) {
            (PatchAction::Revert, _) => {
                status.applied = release.as_ref().map(|r| applied_release(&r.id, r.version));
                status.state = Some(if release.is_some() {
                    NodePatchState::Applied
                } else {
                    NodePatchState::Idle
                });
                status.last_error = None;
            }
            (PatchAction::Apply, None) => {
                status.applied = release.as_ref().map(|r| AppliedRelease {
                    applied_at: Some(now.to_string()),
                    ..applied_release(&r.id, r.version)
                });
                status.state = Some(NodePatchState::Applied);
                status.last_error = None;
            }
            (PatchAction::Apply, Some(Fault::Stall)) => {
                status.state = Some(NodePatchState::Failed);
                status.last_error = Some(error(NodeErrorReason::TransitionStalled, &release));
            }
            (PatchAction::Apply, Some(Fault::Taint)) => {
                status.applied = release.as_ref().map(|r| applied_release(&r.id, r.version));
                status.state = Some(NodePatchState::Failed);
                status.last_error = Some(error(NodeErrorReason::NewTaint, &release));
            }
            (PatchAction::Apply, Some(Fault::Trouble(reason))) => {
                status.state = Some(NodePatchState::Failed);
                status.last_error = Some(error(reason, &release));
            }
            (PatchAction::Apply, Some(Fault::Crash)) => {
                // The node rebooted: nothing is loaded any more.
                status.applied = None;
                status.state = Some(NodePatchState::CrashSuspected);
                if let Some(r) = &release {
                    status.refused_releases.push(r.id.clone());
                }
                status.last_error = Some(error(NodeErrorReason::CrashSuspected, &release));
            }
        }
    }
}

pub fn applied_release(id: &str, version: u64) -> AppliedRelease {
    AppliedRelease {
        id: id.into(),
        version,
        module_name: String::new(),
        cves: Vec::new(),
        policy: Some(POLICY.into()),
        applied_at: None,
    }
}

/// A policy, its fleet and repository, stepped through time.
pub struct Sim {
    pub policy: LivePatchPolicy,
    pub nodes: Vec<SimNode>,
    pub repository: Option<RepositoryView>,
    pub gate: Option<GateVerdict>,
    pub now: Timestamp,
}

impl Sim {
    pub fn new(spec: LivePatchPolicySpec, nodes: Vec<SimNode>, releases: Vec<Release>) -> Sim {
        Sim {
            policy: policy(spec),
            nodes,
            repository: Some(repository(releases)),
            gate: None,
            now: start_time(),
        }
    }

    /// The nodes the engine is shown: the selected ones.
    pub fn views(&self) -> Vec<NodeView> {
        self.nodes
            .iter()
            .filter(|n| !n.unselected)
            .map(|n| n.view.clone())
            .collect()
    }

    /// Runs the engine once.
    pub fn decide(&self) -> Decision {
        let views = self.views();
        decide(&EngineInput {
            policy: &self.policy,
            nodes: &views,
            repository: self.repository.as_ref(),
            gate: self.gate.clone(),
            now: self.now,
        })
    }

    /// Writes a decision the way the controller does.
    pub fn apply(&mut self, decision: &Decision) {
        // By index: a large fleet's decision writes many nodes.
        let index: std::collections::HashMap<String, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.view.name.clone(), i))
            .collect();
        for (name, desired) in &decision.desired {
            let Some(&i) = index.get(name) else {
                panic!("engine wrote to unknown node {name}");
            };
            self.nodes[i].write_desired(desired.clone());
        }
        self.policy.status = Some(decision.status.clone());
    }

    /// Every agent takes one step.
    pub fn agents(&mut self) {
        let now = self.now;
        for node in &mut self.nodes {
            node.agent_tick(now);
        }
    }

    pub fn advance(&mut self, seconds: i64) {
        self.now = self
            .now
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .unwrap_or_else(|e| panic!("time overflow: {e}"));
    }

    /// Decides, applies, and lets the agents act; returns the decision.
    pub fn step(&mut self, seconds: i64) -> Decision {
        let decision = self.decide();
        self.apply(&decision);
        self.agents();
        self.advance(seconds);
        decision
    }

    pub fn node(&self, name: &str) -> &SimNode {
        match self.nodes.iter().find(|n| n.view.name == name) {
            Some(node) => node,
            None => panic!("no node {name}"),
        }
    }

    pub fn node_mut(&mut self, name: &str) -> &mut SimNode {
        match self.nodes.iter_mut().find(|n| n.view.name == name) {
            Some(node) => node,
            None => panic!("no node {name}"),
        }
    }

    pub fn phase(&self) -> Option<kpersist_crds::PolicyPhase> {
        self.policy.status.as_ref().and_then(|s| s.phase)
    }
}

/// `n` nodes on kernel 0 running v1, with v1 and v2 published.
pub fn fleet(n: usize, waves_spec: &[(Option<u32>, Option<u32>, &str)]) -> Sim {
    let mut spec = policy_spec();
    spec.rollout.waves = waves(waves_spec);
    let nodes = (0..n)
        .map(|i| SimNode::new(&format!("node-{i:02}"), 0, Some(1)))
        .collect();
    let t = start_time();
    Sim::new(spec, nodes, vec![release(0, 1, t), release(0, 2, t)])
}

pub fn reasons(events: &[RolloutEvent]) -> Vec<&'static str> {
    events.iter().map(RolloutEvent::reason).collect()
}

/// Steps until the phase is one of `phases` and every agent is idle, or panics.
pub fn run_until(sim: &mut Sim, phases: &[PolicyPhase], seconds: i64) -> Vec<RolloutEvent> {
    let mut events = Vec::new();
    for _ in 0..500 {
        let decision = sim.step(seconds);
        events.extend(decision.events);
        if sim.phase().is_some_and(|p| phases.contains(&p)) && sim.nodes.iter().all(|n| n.settled())
        {
            return events;
        }
    }
    panic!(
        "never reached {phases:?}; phase {:?}, events {:?}",
        sim.phase(),
        reasons(&events)
    );
}

pub fn condition<'a>(status: &'a LivePatchPolicyStatus, type_: &str) -> &'a Condition {
    match status.conditions.iter().find(|c| c.type_ == type_) {
        Some(condition) => condition,
        None => panic!("no {type_} condition in {:?}", status.conditions),
    }
}

/// Steps `steps` times and returns every event.
pub fn run_for(sim: &mut Sim, steps: usize, seconds: i64) -> Vec<RolloutEvent> {
    (0..steps).flat_map(|_| sim.step(seconds).events).collect()
}

/// A fleet of `nodes` nodes on three kernels, part-way through a rollout: the canary done,
/// part of wave 2 done and more of it in flight, with nodes waiting for their turn. The
/// state one reconcile of a large fleet works on, for the benchmark and the size tests.
pub fn mid_rollout(nodes: usize) -> Sim {
    let mut spec = policy_spec();
    spec.rollout.waves = waves(&[
        (Some(1), None, "0s"),
        (None, Some(10), "0s"),
        (None, Some(100), "0s"),
    ]);
    // Small enough that wave 2 is still handing out releases after the steps below.
    spec.rollout.max_in_flight = u32::try_from(nodes / 50 + 1).unwrap_or(u32::MAX);
    let fleet = (0..nodes)
        .map(|i| SimNode::new(&format!("node-{i:05}"), i % 3, Some(1)))
        .collect();
    let t = start_time();
    let releases = (0..3)
        .flat_map(|k| (1..=3).map(move |v| release(k, v, t)))
        .collect();
    let mut sim = Sim::new(spec, fleet, releases);
    for _ in 0..8 {
        sim.step(30);
    }
    sim
}
