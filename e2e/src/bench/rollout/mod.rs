//! The rollout overhead benchmark: a simulated fleet (real agent code, many agents in this
//! process) on the local kube-apiserver, the real `kpersist-operator` process, and a signed
//! repository over HTTP. It times one rollout through zero-bake waves and counts the API
//! requests it cost from the API server's own metrics.

pub mod agents;
pub mod observe;
pub mod report;
pub mod requests;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kpersist_crds::{
    HealthSpec, LivePatchPolicy, LivePatchPolicySpec, NodePatchState, PolicyPhase, RepositorySpec,
    RolloutSpec, Wave, parse_duration,
};
use kube::Api;
use kube::api::PostParams;

use crate::controlplane::Identity;
use crate::fleet::{Cluster, NAMESPACE};
use crate::patch_repo::{FIXTURE_KERNEL, Publisher};
use crate::process::{Process, workspace_binary};
use crate::repo_server::RepoServer;
use crate::sim_fleet::free_port;
use crate::wait::{Check, wait_until};
use crate::{Error, Result};

use agents::{AgentFleet, SimKernelSpec};
use observe::{Observer, Progress};
use report::Measurement;

/// The label the benchmark's nodes carry and its policy selects.
const FLEET_LABEL: &str = "kpersist.io/bench-rollout";
/// The policy's name.
const POLICY: &str = "bench-rollout";
/// The simulated kernel's build id.
const BUILD_ID: &str = "b0e1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9";
/// The lease the operator holds while it leads (its default name).
const LEASE: &str = "kpersist-operator";
/// How long after the end the second scrape waits, so trailing writes are counted.
const SETTLE: Duration = Duration::from_secs(3);

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Simulated nodes.
    pub nodes: usize,
    /// Waves (zero bake each).
    pub waves: usize,
    /// The policy's `maxInFlight`; `None`: every node at once.
    pub max_in_flight: Option<u32>,
    /// Agents per API client.
    pub agents_per_client: usize,
    /// Longest the rollout may take before the run fails.
    pub timeout: Duration,
}

/// Cumulative percents of `count` waves: 1%, 10%, 50%, 100% for four; fewer drop the
/// smallest steps, more add even steps between 10% and 100%.
pub fn wave_percents(count: usize) -> Vec<u32> {
    let mut percents: Vec<u32> = match count {
        0 | 1 => vec![],
        2 => vec![10],
        3 => vec![10, 50],
        4 => vec![1, 10, 50],
        _ => vec![1, 10],
    };
    let rest = count.saturating_sub(percents.len() + 1);
    let from = percents.last().copied().unwrap_or(0) as usize;
    for i in 1..=rest {
        percents.push((from + (100 - from) * i / (rest + 1)) as u32);
    }
    percents.push(100);
    percents.dedup();
    percents
}

