//! Command-line flags, each with an environment fallback so the DaemonSet can set them from
//! the downward API and config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kpersist_kmod::kernel::{BlockingTask, SimFault, SimTransition, SyscallFailure};

use crate::error::AgentError;

/// The kpersist node agent. Without a subcommand it runs as the DaemonSet agent of one node.
#[derive(Parser, Debug)]
#[command(name = "kpersist-agent", version, about)]
pub struct Cli {
    /// One-shot modes; without one, the agent runs against the Kubernetes API.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Where the kernel is and how to log.
    #[command(flatten)]
    pub host: HostArgs,
    /// Flags of the Kubernetes agent.
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// One-shot modes.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply, revert or show patches from a local signed repository, without Kubernetes.
    Local {
        /// What to do.
        #[command(subcommand)]
        action: LocalAction,
    },
}

/// What local mode does.
#[derive(Subcommand, Debug, Clone)]
pub enum LocalAction {
    /// Apply release N (default: the newest) for the running kernel from the repository.
    Apply(LocalRepoArgs),
    /// Revert to release N from the repository, or without --version disable and unload
    /// every kpersist patch.
    Revert(LocalRepoArgs),
    /// Print the node's livepatch status.
    Status,
}

/// The repository local mode reads.
#[derive(Args, Debug, Clone)]
pub struct LocalRepoArgs {
    /// Repository directory holding index.json, index.json.sig and the modules.
    #[arg(long)]
    pub repo: PathBuf,
    /// Trusted ed25519 public key file (one line of base64).
    #[arg(long)]
    pub pubkey: PathBuf,
    /// Cumulative version to apply or revert to.
    #[arg(long)]
    pub version: Option<u64>,
    /// How long the livepatch transition may take before it is reversed (e.g. 10s).
    #[arg(long, default_value = "60s")]
    pub transition_timeout: String,
}

/// Where the kernel and the host state are.
#[derive(Args, Debug, Clone)]
pub struct HostArgs {
    /// Host directory for the module cache, crash marker and records.
    #[arg(
        long,
        env = "KPERSIST_STATE_DIR",
        default_value = "/var/lib/kpersist",
        global = true
    )]
    pub state_dir: PathBuf,
    /// Root of sysfs.
    #[arg(
        long,
        env = "KPERSIST_SYSFS_ROOT",
        default_value = "/sys",
        global = true
    )]
    pub sysfs_root: PathBuf,
    /// Root of procfs.
    #[arg(
        long,
        env = "KPERSIST_PROCFS_ROOT",
        default_value = "/proc",
        global = true
    )]
    pub procfs_root: PathBuf,
    /// The kernel log device.
    #[arg(
        long,
        env = "KPERSIST_KMSG_PATH",
        default_value = "/dev/kmsg",
        global = true
    )]
    pub kmsg_path: PathBuf,
    /// How often to read sysfs while a transition runs (e.g. 250ms).
    #[arg(
        long,
        env = "KPERSIST_POLL_INTERVAL",
        default_value = "250ms",
        global = true
    )]
    pub poll_interval: String,
    /// Log format.
    #[arg(long, env = "KPERSIST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Use a simulated kernel in memory instead of the real one (fleet tests).
    #[arg(long, env = "KPERSIST_SIMULATE", global = true)]
    pub simulate: bool,
    /// Kernel release of the simulated kernel.
    #[arg(
        long,
        env = "KPERSIST_SIM_KERNEL_RELEASE",
        default_value = "6.1.0-56-amd64",
        global = true
    )]
    pub sim_kernel_release: String,
    /// Build id of the simulated kernel.
    #[arg(
        long,
        env = "KPERSIST_SIM_BUILD_ID",
        default_value = "0000000000000000000000000000000000000000",
        global = true
    )]
    pub sim_build_id: String,
    /// File holding the simulated kernel's state between agent processes
    /// (default: `<state-dir>/sim-kernel.json`).
    #[arg(long, env = "KPERSIST_SIM_STATE_FILE", global = true)]
    pub sim_state_file: Option<PathBuf>,
    /// Boot id of the simulated kernel; restart an agent with another one to simulate a
    /// reboot: the kernel comes up with nothing loaded, and a crash marker left by the
    /// previous process means CrashSuspected. Without it the saved boot id is kept.
    #[arg(long, env = "KPERSIST_SIM_BOOT_ID", global = true)]
    pub sim_boot_id: Option<String>,
    /// Fault of the simulated kernel for one release: `ID=stall|taint|warning|load-error|lockdown|fail-enable`
    /// (repeatable; comma-separated in the environment).
    #[arg(
        long,
        env = "KPERSIST_SIM_FAIL_RELEASE",
        value_delimiter = ',',
        global = true
    )]
    pub sim_fail_release: Vec<String>,
}

