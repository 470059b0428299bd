//! The kpersist node agent: it brings its node's kernel to the livepatch release the operator
//! asks for in the node's `LivePatchNode`, safely, and reports what the kernel really runs.
//!
//! The pure parts ([`plan`], [`checks`], [`status`]) decide; [`apply`] and [`revert`] carry
//! decisions out over the [`kpersist_kmod::kernel::Kernel`] trait; [`controller`] and
//! [`local`] drive the [`engine`] from the Kubernetes API or from the command line.

pub mod apply;
pub mod backoff;
pub mod checks;
pub mod cli;
pub mod coexist;
pub mod controller;
pub mod drift;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod findings;
pub mod liveness;
pub mod local;
pub mod metrics;
pub mod plan;
pub mod probation;
mod probation_host;
pub mod recover;
pub mod revert;
pub mod run;
pub mod server;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod transition;
pub mod trust;

pub use error::AgentError;
