//! `LivePatchPolicy`: which nodes, where their patches come from, and how a new cumulative
//! release is rolled out across them (waves, bakes, health gates, what to do on failure).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// A policy that keeps the selected nodes on the newest cumulative livepatch release of a
/// signed repository, rolled out in canary waves with health gates and automatic revert.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kpersist.io",
    version = "v1alpha1",
    kind = "LivePatchPolicy",
    plural = "livepatchpolicies",
    shortname = "lpp",
    category = "kpersist",
    status = "LivePatchPolicyStatus",
    doc = "A policy that keeps the nodes it selects on the newest cumulative livepatch release \
           of a signed repository: each new release is rolled out in canary waves with health \
           gates, and reverted when a wave fails. One LivePatchNode per node shows what its \
           kernel runs.",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.targetSummary"}"#,
    printcolumn = r#"{"name":"Patched","type":"string","jsonPath":".status.patchedSummary"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.nodes.failed"}"#,
    printcolumn = r#"{"name":"Wave","type":"string","jsonPath":".status.waveSummary"}"#,
    printcolumn = r#"{"name":"Problems","type":"integer","priority":1,"description":"Nodes held back by trouble of their own (not the release's fault)","jsonPath":".status.nodes.nodeProblems"}"#,
    printcolumn = r#"{"name":"Bad","type":"string","description":"Releases marked bad","jsonPath":".status.badReleases[*].release"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LivePatchPolicySpec {
    /// Nodes this policy patches, by Node labels. An empty selector selects every node.
    /// A node selected by two policies is patched by the older one; the newer reports the
    /// conflict (Ready=False, reason Conflict) and leaves the node alone.
    #[serde(default)]
    pub node_selector: LabelSelector,
    /// Where releases come from and which ones to trust.
    pub repository: RepositorySpec,
    /// How a new release is rolled out across the selected nodes.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// What counts as a healthy node after it applied a release.
    #[serde(default)]
    pub health: HealthSpec,
}

/// A signed patch repository: `index.json`, `index.json.sig` and the modules.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySpec {
    /// Base URL of the repository (the directory holding `index.json`), http or https.
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
    /// Channel whose releases are rolled out, for example `stable` or `edge`.
    #[serde(default = "default_channel")]
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$"))]
    pub channel: String,
    /// Trusted ed25519 public keys, base64 of the 32 raw key bytes (as printed by
    /// `kpersist-repo keygen`). The index must carry a valid signature by one of these or
    /// by a key from `trustedKeysSecret`.
    #[serde(default)]
    #[schemars(inner(regex(pattern = r"^\s*[A-Za-z0-9+/]{43}=\s*$")))]
    pub trusted_keys: Vec<String>,
    /// A Secret whose every data value is a trusted public key in the same encoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_keys_secret: Option<SecretKeysRef>,
    /// PEM bundle of certificate authorities trusted for an https repository, in addition
    /// to the system ones. Certificate verification is never turned off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Hosts the repository's files may be redirected to besides the origin of `url`
    /// (its scheme, host and port), e.g. a CDN or an object store: `[cdn.example.com]`.
    /// A redirect to any other host is refused, and a redirect from https to plain http
    /// is refused even to a listed host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_redirect_hosts: Vec<String>,
    /// How often the repository is checked for new releases (e.g. `1h`, `15m`).
    #[serde(default = "default_check_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub check_interval: String,
    /// Only roll out releases published at least this long ago (e.g. `72h`), to let others
    /// find problems first. A release published in the future is never rolled out before
    /// its publication time, with or without a delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub delay: Option<String>,
    /// Roll out exactly this cumulative version instead of the newest one. Nodes whose
    /// kernel has no release with this version are reported Unsupported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub pinned_version: Option<u64>,
}

/// A Secret holding trusted public keys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeysRef {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
}