/// Flags of the Kubernetes agent.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Name of the node this agent runs on (downward API `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Address of the /metrics and /healthz server.
    #[arg(long, env = "KPERSIST_METRICS_ADDR", default_value = "0.0.0.0:9100")]
    pub metrics_addr: SocketAddr,
}

/// Log output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl HostArgs {
    /// The transition poll interval.
    pub fn poll_interval(&self) -> Result<Duration, AgentError> {
        parse_flag_duration("--poll-interval", &self.poll_interval)
    }

    /// The simulated-kernel faults, by release id.
    pub fn sim_faults(&self) -> Result<Vec<(String, SimFault)>, AgentError> {
        self.sim_fail_release
            .iter()
            .map(|spec| parse_sim_fault(spec))
            .collect()
    }
}

/// Parses a duration flag such as `10s` or `250ms`.
pub fn parse_flag_duration(flag: &'static str, text: &str) -> Result<Duration, AgentError> {
    kpersist_crds::parse_duration(text).map_err(|e| AgentError::Flag {
        flag,
        reason: e.to_string(),
    })
}

/// Parses `ID=kind` into the release id and the fault for its module.
pub fn parse_sim_fault(spec: &str) -> Result<(String, SimFault), AgentError> {
    let bad = |reason: String| AgentError::Flag {
        flag: "--sim-fail-release",
        reason,
    };
    let (id, kind) = spec
        .rsplit_once('=')
        .ok_or_else(|| bad(format!("{spec:?} is not ID=KIND")))?;
    let fault = match kind {
        "stall" => SimFault {
            transition: Some(SimTransition::Stall(vec![BlockingTask {
                pid: 4242,
                comm: "sim_sleeper".into(),
            }])),
            ..SimFault::default()
        },
        "taint" => SimFault {
            taint_on_load: 1 << 9,
            ..SimFault::default()
        },
        "warning" => SimFault {
            kmsg_on_load: vec![
                "WARNING: CPU: 0 PID: 4242 at kernel/livepatch/transition.c:1 (simulated)".into(),
            ],
            ..SimFault::default()
        },
        "load-error" => SimFault {
            load_error: Some(SyscallFailure::InvalidArgument),
            ..SimFault::default()
        },
        "lockdown" => SimFault {
            load_error: Some(SyscallFailure::NotPermitted),
            ..SimFault::default()
        },
        "fail-enable" => SimFault {
            transition: Some(SimTransition::FailToEnable),
            ..SimFault::default()
        },
        other => {
            return Err(bad(format!(
                "unknown fault {other:?} in {spec:?}; use stall, taint, warning, load-error, lockdown or fail-enable"
            )));
        }
    };
    Ok((id.to_string(), fault))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_mode_flags_parse_in_the_documented_shape() {
        let cli = Cli::try_parse_from([
            "kpersist-agent",
            "local",
            "apply",
            "--repo",
            "/r",
            "--pubkey",
            "/k.pub",
            "--version",
            "2",
            "--state-dir",
            "/s",
            "--transition-timeout",
            "10s",
        ])
        .unwrap();
        assert_eq!(cli.host.state_dir, PathBuf::from("/s"));
        let Some(Command::Local {
            action: LocalAction::Apply(args),
        }) = cli.command
        else {
            panic!("not local apply")
        };
        assert_eq!(
            (args.version, args.transition_timeout.as_str()),
            (Some(2), "10s")
        );
        assert!(
            Cli::try_parse_from(["kpersist-agent", "local", "status", "--state-dir", "/s"]).is_ok()
        );
        assert!(
            Cli::try_parse_from([
                "kpersist-agent",
                "local",
                "revert",
                "--repo",
                "/r",
                "--pubkey",
                "/k"
            ])
            .is_ok()
        );
    }

    #[test]
    fn sim_faults_parse_and_bad_ones_are_named() {
        let (id, fault) = parse_sim_fault("6.1.0-56-amd64/v2=stall").unwrap();
        assert_eq!(id, "6.1.0-56-amd64/v2");
        assert!(matches!(fault.transition, Some(SimTransition::Stall(_))));
        assert_eq!(
            parse_sim_fault("x/v1=taint").unwrap().1.taint_on_load,
            1 << 9
        );
        let err = parse_sim_fault("x/v1=explode").unwrap_err().to_string();
        assert!(err.contains("explode") && err.contains("stall"), "{err}");
        assert!(parse_sim_fault("nothing").is_err());
    }
}
