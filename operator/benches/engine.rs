//! Decision time of the rollout engine for fleets of 100 to 50,000 nodes, in the middle of
//! a rollout (a wave handing out releases, nodes in flight, others done or waiting): the
//! work one reconcile does. Prints, per size, the median, p99 and max over many decisions,
//! the median per node, how it grew from the size before (the time ratio divided by the
//! size ratio: 1.0 is linear, 2.0 is twice as slow per node), and the size of the policy
//! status the decision writes.
//!
//! - `cargo bench -p kpersist-operator --bench engine`: the full run (release build).
//! - `... -- --quick`: 100 to 10,000 nodes with few samples, for CI (with
//!   `cargo test --bench engine -- --quick`, a debug build: it shows the benchmark runs and
//!   prints its figures, not how fast the engine is).
//! - without arguments (as `cargo test --all-targets` runs it): the smallest fleet only.

#[path = "../tests/engine_support/mod.rs"]
mod engine_support;

use std::time::{Duration, Instant};

use engine_support::*;
use kpersist_operator::engine::{EngineInput, decide};

/// The engine's target at 10,000 nodes.
const TARGET_10K: Duration = Duration::from_millis(20);

/// Which sizes to run and how many decisions to time at each.
struct Plan {
    sizes: &'static [usize],
    samples: fn(usize) -> usize,
}

fn plan(args: &[String]) -> Plan {
    if args.iter().any(|a| a == "--quick") {
        Plan {
            sizes: &[100, 1_000, 10_000],
            samples: |size| (200_000 / size).clamp(5, 50),
        }
    } else if args.iter().any(|a| a == "--bench") {
        Plan {
            sizes: &[100, 1_000, 10_000, 50_000],
            samples: |size| (2_000_000 / size).clamp(30, 2_000),
        }
    } else {
        Plan {
            sizes: &[100],
            samples: |_| 3,
        }
    }
}

/// One size's figures.
struct Row {
    size: usize,
    samples: usize,
    median: Duration,
    p99: Duration,
    max: Duration,
    status_bytes: usize,
    summary: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn measure(size: usize, samples: usize) -> Row {
    let sim = mid_rollout(size);
    let views = sim.views();
    let input = EngineInput {
        policy: &sim.policy,
        nodes: &views,
        repository: sim.repository.as_ref(),
        gate: None,
        now: sim.now,
    };
    // One decision first, untimed: it warms caches and allocator like a running operator.
    let first = decide(&input);
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let decision = decide(&input);
        times.push(started.elapsed());
        // Dropping the decision is part of a reconcile too.
        drop(decision);
    }
    times.sort_unstable();
    Row {
        size,
        samples,
        median: percentile(&times, 0.5),
        p99: percentile(&times, 0.99),
        max: times[times.len() - 1],
        status_bytes: serde_json::to_vec(&first.status).map_or(0, |v| v.len()),
        summary: format!("{:?} / {}", first.status.phase, first.desired.len()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let plan = plan(&args);
    if cfg!(debug_assertions) {
        println!("debug build: the figures show the benchmark runs, not the engine's speed");
    }
    println!(
        "{:>8} {:>8} {:>11} {:>11} {:>11} {:>10} {:>7} {:>9}  phase / writes",
        "nodes", "samples", "median", "p99", "max", "per node", "growth", "status"
    );
    let mut rows: Vec<Row> = Vec::new();
    for &size in plan.sizes {
        let row = measure(size, (plan.samples)(size));
        // Time ratio over size ratio against the size before: 1.00 is linear.
        let growth = rows.last().map_or_else(
            || "-".to_string(),
            |before| {
                let time = row.median.as_secs_f64() / before.median.as_secs_f64().max(1e-12);
                let nodes = row.size as f64 / before.size as f64;
                format!("{:.2}", time / nodes)
            },
        );
        println!(
            "{:>8} {:>8} {:>11.3?} {:>11.3?} {:>11.3?} {:>8.0}ns {:>7} {:>7.1}KiB  {}",
            row.size,
            row.samples,
            row.median,
            row.p99,
            row.max,
            row.median.as_secs_f64() * 1e9 / row.size as f64,
            growth,
            row.status_bytes as f64 / 1024.0,
            row.summary
        );
        rows.push(row);
    }
    if let Some(row) = rows.iter().find(|r| r.size == 10_000)
        && !cfg!(debug_assertions)
    {
        println!(
            "10,000 nodes: median {:.3?} (target <= {:?}: {})",
            row.median,
            TARGET_10K,
            if row.median <= TARGET_10K {
                "met"
            } else {
                "missed"
            }
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last())
        && rows.len() > 1
    {
        let time = last.median.as_secs_f64() / first.median.as_secs_f64().max(1e-12);
        let nodes = last.size as f64 / first.size as f64;
        println!(
            "growth {} -> {} nodes: time x{:.1} for nodes x{:.0} ({:.2} per node; 1.00 is linear)",
            first.size,
            last.size,
            time,
            nodes,
            time / nodes
        );
    }
}
