//! Decision time of the rollout engine for fleets of 100 to 50,000 nodes, in the middle of
//! a rollout (a wave handing out releases, nodes in flight, others done or waiting): the
//! work one reconcile does. Prints median and p99 per size.
//!
//! `cargo bench -p kpersist-operator --bench engine`; run without `--bench` (as
//! `cargo test --all-targets` does) it only checks that the smallest fleet works.

#[path = "../tests/engine_support/mod.rs"]
mod engine_support;

use std::time::{Duration, Instant};

use engine_support::*;
use kpersist_operator::engine::{EngineInput, decide};

/// A fleet of `nodes` nodes on three kernels, part-way through a rollout.
fn mid_rollout(nodes: usize) -> Sim {
    let mut spec = policy_spec();
    spec.rollout.waves = waves(&[
        (Some(1), None, "0s"),
        (None, Some(10), "0s"),
        (None, Some(100), "0s"),
    ]);
    // Small enough that wave 2 is still handing out releases after the steps below.
    spec.rollout.max_in_flight = u32::try_from(nodes / 50 + 1).unwrap_or(u32::MAX);
    let fleet = (0..nodes)
        .map(|i| SimNode::new(&format!("node-{i:05}"), i % 3, Some(1)))
        .collect();
    let t = start_time();
    let releases = (0..3)
        .flat_map(|k| (1..=3).map(move |v| release(k, v, t)))
        .collect();
    let mut sim = Sim::new(spec, fleet, releases);
    // The canary done, part of wave 2 done and more of it in flight.
    for _ in 0..8 {
        sim.step(30);
    }
    sim
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if full {
        &[100, 1_000, 10_000, 50_000]
    } else {
        &[100]
    };
    println!(
        "{:>8} {:>8} {:>12} {:>12} {:>12}  phase / writes",
        "nodes", "samples", "median", "p99", "max"
    );
    for &size in sizes {
        let sim = mid_rollout(size);
        let views = sim.views();
        let input = EngineInput {
            policy: &sim.policy,
            nodes: &views,
            repository: sim.repository.as_ref(),
            gate: None,
            now: sim.now,
        };
        let samples = if full {
            (2_000_000 / size).clamp(30, 2_000)
        } else {
            3
        };
        let mut times = Vec::with_capacity(samples);
        let mut last = None;
        for _ in 0..samples {
            let started = Instant::now();
            let decision = decide(&input);
            times.push(started.elapsed());
            last = Some(decision);
        }
        times.sort_unstable();
        let summary = last.map_or_else(String::new, |d| {
            format!("{:?} / {}", d.status.phase, d.desired.len())
        });
        println!(
            "{:>8} {:>8} {:>12.3?} {:>12.3?} {:>12.3?}  {}",
            size,
            samples,
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times[times.len() - 1],
            summary
        );
    }
}
