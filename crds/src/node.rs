//! `LivePatchNode`: one per node, named after it. The operator writes `spec.desired`; the
//! node's agent acts on it and reports what the kernel really has in `status`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::release::PatchRelease;

/// The livepatch state of one node: what the operator wants loaded and what is loaded.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kpersist.io",
    version = "v1alpha1",
    kind = "LivePatchNode",
    plural = "livepatchnodes",
    shortname = "lpn",
    category = "kpersist",
    status = "LivePatchNodeStatus",
    doc = "The livepatch state of one node, named after it: the operator writes what it wants \
           loaded (spec.desired), the node's agent what the kernel really runs (status).",
    printcolumn = r#"{"name":"Kernel","type":"string","jsonPath":".status.kernelRelease"}"#,
    printcolumn = r#"{"name":"Applied","type":"integer","description":"Version of the release the kernel runs","jsonPath":".status.applied.version"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","description":"Version of the release the operator asks for","jsonPath":".spec.desired.release.version"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","description":"Why the last apply or revert failed","jsonPath":".status.lastError.reason"}"#,
    printcolumn = r#"{"name":"Policy","type":"string","priority":1,"jsonPath":".spec.desired.policy"}"#,
    printcolumn = r#"{"name":"Wave","type":"integer","priority":1,"description":"The rollout wave that asked (numbered on across the policy's rollouts)","jsonPath":".spec.desired.wave"}"#,
    printcolumn = r#"{"name":"Release","type":"string","priority":1,"jsonPath":".status.applied.id"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LivePatchNodeSpec {
    /// What the operator wants on this node. Absent: leave the kernel as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<DesiredPatch>,
}

/// What the operator wants loaded on a node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DesiredPatch {
    /// The policy that asks for it.
    pub policy: String,
    /// `Apply` a newer release, or `Revert` to an earlier one.
    pub action: PatchAction,
    /// The release to have loaded. For `Revert`, absent means disable and unload every
    /// kpersist livepatch, returning the kernel to its original code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<PatchRelease>,
    /// For `Apply`: the release the node ran when this one was asked for; absent when it
    /// ran none. A revert of this release goes back to it. For `Revert`: the release the
    /// node goes back from, which failed. Kept here, with the node, so that both survive
    /// an operator restart or a lost status write without the policy status growing with
    /// the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PatchRelease>,
    /// For `Apply`: the rollout wave that gave the node this release, numbered on from the
    /// policy's earlier rollouts: wave `w` of a rollout is written as the policy's
    /// `status.rollout.waveOffset` + `w`, so each rollout knows its own nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
    /// When the operator asked (RFC 3339). A node that has not finished by the policy's
    /// `health.nodeDeadline` after it is resolved as a node problem, so no wave waits
    /// forever. Not part of what is asked: a rewrite of the same request keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_at: Option<String>,
    /// How long the kernel's transition may take before the agent reverses it (e.g. `60s`).
    #[serde(default = "default_transition_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub transition_timeout: String,
    /// Report new kernel WARNING/BUG/Oops lines and new taint bits as a failure.
    #[serde(default = "default_true")]
    pub kmsg_checks: bool,
    /// For `Apply`: how long after the transition the node is on probation (e.g. `1h`): an
    /// unclean end of the node's boot within it is taken as a crash caused by the release,
    /// which the node then refuses. Copied from the policy's `health.probation`.
    #[serde(default = "default_probation")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub probation: String,
    /// Load the release even when livepatches of another tool (distribution or vendor) are
    /// enabled, which the atomic replace then disables. Copied from the policy's
    /// `health.replaceForeignLivepatches`; off by default, so the agent refuses with
    /// `ForeignLivepatch`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub replace_foreign: bool,
    /// How the agent reaches the repository for the module, copied from the policy.
    /// Absent: the system certificate authorities, and no redirect off the module URL's
    /// origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<RepositoryAccess>,
}

/// The transport settings of a policy's repository that the agent needs for downloads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryAccess {
    /// The policy's `repository.caBundle`: PEM certificate authorities trusted besides the
    /// system ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// The policy's `repository.allowedRedirectHosts`: hosts a module download may be
    /// redirected to besides the origin of the module URL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_redirect_hosts: Vec<String>,
}

