//! Building the `LivePatchNode` status from what the kernel shows, what the state directory
//! records and how the last run went. Pure: the caller passes the time.

use kpersist_crds::{
    AppliedRelease, Condition, ConditionStatus, LivePatchNodeStatus, LoadedPatch, NodeError,
    NodePatchState, PatchRelease, PatchTimings,
};
use kpersist_kmod::kernel::{KernelIdentity, PatchState};

use crate::drift::Drift;
use crate::liveness::NotLive;
use crate::patch_run::Outcome;
use crate::state::AppliedRecord;

/// What the kernel shows now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Release and build id, when they could be read.
    pub identity: Option<KernelIdentity>,
    /// Whether livepatch is supported.
    pub supported: bool,
    /// The boot id.
    pub boot_id: String,
    /// The livepatches loaded.
    pub loaded: Vec<PatchState>,
}

/// The state and last error to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The node's state.
    pub state: NodePatchState,
    /// The last failure, if the last run failed.
    pub error: Option<NodeError>,
    /// Timings of the last run.
    pub timings: Option<PatchTimings>,
    /// Kernel findings of the last run that are not the release's fault.
    pub notes: Vec<String>,
    /// Changes made behind the agent's back since the last run.
    pub drift: Vec<Drift>,
}

impl Report {
    /// A report of `state` with no error.
    pub fn state(state: NodePatchState) -> Report {
        Report {
            state,
            error: None,
            timings: None,
            notes: Vec::new(),
            drift: Vec::new(),
        }
    }

    /// The report of a finished run.
    pub fn from_outcome(outcome: Outcome, now: &str) -> Report {
        Report {
            state: outcome.state,
            error: outcome.failure.map(|(failure, release)| NodeError {
                reason: failure.reason,
                message: failure.message,
                release,
                at: Some(now.to_string()),
            }),
            timings: Some(PatchTimings {
                finished_at: Some(now.to_string()),
                ..outcome.timings
            }),
            notes: outcome.notes,
            drift: Vec::new(),
        }
    }

    /// The report a previous status carried.
    pub fn from_status(status: &LivePatchNodeStatus) -> Report {
        Report {
            state: status.state.unwrap_or(NodePatchState::Idle),
            error: status.last_error.clone(),
            timings: status.timings.clone(),
            notes: status
                .conditions
                .iter()
                .find(|c| c.type_ == KERNEL_FINDINGS && c.status == ConditionStatus::True)
                .map(|c| c.message.lines().map(str::to_string).collect())
                .unwrap_or_default(),
            drift: status
                .conditions
                .iter()
                .find(|c| c.type_ == DRIFT && c.status == ConditionStatus::True)
                .map(|c| c.message.lines().filter_map(Drift::from_line).collect())
                .unwrap_or_default(),
        }
    }
}

/// What the state directory says, for the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRecords<'a> {
    /// The applied-release record.
    pub applied: &'a AppliedRecord,
    /// Ids of the releases the node refuses (for good, or until asked again).
    pub refused: Vec<String>,
    /// When the probation of the live release ends, if it is on probation.
    pub probation_until: Option<String>,
}

/// The release the kernel really runs: the recorded one, if its livepatch is loaded and
/// enabled. After a reboot the record remains but the kernel has nothing.
pub fn live_release<'a>(
    record: &'a AppliedRecord,
    loaded: &[PatchState],
) -> Option<&'a PatchRelease> {
    let current = record.current.as_ref()?;
    loaded
        .iter()
        .any(|p| p.name == current.module_name && p.enabled)
        .then_some(current)
}

