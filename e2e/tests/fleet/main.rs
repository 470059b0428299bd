//! The fleet suite: kpersist's CRDs, RBAC, operator and simulated agents against a real
//! kube-apiserver and etcd (built from Debian's Kubernetes source by
//! `e2e/controlplane/build.sh`). Every assertion reads API objects, never logs.
//!
//! Each test starts its own control plane; they run one at a time so that their API
//! servers and processes do not compete for the machine's cores.
//!
//! Run: `cargo test -p kpersist-e2e --test fleet` (test.sh does).

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod bad_releases;
mod controls;
mod faults;
mod node_life;
mod node_life_checks;
mod reverts;
mod rollout;
mod schema;
mod support;
