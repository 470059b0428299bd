//! The faults of the matrix: where each strikes, how the scenario is set up for it, and
//! how the rollout must end.

use kpersist_crds::{FailurePolicy, PolicyPhase};

/// A moment of a rollout, recognised from the LivePatchNodes and the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// The operator wrote the policy's first status.
    FirstStatus,
    /// A node was handed wave 1 (the canary).
    CanaryAssigned,
    /// A node reports `Downloading`.
    Downloading,
    /// A node reports `Applying`.
    Applying,
    /// The policy is `Baking` wave 1.
    CanaryBaking,
    /// A node was handed wave 2.
    Wave2Assigned,
    /// One node of wave 2 runs its release, another does not yet.
    Wave2PartlyApplied,
    /// The policy lists a bad release.
    MarkedBad,
    /// A node was asked to revert.
    Reverting,
    /// The policy is `Paused`.
    Paused,
}

/// What is done at the point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL the operator, start it again.
    KillOperator,
    /// Publish v2, wait until the operator fetched the index holding it, SIGKILL the
    /// operator, start it again.
    PublishThenKillOperator,
    /// Delete the policy, wait for its deletion timestamp, SIGKILL the operator, start it
    /// again; the finalizer must still run.
    DeletePolicyThenKillOperator,
    /// With two replicas: SIGKILL the Lease holder; the other must take over; the killed
    /// one starts again.
    KillLeader,
    /// SIGKILL the agent of the node at the point, start it again.
    KillAgent,
    /// SIGKILL kube-apiserver, start it again on the same port and etcd.
    RestartApiServer,
    /// Stop etcd for a few seconds, start it again on the same data.
    StopEtcd,
    /// The repository refuses connections, then accepts them, several times.
    FlapRepository,
    /// The Node at the point turns NotReady (since well past the grace), then Ready again.
    NodeNotReady,
    /// The agent of the node at the point is gone until the operator resolves the node as a
    /// node problem (the policy's node deadline), then it starts again.
    AgentGone,
    /// A new node joins the fleet.
    NodeJoins,
    /// The node at the point leaves the cluster: agent stopped, Node and LivePatchNode
    /// deleted.
    NodeLeaves,
    /// The node at the point reboots into another kernel build, one no release is
    /// published for.
    KernelChanged,
}

/// How the policy and the nodes end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Every node runs the newest release (v1, or v2 once published); policy Complete.
    AllOnNewest,
    /// v1 failed on the canary and was reverted: no node runs anything; policy Failed.
    Reverted,
    /// `failurePolicy: Pause` stopped at the failed canary: no node runs anything, the
    /// policy stays Paused.
    Paused,
    /// The policy is gone and no node names it; nodes keep whatever they run.
    PolicyGone,
}

/// One fault of the matrix.
#[derive(Clone, Debug)]
pub struct Fault {
    /// Short name, the table's first column.
    pub name: &'static str,
    /// One line for people.
    pub what: &'static str,
    /// When it strikes.
    pub point: Point,
    /// What it does.
    pub action: Action,
    /// Every node's kernel fails v1 this way (`stall`, `taint`...), so the canary fails.
    pub v1_fault: Option<&'static str>,
    /// The policy's failure policy.
    pub failure_policy: FailurePolicy,
    /// The policy's maxInFlight.
    pub max_in_flight: u32,
    /// Delay of every repository answer, in milliseconds (slow downloads widen windows).
    pub repo_delay_ms: u64,
    /// The policy's `health.nodeDeadline`, when the fault needs one shorter than the
    /// default.
    pub node_deadline: Option<&'static str>,
    /// How it ends.
    pub end: End,
}

impl Fault {
    const fn operator_kill(name: &'static str, what: &'static str, point: Point) -> Self {
        Self {
            name,
            what,
            point,
            action: Action::KillOperator,
            v1_fault: None,
            failure_policy: FailurePolicy::Revert,
            max_in_flight: 2,
            repo_delay_ms: 300,
            node_deadline: None,
            end: End::AllOnNewest,
        }
    }

    /// A fault of a node's life mid-wave; the rollout goes on and ends on the newest release.
    const fn node_life(name: &'static str, what: &'static str, action: Action) -> Self {
        Self::operator_kill(name, what, Point::Wave2Assigned).action(action)
    }

    const fn failing(mut self, end: End) -> Self {
        self.v1_fault = Some("stall");
        self.end = end;
        self
    }

    const fn action(mut self, action: Action) -> Self {
        self.action = action;
        self
    }

