//! The suite's parts: fleet, workload, Prometheus, the chart's rules.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use kpersist_crds::{ComparisonOperator, LivePatchPolicy, PrometheusGate};
use kpersist_e2e::prometheus::{Job, Prometheus};
use kpersist_e2e::sim_fleet::{SimFleet, SimNode, canary_then_all};
use tokio::io::AsyncWriteExt;

use crate::workload::{ERRORS, Workload};

/// The policy's name (the `policy` label of the operator's series).
pub const POLICY: &str = "web";
/// The fleet's one kernel build.
pub const KERNEL: (&str, &str) = ("6.1.0-56-amd64", "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1");
/// The chart's scrape job names (release `kpersist`): `<fullname>-metrics`.
pub const OPERATOR_JOB: &str = "kpersist-operator-metrics";
pub const AGENT_JOB: &str = "kpersist-agent-metrics";
pub const WORKLOAD_JOB: &str = "workload";
/// The alerts' unit tests, for `promtool test rules`.
const ALERT_TESTS: &str = "e2e/monitoring/alerts-test.yaml";
/// The simulated nodes.
const NODES: usize = 4;

/// Prints the verdict of a step; a failure ends the run.
pub fn report(step: &str, result: Result<String, String>) {
    kpersist_e2e::steps::print_verdict("MONITORING-E2E", step, &result);
    if let Err(why) = result {
        panic!("step {step} failed: {why}");
    }
}

/// The running suite.
pub struct Monitoring {
    pub sim: SimFleet,
    pub prometheus: Prometheus,
    pub workload: Workload,
    /// The chart's rule groups, as a Prometheus rule file.
    pub rules: PathBuf,
    pub scratch: tempfile::TempDir,
}

impl Monitoring {
    /// Starts the control plane, operator and agents, the workload exporter and Prometheus
    /// scraping all of them with the chart's rules loaded.
    pub async fn start() -> Monitoring {
        let nodes = (1..=NODES)
            .map(|i| SimNode::new(&format!("node-{i}"), KERNEL.0, KERNEL.1))
            .collect();
        let mut sim = SimFleet::start(nodes).await.expect("control plane");
        sim.start_agents().expect("agents");
        sim.start_operator().expect("operator");
        let scratch = tempfile::Builder::new()
            .prefix("kpersist-monitoring-")
            .tempdir()
            .expect("scratch");
        let rules = scratch.path().join("rules.yaml");
        write_rule_file(&rules);
        let workload = Workload::start().await;
        let agents: Vec<_> = sim
            .agent_metrics_addrs()
            .iter()
            .map(|(node, addr)| {
                // Named after the node, as the chart's monitors relabel an agent target.
                let labels = [("node", node), ("instance", node)];
                (
                    addr.clone(),
                    BTreeMap::from(labels.map(|(k, v)| (k.to_string(), v.clone()))),
                )
            })
            .collect();
        let jobs = [
            job(
                OPERATOR_JOB,
                [(sim.operator_metrics_addr().to_string(), BTreeMap::new())],
            ),
            job(AGENT_JOB, agents),
            job(
                WORKLOAD_JOB,
                [(workload.addr().to_string(), BTreeMap::new())],
            ),
        ];
        let prometheus = Prometheus::start(
            &scratch.path().join("prometheus"),
            &jobs,
            std::slice::from_ref(&rules),
            None,
        )
        .await
        .expect("Prometheus");
        Monitoring {
            sim,
            prometheus,
            workload,
            rules,
            scratch,
        }
    }

    /// Prometheus scrapes the operator, every agent and the workload.
    pub async fn every_target_scraped(&self) -> Result<String, String> {
        for (job, n) in [(OPERATOR_JOB, 1), (AGENT_JOB, NODES), (WORKLOAD_JOB, 1)] {
            self.prometheus
                .wait_scraped(job, n)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(format!("operator, {NODES} agents and the workload are up"))
    }

    /// `promtool check rules` accepts the chart's rules.
    pub async fn rules_pass_promtool(&self) -> Result<String, String> {
        let rules = self.rules.display().to_string();
        let out = promtool(&["check", "rules", &rules], None).await?;
        let last = out.lines().rev().find(|l| !l.trim().is_empty());
        Ok(last.unwrap_or_default().trim().to_string())
    }

    /// `promtool test rules` passes `e2e/monitoring/alerts-test.yaml`, a unit test per
    /// alert (when it fires, with its labels and annotations, and when it stays silent),
    /// run beside the chart's rules.
    pub async fn alerts_pass_their_tests(&self) -> Result<String, String> {
        let tests = kpersist_e2e::fleet::workspace_root().join(ALERT_TESTS);
        let dir = self
            .rules
            .parent()
            .ok_or("the rule file has no directory")?;
        let copy = dir.join("alerts-test.yaml");
        std::fs::copy(&tests, &copy).map_err(|e| format!("{ALERT_TESTS}: {e}"))?;
        let copy = copy.display().to_string();
        promtool(&["test", "rules", &copy], None).await?;
        let alerts = std::fs::read_to_string(&tests)
            .map_err(|e| format!("{ALERT_TESTS}: {e}"))?
            .matches("- name: ")
            .count();
        Ok(format!("{alerts} alert tests pass"))
    }

    /// A policy with canary waves and a gate on the workload's errors: below 1 passes.
    pub fn gated_policy(&self, canary_bake: &str) -> LivePatchPolicy {
        let mut policy = self.sim.policy(POLICY, canary_then_all(canary_bake), 2);
        policy.spec.health.prometheus = Some(PrometheusGate {
            url: self.prometheus.url(),
            query: format!("max({ERRORS})"),
            operator: ComparisonOperator::LessThan,
            threshold: 1.0,
            fail_on_empty: false,
            interval: "5s".into(),
            timeout: "2s".into(),
            ca_bundle: None,
            headers: Vec::new(),
        });
        policy
    }
}

/// A scrape job of `targets` (`host:port` and labels).
pub fn job(
    name: &str,
    targets: impl IntoIterator<Item = (String, BTreeMap<String, String>)>,
) -> Job {
    Job {
        name: name.into(),
        targets: targets.into_iter().collect(),
    }
}

/// Writes the rule groups of the chart's rendered PrometheusRule (its `spec`) to `path`.
fn write_rule_file(path: &std::path::Path) {
    let rendered = std::env::var("KPERSIST_MONITORING_RULE").unwrap_or_else(|_| {
        panic!("KPERSIST_MONITORING_RULE is not set: run e2e/monitoring/run.sh, which renders it")
    });
    let text = std::fs::read_to_string(&rendered).expect("the rendered PrometheusRule");
    let rule: serde_yaml::Value = serde_yaml::from_str(&text).expect("PrometheusRule YAML");
    let spec = rule
        .get("spec")
        .unwrap_or_else(|| panic!("{rendered} has no spec"));
    let groups = serde_yaml::to_string(spec).expect("rule groups as YAML");
    std::fs::write(path, groups).expect("rule file");
}

/// Runs `promtool args`, with `input` on its standard input; its output, or an error with
/// it when promtool is not content.
pub async fn promtool(args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = tokio::process::Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(input.unwrap_or_default().as_bytes())
        .await
        .map_err(|e| format!("promtool stdin: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("promtool: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "promtool {} ({}):\n{text}",
            args.join(" "),
            out.status
        ))
    }
}
