//! `bench-agent-idle`: what one idle `kpersist-agent` costs its node and the API server.
//! It starts the local real API server, a Node, a signed repository, and the real agent
//! binary with a simulated kernel; has the node apply a release (as the operator would, by
//! writing `spec.desired`), waits for Applied, then for `--seconds` samples the agent's
//! RSS and CPU time from /proc and counts the API requests it makes from the server's
//! `apiserver_request_total`. Run it with `e2e/bench/agent-idle.sh`.

mod sample;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use kpersist_crds::{
    DesiredPatch, LivePatchNode, LivePatchPolicy, NodePatchState, PatchAction, PatchRelease,
};
use kpersist_e2e::controlplane::Identity;
use kpersist_e2e::fleet::Cluster;
use kpersist_e2e::patch_repo::{FIXTURE_KERNEL, Publisher};
use kpersist_e2e::process::{Process, build_binaries, workspace_binary};
use kpersist_e2e::repo_server::RepoServer;
use kpersist_e2e::wait::{Check, wait_until};
use kpersist_e2e::{Error, Result};
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::sample::{Memory, is_agent_request, parse_request_counters, requests_between};

const NODE: &str = "bench-idle-0";
const BUILD_ID: &str = "00000000000000000000000000000000000000b1";
/// Targets of issue 8.
const TARGET_RSS_MIB: f64 = 16.0;
const TARGET_IDLE_REQUESTS: u64 = 0;

