//! Command-line flags of `kpersist-operator`; each has an environment variable fallback so
//! a Helm chart can set them either way.

use std::net::SocketAddr;

use clap::{ArgAction, Parser};

use crate::telemetry::LogFormat;

/// The kpersist operator: polls each LivePatchPolicy's signed patch repository and rolls
/// new cumulative kernel livepatch releases out across the selected nodes in canary waves,
/// by writing each LivePatchNode's spec.desired for the node agents to act on.
///
/// It connects to the cluster from KUBECONFIG (or ~/.kube/config), or from the pod's
/// service account when run in-cluster.
#[derive(Debug, Clone, Parser)]
#[command(name = "kpersist-operator", version)]
pub struct Cli {
    /// Address of the HTTP endpoint serving /metrics (Prometheus), /healthz (liveness) and
    /// /readyz (caches synced).
    #[arg(long, env = "KPERSIST_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Elect a leader through a coordination.k8s.io Lease so several replicas can run and
    /// only one reconciles. Pass --leader-elect=false to run a single replica without a
    /// Lease (for example out of cluster while developing).
    #[arg(
        long,
        env = "KPERSIST_LEADER_ELECT",
        default_value_t = true,
        action = ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub leader_elect: bool,

    /// Name of the Lease used for leader election.
    #[arg(long, env = "KPERSIST_LEASE_NAME", default_value = "kpersist-operator")]
    pub lease_name: String,

    /// The operator's own namespace, holding its Lease and the ConfigMap that keeps the bad
    /// releases of deleted policies; in a pod, set POD_NAMESPACE from the downward API.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kpersist")]
    pub lease_namespace: String,

    /// Log line format: `json` for log collectors, `text` for people.
    #[arg(long, env = "KPERSIST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Which log lines to write, in RUST_LOG syntax, e.g. `info` or
    /// `info,kpersist_operator=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["kpersist-operator"]).unwrap();
        assert!(cli.leader_elect);
        assert_eq!(cli.metrics_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(cli.lease_name, "kpersist-operator");
        assert_eq!(cli.log_format, LogFormat::Text);
    }

    #[test]
    fn leader_election_can_be_turned_off() {
        let cli = Cli::try_parse_from(["kpersist-operator", "--leader-elect=false"]).unwrap();
        assert!(!cli.leader_elect);
        let cli = Cli::try_parse_from(["kpersist-operator", "--leader-elect"]).unwrap();
        assert!(cli.leader_elect);
    }

    #[test]
    fn every_flag_is_documented() {
        Cli::command().debug_assert();
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(arg.get_help().is_some(), "--{id} has no help text");
        }
    }
}
