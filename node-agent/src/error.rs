//! The agent's errors: what stops the agent itself (state directory, API server, flags).
//! Failures of an apply or revert are not errors here: they end in a `NodeError` in status.

use std::path::PathBuf;

/// Why the agent could not do its own work.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A file in the state directory could not be read or written.
    #[error("state directory: cannot {action} {}: {source}; check that the host path is mounted read-write", path.display())]
    State {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file in the state directory holds something this agent cannot read.
    #[error("state directory: {} is corrupt ({reason}); move it aside to let the agent start over", path.display())]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The kernel could not be read.
    #[error("kernel: {0}")]
    Kernel(#[from] kpersist_kmod::kernel::KernelError),
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The Node object this agent runs on does not exist.
    #[error("node {0} not found in the API; set --node-name (NODE_NAME) to this node's name")]
    NodeNotFound(String),
    /// The patch repository given to local mode could not be used.
    #[error("repository: {0}")]
    Repository(#[from] kpersist_kmod::repository::RepositoryError),
    /// A public key file could not be read.
    #[error("trusted key: {0}")]
    Key(#[from] kpersist_kmod::signing::SigningError),
    /// The repository has no release for this kernel.
    #[error(
        "no release for kernel {release} (build id {build_id}){version} in the repository; \
         publish one with `kpersist-repo add`"
    )]
    NoRelease {
        /// Running kernel release.
        release: String,
        /// Running kernel build id.
        build_id: String,
        /// The version asked for, if one was.
        version: String,
    },
    /// A flag's value is malformed.
    #[error("invalid value for {flag}: {reason}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The metrics or health server failed.
    #[error("metrics server on {addr}: {source}")]
    Server {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A blocking kernel task panicked or was cancelled.
    #[error("kernel call did not complete: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl AgentError {
    pub(crate) fn state(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> AgentError {
        let path = path.into();
        move |source| AgentError::State {
            action,
            path,
            source,
        }
    }
}