/// Runs the benchmark and returns what it measured. Progress goes to standard error.
pub async fn run(settings: &Settings) -> Result<Measurement> {
    let operator_bin = workspace_binary("kpersist-operator")?;
    let names: Vec<String> = (0..settings.nodes)
        .map(|i| format!("bench-node-{i:05}"))
        .collect();
    say(&format!(
        "starting the control plane for {} nodes",
        names.len()
    ));
    let cluster = Cluster::start().await?;
    let scratch = tempfile::Builder::new()
        .prefix("kpersist-bench-rollout-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;

    let publisher = Publisher::init(&scratch.path().join("repo"))?;
    let release =
        publisher.publish(FIXTURE_KERNEL, BUILD_ID, 1, &["CVE-2024-0001"], &["stable"])?;
    let repo = RepoServer::start(publisher.root()).await?;
    say(&format!(
        "repository with {} at {}",
        release.id(),
        repo.url()
    ));

    create_nodes(&cluster, &names).await?;
    let observer = Observer::start(cluster.admin.clone(), POLICY);
    let kernel = SimKernelSpec {
        release: FIXTURE_KERNEL.into(),
        build_id: BUILD_ID.into(),
    };
    say(&format!("starting {} agents in this process", names.len()));
    let agents = AgentFleet::start(
        &cluster.plane,
        &names,
        &kernel,
        &scratch.path().join("agents"),
        settings.agents_per_client,
    )
    .await?;
    wait_agents_idle(&observer, &agents, names.len()).await?;

    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let _operator = start_operator(&cluster, &operator_bin, &metrics_addr, scratch.path())?;
    wait_operator_leading(&cluster, &metrics_addr).await?;

    let waves = wave_percents(settings.waves);
    let max_in_flight = settings
        .max_in_flight
        .unwrap_or(u32::try_from(names.len()).unwrap_or(u32::MAX));
    let policy = policy(&repo, &publisher, &waves, max_in_flight);
    let minimum = policy
        .spec
        .rollout
        .waves
        .iter()
        .filter_map(|w| parse_duration(&w.bake).ok())
        .sum();

    let before = scrape(&cluster.admin).await?;
    let load_at_start = load_average();
    observer.start_counting();
    let started = Instant::now();
    Api::<LivePatchPolicy>::all(cluster.admin.clone())
        .create(&PostParams::default(), &policy)
        .await?;
    say("policy created; rolling out");
    let wall = wait_rollout(
        &observer,
        &agents,
        &release.id(),
        names.len(),
        started,
        settings,
    )
    .await?;
    say(&format!(
        "rollout done after {:.1}s; waiting {}s for trailing writes",
        wall.as_secs_f64(),
        SETTLE.as_secs()
    ));
    let load = load_at_start.zip(load_average());
    tokio::time::sleep(SETTLE).await;
    let after = scrape(&cluster.admin).await?;
    keep_scrapes(&before, &after)?;
    let (spec_changes, status_changes, label_changes) = observer.changes();
    let wave_starts = observer
        .wave_starts()
        .into_iter()
        .map(|(wave, at)| (wave, at.saturating_duration_since(started)))
        .collect();

    agents.stop().await;
    drop(observer);
    Ok(Measurement {
        nodes: names.len(),
        waves,
        max_in_flight,
        wall,
        minimum,
        wave_starts,
        requests: requests::delta(&requests::parse(&before), &requests::parse(&after)),
        spec_changes,
        status_changes,
        label_changes,
        settle: SETTLE,
        load,
    })
}

/// A progress line on standard error, with the seconds since the first one.
fn say(message: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let since = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[bench-rollout {since:6.1}s] {message}");
}

/// Creates a Ready Node object per name, a few at a time.
async fn create_nodes(cluster: &Cluster, names: &[String]) -> Result<()> {
    say(&format!("creating {} Node objects", names.len()));
    let labels = BTreeMap::from([(FLEET_LABEL.to_string(), "true".to_string())]);
    let labels = &labels;
    stream::iter(names)
        .map(|name| async move { cluster.create_node(name, labels).await })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Waits until every agent has created its LivePatchNode and reported Idle.
async fn wait_agents_idle(observer: &Observer, agents: &AgentFleet, nodes: usize) -> Result<()> {
    let timeout = Duration::from_secs(120) + Duration::from_millis(100) * nodes as u32;
    let mut last_said = Instant::now();
    wait_until("every agent to report Idle", timeout, || {
        let idle = observer.nodes_in(NodePatchState::Idle);
        let failures = agents.failures();
        if last_said.elapsed() >= Duration::from_secs(2) {
            say(&format!("agents Idle: {idle}/{nodes}"));
            last_said = Instant::now();
        }
        async move {
            if let Some(failure) = failures.first() {
                return Err(agent_failed(failure));
            }
            Ok(if idle == nodes {
                Check::Done(())
            } else {
                Check::NotYet(format!("{idle}/{nodes} Idle"))
            })
        }
    })
    .await?;
    say(&format!("agents Idle: {nodes}/{nodes}"));
    Ok(())
}

fn agent_failed(failure: &str) -> Error {
    Error::Command {
        command: "an in-process agent".into(),
        status: "stopped".into(),
        detail: failure.to_string(),
    }
}

/// Starts `kpersist-operator` as the operator's service account, with leader election on
/// as in the chart.
fn start_operator(
    cluster: &Cluster,
    program: &Path,
    metrics_addr: &str,
    logs: &Path,
) -> Result<Process> {
    let args = vec![
        "--metrics-addr".to_string(),
        metrics_addr.to_string(),
        "--lease-namespace".into(),
        NAMESPACE.into(),
    ];
    let kubeconfig = cluster.plane.kubeconfig(Identity::Operator);
    let env = vec![
        ("KUBECONFIG".to_string(), kubeconfig.display().to_string()),
        ("RUST_LOG".into(), "info".into()),
    ];
    let log = logs.join("operator.log");
    say(&format!(
        "starting kpersist-operator (log {})",
        log.display()
    ));
    Process::spawn("operator", program, &args, &env, &log)
}

/// Waits until the operator's caches have synced and it holds the lease, so the rollout's
/// time does not include the operator's own start.
async fn wait_operator_leading(cluster: &Cluster, metrics_addr: &str) -> Result<()> {
    crate::install_crypto_provider();
    let http = reqwest::Client::new();
    let url = format!("http://{metrics_addr}/readyz");
    let leases: Api<Lease> = Api::namespaced(cluster.admin.clone(), NAMESPACE);
    wait_until(
        "the operator to be ready and lead",
        Duration::from_secs(120),
        || {
            let (http, url, leases) = (http.clone(), url.clone(), leases.clone());
            async move {
                let ready = match http.get(&url).send().await {
                    Ok(answer) => answer.status().is_success(),
                    Err(_) => false,
                };
                if !ready {
                    return Ok(Check::NotYet(format!("{url} not ready")));
                }
                let holder = leases
                    .get_opt(LEASE)
                    .await?
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity);
                Ok(match holder {
                    Some(holder) => Check::Done(holder),
                    None => Check::NotYet(format!("lease {NAMESPACE}/{LEASE} not held")),
                })
            }
        },
    )
    .await?;
    say("operator ready and leading");
    Ok(())
}

/// A policy selecting every benchmark node, zero-bake waves at `percents`.
fn policy(
    repo: &RepoServer,
    publisher: &Publisher,
    percents: &[u32],
    max_in_flight: u32,
) -> LivePatchPolicy {
    let selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            FLEET_LABEL.to_string(),
            "true".to_string(),
        )])),
        ..LabelSelector::default()
    };
    let waves = percents
        .iter()
        .map(|p| Wave {
            nodes: None,
            percent: Some(*p),
            bake: "0s".into(),
        })
        .collect();
    let spec = LivePatchPolicySpec {
        node_selector: selector,
        repository: RepositorySpec {
            url: repo.url(),
            channel: "stable".into(),
            trusted_keys: vec![publisher.public_key()],
            trusted_keys_secret: None,
            ca_bundle: None,
            allowed_redirect_hosts: Vec::new(),
            check_interval: "1h".into(),
            delay: None,
            pinned_version: None,
        },
        rollout: RolloutSpec {
            waves,
            max_in_flight,
            ..RolloutSpec::default()
        },
        health: HealthSpec::default(),
    };
    LivePatchPolicy::new(POLICY, spec)
}

