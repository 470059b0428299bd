//! The alerts and the dashboard ask for metrics, and label values, that the operator and
//! the agent really export: names are read from their sources, label values from the API
//! types they come from.

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::core::v1::ConfigMap;
use kpersist_crds::{NodeCounts, NodeErrorReason, PatchRun, PolicyPhase};

use super::{FULL, rendered};
use crate::chart_support::{PrometheusRule, find};

/// Every quoted `"kpersist_…"` string in the Rust sources below `dir`.
fn exported_in(dir: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            exported_in(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for piece in text.split('"').skip(1).step_by(2) {
                if piece.starts_with("kpersist_")
                    && piece.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    out.insert(piece.to_string());
                }
            }
        }
    }
}

/// Metric names the operator and agent register.
fn exported_metrics() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = BTreeSet::new();
    exported_in(&root.join("operator/src"), &mut out);
    exported_in(&root.join("node-agent/src"), &mut out);
    assert!(
        out.len() >= 6,
        "found only {out:?} in operator/src and node-agent/src"
    );
    out
}

/// Every `kpersist_*` metric in a PromQL expression, histogram suffixes dropped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("kpersist_"))
        .map(|w| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .fold(w, |w, s| w.strip_suffix(s).unwrap_or(w))
                .to_string()
        })
        .collect()
}

/// The values a PromQL expression matches `label` of `metric` against, split on `|`
/// (`label="a"`, `label=~"a|b"`; negative matchers are left out).
fn matched_values(expr: &str, metric: &str, label: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in expr.match_indices(&format!("{metric}{{")) {
        let rest = &expr[at + metric.len() + 1..];
        let selector = &rest[..rest.find('}').unwrap_or(rest.len())];
        for matcher in selector.split(',') {
            let matcher = matcher.trim();
            for op in ["=~\"", "=\""] {
                if let Some(v) = matcher.strip_prefix(label).and_then(|m| m.strip_prefix(op)) {
                    out.extend(v.trim_end_matches('"').split('|').map(str::to_string));
                }
            }
        }
    }
    out
}

/// The `state` label values of kpersist_nodes: NodeCounts' fields as the API spells them,
/// but the total (kpersist_selected_nodes).
fn node_states() -> BTreeSet<String> {
    let counts = serde_json::to_value(NodeCounts::default()).unwrap_or_default();
    counts
        .as_object()
        .map(|o| o.keys().filter(|k| *k != "total").cloned().collect())
        .unwrap_or_default()
}

/// Checks every label value an expression matches against what the binaries can emit.
fn check_label_values(what: &str, expr: &str) {
    let states = node_states();
    for v in matched_values(expr, "kpersist_nodes", "state") {
        assert!(
            states.contains(&v),
            "{what}: kpersist_nodes has no state {v:?} (states: {states:?})"
        );
    }
    for v in matched_values(expr, "kpersist_rollout_phase", "phase") {
        let parsed: Result<PolicyPhase, _> =
            serde_json::from_value(serde_json::Value::String(v.clone()));
        assert!(parsed.is_ok(), "{what}: {v:?} is not a policy phase");
    }
    for metric in [
        "kpersist_agent_applies_total",
        "kpersist_node_run_duration_seconds_bucket",
        "kpersist_node_transition_duration_seconds_bucket",
    ] {
        for v in matched_values(expr, metric, "action") {
            let parsed: Result<PatchRun, _> =
                serde_json::from_value(serde_json::Value::String(v.clone()));
            assert!(
                parsed.is_ok(),
                "{what}: {v:?} is no run (Apply, Revert, Recover)"
            );
        }
    }
    for v in matched_values(expr, "kpersist_agent_applies_total", "result") {
        let parsed: Result<NodeErrorReason, _> =
            serde_json::from_value(serde_json::Value::String(v.clone()));
        assert!(
            parsed.is_ok() || v == "Applied" || v == "Idle",
            "{what}: {v:?} is no result an agent reports"
        );
    }
}

#[test]
fn alerts_cover_the_failure_modes_and_use_exported_metrics() {
    let Some(m) = rendered(FULL) else { return };
    let exported = exported_metrics();
    let rule: PrometheusRule = find(&m, "PrometheusRule", "kp")
        .typed()
        .unwrap_or_else(|e| panic!("{e}"));
    let alerts: Vec<_> = rule.spec.groups.iter().flat_map(|g| &g.rules).collect();
    let alert_names: BTreeSet<&str> = alerts.iter().map(|a| a.alert.as_str()).collect();
    for want in [
        "KpersistRolloutFailed",
        "KpersistReleaseReverted",
        "KpersistNodesUnpatched",
        "KpersistAgentDown",
        "KpersistTransitionStalled",
    ] {
        assert!(
            alert_names.contains(want),
            "no alert {want} in {alert_names:?}"
        );
    }
    for a in &alerts {
        assert!(
            a.labels.contains_key("severity"),
            "{} has no severity",
            a.alert
        );
        assert!(
            a.annotations.contains_key("summary"),
            "{} has no summary",
            a.alert
        );
        for name in metric_names(&a.expr) {
            assert!(
                exported.contains(&name),
                "{} uses {name}, which neither binary exports ({exported:?})",
                a.alert
            );
        }
        check_label_values(&a.alert, &a.expr);
    }
}

#[test]
fn dashboard_is_grafana_json_over_exported_metrics() {
    let Some(m) = rendered(FULL) else { return };
    let exported = exported_metrics();
    let cm: ConfigMap = find(&m, "ConfigMap", "-dashboard")
        .typed()
        .unwrap_or_else(|e| panic!("{e}"));
    let labels = cm.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("grafana_dashboard").map(String::as_str),
        Some("1")
    );
    let text = cm
        .data
        .unwrap_or_default()
        .remove("kpersist.json")
        .unwrap_or_default();
    let dash: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("dashboard is not JSON: {e}"));
    let panels = dash["panels"].as_array().cloned().unwrap_or_default();
    let mut used = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            check_label_values(title, expr);
            used.extend(metric_names(expr));
        }
    }
    for name in &used {
        assert!(
            exported.contains(name),
            "dashboard uses {name}, which neither binary exports ({exported:?})"
        );
    }
    assert!(used.len() >= 8, "dashboard shows only {used:?}");
}

#[test]
fn label_matchers_are_read_from_expressions() {
    let expr = r#"sum(kpersist_nodes{policy=~"$p", state=~"pending|failed"}) + kpersist_nodes{state="unknown"}"#;
    assert_eq!(
        matched_values(expr, "kpersist_nodes", "state"),
        ["pending", "failed", "unknown"]
    );
    assert!(node_states().contains("crashSuspected"));
    assert_eq!(
        metric_names("rate(kpersist_node_transition_duration_seconds_bucket[5m])"),
        BTreeSet::from(["kpersist_node_transition_duration_seconds".to_string()])
    );
}
