//! The operator's Prometheus metrics, in a registry of their own so tests can build as many
//! as they like. Every series carrying a `policy` label is removed when the policy goes, so
//! a cluster that churns policies does not grow the exposition forever.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kpersist_crds::{LivePatchPolicyStatus, NodeCounts, PatchRun, PatchTimings, PolicyPhase};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::node_runs::NodeRuns;

/// Every phase a policy can be in, so the phase gauge always carries a 0 or 1 for each.
const PHASES: [PolicyPhase; 7] = [
    PolicyPhase::Idle,
    PolicyPhase::Progressing,
    PolicyPhase::Baking,
    PolicyPhase::Paused,
    PolicyPhase::RollingBack,
    PolicyPhase::Complete,
    PolicyPhase::Failed,
];

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    nodes: IntGaugeVec,
    selected_nodes: IntGaugeVec,
    node_errors: IntGaugeVec,
    rollout_wave: IntGaugeVec,
    rollout_phase: IntGaugeVec,
    rollouts: IntCounterVec,
    reverts: IntCounterVec,
    repository_polls: IntCounterVec,
    repository_verified: GaugeVec,
    reconcile_duration: Histogram,
    reconcile_errors: IntCounterVec,
    leader: IntGauge,
    run_duration: HistogramVec,
    transition_duration: HistogramVec,
    node_runs: Arc<Mutex<NodeRuns>>,
}

/// Builds a metric and registers it; names and labels are constants, so a failure here is a
/// programming error caught by the first test that builds `Metrics`.
fn registered<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: M) -> M {
    #[allow(clippy::expect_used)]
    registry
        .register(Box::new(m.clone()))
        .expect("metric names are unique constants");
    m
}

#[allow(clippy::expect_used)]
fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

/// Bounds of the node latency histograms, in seconds: a load takes from a tenth of a second
/// to minutes when tasks are slow to leave patched functions.
const NODE_RUN_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[allow(clippy::expect_used)]
fn node_histogram(name: &str, help: &str) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(NODE_RUN_BUCKETS.to_vec()),
        &["policy", "action"],
    )
    .expect("valid metric definition")
}

