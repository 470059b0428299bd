//! The kpersist node agent: it brings its node's kernel to the livepatch release the operator
//! asks for in the node's `LivePatchNode`, safely, and reports what the kernel really runs.
//!
//! The pure parts ([`plan`], [`checks`], [`status`], [`patch_run`]) decide; the [`patcher`]
//! carries decisions out over the [`kpersist_kmod::kernel::Kernel`] trait; [`controller`] and
//! [`local`] drive the [`engine`] from the Kubernetes API or from the command line.

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
pub mod patch_run;
pub mod patcher;
pub mod plan;
pub mod probation;
pub mod run;
pub mod server;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod trust;

pub use error::AgentError;