/// The status to write; `not_live` says why the agent is not live, if it is not.
pub fn build_status(
    obs: &Observation,
    host: &HostRecords<'_>,
    report: &Report,
    observed_generation: Option<i64>,
    prior: Option<&LivePatchNodeStatus>,
    not_live: Option<&NotLive>,
    now: &str,
) -> LivePatchNodeStatus {
    let record = host.applied;
    let applied = live_release(record, &obs.loaded).map(|r| AppliedRelease {
        id: r.id.clone(),
        version: r.version,
        module_name: r.module_name.clone(),
        cves: r.cves.clone(),
        policy: record.policy.clone(),
        applied_at: record.applied_at.clone(),
    });
    let healthy = !matches!(
        report.state,
        NodePatchState::Failed | NodePatchState::CrashSuspected
    );
    let (health_reason, health_message) = match &report.error {
        Some(e) if !healthy => (format!("{:?}", e.reason), e.message.clone()),
        _ => ("Healthy".to_string(), String::new()),
    };
    let prior_conditions = prior.map(|p| p.conditions.as_slice()).unwrap_or_default();
    let conditions = vec![
        ready_condition(not_live, prior_conditions, now),
        condition(
            prior_conditions,
            "Healthy",
            healthy,
            &health_reason,
            health_message,
            now,
        ),
        support_condition(obs, prior_conditions, now),
        findings_condition(&report.notes, prior_conditions, now),
        drift_condition(&report.drift, prior_conditions, now),
    ];
    LivePatchNodeStatus {
        state: Some(report.state),
        kernel_release: obs.identity.as_ref().map(|i| i.release.clone()),
        build_id: obs.identity.as_ref().map(|i| i.build_id.clone()),
        livepatch_supported: obs.supported,
        boot_id: Some(obs.boot_id.clone()),
        loaded: obs
            .loaded
            .iter()
            .map(|p| LoadedPatch {
                name: p.name.clone(),
                enabled: p.enabled,
                transition: p.transition,
            })
            .collect(),
        applied,
        last_error: report.error.clone(),
        timings: report.timings.clone(),
        refused_releases: host.refused.clone(),
        probation_until: host.probation_until.clone(),
        observed_generation,
        conditions,
        agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
    }
}

/// The condition type of the agent's liveness.
pub const READY: &str = "Ready";

/// The condition type of changes made behind the agent's back.
pub const DRIFT: &str = "Drift";

/// `Ready`: True while the agent reads the kernel and watches its object, else why not
/// (`KernelUnreadable`, `KernelObservationStale`, `WatchFailing`).
fn ready_condition(not_live: Option<&NotLive>, prior: &[Condition], now: &str) -> Condition {
    match not_live {
        None => condition(prior, READY, true, "AgentRunning", String::new(), now),
        Some(e) => condition(prior, READY, false, e.reason, e.message.clone(), now),
    }
}

/// `status` with its `Ready` condition set from `not_live`, the rest as it was: what can
/// still be said when the kernel cannot be read.
pub fn with_ready(
    status: &LivePatchNodeStatus,
    not_live: Option<&NotLive>,
    now: &str,
) -> LivePatchNodeStatus {
    let mut status = status.clone();
    let ready = ready_condition(not_live, &status.conditions, now);
    match status.conditions.iter_mut().find(|c| c.type_ == READY) {
        Some(c) => *c = ready,
        None => status.conditions.insert(0, ready),
    }
    status
}

/// `Drift`: True with the kind of the first change as its reason (`PatchDisabled`,
/// `PatchReplaced`, `ForeignPatchAppeared`) and one line per change, until the next run.
fn drift_condition(drift: &[Drift], prior: &[Condition], now: &str) -> Condition {
    match drift.first() {
        None => condition(prior, DRIFT, false, "NoDrift", String::new(), now),
        Some(first) => {
            let lines: Vec<String> = drift.iter().map(Drift::line).collect();
            condition(
                prior,
                DRIFT,
                true,
                first.kind.as_str(),
                lines.join("\n"),
                now,
            )
        }
    }
}

/// The condition type of kernel findings not attributed to the release.
pub const KERNEL_FINDINGS: &str = "KernelFindings";

/// `KernelFindings`: True when the last apply saw new kernel warnings or taint that are not
/// the release's fault (reported, not failed), one per line of the message.
fn findings_condition(notes: &[String], prior: &[Condition], now: &str) -> Condition {
    let (found, reason) = if notes.is_empty() {
        (false, "NoneUnattributed")
    } else {
        (true, "UnattributedFindings")
    };
    condition(prior, KERNEL_FINDINGS, found, reason, notes.join("\n"), now)
}

/// `LivepatchSupported`: whether this kernel can be live patched at all, and if not why, so
/// an Unsupported node explains itself before any release is asked for.
fn support_condition(obs: &Observation, prior: &[Condition], now: &str) -> Condition {
    let (reason, message) = match (&obs.identity, obs.supported) {
        (Some(_), true) => ("LivepatchAvailable", String::new()),
        (Some(identity), false) => (
            "NoLivepatchSupport",
            format!(
                "kernel {} has no /sys/kernel/livepatch (built without CONFIG_LIVEPATCH?); \
                 kpersist cannot patch this node until it runs a kernel with livepatch support",
                identity.release
            ),
        ),
        (None, _) => (
            "KernelIdentityUnknown",
            "the running kernel's release or build id could not be read from /proc and /sys; \
             check the agent's host mounts"
                .to_string(),
        ),
    };
    let supported = obs.identity.is_some() && obs.supported;
    condition(prior, "LivepatchSupported", supported, reason, message, now)
}

