//! The agent's Prometheus metrics, in a registry of its own served on `/metrics`.
//!
//! A handful of series per node: at 10,000 nodes every agent series is 10,000 series at
//! Prometheus. How long applies and reverts take is not here: each run's timings go into
//! the LivePatchNode's status, and the operator turns them into histograms per policy
//! (`kpersist_node_run_duration_seconds`, `kpersist_node_transition_duration_seconds`).

use std::sync::{Arc, Mutex};

use kpersist_crds::{AppliedRelease, NodeErrorReason, NodePatchState};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::drift::{Drift, DriftKind};
use crate::patch_run::Outcome;

/// Every metric the agent exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    runs: IntCounterVec,
    info: InfoGauge,
    policy: InfoGauge,
    findings: IntCounterVec,
    start_to_applied: prometheus::Gauge,
    drift: IntGaugeVec,
    drift_found: IntCounterVec,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let runs = IntCounterVec::new(
            Opts::new(
                "kpersist_agent_applies_total",
                "Runs by action (Apply, Revert, Recover) and result (Applied, Idle or the \
                 failure reason)",
            ),
            &["action", "result"],
        )?;
        let info = IntGaugeVec::new(
            Opts::new(
                "kpersist_agent_applied_info",
                "The release this node runs: 1 for the live module, release, kernel and the \
                 policy that asked for it (empty when none did)",
            ),
            &["module", "release", "kernel", "policy"],
        )?;
        let findings = IntCounterVec::new(
            Opts::new(
                "kpersist_agent_health_findings_total",
                "Kernel warnings and taint found after loads: the release's (kmsg, taint), \
                 crashes, and those not attributed to it (unattributed)",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(runs.clone()))?;
        registry.register(Box::new(info.clone()))?;
        let policy = IntGaugeVec::new(
            Opts::new(
                "kpersist_agent_policy_info",
                "Always 1: the policy whose request this node follows (empty when none asks), \
                 for joining agent series to a policy",
            ),
            &["policy"],
        )?;
        registry.register(Box::new(policy.clone()))?;
        let start_to_applied = prometheus::Gauge::new(
            "kpersist_agent_start_to_applied_seconds",
            "From the agent's start to its first apply that ended Applied (as after a reboot)",
        )?;
        registry.register(Box::new(findings.clone()))?;
        registry.register(Box::new(start_to_applied.clone()))?;
        let drift = IntGaugeVec::new(
            Opts::new(
                "kpersist_agent_drift",
                "1 while the Drift condition reports this kind of change made behind the \
                 agent's back (PatchDisabled, PatchReplaced, ForeignPatchAppeared)",
            ),
            &["kind"],
        )?;
        let drift_found = IntCounterVec::new(
            Opts::new(
                "kpersist_agent_drift_found_total",
                "Changes made behind the agent's back found by re-reading sysfs, by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(drift.clone()))?;
        registry.register(Box::new(drift_found.clone()))?;
        for kind in DriftKind::ALL {
            drift.with_label_values(&[kind.as_str()]).set(0);
            drift_found.with_label_values(&[kind.as_str()]);
        }
        let build_info = IntGaugeVec::new(
            Opts::new(
                "kpersist_agent_build_info",
                "Always 1; the agent's version in the label.",
            ),
            &["version"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(Metrics {
            registry,
            runs,
            info: InfoGauge::new(info),
            policy: InfoGauge::new(policy),
            findings,
            start_to_applied,
            drift,
            drift_found,
        })
    }

    /// Counts a change made behind the agent's back.
    pub fn observe_drift(&self, kind: DriftKind) {
        self.drift_found.with_label_values(&[kind.as_str()]).inc();
    }

    /// Sets the drift gauge to the changes the status reports.
    pub fn set_drift(&self, drift: &[Drift]) {
        for kind in DriftKind::ALL {
            let on = drift.iter().any(|d| d.kind == kind);
            self.drift
                .with_label_values(&[kind.as_str()])
                .set(i64::from(on));
        }
    }

    /// Records the time from the agent's start to its first apply that ended Applied.
    pub fn set_start_to_applied(&self, elapsed: std::time::Duration) {
        self.start_to_applied.set(elapsed.as_secs_f64());
    }

    /// Records a finished run.
    pub fn observe_run(&self, outcome: &Outcome) {
        let action = outcome.timings.run.map_or("Unknown", |run| run.as_str());
        let result = match &outcome.failure {
            Some((failure, _)) => format!("{:?}", failure.reason),
            None => format!("{:?}", outcome.state),
        };
        self.runs.with_label_values(&[action, &result]).inc();
        match outcome.failure.as_ref().map(|(f, _)| f.reason) {
            Some(NodeErrorReason::KernelWarning) => {
                self.findings.with_label_values(&["kmsg"]).inc()
            }
            Some(NodeErrorReason::NewTaint) => self.findings.with_label_values(&["taint"]).inc(),
            _ => {}
        }
        if !outcome.notes.is_empty() {
            self.findings
                .with_label_values(&["unattributed"])
                .inc_by(outcome.notes.len() as u64);
        }
        if outcome.state == NodePatchState::CrashSuspected {
            self.findings.with_label_values(&["crash"]).inc();
        }
    }

    /// Sets the info metric to the live release (or clears it).
    pub fn set_applied(&self, applied: Option<&AppliedRelease>, kernel: &str) {
        self.info.show(applied.map(|release| {
            let policy = release.policy.clone().unwrap_or_default();
            vec![
                release.module_name.clone(),
                release.id.clone(),
                kernel.to_string(),
                policy,
            ]
        }));
    }

    /// Sets the policy whose request the node follows (`None`: no request).
    pub fn set_policy(&self, policy: Option<&str>) {
        self.policy
            .show(Some(vec![policy.unwrap_or_default().to_string()]));
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on metric families that cannot exist here.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// An info gauge with at most one series, moved to new label values without a moment in
/// which a scrape would find none.
#[derive(Clone)]
struct InfoGauge {
    gauge: IntGaugeVec,
    shown: Arc<Mutex<Option<Vec<String>>>>,
}

impl InfoGauge {
    fn new(gauge: IntGaugeVec) -> InfoGauge {
        InfoGauge {
            gauge,
            shown: Arc::default(),
        }
    }

    /// Shows the series of `labels` at 1 (`None`: no series), then drops the one before.
    fn show(&self, labels: Option<Vec<String>>) {
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        if *shown == labels {
            return;
        }
        fn values(labels: &[String]) -> Vec<&str> {
            labels.iter().map(String::as_str).collect()
        }
        if let Some(labels) = &labels {
            self.gauge.with_label_values(&values(labels)).set(1);
        }
        if let Some(before) = shown.take() {
            let _ = self.gauge.remove_label_values(&values(&before));
        }
        *shown = labels;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checks::Failure;
    use kpersist_crds::{PatchRun, PatchTimings};

    /// The release `id` in `module`, asked for by policy `web`.
    pub(crate) fn applied(module: &str, id: &str) -> AppliedRelease {
        AppliedRelease {
            id: id.into(),
            version: 2,
            module_name: module.into(),
            cves: vec![],
            policy: Some("web".into()),
            applied_at: None,
        }
    }

    #[test]
    fn runs_and_findings_are_counted() {
        let m = Metrics::new().unwrap();
        let failed = Outcome {
            state: NodePatchState::Failed,
            failure: Some((Failure::new(NodeErrorReason::NewTaint, "x"), None)),
            timings: PatchTimings {
                run: Some(PatchRun::Apply),
                total_ms: Some(1500),
                transition_ms: Some(200),
                ..PatchTimings::default()
            },
            notes: vec![],
        };
        m.observe_run(&failed);
        m.set_applied(Some(&applied("kpersist_v2", "k/v2")), "k");
        let text = m.render();
        assert!(
            text.contains(r#"kpersist_agent_applies_total{action="Apply",result="NewTaint"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kpersist_agent_health_findings_total{kind="taint"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"kpersist_agent_applied_info{kernel="k",module="kpersist_v2",policy="web",release="k/v2"} 1"#
            ),
            "{text}"
        );
        assert!(!text.contains("_bucket"), "no histogram per node: {text}");
    }

    #[test]
    fn info_series_move_to_new_labels_and_go() {
        let m = Metrics::new().unwrap();
        fn infos(m: &Metrics, name: &str) -> Vec<String> {
            m.render()
                .lines()
                .filter(|l| l.starts_with(name))
                .map(str::to_string)
                .collect()
        }
        m.set_policy(Some("web"));
        m.set_applied(Some(&applied("kpersist_v2", "k/v2")), "k");
        m.set_applied(Some(&applied("kpersist_v3", "k/v3")), "k");
        assert_eq!(
            infos(&m, "kpersist_agent_applied_info{"),
            [
                r#"kpersist_agent_applied_info{kernel="k",module="kpersist_v3",policy="web",release="k/v3"} 1"#
            ]
        );
        m.set_applied(None, "k");
        assert!(infos(&m, "kpersist_agent_applied_info{").is_empty());
        assert_eq!(
            infos(&m, "kpersist_agent_policy_info{"),
            [r#"kpersist_agent_policy_info{policy="web"} 1"#]
        );
        m.set_policy(None);
        assert_eq!(
            infos(&m, "kpersist_agent_policy_info{"),
            [r#"kpersist_agent_policy_info{policy=""} 1"#]
        );
    }

    #[test]
    fn drift_is_counted_and_shown_by_kind() {
        let m = Metrics::new().unwrap();
        m.observe_drift(DriftKind::PatchDisabled);
        m.set_drift(&[Drift {
            kind: DriftKind::PatchDisabled,
            message: "m".into(),
        }]);
        let text = m.render();
        for line in [
            r#"kpersist_agent_drift{kind="PatchDisabled"} 1"#,
            r#"kpersist_agent_drift{kind="PatchReplaced"} 0"#,
            r#"kpersist_agent_drift_found_total{kind="PatchDisabled"} 1"#,
            r#"kpersist_agent_drift_found_total{kind="ForeignPatchAppeared"} 0"#,
            concat!(
                r#"kpersist_agent_build_info{version=""#,
                env!("CARGO_PKG_VERSION"),
                r#""} 1"#
            ),
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        m.set_drift(&[]);
        assert!(
            m.render()
                .contains(r#"kpersist_agent_drift{kind="PatchDisabled"} 0"#)
        );
    }
}