impl DesiredPatch {
    /// The request that takes this one back: revert from its release to the one the node
    /// ran before (none: unload every kpersist livepatch), with the same settings, asked
    /// at `asked_at`.
    pub fn revert(&self, asked_at: String) -> DesiredPatch {
        DesiredPatch {
            action: PatchAction::Revert,
            release: self.previous.clone(),
            previous: self.release.clone(),
            wave: None,
            asked_at: Some(asked_at),
            ..self.clone()
        }
    }
}

/// What the agent is asked to do.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PatchAction {
    /// Load the release, atomically replacing the one loaded now.
    Apply,
    /// Go back to the given earlier release (from the host cache when it is there), or to
    /// no livepatch at all.
    Revert,
}

/// What the node's kernel really has, written by the agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LivePatchNodeStatus {
    /// Where the node is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<NodePatchState>,
    /// Running kernel release (`uname -r`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    /// GNU build id of the running kernel, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// Whether the kernel supports livepatch (`/sys/kernel/livepatch` exists).
    #[serde(default)]
    pub livepatch_supported: bool,
    /// Boot id of the running kernel; it changes on every boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Livepatch modules the kernel has loaded, from /sys/kernel/livepatch.
    #[serde(default)]
    pub loaded: Vec<LoadedPatch>,
    /// The kpersist release the kernel runs now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<AppliedRelease>,
    /// The last failure, cleared by the next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<NodeError>,
    /// How long the last apply or revert took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<PatchTimings>,
    /// Releases this node refuses because it went down while applying them or while they
    /// were on probation. A new request (a new generation of `spec`) asks again, unless the
    /// node ended uncleanly twice with the release: then it is refused for good.
    #[serde(default)]
    pub refused_releases: Vec<String>,
    /// The applied release is on probation until then (RFC 3339): an unclean end of this
    /// boot before it is taken as a crash caused by the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation_until: Option<String>,
    /// The `metadata.generation` of the spec this status answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (the agent can read the kernel), Healthy (the last apply or revert did not
    /// fail), LivepatchSupported, KernelFindings and Drift.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Version of the agent writing this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

/// Where a node is in applying or reverting.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum NodePatchState {
    /// Nothing asked, nothing happening.
    Idle,
    /// Fetching the module into the host cache.
    Downloading,
    /// Checking and loading the module, or waiting for its transition.
    Applying,
    /// The desired release is loaded, enabled and healthy.
    Applied,
    /// Going back to an earlier release or to none.
    Reverting,
    /// The last apply or revert failed; see `lastError`.
    Failed,
    /// The kernel has no livepatch support, or nothing can be applied to it.
    Unsupported,
    /// The node went down while applying; the release is refused here for good.
    CrashSuspected,
}

impl NodePatchState {
    /// The state as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodePatchState::Idle => "Idle",
            NodePatchState::Downloading => "Downloading",
            NodePatchState::Applying => "Applying",
            NodePatchState::Applied => "Applied",
            NodePatchState::Reverting => "Reverting",
            NodePatchState::Failed => "Failed",
            NodePatchState::Unsupported => "Unsupported",
            NodePatchState::CrashSuspected => "CrashSuspected",
        }
    }

    /// Whether the agent is working on a request: downloading, applying or reverting.
    pub fn is_in_flight(self) -> bool {
        matches!(
            self,
            NodePatchState::Downloading | NodePatchState::Applying | NodePatchState::Reverting
        )
    }
}

/// A livepatch module the kernel has loaded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadedPatch {
    /// Module name (directory under /sys/kernel/livepatch).
    pub name: String,
    /// Whether the patch is enabled.
    pub enabled: bool,
    /// Whether a transition is in progress.
    pub transition: bool,
}

/// The kpersist release a node runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedRelease {
    /// Release id, `<kernelRelease>/v<version>`.
    pub id: String,
    /// Cumulative version.
    pub version: u64,
    /// Kernel module name.
    pub module_name: String,
    /// CVEs the release fixes.
    #[serde(default)]
    pub cves: Vec<String>,
    /// The policy that asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// When it was applied (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
}