    /// The phases the policy may end in.
    pub fn end_phases(&self) -> Vec<PolicyPhase> {
        match self.end {
            End::AllOnNewest => vec![PolicyPhase::Complete, PolicyPhase::Idle],
            End::Reverted => vec![PolicyPhase::Failed],
            End::Paused => vec![PolicyPhase::Paused],
            End::PolicyGone => vec![],
        }
    }
}

/// Every fault, in the order the matrix runs them.
pub fn faults() -> Vec<Fault> {
    use Point::*;
    let op = Fault::operator_kill;
    let mut paused = op(
        "operator-paused",
        "operator killed while the policy is Paused",
        Paused,
    )
    .failing(End::Paused);
    paused.failure_policy = FailurePolicy::Pause;
    let mut partly = op(
        "operator-wave2-partly-applied",
        "operator killed with one node of wave 2 done and one not (maxInFlight 1)",
        Wave2PartlyApplied,
    );
    partly.max_in_flight = 1;
    let mut downloading = op(
        "agent-downloading",
        "an agent killed while it downloads (2 s repository answers)",
        Downloading,
    )
    .action(Action::KillAgent);
    downloading.repo_delay_ms = 2000;
    let mut agent_gone = Fault::node_life(
        "agent-gone",
        "the agent of a wave-2 node gone past the node deadline (10 s), then back",
        Action::AgentGone,
    );
    agent_gone.node_deadline = Some("10s");
    vec![
        op(
            "operator-first-status",
            "operator killed right after the policy's first status",
            FirstStatus,
        ),
        op(
            "operator-canary-assigned",
            "operator killed right after handing the canary its release",
            CanaryAssigned,
        ),
        op(
            "operator-canary-downloading",
            "operator killed while the canary downloads",
            Downloading,
        ),
        op(
            "operator-mid-bake",
            "operator killed while the canary wave bakes",
            CanaryBaking,
        ),
        op(
            "operator-wave2-assigned",
            "operator killed right after wave 2 was handed out",
            Wave2Assigned,
        ),
        partly,
        op(
            "operator-marked-bad",
            "operator killed right after the canary's release was marked bad",
            MarkedBad,
        )
        .failing(End::Reverted),
        op(
            "operator-reverting",
            "operator killed while the canary is sent back",
            Reverting,
        )
        .failing(End::Reverted),
        paused,
        op(
            "operator-supersede",
            "operator killed right after it fetched an index with a newer release, mid-rollout",
            Wave2Assigned,
        )
        .action(Action::PublishThenKillOperator),
        op(
            "operator-policy-deleted",
            "operator killed while the deleted policy's finalizer is pending",
            Wave2Assigned,
        )
        .action(Action::DeletePolicyThenKillOperator)
        .ending(End::PolicyGone),
        downloading,
        op(
            "agent-applying",
            "an agent killed mid-transition (a stalling release, Applying)",
            Applying,
        )
        .action(Action::KillAgent)
        .failing(End::Reverted),
        op(
            "apiserver-restart",
            "kube-apiserver SIGKILLed mid-wave and started again",
            Wave2Assigned,
        )
        .action(Action::RestartApiServer),
        op(
            "etcd-outage",
            "etcd stopped for 4 s mid-wave, started again on its data",
            Wave2Assigned,
        )
        .action(Action::StopEtcd),
        op(
            "repository-flapping",
            "the repository refuses, then accepts connections, 5 times during the rollout",
            CanaryAssigned,
        )
        .action(Action::FlapRepository),
        Fault::node_life(
            "node-not-ready",
            "a node of wave 2 NotReady past the grace for 5 s, then Ready",
            Action::NodeNotReady,
        ),
        agent_gone,
        Fault::node_life("node-joins", "a node joins mid-wave", Action::NodeJoins),
        Fault::node_life(
            "node-leaves",
            "a node of wave 2 leaves the cluster mid-wave",
            Action::NodeLeaves,
        ),
        Fault::node_life(
            "kernel-changed",
            "a node of wave 2 reboots into a kernel build no release is published for",
            Action::KernelChanged,
        ),
        // Last: it may leave replica 1 holding the Lease, which the next run's replica 0
        // would have to wait out.
        op(
            "leader-handover",
            "two replicas; the Lease holder killed mid-wave, the other takes over",
            Wave2Assigned,
        )
        .action(Action::KillLeader),
    ]
}

impl Fault {
    const fn ending(mut self, end: End) -> Self {
        self.end = end;
        self
    }
}