/// How a release is rolled out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Waves in order; the first is the canary. Each wave is given as a node count or a
    /// percentage of the selected nodes (cumulative: `percent: 50` means half of all nodes
    /// are done after this wave). The last wave should reach 100%; nodes left after the
    /// last wave are patched in a final wave of their own.
    #[serde(default = "default_waves")]
    #[schemars(length(min = 1))]
    pub waves: Vec<Wave>,
    /// At most this many nodes download and apply at the same time.
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1))]
    pub max_in_flight: u32,
    /// A wave fails when more than this many of its nodes fail.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_failures: u32,
    /// What to do when a wave fails: `Revert` every node that took the release back to its
    /// previous release and mark the release bad, or `Pause` and wait for a person.
    /// Only the release's own failures count (the kernel refused it, its transition
    /// stalled, it broke the node); a node's trouble (download, NotReady, another kernel)
    /// is reported and the wave goes on without that node.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// What to do when a release that an earlier rollout already proved fails on a node
    /// (a node that joined later, or a crash on probation after its rollout finished):
    /// `Pause` (default) stops the policy with a `LateFailure` condition and an Event, and a
    /// person decides whether to revoke the release fleet-wide; `Revert` marks it bad and
    /// sends every node of the policy that holds it back.
    #[serde(default = "default_late_failure_policy")]
    pub late_failure_policy: FailurePolicy,
    /// Set to a new value (for example the current time) to acknowledge the late failures
    /// listed in `status.lateFailures` and let a policy paused by them go on. Any other
    /// edit of the spec acknowledges them too; this field exists so that the edit can be a
    /// one-liner that changes nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub acknowledged: Option<String>,
    /// Releases marked bad (`status.badReleases`) that a person has cleared to roll out
    /// again, by id (`<kernelRelease>/v<version>`). Each listed release is taken off
    /// `status.badReleases` once, when it is first seen here (`status.retriedReleases`
    /// remembers when); the nodes sent back from it before then no longer count against it,
    /// and a new failure marks it bad again. To clear a later mark, remove the entry and add
    /// it back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub retry_releases: Vec<String>,
    /// When present, new nodes start applying only inside one of these windows. Work that
    /// has started (a bake, a revert) goes on outside them.
    #[serde(default)]
    pub maintenance_windows: Vec<MaintenanceWindow>,
    /// Stop starting new work; nodes already applying finish.
    #[serde(default)]
    pub paused: bool,
    /// Plan only: the waves are shown in status and nothing is written to any node.
    #[serde(default)]
    pub dry_run: bool,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            waves: default_waves(),
            max_in_flight: default_max_in_flight(),
            max_failures: 0,
            failure_policy: FailurePolicy::default(),
            late_failure_policy: default_late_failure_policy(),
            acknowledged: None,
            retry_releases: Vec::new(),
            maintenance_windows: Vec::new(),
            paused: false,
            dry_run: false,
        }
    }
}

/// One wave of a rollout. Give exactly one of `nodes` and `percent`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [{"required": ["nodes"]}, {"required": ["percent"]}]))]
pub struct Wave {
    /// Number of nodes in this wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub nodes: Option<u32>,
    /// Cumulative share of the selected nodes patched once this wave is done (1 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub percent: Option<u32>,
    /// How long the wave's nodes must stay healthy after applying before the next wave
    /// starts (e.g. `10m`).
    #[serde(default = "default_bake")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub bake: String,
}

/// What to do when a wave fails.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailurePolicy {
    /// Send every node that took the failing release back to its previous release and never
    /// offer that release again.
    #[default]
    Revert,
    /// Stop the rollout where it is and wait for a person.
    Pause,
}

/// A recurring time window in which new nodes may start applying.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// Days on which the window opens; empty means every day.
    #[serde(default)]
    pub days: Vec<Weekday>,
    /// Opening time, `HH:MM` in 24-hour form.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// Closing time, `HH:MM`; a closing time before the opening time means the window runs
    /// past midnight.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub end: String,
    /// IANA time zone of `start` and `end`, for example `Europe/Berlin`.
    #[serde(default = "default_time_zone")]
    #[schemars(regex(pattern = r"^(UTC|[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*)$"))]
    pub time_zone: String,
}

