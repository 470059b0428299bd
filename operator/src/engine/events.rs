//! What a decision announces: each rollout step worth a Kubernetes Event on the policy,
//! with the reason, type and message the controller records.

/// Something worth a Kubernetes Event on the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutEvent {
    /// A rollout of new targets began.
    RolloutStarted {
        releases: Vec<String>,
        nodes: u32,
        waves: u32,
    },
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
    /// The policy is being deleted and waits for the reverts it asked for to finish before
    /// it lets go of its nodes.
    DeletionWaitsForReverts { nodes: u32 },
    /// A person cleared a bad release to roll out again (`spec.rollout.retryReleases`).
    BadReleaseCleared { release: String },
    /// A node reported a release's fault outside the rollout that judged the release.
    LateFailure {
        node: String,
        release: String,
        evidence: String,
    },
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
            Self::LateFailure { .. } => "LateFailure",
            Self::DeletionWaitsForReverts { .. } => "DeletionWaitsForReverts",
            Self::BadReleaseCleared { .. } => "BadReleaseCleared",
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
                | Self::LateFailure { .. }
        )
    }

    /// What happened, for people.
    pub fn message(&self) -> String {
        match self {
            Self::RolloutStarted {
                releases,
                nodes,
                waves,
            } => format!(
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
            Self::DeletionWaitsForReverts { nodes } => format!(
                "deleting: waiting for {nodes} node(s) to finish going back from a bad \
                 release before clearing this policy's requests (loaded patches stay)"
            ),
            Self::BadReleaseCleared { release } => format!(
                "release {release} is no longer marked bad (spec.rollout.retryReleases) and \
                 may be rolled out again; a new failure marks it bad again"
            ),
            Self::LateFailure {
                node,
                release,
                evidence,
            } => format!(
                "{node} failed release {release}, which an earlier rollout already gave out: \
                 {evidence}"
            ),
        }
    }
}
