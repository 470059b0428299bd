//! `kpersist-demo`: the main job of kpersist shown on one machine. A real kube-apiserver, a
//! signed repository, the operator and a simulated fleet; a first rollout in waves, a
//! persistent update, and a bad release caught on the canary and reverted, drawn live.

pub mod plan;
pub mod screen;
pub mod story;
pub mod summary;
pub mod view;