/// A day of the week.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// What counts as a healthy node after applying.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthSpec {
    /// How long the kernel may take to move every task onto the patched code before the
    /// agent reverses the transition and reports `TransitionStalled` (e.g. `60s`).
    #[serde(default = "default_transition_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub transition_timeout: String,
    /// Watch Node readiness: a node NotReady for longer than `notReadyGrace` is reported as
    /// a node problem and its wave goes on without it. NotReady never marks a release bad
    /// (a kubelet restart or a planned reboot is not the patch's fault); cordoned and
    /// deleting nodes are never counted.
    #[serde(default = "default_true")]
    pub node_ready: bool,
    /// How long a node may be NotReady before it counts as a node problem (e.g. `5m`).
    #[serde(default = "default_not_ready_grace")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub not_ready_grace: String,
    /// How long after its transition a node is on probation (e.g. `1h`): an unclean end
    /// of the node's boot within it is taken as a crash caused by the release.
    #[serde(default = "default_probation")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub probation: String,
    /// How long a node handed a release may stay unfinished before it is resolved as a
    /// node problem (agent silent or stuck), so its wave does not wait forever. Absent:
    /// two minutes of download retries plus `transitionTimeout` plus two minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub node_deadline: Option<String>,
    /// Load releases even where another tool's livepatches (a distribution's kpatch-patch,
    /// Canonical Livepatch, a vendor's) are enabled. The atomic replace disables them,
    /// reopening what they fixed until kpersist's release covers it, and that tool may
    /// load its patch again. Off: such nodes report `ForeignLivepatch` and are skipped.
    #[serde(default)]
    pub replace_foreign_livepatches: bool,
    /// New kernel WARNING/BUG/Oops lines or new taint bits after applying count as a
    /// failure.
    #[serde(default = "default_true")]
    pub kmsg_checks: bool,
    /// An optional Prometheus query evaluated during each bake; the wave fails when it does
    /// not hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusGate>,
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            transition_timeout: default_transition_timeout(),
            node_ready: true,
            not_ready_grace: default_not_ready_grace(),
            probation: default_probation(),
            node_deadline: None,
            replace_foreign_livepatches: false,
            kmsg_checks: true,
            prometheus: None,
        }
    }
}

/// A Prometheus health gate: every sample the query returns must compare true against the
/// threshold for a wave to pass its bake. A gate that cannot judge the wave (Prometheus
/// unreachable or refusing the query three times in a row, or no samples unless
/// `failOnEmpty`) holds it: phase Paused with the reason, until the query answers again.
/// Nothing passes unjudged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusGate {
    /// Base URL of the Prometheus HTTP API, e.g. `http://prometheus.monitoring:9090`.
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
    /// PromQL instant query, e.g. `sum(rate(http_errors_total[5m])) or vector(0)` (the
    /// `or vector(0)` answers 0 rather than nothing while no error was ever counted).
    #[schemars(length(min = 1))]
    pub query: String,
    /// How each sample is compared with `threshold`.
    pub operator: ComparisonOperator,
    /// The value samples are compared with.
    pub threshold: f64,
    /// Treat an empty query result as a failure of the wave (its releases are reverted)
    /// rather than holding it. If no series means healthy, end the query with
    /// `or vector(0)` instead.
    #[serde(default)]
    pub fail_on_empty: bool,
    /// How often the query is evaluated during a bake.
    #[serde(default = "default_gate_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub interval: String,
    /// How long one query may take; a slower answer counts as a failed query.
    #[serde(default = "default_gate_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub timeout: String,
    /// PEM bundle of certificate authorities trusted for an https Prometheus, in addition
    /// to the system ones. Certificate verification is never turned off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// HTTP headers sent with each query: `X-Scope-OrgID` for a Mimir, Cortex or Thanos
    /// tenant, `Authorization` for a token (from a Secret).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<GateHeader>,
}

/// An HTTP header the Prometheus gate sends: `value` inline, or `valueFrom` a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateHeader {
    /// The header's name, e.g. `X-Scope-OrgID` or `Authorization`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))]
    pub name: String,
    /// The value, when it is not secret (a tenant id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value from a key of a Secret (a bearer token, basic credentials). The operator
    /// reads only Secrets the chart value `operator.gateSecrets` lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<SecretKeyRef>,
}

/// One key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
    /// The key whose value is used.
    pub key: String,
}

/// A comparison for the Prometheus gate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ComparisonOperator {
    LessThan,
    LessThanOrEqual,
    GreaterThan,
    GreaterThanOrEqual,
    Equal,
}

impl ComparisonOperator {
    /// Whether `value <op> threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::LessThan => value < threshold,
            Self::LessThanOrEqual => value <= threshold,
            Self::GreaterThan => value > threshold,
            Self::GreaterThanOrEqual => value >= threshold,
            Self::Equal => value == threshold,
        }
    }
}

