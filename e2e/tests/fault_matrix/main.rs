//! The fault matrix: rollouts on a real API server and etcd with simulated agents, each
//! hit by one fault at a point detected from the API objects (the operator SIGKILLed at a
//! dozen points of a rollout, the Lease holder of two replicas killed, agents killed
//! mid-download and mid-transition, the API server restarted, etcd stopped, the repository
//! flapping). What was killed is started again, the rollout finishes, and the rollout
//! engine's invariants are checked on every recorded version of every LivePatchNode and
//! the policy (`kpersist_e2e::monitor::invariants`). A table `fault | runs | violations`
//! is printed at the end; any violation, or a fault whose point was never reached, fails.
//!
//! The scenarios share one control plane, one after the other, each with its own nodes,
//! policy, repository and operator Lease.
//!
//! Run all faults once (CI):
//!   `cargo test -p kpersist-e2e --test fault_matrix -- --nocapture`
//! Environment:
//!   `KPERSIST_FAULT_RUNS=3`       runs per fault (default 1)
//!   `KPERSIST_FAULTS=agent,etcd`  only faults whose name contains one of these words

mod catalog;
mod harness;
mod inject;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kpersist_e2e::fleet::Cluster;
use kpersist_e2e::monitor::invariants::Violation;

use crate::catalog::{Fault, faults};

/// What the runs of one fault found.
struct Row {
    fault: &'static str,
    runs: u32,
    missed: u32,
    violations: Vec<(u32, Violation)>,
    time: Duration,
}

fn runs_per_fault() -> u32 {
    std::env::var("KPERSIST_FAULT_RUNS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

fn selected(all: Vec<Fault>) -> Vec<Fault> {
    let filter = std::env::var("KPERSIST_FAULTS").unwrap_or_default();
    let words: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    all.into_iter()
        .filter(|f| words.is_empty() || words.iter().any(|w| f.name.contains(w)))
        .collect()
}

#[tokio::test]
async fn fault_matrix() {
    kpersist_e2e::install_crypto_provider();
    let runs = runs_per_fault();
    let faults = selected(faults());
    assert!(!faults.is_empty(), "KPERSIST_FAULTS selects no fault");
    let started = Instant::now();
    let cluster = Arc::new(Cluster::start().await.expect("control plane"));
    eprintln!(
        "fault matrix: {} faults x {runs} runs on {} (logs in {})",
        faults.len(),
        cluster.plane.server(),
        cluster.plane.dir().display()
    );
    let mut rows = Vec::new();
    for fault in &faults {
        let mut row = Row {
            fault: fault.name,
            runs: 0,
            missed: 0,
            violations: Vec::new(),
            time: Duration::ZERO,
        };
        for run in 1..=runs {
            let t0 = Instant::now();
            eprintln!("== {} run {run}: {}", fault.name, fault.what);
            let outcome = harness::run(cluster.clone(), fault, run).await;
            row.runs += 1;
            row.time += t0.elapsed();
            if let Some(why) = &outcome.missed {
                eprintln!("   MISSED: {why}");
                row.missed += 1;
            }
            for v in &outcome.violations {
                eprintln!("   VIOLATION {:?}: {}", v.invariant, v.detail);
            }
            eprintln!(
                "   {} violation(s), {:.1}s",
                outcome.violations.len(),
                t0.elapsed().as_secs_f64()
            );
            row.violations
                .extend(outcome.violations.into_iter().map(|v| (run, v)));
        }
        rows.push(row);
    }
    let table = render(&rows, started.elapsed());
    println!("{table}");
    let violations: usize = rows.iter().map(|r| r.violations.len()).sum();
    let missed: u32 = rows.iter().map(|r| r.missed).sum();
    // A failing assertion keeps the control plane's directory (see ControlPlane's drop).
    if violations + missed as usize > 0 {
        eprintln!(
            "logs of every run stay in {}",
            cluster.plane.dir().display()
        );
    }
    assert!(
        violations == 0 && missed == 0,
        "{violations} invariant violation(s) and {missed} run(s) whose fault point was never \
         reached; see the lines marked VIOLATION and MISSED above\n{table}"
    );
}

/// The table as markdown: fault, runs, violations, runs whose point was missed, time.
fn render(rows: &[Row], total: Duration) -> String {
    let mut out = String::from(
        "| fault | runs | violations | missed | time |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0}s |\n",
            row.fault,
            row.runs,
            row.violations.len(),
            row.missed,
            row.time.as_secs_f64()
        ));
    }
    let runs: u32 = rows.iter().map(|r| r.runs).sum();
    let violations: usize = rows.iter().map(|r| r.violations.len()).sum();
    let missed: u32 = rows.iter().map(|r| r.missed).sum();
    out.push_str(&format!(
        "| **total** | {runs} | {violations} | {missed} | {:.0}s |\n",
        total.as_secs_f64()
    ));
    out
}