/// A condition, keeping its last transition time when its status did not change.
fn condition(
    prior: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: &str,
) -> Condition {
    let status = ConditionStatus::of(ok);
    let since = Condition::since(prior, type_, status, now);
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        last_transition_time: Some(since),
        observed_generation: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpersist_crds::NodeErrorReason;

    use crate::checks::Failure;

    fn record(module: &str) -> AppliedRecord {
        AppliedRecord {
            current: Some(PatchRelease {
                id: "k/v2".into(),
                version: 2,
                kernel_release: "k".into(),
                build_id: "b".into(),
                module_name: module.into(),
                module_url: "file:///m".into(),
                sha256: "a".repeat(64),
                size: 1,
                cves: vec!["CVE-2024-1".into()],
            }),
            ..AppliedRecord::default()
        }
    }

    fn host(applied: &AppliedRecord) -> HostRecords<'_> {
        HostRecords {
            applied,
            refused: Vec::new(),
            probation_until: None,
        }
    }

    fn obs(loaded: Vec<PatchState>) -> Observation {
        Observation {
            identity: Some(KernelIdentity {
                release: "k".into(),
                build_id: "b".into(),
            }),
            supported: true,
            boot_id: "boot".into(),
            loaded,
        }
    }

    #[test]
    fn applied_is_only_what_the_kernel_runs() {
        let patch = PatchState {
            name: "kpersist_v2".into(),
            enabled: true,
            transition: false,
        };
        let report = Report::state(NodePatchState::Applied);
        let s = build_status(
            &obs(vec![patch]),
            &host(&record("kpersist_v2")),
            &report,
            Some(4),
            None,
            None,
            "t0",
        );
        let applied = s.applied.unwrap();
        assert_eq!((applied.id.as_str(), applied.cves.len()), ("k/v2", 1));
        assert_eq!(s.observed_generation, Some(4));
        // After a reboot the record stays but nothing is loaded.
        let s = build_status(
            &obs(vec![]),
            &host(&record("kpersist_v2")),
            &report,
            None,
            None,
            None,
            "t0",
        );
        assert_eq!(s.applied, None);
    }

    #[test]
    fn an_unsupported_kernel_says_why_in_a_condition() {
        let mut unsupported = obs(vec![]);
        unsupported.supported = false;
        let report = Report::state(NodePatchState::Unsupported);
        let status = |o: &Observation| {
            build_status(
                o,
                &host(&AppliedRecord::default()),
                &report,
                None,
                None,
                None,
                "t0",
            )
        };
        let support = |s: &LivePatchNodeStatus| {
            let c = s
                .conditions
                .iter()
                .find(|c| c.type_ == "LivepatchSupported");
            c.cloned().expect("LivepatchSupported condition")
        };
        let c = support(&status(&unsupported));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NoLivepatchSupport")
        );
        assert!(
            c.message.contains("kernel k has no /sys/kernel/livepatch"),
            "{}",
            c.message
        );
        unsupported.identity = None;
        let c = support(&status(&unsupported));
        assert_eq!(c.reason, "KernelIdentityUnknown");
        let c = support(&status(&obs(vec![])));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "LivepatchAvailable")
        );
    }

    #[test]
    fn failures_make_the_node_unhealthy_and_keep_condition_times() {
        let failure = Failure::new(NodeErrorReason::NewTaint, "taint W");
        let outcome = Outcome::failed(
            NodePatchState::Failed,
            failure,
            Some("k/v2"),
            PatchTimings::default(),
        );
        let report = Report::from_outcome(outcome, "t1");
        let first = build_status(
            &obs(vec![]),
            &host(&AppliedRecord::default()),
            &report,
            None,
            None,
            None,
            "t1",
        );
        let healthy = &first.conditions[1];
        assert_eq!(
            (healthy.status.as_str(), healthy.reason.as_str()),
            ("False", "NewTaint")
        );
        assert_eq!(
            first.last_error.as_ref().unwrap().release.as_deref(),
            Some("k/v2")
        );
        let again = build_status(
            &obs(vec![]),
            &host(&AppliedRecord::default()),
            &report,
            None,
            Some(&first),
            None,
            "t2",
        );
        assert_eq!(
            again.conditions[1].last_transition_time.as_deref(),
            Some("t1")
        );
    }
}