/// Observed state of a policy, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LivePatchPolicyStatus {
    /// Where the rollout is: Idle, Progressing, Baking, Paused, RollingBack, Complete or
    /// Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PolicyPhase>,
    /// Ready, Progressing, Degraded and RepositoryReachable, with reasons and messages.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The rollout in progress, if any. The operator carries on from this after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutProgress>,
    /// Nodes per state among the selected nodes.
    #[serde(default)]
    pub nodes: NodeCounts,
    /// The release each kernel build is being moved to.
    #[serde(default)]
    pub targets: Vec<KernelTarget>,
    /// Releases that failed a wave and are never offered again by this policy.
    #[serde(default)]
    pub bad_releases: Vec<BadRelease>,
    /// The releases `spec.rollout.retryReleases` cleared, with when: reverts from one asked
    /// before then never mark it bad again, whether its entry is still listed or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retried_releases: Vec<RetriedRelease>,
    /// The highest wave number this policy's rollouts have reserved for nodes'
    /// `spec.desired.wave`: a new rollout numbers its waves after it (`rollout.waveOffset`),
    /// so the nodes it gives a release are told apart from those of earlier rollouts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_wave: u32,
    /// When the last rollout ended (complete or reverted), RFC 3339. A release's fault
    /// reported after it, by a node outside the running rollout, is a late failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollout_end: Option<String>,
    /// Failures of releases that an earlier rollout already gave out, newest last (at most
    /// ten): a node that joined later failed a proven release, or a node crashed on
    /// probation after its rollout. With `rollout.lateFailurePolicy: Pause` the policy
    /// hands out nothing new while one is unacknowledged; editing the policy acknowledges
    /// them, and setting `lateFailurePolicy: Revert` revokes the release fleet-wide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub late_failures: Vec<LateFailure>,
    /// With `dryRun`: how many nodes each wave would take, with the first few by name.
    #[serde(default)]
    pub planned_waves: Vec<PlannedWave>,
    /// Target shown by `kubectl get`: `v3`, or `mixed` when kernels differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_summary: Option<String>,
    /// `patched/total` shown by `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patched_summary: Option<String>,
    /// `current/total` waves shown by `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_summary: Option<String>,
    /// When the repository index was last fetched and verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_repository_check: Option<String>,
    /// The highest repository index serial the operator has accepted for this policy: an
    /// index with a lower serial is refused as a rollback, also after an operator restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_serial: Option<u64>,
    /// The policy generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Phase of a policy's rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PolicyPhase {
    /// Nothing to do: every selected node is on its target or unsupported.
    Idle,
    /// A wave is applying.
    Progressing,
    /// A wave applied and is being watched for `bake`.
    Baking,
    /// Stopped by `paused`, a closed maintenance window, or `failurePolicy: Pause`.
    Paused,
    /// A failed release is being reverted.
    RollingBack,
    /// The last rollout finished on every wave.
    Complete,
    /// The last rollout failed and was reverted, or the policy is invalid.
    Failed,
}

/// The rollout in progress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutProgress {
    /// Release ids being rolled out, one per kernel build.
    #[serde(default)]
    pub releases: Vec<String>,
    /// Current wave, counted from 1.
    pub wave: u32,
    /// Number of waves in this rollout.
    pub waves: u32,
    /// When the rollout started (RFC 3339).
    pub started_at: String,
    /// When the current wave started (RFC 3339).
    pub wave_started_at: String,
    /// When every node of the current wave had applied, so its bake began (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_started_at: Option<String>,
    /// How many of the rollout's nodes are handed a release by the end of the current
    /// wave, fixed when the wave starts (and again when the policy is edited): nodes that
    /// join the fleet later wait for a later wave, or in the last wave for the next rollout,
    /// so a joiner never restarts a bake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_quota: Option<u32>,
    /// How many nodes have been given a release of this rollout. Which nodes they are is
    /// recorded on each node instead (its LivePatchNode's `spec.desired`: release and
    /// wave), so this status stays the same size however large the fleet.
    #[serde(default)]
    pub assigned: u32,
    /// Added to this rollout's wave numbers in the `spec.desired.wave` it writes to nodes,
    /// so that its nodes are told apart from nodes an earlier rollout of the same release
    /// gave it: wave `w` of this rollout is written as `waveOffset + w`. It is the policy's
    /// `lastWave` when the rollout started.
    #[serde(default)]
    pub wave_offset: u32,
    /// Why the rollout is paused, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_reason: Option<String>,
    /// The wave that failed under `failurePolicy: Pause`. The rollout waits until the
    /// policy is edited (its generation changes), then looks at the wave again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_wave: Option<u32>,
    /// Why the current wave holds in its bake (phase Paused): the Prometheus gate cannot
    /// be evaluated. The gate keeps being asked; the wave goes on once it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_inconclusive: Option<String>,
}

