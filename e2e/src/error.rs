//! The error type of the end-to-end helpers. Messages name what failed and where its logs
//! are, because a failing end-to-end test is read by someone who did not write it.

use std::path::PathBuf;

/// What can go wrong while setting up or driving an end-to-end run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A helper script or tool exited unsuccessfully.
    #[error("{command} failed ({status}): {detail}")]
    Command {
        command: String,
        status: String,
        detail: String,
    },
    /// A program could not be started at all.
    #[error("could not start {program}: {source}; is it built and on the PATH?")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file the control plane wrote lacks something it must hold.
    #[error("{path}: {problem}")]
    Malformed { path: PathBuf, problem: String },
    /// A kubeconfig written by the control plane could not be loaded.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A condition did not come true in time.
    #[error("timed out after {seconds:.1}s waiting for {what}; last seen: {last}")]
    Timeout {
        what: String,
        seconds: f64,
        last: String,
    },
    /// Publishing to the test repository failed.
    #[error("patch repository: {0}")]
    Repository(#[from] kpersist_kmod::repository::RepositoryError),
    /// The repository server could not listen on loopback.
    #[error("repository server on 127.0.0.1: {0}")]
    Listen(#[source] std::io::Error),
}

impl Error {
    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
