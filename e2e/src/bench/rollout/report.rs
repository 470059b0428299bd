//! The rollout benchmark's figures and their table, in Markdown so it can go into
//! BENCHMARKS.md as printed. Pure.

use std::fmt::Write;
use std::time::Duration;

use super::requests::{RequestCounts, by_resource, writes_to};

/// Target: LivePatchNode spec and status writes per node per rollout, creates excluded.
pub const WRITES_PER_NODE_TARGET: f64 = 4.0;
/// Target: wall time above the theoretical minimum.
pub const OVERHEAD_TARGET: Duration = Duration::from_secs(30);

/// The resources of a node's own object, whose writes the per-node target counts.
pub const NODE_OBJECT: [&str; 2] = ["livepatchnodes", "livepatchnodes/status"];

/// Resources shown first, in this order, whether or not they moved.
const NAMED: [&str; 6] = [
    "livepatchnodes",
    "livepatchnodes/status",
    "livepatchpolicies",
    "livepatchpolicies/status",
    "events",
    "leases",
];

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// Simulated nodes.
    pub nodes: usize,
    /// Cumulative percent of each wave.
    pub waves: Vec<u32>,
    /// The policy's `maxInFlight`.
    pub max_in_flight: u32,
    /// From the policy's create to Complete (or Idle) with every node Applied.
    pub wall: Duration,
    /// The sum of the waves' timing constraints (their bakes).
    pub minimum: Duration,
    /// When each wave was first seen in the policy status, from the policy's create.
    pub wave_starts: Vec<(u32, Duration)>,
    /// API requests between the scrape before the create and the one after the end.
    pub requests: RequestCounts,
    /// LivePatchNode spec changes a watch saw meanwhile.
    pub spec_changes: u64,
    /// LivePatchNode status changes a watch saw meanwhile.
    pub status_changes: u64,
    /// LivePatchNode changes of the labels alone a watch saw meanwhile: the operator's
    /// label-only writes (its other label updates go with a spec write).
    pub label_changes: u64,
    /// How long after the end the second scrape was taken, to catch trailing writes.
    pub settle: Duration,
    /// The machine's 1-minute load average at the start and at the end of the rollout
    /// (`/proc/loadavg`), since a shared machine's load sets the pace as much as the code.
    pub load: Option<(f64, f64)>,
}

impl Measurement {
    /// Wall time above the minimum.
    pub fn overhead(&self) -> Duration {
        self.wall.saturating_sub(self.minimum)
    }

    /// LivePatchNode spec and status writes per node, creates and label-only writes
    /// excluded.
    pub fn node_writes_per_node(&self) -> f64 {
        let writes = writes_to(&self.requests, &NODE_OBJECT, false) - self.label_changes as f64;
        writes.max(0.0) / self.nodes.max(1) as f64
    }

    /// Label-only LivePatchNode writes per node.
    pub fn label_writes_per_node(&self) -> f64 {
        self.label_changes as f64 / self.nodes.max(1) as f64
    }