/// Idle cost of one kpersist-agent: RSS, CPU and API requests over a window.
#[derive(Parser, Debug)]
struct Args {
    /// Length of the idle window, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds to wait after the node reports Applied before the window opens.
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// Agent binary to run (default: the workspace's build of kpersist-agent, rebuilt first).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Set TOKIO_WORKER_THREADS for the agent, to see it as on a node with that many cores
    /// (tokio's default runtime starts one worker per core; an agent that fixes its own
    /// worker count ignores this).
    #[arg(long)]
    tokio_workers: Option<u32>,
    /// Leave the node Idle with no release instead of applying one first.
    #[arg(long)]
    no_apply: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-agent-idle: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    let agent_bin = match &args.agent {
        Some(path) => path.clone(),
        None => {
            build_binaries(&["kpersist-agent"])?;
            workspace_binary("kpersist-agent")?
        }
    };
    let cluster = Cluster::start().await?;
    cluster.create_node(NODE, &BTreeMap::new()).await?;
    let scratch = tempfile::Builder::new()
        .prefix("kpersist-bench-idle-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let publisher = Publisher::init(&scratch.path().join("repo"))?;
    let repo = RepoServer::start(publisher.root()).await?;
    let release = publisher.publish(FIXTURE_KERNEL, BUILD_ID, 1, &[], &["stable"])?;

    let state_dir = scratch.path().join("agent");
    let agent_args: Vec<String> = [
        "--simulate",
        "--sim-kernel-release",
        FIXTURE_KERNEL,
        "--sim-build-id",
        BUILD_ID,
        "--node-name",
        NODE,
        "--state-dir",
        &state_dir.display().to_string(),
        "--metrics-addr",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec();
    let mut env = vec![
        (
            "KUBECONFIG".to_string(),
            cluster
                .plane
                .kubeconfig(Identity::Agent)
                .display()
                .to_string(),
        ),
        ("RUST_LOG".to_string(), "info".to_string()),
    ];
    if let Some(workers) = args.tokio_workers {
        env.push(("TOKIO_WORKER_THREADS".to_string(), workers.to_string()));
    }
    let log = cluster.plane.dir().join("agent.log");
    let started = Instant::now();
    let mut agent = Process::spawn("agent", &agent_bin, &agent_args, &env, &log)?;
    let pid = find_child(&agent_bin).await?;
    eprintln!(
        "agent {} pid {pid}, log {}",
        agent_bin.display(),
        log.display()
    );

    let api: Api<LivePatchNode> = Api::all(cluster.admin.clone());
    wait_state(&api, NodePatchState::Idle, Duration::from_secs(60)).await?;
    let idle_after = started.elapsed();
    let mut state = "Idle, no release";
    if !args.no_apply {
        // The agent checks a request against the signed index of the policy it names.
        let policy = serde_json::json!({
            "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchPolicy",
            "metadata": {"name": "bench"},
            "spec": {
                "nodeSelector": {"matchLabels": {"kpersist.io/bench": "no-node"}},
                "repository": {"url": repo.url(), "trustedKeys": [publisher.public_key()]},
            },
        });
        Api::<LivePatchPolicy>::all(cluster.admin.clone())
            .patch(
                "bench",
                &PatchParams::apply("bench"),
                &Patch::Apply(&policy),
            )
            .await?;
        let desired = DesiredPatch {
            policy: "bench".into(),
            action: PatchAction::Apply,
            release: Some(PatchRelease {
                id: release.id(),
                version: release.version,
                kernel_release: release.kernel_release.clone(),
                build_id: release.build_id.clone(),
                module_name: release.module_name.clone(),
                module_url: release.module_url(&repo.url()),
                sha256: release.sha256.clone(),
                size: release.size,
                cves: release.cves.clone(),
            }),
            previous: None,
            wave: Some(1),
            transition_timeout: "10s".into(),
            kmsg_checks: true,
            probation: "1h".to_string(),
            replace_foreign: false,
            asked_at: None,
            repository: None,
        };
        let patch = serde_json::json!({ "spec": { "desired": desired } });
        api.patch(NODE, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        wait_state(&api, NodePatchState::Applied, Duration::from_secs(60)).await?;
        state = "Applied, release 1 loaded";
    }
    let ready_after = started.elapsed();
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    if let Some(status) = agent.exit_status() {
        return Err(agent_died(&agent, &status));
    }

    let window = Window::measure(&cluster, pid, Duration::from_secs(args.seconds)).await?;
    if let Some(status) = agent.exit_status() {
        return Err(agent_died(&agent, &status));
    }
    agent.kill().await;
    print_report(args, &agent_bin, state, idle_after, ready_after, &window);
    Ok(())
}

/// Figures of one idle window.
struct Window {
    wall: Duration,
    cpu_seconds: f64,
    first: Memory,
    last: Memory,
    max_rss_kib: u64,
    sum_rss_kib: u64,
    samples: u64,
    requests: BTreeMap<String, u64>,
    watchers: String,
}

impl Window {
    async fn measure(cluster: &Cluster, pid: u32, length: Duration) -> Result<Window> {
        let before = parse_request_counters(&scrape(cluster).await?);
        let ticks_before = read_stat(pid)?.cpu_ticks;
        let first = read_memory(pid)?;
        let start = Instant::now();
        let (mut max_rss_kib, mut sum_rss_kib, mut samples) = (first.rss_kib, first.rss_kib, 1);
        let mut last = first;
        while start.elapsed() < length {
            let left = length.saturating_sub(start.elapsed());
            tokio::time::sleep(left.min(Duration::from_secs(1))).await;
            last = read_memory(pid)?;
            max_rss_kib = max_rss_kib.max(last.rss_kib);
            sum_rss_kib += last.rss_kib;
            samples += 1;
        }
        let ticks_after = read_stat(pid)?.cpu_ticks;
        let wall = start.elapsed();
        let metrics = scrape(cluster).await?;
        let after = parse_request_counters(&metrics);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(Window {
            wall,
            cpu_seconds: ticks_after.saturating_sub(ticks_before) as f64 / hz,
            first,
            last,
            max_rss_kib,
            sum_rss_kib,
            samples,
            requests: requests_between(&before, &after),
            watchers: metrics
                .lines()
                .filter(|l| {
                    l.starts_with("apiserver_registered_watchers{") && l.contains("LivePatchNode")
                })
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}

fn print_report(
    args: &Args,
    agent_bin: &std::path::Path,
    state: &str,
    idle_after: Duration,
    ready_after: Duration,
    w: &Window,
) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let cpu_percent = 100.0 * w.cpu_seconds / w.wall.as_secs_f64().max(f64::EPSILON);
    let agent_requests: u64 = w
        .requests
        .iter()
        .filter(|(k, _)| is_agent_request(k))
        .map(|(_, n)| n)
        .sum();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("kpersist-agent idle benchmark");
    println!("  binary          {}", agent_bin.display());
    if agent_bin.components().any(|c| c.as_os_str() == "debug") {
        // The node runs the release build; a debug build maps twice the code.
        println!(
            "  note            a debug build: its file-backed RSS is about twice a release \
             build's; for the target, pass --agent with a release build"
        );
    }
    if let Some(workers) = args.tokio_workers {
        println!("  environment     TOKIO_WORKER_THREADS={workers} (a {workers}-core node)");
    }
    println!(
        "  node state      {state} (Idle reported {:.1} s after start, ready {:.1} s)",
        idle_after.as_secs_f64(),
        ready_after.as_secs_f64()
    );
    println!(
        "  window          {:.1} s after {} s settle, {} samples",
        w.wall.as_secs_f64(),
        args.settle,
        w.samples
    );
    println!(
        "  RSS (VmRSS)     start {:.1} MiB, end {:.1} MiB, mean {:.1} MiB, max {:.1} MiB   target <= {TARGET_RSS_MIB} MiB: {}",
        mib(w.first.rss_kib),
        mib(w.last.rss_kib),
        mib(w.sum_rss_kib / w.samples.max(1)),
        mib(w.max_rss_kib),
        verdict(mib(w.max_rss_kib) <= TARGET_RSS_MIB)
    );
    println!(
        "  RSS at end      {:.1} MiB anonymous (heap, stacks), {:.1} MiB file-backed (the binary's pages)",
        mib(w.last.anon_kib),
        mib(w.last.file_kib)
    );
    println!(
        "  peak (VmHWM)    {:.1} MiB since start (includes the apply)",
        mib(w.last.hwm_kib)
    );
    println!(
        "  threads         {} at start of window, {} at end",
        w.first.threads, w.last.threads
    );
    println!(
        "  CPU             {:.2} s in {:.1} s = {cpu_percent:.3} % of one core",
        w.cpu_seconds,
        w.wall.as_secs_f64()
    );
    println!(
        "  API requests    {agent_requests} by the agent (LivePatchNode and Node requests)   target {TARGET_IDLE_REQUESTS}: {}",
        verdict(agent_requests == TARGET_IDLE_REQUESTS)
    );
    for (key, n) in &w.requests {
        // A watch is counted when it ends; code 0 is one closed at its timeout.
        let who = if is_agent_request(key) && key.ends_with(" 0") {
            "agent: its watch, closed at its timeout and opened again"
        } else if is_agent_request(key) {
            "agent"
        } else {
            "API server's own loopback clients"
        };
        println!("    {n:>4}  {key}  ({who})");
    }
    println!(
        "  open watches    {}",
        if w.watchers.is_empty() {
            "none reported"
        } else {
            &w.watchers
        }
    );
    println!(
        "  note            the agent's single watch (its own LivePatchNode, by field selector) is \
         re-established every ~290 s (kube-rs watcher timeout): one WATCH request per ~5 min, no re-list."
    );
}

fn agent_died(agent: &Process, status: &str) -> Error {
    Error::Command {
        command: "kpersist-agent".into(),
        status: status.into(),
        detail: format!(
            "exited during the benchmark; last lines of {}:\n{}",
            agent.log().display(),
            agent.log_tail(15)
        ),
    }
}

/// Waits until the LivePatchNode reports `state`.
async fn wait_state(
    api: &Api<LivePatchNode>,
    state: NodePatchState,
    timeout: Duration,
) -> Result<()> {
    wait_until(
        &format!("LivePatchNode {NODE} to report {state:?}"),
        timeout,
        || async move {
            Ok(match api.get_opt(NODE).await? {
                None => Check::NotYet("no LivePatchNode yet".into()),
                Some(lpn) => match lpn.status.as_ref().and_then(|s| s.state) {
                    Some(s) if s == state => Check::Done(()),
                    other => Check::NotYet(format!("state {other:?}")),
                },
            })
        },
    )
    .await
}

/// The API server's /metrics, read as the admin with kubectl (a non-resource request,
/// so it does not show in the counters it reads).
async fn scrape(cluster: &Cluster) -> Result<String> {
    cluster
        .plane
        .kubectl(Identity::Admin, &["get", "--raw", "/metrics"])
        .await
}

/// The pid of this process's child running `program`. Right after the spawn the child may
/// not have reached its exec yet, so it is looked for a while.
async fn find_child(program: &std::path::Path) -> Result<u32> {
    let program = std::fs::canonicalize(program).map_err(|e| Error::io(program, e))?;
    let me = std::process::id();
    for _ in 0..50 {
        let found = std::fs::read_dir("/proc")
            .map_err(|e| Error::io("/proc", e))?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                read_stat(*pid).is_ok_and(|s| s.ppid == me)
                    && std::fs::read_link(format!("/proc/{pid}/exe"))
                        .is_ok_and(|exe| exe == program)
            });
        if let Some(pid) = found {
            return Ok(pid);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Malformed {
        path: PathBuf::from("/proc"),
        problem: format!(
            "no child process of pid {me} runs {}; did it exit at once?",
            program.display()
        ),
    })
}

fn read_stat(pid: u32) -> Result<sample::Stat> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    sample::parse_stat(&text).ok_or_else(|| Error::Malformed {
        path,
        problem: "not a stat line".into(),
    })
}

fn read_memory(pid: u32) -> Result<Memory> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    sample::parse_status(&text).ok_or_else(|| Error::Malformed {
        path,
        problem: "no VmRSS, VmHWM or Threads line".into(),
    })
}