/// Nodes per state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Nodes the selector matches.
    pub total: u32,
    /// Nodes on their target release.
    pub patched: u32,
    /// Nodes downloading or applying.
    pub applying: u32,
    /// Nodes reverting.
    pub reverting: u32,
    /// Nodes waiting for their turn.
    pub pending: u32,
    /// Nodes whose last apply failed.
    pub failed: u32,
    /// Nodes with no livepatch support or no release for their kernel.
    pub unsupported: u32,
    /// Nodes that went down while applying.
    pub crash_suspected: u32,
    /// Nodes with a node problem (download, host, lockdown, another kernel, another tool's
    /// livepatch, NotReady past the grace, agent silent past the deadline): not the
    /// release's fault, retried, and skipped by the waves meanwhile.
    #[serde(default)]
    pub node_problems: u32,
    /// Nodes with no LivePatchNode yet (no agent running).
    pub unknown: u32,
    /// Nodes an older policy also selects: that policy owns them, this one leaves them
    /// alone (the Degraded condition names them).
    #[serde(default)]
    pub conflicted: u32,
}

/// The release a kernel build is moved to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelTarget {
    /// Kernel release.
    pub kernel_release: String,
    /// Kernel build id.
    pub build_id: String,
    /// Target release id.
    pub release: String,
    /// Target cumulative version.
    pub version: u64,
    /// Number of CVEs the target fixes.
    pub cves: u32,
    /// Selected nodes running this kernel.
    pub nodes: u32,
}

/// A release that failed and is never offered again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BadRelease {
    /// Release id.
    pub release: String,
    /// Why it was marked bad.
    pub reason: String,
    /// When (RFC 3339).
    pub marked_at: String,
}

/// A release a person cleared to roll out again (`spec.rollout.retryReleases`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetriedRelease {
    /// Release id.
    pub release: String,
    /// When it was last cleared (RFC 3339): reverts from it asked before then are not
    /// evidence against it, listed or not.
    pub at: String,
    /// Whether `spec.rollout.retryReleases` lists it now. A record whose entry was removed
    /// is kept; listing the release again clears it again.
    #[serde(default = "listed")]
    pub listed: bool,
}

fn listed() -> bool {
    true
}

/// A release's fault reported outside the rollout that judged the release.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LateFailure {
    /// The node that reported it.
    pub node: String,
    /// Release id.
    pub release: String,
    /// The node's reason and message.
    pub evidence: String,
    /// When the operator saw it (RFC 3339).
    pub seen_at: String,
    /// The policy generation it was seen at; a later generation acknowledges it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// With `dryRun`, the nodes a wave would take.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedWave {
    /// Wave number, from 1.
    pub wave: u32,
    /// How many nodes the wave would take.
    pub nodes: u32,
    /// The first nodes the wave would take, in rollout order: at most 10 names, so that
    /// the status stays small on any fleet. The others follow in the same order.
    #[serde(default)]
    pub first_nodes: Vec<String>,
}

impl PlannedWave {
    /// How many node names a planned wave lists at most.
    pub const SAMPLE: usize = 10;
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
fn default_channel() -> String {
    "stable".to_string()
}
fn default_check_interval() -> String {
    "1h".to_string()
}
fn default_bake() -> String {
    "10m".to_string()
}
fn default_waves() -> Vec<Wave> {
    vec![
        Wave {
            nodes: Some(1),
            percent: None,
            bake: "10m".to_string(),
        },
        Wave {
            nodes: None,
            percent: Some(10),
            bake: "10m".to_string(),
        },
        Wave {
            nodes: None,
            percent: Some(100),
            bake: "0s".to_string(),
        },
    ]
}
fn default_max_in_flight() -> u32 {
    10
}
fn default_time_zone() -> String {
    "UTC".to_string()
}
fn default_transition_timeout() -> String {
    "60s".to_string()
}
fn default_gate_interval() -> String {
    "30s".to_string()
}
fn default_gate_timeout() -> String {
    "10s".to_string()
}
fn default_late_failure_policy() -> FailurePolicy {
    FailurePolicy::Pause
}
fn default_not_ready_grace() -> String {
    "5m".to_string()
}
fn default_probation() -> String {
    "1h".to_string()
}
fn default_true() -> bool {
    true
}
