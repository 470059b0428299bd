//! Benchmarks on real parts. Each has a binary under `src/bin/` and a one-command script
//! under `bench/`.

pub mod rollout;
