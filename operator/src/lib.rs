//! The kpersist operator: the pure rollout engine ([`engine`]) and the thin layer around it
//! that reads the cluster and the patch repository and writes decisions back
//! ([`controller`], [`repository`], [`gate`]), with leader election, metrics and the binary's
//! start-up ([`app`]).
pub mod engine;
pub mod validate;

pub mod app;
pub mod cli;
pub mod controller;
pub mod error;
pub mod gate;
pub mod leader;
pub mod metrics;
pub mod node_runs;
pub mod repository;
pub mod secrets;
pub mod server;
pub mod telemetry;

#[cfg(test)]
pub(crate) mod fixtures;

/// Installs ring as the process's rustls crypto provider. kube and reqwest both use rustls,
/// and with more than one provider compiled in rustls cannot pick one and panics at the
/// first TLS connection. Calling it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
