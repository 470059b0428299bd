//! `kpersist-demo`: starts a local control plane, a signed patch repository, the operator
//! and a simulated fleet, and shows three rollouts live: v1 in waves, a persistent update
//! to v2, and a bad v3 that fails on the canary and is reverted automatically.

use std::cell::Cell;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kpersist_e2e::demo::screen::Screen;
use kpersist_e2e::demo::story::{self, Options};

/// Shows kpersist's main job end to end on this machine: etcd + kube-apiserver (built from
/// Debian's source once and cached), a signed patch repository on 127.0.0.1, the real
/// kpersist-operator, and a fleet of `kpersist-agent --simulate` processes with Node objects.
///
/// Act 1 rolls v1 out in waves (1 node, 25%, 100%); act 2 publishes a newer cumulative v2
/// and shows every node moving to it; act 3 publishes a bad v3 that taints the canary's
/// kernel and shows the automatic revert. Exits 0 only if all of that happened.
#[derive(Parser, Debug)]
#[command(
    name = "kpersist-demo",
    version,
    after_help = "Examples:\n  ./demo.sh                          20 nodes, 5s bakes\n  \
                  ./demo.sh --nodes 60 --bake 2s\n  \
                  ./demo.sh --keep-running           then: kubectl --kubeconfig <printed path> get lpp,lpn\n\n\
                  On a terminal the view redraws in place; piped, it prints one line per change."
)]
struct Cli {
    /// Simulated nodes: one runs a kernel the repository has no release for, a third run a
    /// second kernel, the rest the kernel the bad release is for.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(3..=200))]
    nodes: u16,
    /// Bake of each wave but the last (e.g. 5s, 1m); default: the policy file's.
    #[arg(long, value_parser = bake)]
    bake: Option<String>,
    /// After the summary, keep everything running until Ctrl-C, so you can use kubectl.
    #[arg(long)]
    keep_running: bool,
    /// The LivePatchPolicy to apply; its repository URL and key are filled in.
    #[arg(long, default_value_os_t = default_policy())]
    policy: PathBuf,
}

fn default_policy() -> PathBuf {
    kpersist_e2e::fleet::workspace_root()
        .join("e2e")
        .join("demo")
        .join("livepatchpolicy.yaml")
}

fn bake(text: &str) -> Result<String, String> {
    kpersist_crds::parse_duration(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    kpersist_e2e::install_crypto_provider();
    let options = Options {
        nodes: usize::from(cli.nodes),
        bake: cli.bake,
        keep_running: cli.keep_running,
        policy: cli.policy,
    };
    let mut screen = Screen::new();
    let verdict = Cell::new(None);
    // Dropping the story (on an interrupt) drops the fleet, which kills every process it
    // started by PID and stops the API server and etcd.
    let outcome = tokio::select! {
        result = story::run(&options, &mut screen, &verdict) => Some(result),
        _ = interrupted() => None,
    };
    match outcome {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            eprintln!("kpersist-demo: {e}");
            return ExitCode::FAILURE;
        }
        None => screen.say("\n==> interrupted: stopped the operator, agents, API server and etcd"),
    }
    match verdict.get() {
        Some(true) => ExitCode::SUCCESS,
        Some(false) => ExitCode::FAILURE,
        // Interrupted before the story was told.
        None => ExitCode::from(130),
    }
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