#[allow(clippy::expect_used)]
fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates every metric in a fresh registry.
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let build_info = gauge_vec(
            "kpersist_build_info",
            "Always 1; the operator's version in the label.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registered(r, build_info);
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "kpersist_reconcile_duration_seconds",
                "Time one policy reconcile took, including API writes and repository polls.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric definition");
        let leader = IntGauge::new(
            "kpersist_leader",
            "1 while this replica holds the leader Lease and reconciles, else 0.",
        )
        .expect("valid metric definition");
        Self {
            nodes: registered(
                r,
                gauge_vec(
                    "kpersist_nodes",
                    "The policy's nodes by state, spelled as in status.nodes (patched, \
                     applying, pending, failed, crashSuspected, nodeProblems, ...); the states \
                     partition kpersist_selected_nodes.",
                    &["policy", "state"],
                ),
            ),
            selected_nodes: registered(
                r,
                gauge_vec(
                    "kpersist_selected_nodes",
                    "Nodes the policy selects (status.nodes.total).",
                    &["policy"],
                ),
            ),
            node_errors: registered(
                r,
                gauge_vec(
                    "kpersist_node_errors",
                    "Selected nodes whose LivePatchNode reports a failure, by reason (the API's \
                     NodeErrorReason); the node's next success clears it.",
                    &["policy", "reason"],
                ),
            ),
            rollout_wave: registered(
                r,
                gauge_vec(
                    "kpersist_rollout_wave",
                    "Current wave of the policy's rollout, from 1; 0 when none runs.",
                    &["policy"],
                ),
            ),
            rollout_phase: registered(
                r,
                gauge_vec(
                    "kpersist_rollout_phase",
                    "1 for the policy's current phase, 0 for the others.",
                    &["policy", "phase"],
                ),
            ),
            rollouts: registered(
                r,
                counter_vec(
                    "kpersist_rollouts_total",
                    "Rollouts that ended, by result (complete, failed).",
                    &["policy", "result"],
                ),
            ),
            reverts: registered(
                r,
                counter_vec(
                    "kpersist_reverts_total",
                    "Reverts started because a wave failed.",
                    &["policy"],
                ),
            ),
            repository_polls: registered(
                r,
                counter_vec(
                    "kpersist_repository_polls_total",
                    "Repository index polls by result (updated, not_modified, or the failure reason).",
                    &["policy", "result"],
                ),
            ),
            repository_verified: registered(
                r,
                GaugeVec::new(
                    Opts::new(
                        "kpersist_repository_last_verified_timestamp_seconds",
                        "When the policy's repository index was last fetched and verified \
                         (Unix time); time() minus this is the age of what the policy knows.",
                    ),
                    &["policy"],
                )
                .expect("valid metric definition"),
            ),
            reconcile_errors: registered(
                r,
                counter_vec(
                    "kpersist_reconcile_errors_total",
                    "Failed reconciles by error kind.",
                    &["reason"],
                ),
            ),
            reconcile_duration: registered(r, reconcile_duration),
            leader: registered(r, leader),
            run_duration: registered(
                r,
                node_histogram(
                    "kpersist_node_run_duration_seconds",
                    "Applies and reverts on the policy's nodes by action, from the start of \
                     the run to its end, as the agents report in their LivePatchNodes' \
                     status.timings (Recover: from the restarted agent's start to the end of \
                     the load an earlier agent process began).",
                ),
            ),
            transition_duration: registered(
                r,
                node_histogram(
                    "kpersist_node_transition_duration_seconds",
                    "From the module load to the end of the livepatch transition on the \
                     policy's nodes, by action, from the LivePatchNodes' status.timings \
                     (Recover: from the restarted agent's start).",
                ),
            ),
            node_runs: Arc::default(),
            registry,
        }
    }

    /// Records a reconcile's duration.
    pub fn observe_reconcile(&self, duration: Duration) {
        self.reconcile_duration.observe(duration.as_secs_f64());
    }

    /// Counts a failed reconcile under the error's label.
    pub fn reconcile_failed(&self, reason: &str) {
        self.reconcile_errors.with_label_values(&[reason]).inc();
    }

    /// Counts a repository poll.
    pub fn repository_polled(&self, policy: &str, result: &str) {
        self.repository_polls
            .with_label_values(&[policy, result])
            .inc();
    }

    /// Records when the policy's repository index was last fetched and verified.
    pub fn repository_verified(&self, policy: &str, at: jiff::Timestamp) {
        let seconds = at.as_millisecond() as f64 / 1000.0;
        self.repository_verified
            .with_label_values(&[policy])
            .set(seconds);
    }

    /// Counts a finished rollout.
    pub fn rollout_ended(&self, policy: &str, result: &str) {
        self.rollouts.with_label_values(&[policy, result]).inc();
    }

    /// Counts a revert.
    pub fn revert_started(&self, policy: &str) {
        self.reverts.with_label_values(&[policy]).inc();
    }

    /// Sets whether this replica leads. A replica that stops leading forgets the runs it
    /// saw: another replica counts what follows, and should this one lead again, it must
    /// not count those runs a second time.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
        if !leading {
            *self.node_runs.lock().unwrap_or_else(|e| e.into_inner()) = NodeRuns::default();
        }
    }

    /// Mirrors a policy's status into the node, wave and phase gauges.
    pub fn record_status(&self, policy: &str, status: &LivePatchPolicyStatus) {
        // The policy's counters exist at 0 from its first status on: a series born at 1
        // shows no increase to `increase()` or `rate()`, so an alert on the first revert
        // would never fire.
        self.reverts.with_label_values(&[policy]);
        for result in [ROLLOUT_COMPLETE, ROLLOUT_FAILED] {
            self.rollouts.with_label_values(&[policy, result]);
        }
        for (state, count) in node_count_series(&status.nodes) {
            self.nodes
                .with_label_values(&[policy, state])
                .set(i64::from(count));
        }
        self.selected_nodes
            .with_label_values(&[policy])
            .set(i64::from(status.nodes.total));
        let wave = status.rollout.as_ref().map_or(0, |r| r.wave);
        self.rollout_wave
            .with_label_values(&[policy])
            .set(i64::from(wave));
        for phase in PHASES {
            let current = status.phase == Some(phase);
            self.rollout_phase
                .with_label_values(&[policy, phase_label(phase)])
                .set(i64::from(current));
        }
    }

    /// Sets the policy's nodes per failure reason; a reason no node reports any more has no
    /// series, so the exposition holds only the reasons seen now.
    pub fn record_node_errors(&self, policy: &str, counts: &BTreeMap<String, i64>) {
        for reason in self.node_error_reasons(policy) {
            if !counts.contains_key(&reason) {
                let _ = self.node_errors.remove_label_values(&[policy, &reason]);
            }
        }
        for (reason, count) in counts {
            self.node_errors
                .with_label_values(&[policy, reason])
                .set(*count);
        }
    }

    /// Observes the runs among the policy's nodes (name and last timings) that finished
    /// since the last call; see [`NodeRuns`] for when a run counts.
    pub fn record_runs<'a>(
        &self,
        policy: &str,
        nodes: impl IntoIterator<Item = (&'a str, Option<&'a PatchTimings>)>,
    ) {
        let mut node_runs = self.node_runs.lock().unwrap_or_else(|e| e.into_inner());
        for run in node_runs.new_runs(policy, nodes) {
            // Every agent that stamps its runs names them too.
            let Some(action) = run.run.map(PatchRun::as_str) else {
                continue;
            };
            let seconds = |ms: Option<u64>| ms.map(|ms| ms as f64 / 1000.0);
            if let Some(total) = seconds(run.total_ms) {
                self.run_duration
                    .with_label_values(&[policy, action])
                    .observe(total);
            }
            if let Some(transition) = seconds(run.transition_ms) {
                self.transition_duration
                    .with_label_values(&[policy, action])
                    .observe(transition);
            }
        }
    }

    /// The reasons the policy's `kpersist_node_errors` has series for.
    fn node_error_reasons(&self, policy: &str) -> Vec<String> {
        let families = prometheus::core::Collector::collect(&self.node_errors);
        let label = |m: &prometheus::proto::Metric, name: &str| {
            m.get_label()
                .iter()
                .find(|l| l.name() == name)
                .map(|l| l.value().to_string())
        };
        families
            .iter()
            .flat_map(|f| f.get_metric())
            .filter(|m| label(m, "policy").as_deref() == Some(policy))
            .filter_map(|m| label(m, "reason"))
            .collect()
    }

    /// Drops the gauges of a deleted policy. Its counters stay for the process's life:
    /// they are totals, and Prometheus handles their disappearance on restart anyway.
    pub fn forget_policy(&self, policy: &str) {
        for (state, _) in node_count_series(&NodeCounts::default()) {
            let _ = self.nodes.remove_label_values(&[policy, state]);
        }
        let _ = self.selected_nodes.remove_label_values(&[policy]);
        let _ = self.rollout_wave.remove_label_values(&[policy]);
        self.record_node_errors(policy, &BTreeMap::new());
        let _ = self.repository_verified.remove_label_values(&[policy]);
        self.node_runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(policy);
        for action in PatchRun::ALL.map(PatchRun::as_str) {
            let _ = self.run_duration.remove_label_values(&[policy, action]);
            let _ = self
                .transition_duration
                .remove_label_values(&[policy, action]);
        }
        for phase in PHASES {
            let _ = self
                .rollout_phase
                .remove_label_values(&[policy, phase_label(phase)]);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail on I/O; an error would mean a malformed metric.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

/// `kpersist_rollouts_total{result}` of a rollout that finished its last wave.
pub const ROLLOUT_COMPLETE: &str = "complete";
/// `kpersist_rollouts_total{result}` of a rollout a failed wave ended.
pub const ROLLOUT_FAILED: &str = "failed";

/// The phase as it appears in the `phase` label: the API's own spelling.
pub fn phase_label(phase: PolicyPhase) -> &'static str {
    match phase {
        PolicyPhase::Idle => "Idle",
        PolicyPhase::Progressing => "Progressing",
        PolicyPhase::Baking => "Baking",
        PolicyPhase::Paused => "Paused",
        PolicyPhase::RollingBack => "RollingBack",
        PolicyPhase::Complete => "Complete",
        PolicyPhase::Failed => "Failed",
    }
}

/// The `state` series of `kpersist_nodes`: every count of status.nodes but the total, by
/// its name in the API.
fn node_count_series(counts: &NodeCounts) -> [(&'static str, u32); 10] {
    [
        ("patched", counts.patched),
        ("applying", counts.applying),
        ("reverting", counts.reverting),
        ("pending", counts.pending),
        ("failed", counts.failed),
        ("unsupported", counts.unsupported),
        ("crashSuspected", counts.crash_suspected),
        ("nodeProblems", counts.node_problems),
        ("unknown", counts.unknown),
        ("conflicted", counts.conflicted),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpersist_crds::RolloutProgress;

    #[test]
    fn status_sets_node_wave_and_phase_series() {
        let metrics = Metrics::new();
        let status = LivePatchPolicyStatus {
            phase: Some(PolicyPhase::Baking),
            nodes: NodeCounts {
                total: 5,
                patched: 2,
                ..NodeCounts::default()
            },
            rollout: Some(RolloutProgress {
                wave: 2,
                waves: 3,
                ..RolloutProgress::default()
            }),
            ..LivePatchPolicyStatus::default()
        };
        metrics.record_status("web", &status);
        let text = metrics.render();
        assert!(
            text.contains(r#"kpersist_nodes{policy="web",state="patched"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kpersist_selected_nodes{policy="web"} 5"#),
            "{text}"
        );
        assert!(!text.contains(r#"state="total""#), "{text}");
        assert!(
            text.contains(r#"kpersist_rollout_wave{policy="web"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kpersist_rollout_phase{phase="Baking",policy="web"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kpersist_rollout_phase{phase="Idle",policy="web"} 0"#),
            "{text}"
        );

        for counter in [
            r#"kpersist_reverts_total{policy="web"} 0"#,
            r#"kpersist_rollouts_total{policy="web",result="complete"} 0"#,
            r#"kpersist_rollouts_total{policy="web",result="failed"} 0"#,
        ] {
            assert!(text.contains(counter), "a counter is not born at 0: {text}");
        }

        metrics.forget_policy("web");
        let text = metrics.render();
        for gauge in [
            "kpersist_nodes",
            "kpersist_selected_nodes",
            "kpersist_rollout_wave",
            "kpersist_rollout_phase",
        ] {
            assert!(
                !text.contains(&format!(r#"{gauge}{{policy="web""#))
                    && !text.contains(&format!(r#"{gauge}{{phase"#)),
                "{gauge} of a forgotten policy: {text}"
            );
        }
        assert!(
            text.contains(r#"kpersist_reverts_total{policy="web"} 0"#),
            "counters stay: {text}"
        );
    }

    #[test]
    fn every_node_count_has_its_state_series() {
        let value = serde_json::to_value(NodeCounts::default()).expect("serializes");
        let mut fields: Vec<String> = value
            .as_object()
            .map(|o| o.keys().filter(|k| *k != "total").cloned().collect())
            .unwrap_or_default();
        let mut states: Vec<String> = node_count_series(&NodeCounts::default())
            .iter()
            .map(|(state, _)| state.to_string())
            .collect();
        states.sort();
        fields.sort();
        assert_eq!(
            states, fields,
            "each count of status.nodes is a state, spelled as the API spells it"
        );
    }

    #[test]
    fn node_errors_hold_only_the_reasons_seen_now() {
        let metrics = Metrics::new();
        let counts = |pairs: &[(&str, i64)]| -> BTreeMap<String, i64> {
            pairs.iter().map(|(r, n)| (r.to_string(), *n)).collect()
        };
        metrics.record_node_errors(
            "web",
            &counts(&[("TransitionStalled", 2), ("DownloadFailed", 1)]),
        );
        metrics.record_node_errors("db", &counts(&[("DownloadFailed", 3)]));
        metrics.record_node_errors("web", &counts(&[("DownloadFailed", 1)]));
        let text = metrics.render();
        assert!(
            text.contains(r#"kpersist_node_errors{policy="web",reason="DownloadFailed"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains("TransitionStalled"),
            "a cleared reason lingers: {text}"
        );
        assert!(
            text.contains(r#"kpersist_node_errors{policy="db",reason="DownloadFailed"} 3"#),
            "{text}"
        );
        metrics.forget_policy("db");
        assert!(!metrics.render().contains(r#"policy="db",reason"#));
    }

    #[test]
    fn node_runs_land_in_the_policy_histograms_once() {
        let metrics = Metrics::new();
        let run = PatchTimings {
            run: Some(PatchRun::Revert),
            finished_at: Some("t1".into()),
            total_ms: Some(1500),
            transition_ms: Some(200),
            ..PatchTimings::default()
        };
        metrics.record_runs("web", [("a", None)]);
        metrics.record_runs("web", [("a", Some(&run))]);
        metrics.record_runs("web", [("a", Some(&run))]);
        let text = metrics.render();
        for line in [
            r#"kpersist_node_run_duration_seconds_count{action="Revert",policy="web"} 1"#,
            r#"kpersist_node_run_duration_seconds_sum{action="Revert",policy="web"} 1.5"#,
            r#"kpersist_node_transition_duration_seconds_bucket{action="Revert",policy="web",le="0.25"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        metrics.forget_policy("web");
        assert!(!metrics.render().contains(r#"policy="web""#));
    }

    #[test]
    fn counters_and_leader_gauge_render() {
        let metrics = Metrics::new();
        metrics.repository_polled("web", "not_modified");
        metrics.reconcile_failed("kube");
        metrics.set_leader(true);
        metrics.observe_reconcile(Duration::from_millis(3));
        let text = metrics.render();
        assert!(
            text.contains(
                r#"kpersist_repository_polls_total{policy="web",result="not_modified"} 1"#
            )
        );
        assert!(text.contains(r#"kpersist_reconcile_errors_total{reason="kube"} 1"#));
        assert!(text.contains("kpersist_leader 1"));
        assert!(text.contains(&format!(
            r#"kpersist_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        )));
        metrics.repository_verified("web", jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let text = metrics.render();
        assert!(
            text.contains(
                r#"kpersist_repository_last_verified_timestamp_seconds{policy="web"} 1700000000"#
            ),
            "{text}"
        );
        assert!(text.contains("kpersist_reconcile_duration_seconds_count 1"));
    }
}
