//! Shared pieces of the end-to-end suites: a local Kubernetes control plane, a patch
//! repository server with fault switches, and the helpers the fleet suite drives real
//! operator and agent processes with.

pub mod bench;
pub mod controlplane;
pub mod demo;
pub mod error;
pub mod fleet;
pub mod monitor;
pub mod patch_repo;
pub mod process;
pub mod prometheus;
pub mod repo_server;
pub mod sim_fleet;
pub mod steps;
pub mod vm;
pub mod wait;

pub use error::Error;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Installs the process-wide rustls crypto provider once. kube and reqwest both link
/// rustls; with more than one provider compiled in, rustls cannot choose and panics at
/// the first TLS connection, so the suites pick one explicitly.
pub fn install_crypto_provider() {
    // An error only means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