/// A failure, with a reason for machines and a message for people.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeError {
    /// Machine-readable reason.
    pub reason: NodeErrorReason,
    /// What went wrong and what to do.
    pub message: String,
    /// The release concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// Why an apply or revert failed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum NodeErrorReason {
    /// The module could not be downloaded.
    DownloadFailed,
    /// The module's size differs from the signed index.
    SizeMismatch,
    /// The module's SHA-256 differs from the signed index.
    HashMismatch,
    /// The file is not a kernel module that can be read.
    InvalidModule,
    /// The module lacks `livepatch: Y` in its modinfo.
    NotLivepatch,
    /// The module's vermagic names another kernel release.
    VermagicMismatch,
    /// The module's name differs from the index.
    ModuleNameMismatch,
    /// The release is for another kernel build.
    KernelMismatch,
    /// The kernel refused the module (its errno is in the message).
    LoadRefused,
    /// The kernel refused an unsigned module under lockdown / Secure Boot.
    LockdownRefused,
    /// The transition did not finish within the timeout and was reversed.
    TransitionStalled,
    /// Taint bits other than livepatch/out-of-tree/unsigned appeared.
    NewTaint,
    /// WARNING, BUG or Oops lines appeared in the kernel log.
    KernelWarning,
    /// The node went down while applying this release.
    CrashSuspected,
    /// The release was refused earlier on this node after a suspected crash.
    ReleaseRefused,
    /// A revert found no cached module for the earlier release and could not fetch it.
    RevertFailed,
    /// Disabling or unloading a patch failed.
    UnloadFailed,
    /// The kernel has no livepatch support.
    Unsupported,
    /// Reading the kernel's state or the host cache failed.
    HostError,
    /// Livepatches of another tool are enabled; loading with atomic replace would disable
    /// them. The message names them.
    ForeignLivepatch,
    /// The module was not built with atomic replace: it would stack on the previous
    /// kpersist patch instead of replacing it. It was undone.
    NotCumulative,
    /// A module of the same name is already loaded and is not the release asked for (a
    /// leftover), so the kernel would refuse the load.
    ModuleNameInUse,
    /// The release asked for is not in the policy's signed index, or its module is not
    /// served from the policy's repository: the request was not made by the operator.
    UntrustedRelease,
}

/// Whose fault a failure is. Only a release's fault counts against a wave's `maxFailures`
/// and can mark a release bad; a node's trouble is reported and retried, and the rollout
/// goes on without the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Blame {
    /// The kernel refused the module or its transition, the module broke the node, or the
    /// published module does not match its signed record.
    Release,
    /// The node could not take part: download, host, lockdown, another kernel, another
    /// tool's livepatch, a forged request.
    Node,
}

impl NodeErrorReason {
    /// Whose fault a failure with this reason is.
    pub fn blame(self) -> Blame {
        match self {
            Self::SizeMismatch
            | Self::HashMismatch
            | Self::InvalidModule
            | Self::NotLivepatch
            | Self::VermagicMismatch
            | Self::ModuleNameMismatch
            | Self::LoadRefused
            | Self::TransitionStalled
            | Self::NewTaint
            | Self::KernelWarning
            | Self::CrashSuspected
            | Self::ReleaseRefused
            | Self::NotCumulative => Blame::Release,
            Self::DownloadFailed
            | Self::KernelMismatch
            | Self::LockdownRefused
            | Self::RevertFailed
            | Self::UnloadFailed
            | Self::Unsupported
            | Self::HostError
            | Self::ForeignLivepatch
            | Self::ModuleNameInUse
            | Self::UntrustedRelease => Blame::Node,
        }
    }
}

/// How long the last operation took, in milliseconds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchTimings {
    /// What the run was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<PatchRun>,
    /// When the run ended (RFC 3339); it tells one run from the next. The operator's
    /// `kpersist_node_*_duration_seconds` histograms count each run once by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Download time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_ms: Option<u64>,
    /// From the load call to the end of the transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition_ms: Option<u64>,
    /// The whole operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
}

/// What an agent's run did.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PatchRun {
    /// Loaded a release, replacing the one before.
    Apply,
    /// Went back to an earlier release or to none.
    Revert,
    /// Finished a load an earlier agent process began (it found its crash marker).
    Recover,
}

impl PatchRun {
    /// Every kind of run.
    pub const ALL: [PatchRun; 3] = [PatchRun::Apply, PatchRun::Revert, PatchRun::Recover];

    /// The API's spelling, as metric labels carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            PatchRun::Apply => "Apply",
            PatchRun::Revert => "Revert",
            PatchRun::Recover => "Recover",
        }
    }
}

fn default_transition_timeout() -> String {
    "60s".to_string()
}
fn default_true() -> bool {
    true
}
fn default_probation() -> String {
    "1h".to_string()
}
fn is_false(value: &bool) -> bool {
    !value
}
