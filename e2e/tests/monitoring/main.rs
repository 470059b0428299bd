//! The monitoring suite: a real Prometheus (Debian's) scrapes the real operator and agents
//! of a simulated fleet on a real API server, and a workload exporter the test controls.
//! The policy's health gate queries that Prometheus; the chart's alerting rules run in it;
//! every dashboard query is asked of it; `promtool` checks the rules and both binaries'
//! metrics. Run by `e2e/monitoring/run.sh`, which renders the chart's PrometheusRule and
//! passes it in `KPERSIST_MONITORING_RULE`.
//!
//! Each step prints `MONITORING-E2E: <step>: ok|FAIL <why>`.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod gate;
mod secured;
mod shipped;
mod suite;
mod workload;

use suite::{Monitoring, report};

#[tokio::test]
async fn a_real_prometheus_gates_waves_and_answers_every_shipped_query() {
    let mut suite = Monitoring::start().await;
    report("promtool-rules", suite.rules_pass_promtool().await);
    report("alert-tests", suite.alerts_pass_their_tests().await);
    report("scraped", suite.every_target_scraped().await);

    // The gate on real series: a workload's errors cross the threshold mid-bake, the
    // wave fails and its release goes back; an alert about it fires.
    report("gate-fails-wave", suite.gate_fails_the_wave(1).await);
    report("alert-fires", suite.revert_alert_fires().await);

    // A gate that cannot be evaluated holds the wave past its bake and blames nothing;
    // once Prometheus answers again the rollout completes.
    report("gate-inconclusive", suite.gate_inconclusive_holds(2).await);

    // A Prometheus behind TLS and basic auth: the CA bundle, a header from a Secret.
    report("gate-secured", suite.gate_through_tls_and_a_secret(3).await);

    report("promtool-metrics", suite.metrics_pass_promtool().await);
    report("series", suite.series_counted().await);
    report("rules-evaluate", suite.rules_evaluate().await);
    report("dashboard", suite.dashboard_queries_answer().await);
}
