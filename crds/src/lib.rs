//! The kpersist.io API: `LivePatchPolicy` (what to roll out where, and how) and
//! `LivePatchNode` (one per node: the operator writes `spec`, the node's agent `status`).
//! Doc comments on fields become `kubectl explain` text, so they are written for users.

pub mod condition;
pub mod duration;
pub mod labels;
pub mod node;
pub mod policy;
pub mod release;
pub mod yaml;

pub use condition::{Condition, ConditionStatus};
pub use duration::{DurationError, parse_duration};
pub use labels::{KERNEL_LABEL, POLICY_LABEL, STATE_LABEL, wanted_labels};
pub use node::{
    AppliedRelease, Blame, DesiredPatch, LivePatchNode, LivePatchNodeSpec, LivePatchNodeStatus,
    LoadedPatch, NodeError, NodeErrorReason, NodePatchState, PatchAction, PatchRun, PatchTimings,
    RepositoryAccess,
};
pub use policy::{
    BadRelease, ComparisonOperator, FailurePolicy, GateHeader, HealthSpec, KernelTarget,
    LateFailure, LivePatchPolicy, LivePatchPolicySpec, LivePatchPolicyStatus, MaintenanceWindow,
    NodeCounts, PlannedWave, PolicyPhase, PrometheusGate, RepositorySpec, RetriedRelease,
    RolloutProgress, RolloutSpec, SecretKeyRef, SecretKeysRef, Wave, Weekday,
};
pub use release::PatchRelease;

/// The API group of every kpersist resource.
pub const GROUP: &str = "kpersist.io";
/// The field manager name the operator uses for server-side apply.
pub const OPERATOR_MANAGER: &str = "kpersist-operator";
/// The field manager name the node agent uses for server-side apply.
pub const AGENT_MANAGER: &str = "kpersist-agent";
