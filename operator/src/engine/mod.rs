//! The rollout engine: a pure function from a policy, the nodes it selects, the verified
//! repository index and the current time to what the controller should write (node
//! `spec.desired`, the policy status) and announce (Events). No client, clock or randomness.
//!
//! # Contract
//!
//! The controller calls [`decide`] on every change of the policy, of a selected node or of
//! its LivePatchNode, on each repository poll and when [`Decision::requeue_after`] elapses.
//! It writes every entry of [`Decision::desired`] with server-side apply, replaces the
//! policy status with [`Decision::status`] (merging its own `RepositoryReachable` condition
//! and `lastRepositoryCheck`, which the engine copies through unchanged), and records each
//! [`RolloutEvent`] as a Kubernetes Event.
//!
//! State lives in the API objects only: the policy status (`rollout`, `badReleases`,
//! `targets`) and each node's `spec.desired`, which records the wave that gave the node its
//! release and the release it ran before (the revert target). An operator restarted at any
//! point, or a controller whose caches lag behind its own writes, gets the same decision
//! from the same objects: assignment follows a fixed node order, so a repeated decision
//! repeats the same writes.

use std::time::Duration;

use kpersist_crds::{DesiredPatch, LivePatchNode, LivePatchPolicy, LivePatchPolicyStatus};
use kpersist_kmod::repository::Index;

/// The verified repository index a policy reads, with the URL module paths are relative to.
#[derive(Clone, Debug)]
pub struct RepositoryView {
    /// Base URL of the repository (the directory holding `index.json`).
    pub base_url: String,
    /// The index, already checked against the policy's trusted keys.
    pub index: Index,
}

/// One node the policy's selector matches, as the controller sees it.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// Node name (the LivePatchNode has the same name).
    pub name: String,
    /// Whether the Node's `Ready` condition is True.
    pub ready: bool,
    /// Kernel release from the Node object, used until the agent reports its own.
    pub kernel_release: Option<String>,
    /// Kernel build id, when known outside the LivePatchNode.
    pub build_id: Option<String>,
    /// The node's LivePatchNode with metadata, spec and status; `None` while no agent runs.
    pub lpn: Option<LivePatchNode>,
    /// Other policies whose selector also matches this node. A node selected twice is
    /// patched by neither policy.
    pub other_policies: Vec<String>,
}

/// The Prometheus gate's result for the current bake, computed by the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateVerdict {
    /// Every sample held.
    Pass,
    /// The condition did not hold; the text says which sample and value.
    Fail(String),
}

/// Everything one decision is made from.
#[derive(Clone, Debug)]
pub struct EngineInput<'a> {
    /// The policy with its metadata (name, generation), spec and current status.
    pub policy: &'a LivePatchPolicy,
    /// The nodes the policy's selector matches, in any order.
    pub nodes: &'a [NodeView],
    /// The verified index, or `None` when none has been fetched and verified yet.
    pub repository: Option<&'a RepositoryView>,
    /// The gate's verdict for the bake in progress; `None` when there is no gate or it has
    /// not been evaluated for this bake yet.
    pub gate: Option<GateVerdict>,
    /// The time the decision is made at.
    pub now: jiff::Timestamp,
}

/// What the controller should do.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// `spec.desired` to write per node name; only nodes whose desired changes are listed.
    pub desired: Vec<(String, Option<DesiredPatch>)>,
    /// The policy status to write.
    pub status: LivePatchPolicyStatus,
    /// Events to record on the policy, in order.
    pub events: Vec<RolloutEvent>,
    /// When to decide again even if nothing changes (a bake ends, a window opens).
    pub requeue_after: Option<Duration>,
}

/// Something worth a Kubernetes Event on the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutEvent {
    /// A rollout of new targets began.
    RolloutStarted { releases: Vec<String>, nodes: u32, waves: u32 },
    /// A wave was given its first nodes.
    WaveStarted { wave: u32, waves: u32, nodes: u32 },
    /// Every node of a wave applied and stayed healthy for the bake.
    WaveDone { wave: u32, waves: u32 },
    /// A wave had more failures than allowed, or the gate failed.
    WaveFailed { wave: u32, reason: String },
    /// Nodes that took a failing release are sent back to their previous release.
    RevertStarted { release: String, nodes: u32 },
    /// A release is never offered again by this policy.
    ReleaseMarkedBad { release: String, reason: String },
    /// Every reverted node settled.
    RevertComplete { nodes: u32, failed: u32 },
    /// The last wave finished.
    RolloutComplete { releases: Vec<String>, nodes: u32 },
    /// The rollout stopped starting nodes.
    RolloutPaused { reason: String },
    /// The rollout starts nodes again.
    RolloutResumed,
    /// The policy failed validation.
    PolicyInvalid { errors: Vec<String> },
}

impl RolloutEvent {
    /// CamelCase reason for the Event.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RolloutStarted { .. } => "RolloutStarted",
            Self::WaveStarted { .. } => "WaveStarted",
            Self::WaveDone { .. } => "WaveDone",
            Self::WaveFailed { .. } => "WaveFailed",
            Self::RevertStarted { .. } => "RevertStarted",
            Self::ReleaseMarkedBad { .. } => "ReleaseMarkedBad",
            Self::RevertComplete { .. } => "RevertComplete",
            Self::RolloutComplete { .. } => "RolloutComplete",
            Self::RolloutPaused { .. } => "RolloutPaused",
            Self::RolloutResumed => "RolloutResumed",
            Self::PolicyInvalid { .. } => "InvalidPolicy",
        }
    }

    /// Whether the Event is of type Warning rather than Normal.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Self::WaveFailed { .. }
                | Self::RevertStarted { .. }
                | Self::ReleaseMarkedBad { .. }
                | Self::PolicyInvalid { .. }
        )
    }

    /// What happened, for people.
    pub fn message(&self) -> String {
        match self {
            Self::RolloutStarted { releases, nodes, waves } => format!(
                "rolling out {} to {nodes} node(s) in {waves} wave(s)",
                releases.join(", ")
            ),
            Self::WaveStarted { wave, waves, nodes } => {
                format!("wave {wave}/{waves} started with {nodes} node(s)")
            }
            Self::WaveDone { wave, waves } => {
                format!("wave {wave}/{waves} applied and stayed healthy for its bake")
            }
            Self::WaveFailed { wave, reason } => format!("wave {wave} failed: {reason}"),
            Self::RevertStarted { release, nodes } => format!(
                "reverting {nodes} node(s) that took {release} to the release they ran before"
            ),
            Self::ReleaseMarkedBad { release, reason } => {
                format!("release {release} marked bad and never offered again: {reason}")
            }
            Self::RevertComplete { nodes, failed } => {
                format!("revert finished on {nodes} node(s), {failed} of them failed")
            }
            Self::RolloutComplete { releases, nodes } => format!(
                "rollout of {} finished on {nodes} node(s)",
                releases.join(", ")
            ),
            Self::RolloutPaused { reason } => format!("rollout paused: {reason}"),
            Self::RolloutResumed => "rollout resumed".to_string(),
            Self::PolicyInvalid { errors } => format!(
                "policy is invalid and nothing is rolled out until it is fixed: {}",
                errors.join("; ")
            ),
        }
    }
}

/// Decides what to write and announce for one policy. Pure: same input, same decision.
pub fn decide(input: &EngineInput) -> Decision {
    let _ = input;
    todo!("rollout engine")
}
