//! What the chart ships, run on the real Prometheus: the alerting rules evaluate without
//! error and fire on a real revert, every dashboard query answers, and `promtool` accepts
//! both binaries' metrics.

use std::time::Duration;

use kpersist_e2e::sim_fleet::fetch_metrics;
use kpersist_e2e::wait::{Check, wait_until};
use serde_json::Value;

use crate::suite::{Monitoring, POLICY, promtool};

/// The most series one agent may export.
const AGENT_SERIES: usize = 16;

/// The dashboard the chart ships.
const DASHBOARD: &str = "helm/kpersist/dashboards/kpersist.json";
/// How long Prometheus may take to evaluate something new (1 s intervals).
const EVALUATION: Duration = Duration::from_secs(30);

impl Monitoring {
    /// `KpersistReleaseReverted` fires for the policy after the gate's revert.
    pub async fn revert_alert_fires(&self) -> Result<String, String> {
        let query = format!(
            r#"ALERTS{{alertname="KpersistReleaseReverted",alertstate="firing",policy="{POLICY}"}}"#
        );
        let fired = wait_until("KpersistReleaseReverted to fire", EVALUATION, || async {
            let result = self.prometheus.query(&query).await?;
            Ok(if result.as_array().is_some_and(|r| !r.is_empty()) {
                Check::Done(())
            } else {
                Check::NotYet("not firing".into())
            })
        });
        fired.await.map_err(|e| e.to_string())?;
        Ok(format!("KpersistReleaseReverted fires for policy {POLICY}"))
    }

    /// `promtool check metrics` finds nothing to say about the operator's and an agent's
    /// /metrics.
    pub async fn metrics_pass_promtool(&self) -> Result<String, String> {
        let agent = self
            .sim
            .agent_metrics_addrs()
            .values()
            .next()
            .cloned()
            .ok_or("no agent")?;
        for (what, addr) in [
            ("operator", self.sim.operator_metrics_addr().to_string()),
            ("agent", agent),
        ] {
            let text = fetch_metrics(&addr).await.map_err(|e| e.to_string())?;
            let said = promtool(&["check", "metrics"], Some(&text))
                .await
                .map_err(|e| format!("the {what}'s metrics: {e}"))?;
            if !said.trim().is_empty() {
                return Err(format!("promtool on the {what}'s metrics: {said}"));
            }
        }
        Ok("the operator's and the agent's metrics pass".into())
    }

    /// The series each binary exports after the rollouts, and what that comes to for a
    /// fleet (the figures BENCHMARKS.md quotes).
    pub async fn series_counted(&self) -> Result<String, String> {
        let samples = |text: &str| {
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .count()
        };
        let mut per_agent = Vec::new();
        for addr in self.sim.agent_metrics_addrs().values() {
            let text = fetch_metrics(addr).await.map_err(|e| e.to_string())?;
            per_agent.push(samples(&text));
        }
        let operator = fetch_metrics(self.sim.operator_metrics_addr())
            .await
            .map_err(|e| e.to_string())?;
        let applies = format!(
            r#"kpersist_node_run_duration_seconds_count{{action="Apply",policy="{POLICY}"}}"#
        );
        if !operator.lines().any(|l| l.starts_with(&applies)) {
            return Err(format!(
                "the operator has no latency histogram of the agents' applies ({applies}):\n{operator}"
            ));
        }
        let operator = samples(&operator);
        let most = per_agent.iter().copied().max().ok_or("no agent")?;
        if most == 0 || operator == 0 {
            return Err(format!(
                "no series: agents {per_agent:?}, operator {operator}"
            ));
        }
        // Each agent series is one per node at Prometheus: an agent keeps a handful.
        if most > AGENT_SERIES {
            return Err(format!(
                "an agent exports {most} series, more than {AGENT_SERIES}: {per_agent:?}"
            ));
        }
        Ok(format!(
            "per agent {per_agent:?}, operator {operator} (one policy); at the most per agent: \
             {} series at 1,000 nodes, {} at 10,000, before Prometheus' 5 per target",
            most * 1_000 + operator,
            most * 10_000 + operator
        ))
    }

    /// Every rule of the chart has been evaluated by Prometheus without an error.
    pub async fn rules_evaluate(&self) -> Result<String, String> {
        let evaluated = wait_until("every rule to be evaluated", EVALUATION, || async {
            let groups = self.prometheus.rule_groups().await?;
            let rules: Vec<Value> = groups
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let unhealthy: Vec<String> = rules
                .iter()
                .filter(|r| r["health"] != "ok")
                .map(|r| format!("{} {} {}", r["name"], r["health"], r["lastError"]))
                .collect();
            Ok(if !rules.is_empty() && unhealthy.is_empty() {
                Check::Done(rules.len())
            } else {
                Check::NotYet(format!("{} rules, not ok: {unhealthy:?}", rules.len()))
            })
        });
        let rules = evaluated.await.map_err(|e| e.to_string())?;
        Ok(format!("{rules} rules evaluate without error"))
    }

    /// Every query of the chart's dashboard, with its variables set, is accepted by
    /// Prometheus, and answers with data when every metric it reads exists.
    pub async fn dashboard_queries_answer(&self) -> Result<String, String> {
        let path = kpersist_e2e::fleet::workspace_root().join(DASHBOARD);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{DASHBOARD}: {e}"))?;
        let dashboard: Value =
            serde_json::from_str(&text).map_err(|e| format!("{DASHBOARD}: {e}"))?;
        let mut exprs = Vec::new();
        collect_exprs(&dashboard, &mut exprs);
        if exprs.is_empty() {
            return Err(format!("{DASHBOARD} has no queries"));
        }
        let names = self
            .prometheus
            .metric_names()
            .await
            .map_err(|e| e.to_string())?;
        let mut empty_without_data = 0;
        for expr in &exprs {
            let query = expr
                .replace("$policy", POLICY)
                .replace("$__rate_interval", "1m");
            let result = self
                .prometheus
                .query(&query)
                .await
                .map_err(|e| format!("dashboard query {query:?}: {e}"))?;
            let answered = result.as_array().is_some_and(|r| !r.is_empty());
            let read = metrics_read(&query);
            if !answered {
                if read.iter().all(|m| names.contains(m)) {
                    return Err(format!(
                        "dashboard query {query:?} returned nothing although {read:?} exist"
                    ));
                }
                empty_without_data += 1;
            }
        }
        Ok(format!(
            "{} queries accepted; {empty_without_data} empty because the run produced none of \
             their series",
            exprs.len()
        ))
    }
}

/// Every `expr` string in the dashboard.
fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(inner, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The metric names a query reads: each `kpersist_*` name, and `up`.
fn metrics_read(query: &str) -> Vec<String> {
    let mut names: Vec<String> = query
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("kpersist_") || *word == "up")
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}