    /// Whether both targets are met.
    pub fn targets_met(&self) -> bool {
        self.node_writes_per_node() <= WRITES_PER_NODE_TARGET + 1e-9
            && self.overhead() <= OVERHEAD_TARGET
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The figures as Markdown tables.
pub fn render(m: &Measurement) -> String {
    let n = m.nodes.max(1) as f64;
    let mut out = String::new();
    let waves: Vec<String> = m.waves.iter().map(|p| format!("{p}%")).collect();
    let _ = writeln!(
        out,
        "Rollout overhead: {} nodes, {} waves ({}), bake 0s, maxInFlight {}\n",
        m.nodes,
        m.waves.len(),
        waves.join(", "),
        m.max_in_flight
    );
    if let Some((start, end)) = m.load {
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let _ = writeln!(
            out,
            "Machine: {cores} cores, load average {start:.1} at the start, {end:.1} at the end.\n"
        );
    }
    let writes = m.node_writes_per_node();
    let _ = writeln!(out, "| figure | measured | target | verdict |");
    let _ = writeln!(out, "|---|---:|---:|---|");
    let _ = writeln!(
        out,
        "| wall time, policy create → Complete with all nodes Applied | {} | | |",
        secs(m.wall)
    );
    let _ = writeln!(
        out,
        "| theoretical minimum (sum of wave bakes) | {} | | |",
        secs(m.minimum)
    );
    let overhead_met = m.overhead() <= OVERHEAD_TARGET;
    let _ = writeln!(
        out,
        "| overhead (wall − minimum) | {} | ≤ {} | {} |",
        secs(m.overhead()),
        secs(OVERHEAD_TARGET),
        verdict(overhead_met)
    );
    let _ = writeln!(
        out,
        "| overhead per node | {:.1} ms | | |",
        m.overhead().as_secs_f64() * 1000.0 / n
    );
    let _ = writeln!(
        out,
        "| LivePatchNode spec + status writes per node (create excluded) | {writes:.2} | ≤ {WRITES_PER_NODE_TARGET:.0} | {} |",
        verdict(writes <= WRITES_PER_NODE_TARGET + 1e-9)
    );
    let _ = writeln!(
        out,
        "| LivePatchNode label-only writes per node (a node's first state and kernel labels, then one per settled-state change) | {:.2} | | |",
        m.label_writes_per_node()
    );
    let rows = by_resource(&m.requests);
    let (reads, all_writes) = rows
        .values()
        .fold((0.0, 0.0), |(r, w), row| (r + row.reads, w + row.writes));
    let _ = writeln!(
        out,
        "| API requests per node, every resource | {:.2} reads, {:.2} writes | | |",
        reads / n,
        all_writes / n
    );
    let starts: Vec<String> = m
        .wave_starts
        .iter()
        .map(|(wave, at)| format!("wave {wave} at {}", secs(*at)))
        .collect();
    if !starts.is_empty() {
        let _ = writeln!(
            out,
            "\nWaves first seen in the policy status: {}.",
            starts.join(", ")
        );
    }

    let _ = writeln!(
        out,
        "\nAPI requests during the rollout (apiserver_request_total, after − before; the second \
         scrape {} after the end):\n",
        secs(m.settle)
    );
    let _ = writeln!(
        out,
        "| resource | reads | writes | reads/node | writes/node | 4xx/5xx |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    let others = rows.keys().filter(|r| !NAMED.contains(&r.as_str()));
    for resource in NAMED.iter().map(|r| r.to_string()).chain(others.cloned()) {
        let row = rows.get(&resource).cloned().unwrap_or_default();
        let _ = writeln!(
            out,
            "| {resource} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} |",
            row.reads,
            row.writes,
            row.reads / n,
            row.writes / n,
            row.errors
        );
    }
    let _ = writeln!(
        out,
        "| **total** | {reads:.0} | {all_writes:.0} | {:.2} | {:.2} | |",
        reads / n,
        all_writes / n
    );

    let _ = writeln!(out, "\nRequests by verb and code:\n");
    let _ = writeln!(out, "| verb | resource | code | requests | per node |");
    let _ = writeln!(out, "|---|---|---|---:|---:|");
    for (key, value) in &m.requests {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {value:.0} | {:.2} |",
            key.verb,
            key.resource,
            key.code,
            value / n
        );
    }
    let node_writes = writes_to(&m.requests, &NODE_OBJECT, false);
    let changes = (m.spec_changes + m.status_changes + m.label_changes) as f64;
    let _ = writeln!(
        out,
        "\nLivePatchNode changes a watch saw: {} of spec, {} of status ({:.2} per node), {} of \
         labels alone; writes that changed nothing: {:.0}.",
        m.spec_changes,
        m.status_changes,
        (m.spec_changes + m.status_changes) as f64 / n,
        m.label_changes,
        (node_writes - changes).max(0.0)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::rollout::requests::RequestKey;

    fn key(verb: &str, resource: &str) -> RequestKey {
        RequestKey {
            verb: verb.into(),
            resource: resource.into(),
            code: "200".into(),
        }
    }

    fn measurement(status_writes: f64, wall: u64) -> Measurement {
        Measurement {
            nodes: 10,
            waves: vec![10, 100],
            max_in_flight: 10,
            wall: Duration::from_secs(wall),
            minimum: Duration::ZERO,
            wave_starts: vec![(1, Duration::from_millis(300))],
            requests: RequestCounts::from([
                (key("PATCH", "livepatchnodes"), 10.0),
                (key("CREATE", "livepatchnodes"), 10.0),
                (key("APPLY", "livepatchnodes/status"), status_writes),
                (key("GET", "leases"), 4.0),
            ]),
            spec_changes: 10,
            status_changes: 30,
            label_changes: 0,
            settle: Duration::from_secs(2),
            load: Some((1.5, 2.0)),
        }
    }

    #[test]
    fn writes_per_node_leave_the_create_out_and_are_judged_against_the_target() {
        let m = measurement(30.0, 5);
        assert_eq!(m.node_writes_per_node(), 4.0);
        assert!(m.targets_met());
        let table = render(&m);
        assert!(table.contains("| 4.00 | ≤ 4 | met |"), "{table}");
        assert!(table.contains("writes that changed nothing: 0."), "{table}");
        assert!(table.contains("load average 1.5 at the start, 2.0 at the end"));
        let m = measurement(50.0, 5);
        assert!(!m.targets_met());
        let table = render(&m);
        assert!(table.contains("| 6.00 | ≤ 4 | MISSED |"), "{table}");
        assert!(
            table.contains("writes that changed nothing: 20."),
            "{table}"
        );
    }

    #[test]
    fn label_only_writes_are_counted_apart_from_spec_and_status() {
        let m = Measurement {
            label_changes: 15,
            ..measurement(30.0, 5)
        };
        // 10 spec + 30 status writes; the 15 label-only writes are requests of their own.
        let m = Measurement {
            requests: RequestCounts::from([
                (key("PATCH", "livepatchnodes"), 25.0),
                (key("APPLY", "livepatchnodes/status"), 30.0),
            ]),
            ..m
        };
        assert_eq!(m.node_writes_per_node(), 4.0);
        assert_eq!(m.label_writes_per_node(), 1.5);
        let table = render(&m);
        assert!(table.contains("| 1.50 | | |"), "{table}");
        assert!(
            table.contains("15 of labels alone; writes that changed nothing: 0."),
            "{table}"
        );
    }

    #[test]
    fn overhead_beyond_the_target_is_a_miss() {
        let m = measurement(30.0, 31);
        assert!(!m.targets_met());
        assert!(render(&m).contains("| 31.0 s | ≤ 30.0 s | MISSED |"));
    }

    #[test]
    fn every_named_resource_has_a_row_even_without_requests() {
        let table = render(&measurement(30.0, 5));
        for resource in NAMED {
            assert!(table.contains(&format!("| {resource} |")), "{resource}");
        }
        assert!(
            table.contains("| leases | 4 | 0 | 0.40 | 0.00 | 0 |"),
            "{table}"
        );
    }
}