/// Waits until the policy is Complete (or Idle) and every node reports `release` Applied;
/// returns the time since `started`. Prints progress once a second.
async fn wait_rollout(
    observer: &Observer,
    agents: &AgentFleet,
    release: &str,
    nodes: usize,
    started: Instant,
    settings: &Settings,
) -> Result<Duration> {
    let mut last_said = Instant::now();
    wait_until("the rollout to complete", settings.timeout, || {
        let progress = observer.progress(release);
        let failures = agents.failures();
        let at = started.elapsed();
        if last_said.elapsed() >= Duration::from_secs(1) {
            say(&progress_line(&progress, nodes, at));
            last_said = Instant::now();
        }
        async move {
            if let Some(failure) = failures.first() {
                return Err(agent_failed(failure));
            }
            let finished = matches!(
                progress.phase,
                Some(PolicyPhase::Complete | PolicyPhase::Idle)
            );
            Ok(if finished && progress.applied == nodes {
                say(&progress_line(&progress, nodes, at));
                Check::Done(at)
            } else {
                Check::NotYet(progress_line(&progress, nodes, at))
            })
        }
    })
    .await
}

fn progress_line(p: &Progress, nodes: usize, at: Duration) -> String {
    let wave = p
        .wave
        .map(|(w, n)| format!("wave {w}/{n}"))
        .unwrap_or_else(|| "no wave yet".into());
    let phase = p
        .phase
        .map(|ph| format!("{ph:?}"))
        .unwrap_or_else(|| "-".into());
    format!(
        "rollout {:6.1}s  applied {}/{nodes}  in flight {}  {wave}  phase {phase}",
        at.as_secs_f64(),
        p.applied,
        p.in_flight
    )
}

/// The API server's metrics, read as the admin.
async fn scrape(admin: &kube::Client) -> Result<String> {
    let request = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(|e| Error::Command {
            command: "GET /metrics".into(),
            status: "not built".into(),
            detail: e.to_string(),
        })?;
    Ok(admin.request_text(request).await?)
}

/// With `KPERSIST_BENCH_METRICS_DIR` set, writes both scrapes there whole
/// (`apiserver-before.txt`, `apiserver-after.txt`) for a closer look at any series.
fn keep_scrapes(before: &str, after: &str) -> Result<()> {
    let Some(dir) = std::env::var_os("KPERSIST_BENCH_METRICS_DIR") else {
        return Ok(());
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (name, text) in [
        ("apiserver-before.txt", before),
        ("apiserver-after.txt", after),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    say(&format!("API server metrics kept in {}", dir.display()));
    Ok(())
}

/// The 1-minute load average, when `/proc/loadavg` can be read.
fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_start_with_a_small_canary_and_end_at_everyone() {
        assert_eq!(wave_percents(1), vec![100]);
        assert_eq!(wave_percents(2), vec![10, 100]);
        assert_eq!(wave_percents(3), vec![10, 50, 100]);
        assert_eq!(wave_percents(4), vec![1, 10, 50, 100]);
        let six = wave_percents(6);
        assert_eq!(six.len(), 6);
        assert!(six.windows(2).all(|w| w[0] < w[1]), "{six:?}");
        assert_eq!(six.last(), Some(&100));
    }
}
