//! The operator's errors: `Error` for a failed reconcile (each variant is a metric label) and
//! `StartupError` for what stops the binary before it runs. Repository and gate failures are
//! not here: they do not fail a reconcile, they become status conditions.

use std::net::SocketAddr;

/// Why a reconcile failed. It is retried with backoff and counted under
/// `kpersist_reconcile_errors_total{reason}`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing a LivePatchNode's `spec.desired` failed.
    #[error("writing spec.desired of LivePatchNode {node} failed: {source}")]
    NodeApply {
        /// The node.
        node: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Writing a policy's status failed.
    #[error("writing status of LivePatchPolicy {policy} failed: {source}")]
    StatusApply {
        /// The policy.
        policy: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Reading or writing the bad releases kept for deleted policies failed.
    #[error(
        "ConfigMap {namespace}/{}, which keeps the bad releases of deleted policies: {source}",
        crate::controller::kept::CONFIG_MAP
    )]
    KeptBadReleases {
        /// The operator's namespace.
        namespace: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the finalizer failed.
    #[error("finalizer of LivePatchPolicy: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The policy object came without a name, which the API never sends.
    #[error("a LivePatchPolicy arrived without metadata.name")]
    UnnamedPolicy,
}

impl Error {
    /// The `reason` label of `kpersist_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Self::NodeApply { .. } => "node_apply",
            Self::StatusApply { .. } => "status_apply",
            Self::KeptBadReleases { .. } => "kept_bad_releases",
            Self::Finalizer(inner) => match inner.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.metric_label(),
                F::AddFinalizer(_) | F::RemoveFinalizer(_) => "finalizer",
                F::UnnamedObject => "unnamed_policy",
                F::InvalidFinalizer => "finalizer",
            },
            Self::UnnamedPolicy => "unnamed_policy",
        }
    }
}

/// What stops the operator at start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// `--log-filter` / `RUST_LOG` does not parse.
    #[error(
        "log filter {filter:?} does not parse: {message}; use RUST_LOG syntax such as `info` or `info,kpersist_operator=debug`"
    )]
    LogFilter {
        /// The filter given.
        filter: String,
        /// The parser's complaint.
        message: String,
    },
    /// No kubeconfig and no in-cluster service account.
    #[error(
        "no Kubernetes configuration found: {0}; run inside a pod with a service account, or set KUBECONFIG to a kubeconfig file"
    )]
    NoKubeconfig(#[source] kube::config::InferConfigError),
    /// The configuration was found but a client cannot be built from it.
    #[error(
        "cannot build a Kubernetes client for {server}: {source}; check the kubeconfig's TLS and credentials"
    )]
    Client {
        /// The API server URL.
        server: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer the version call.
    #[error(
        "the Kubernetes API server at {server} is not reachable: {source}; check that the cluster is up, that KUBECONFIG (or the in-cluster service account) points at it, and that the credentials are valid"
    )]
    ClusterUnreachable {
        /// The API server URL.
        server: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer the version call in time.
    #[error(
        "the Kubernetes API server at {server} did not answer within {seconds}s; check that the cluster is up and reachable from here, and that KUBECONFIG points at the right cluster"
    )]
    ClusterTimeout {
        /// The API server URL.
        server: String,
        /// How long we waited.
        seconds: u64,
    },
    /// The metrics address cannot be bound.
    #[error("cannot listen on --metrics-addr {addr}: {source}; pick a free address and port")]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// A signal handler cannot be installed.
    #[error("cannot install the SIGTERM/SIGINT handler: {0}")]
    Signal(#[source] std::io::Error),
    /// The service account may not read or write the leader Lease.
    #[error(
        "not allowed to use the leader Lease {namespace}/{name}: {source}; grant get, create and update on coordination.k8s.io leases in {namespace} (the Helm chart does), or pass --leader-elect=false"
    )]
    LeaseForbidden {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The API's refusal.
        #[source]
        source: kube::Error,
    },
    /// The leader Lease was lost; the replica exits so it never reconciles beside a new
    /// leader.
    #[error("lost the leader Lease {namespace}/{name}; exiting so another replica leads")]
    LeaseLost {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
    },
    /// The controller stopped on its own.
    #[error("the controller stopped unexpectedly: {0}")]
    Controller(String),
}
