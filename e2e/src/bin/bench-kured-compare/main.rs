//! `bench-kured-compare`: wall time and reboots to bring 100, 1,000 and 10,000 nodes to a
//! fixed kernel, kured at its defaults next to kpersist. kured's figures are computed from
//! its documented behaviour (see `model.rs`); kpersist's are computed from the rollout
//! benchmark's measured 1,000-node run and the real-kernel apply time. Every input is a
//! flag, and the output states the assumptions. Run it with `e2e/bench/kured-compare.sh`.

mod model;

use clap::Parser;

use crate::model::{Kpersist, Kured, Phases, kpersist_wall, kured_wall_floor, kured_wall_mean};

/// Reboot-based patching (kured at its defaults) against live patching (kpersist).
#[derive(Parser, Debug)]
struct Args {
    /// Fleet sizes.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    nodes: Vec<usize>,
    /// Minutes one kured reboot holds the lock: cordon, drain, reboot, Ready, kured back.
    #[arg(long, default_value_t = 5.0)]
    reboot_minutes: f64,
    /// kured `--period` in minutes (its default: 60).
    #[arg(long, default_value_t = 60.0)]
    period_minutes: f64,
    /// kured `--concurrency` (its default: 1).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Seeds averaged for kured with spread check phases.
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Measured kpersist rollout wall time, seconds, policy applied to Complete, zero bake
    /// (from `e2e/bench/rollout.sh` at --rollout-nodes nodes).
    #[arg(long)]
    rollout_seconds: f64,
    /// Nodes of that measured rollout.
    #[arg(long, default_value_t = 1000)]
    rollout_nodes: usize,
    /// Seconds a node spends fetching and applying on a real kernel (download plus the
    /// kernel suite's "download end to Applied").
    #[arg(long, default_value_t = 1.0)]
    node_apply_seconds: f64,
    /// The policy's maxInFlight (its default: 10).
    #[arg(long, default_value_t = 10)]
    max_in_flight: usize,
    /// Sum of the bakes of the modelled wave plan, minutes (the default plan: canary 10m,
    /// 10% 10m, rest 0s).
    #[arg(long, default_value_t = 20.0)]
    bake_minutes: f64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.rollout_seconds <= 0.0 || args.reboot_minutes <= 0.0 || args.period_minutes <= 0.0 {
        eprintln!(
            "bench-kured-compare: --rollout-seconds, --reboot-minutes and --period-minutes must \
             be positive (got {}, {}, {})",
            args.rollout_seconds, args.reboot_minutes, args.period_minutes
        );
        return std::process::ExitCode::FAILURE;
    }
    print!("{}", render(&args));
    std::process::ExitCode::SUCCESS
}

fn render(args: &Args) -> String {
    let kured = Kured {
        period: args.period_minutes * 60.0,
        concurrency: args.concurrency.max(1),
        reboot: args.reboot_minutes * 60.0,
    };
    let zero_bake = Kpersist {
        measured_nodes: args.rollout_nodes,
        measured_wall: args.rollout_seconds,
        bakes: 0.0,
        max_in_flight: args.max_in_flight.max(1),
        node_apply: args.node_apply_seconds,
    };
    let default_plan = Kpersist {
        bakes: args.bake_minutes * 60.0,
        ..zero_bake
    };
    let mut out = String::new();
    out.push_str(
        "| nodes | kured reboots | kured wall, check phases spread (computed) \
         | kured wall, phases aligned (computed) | kpersist reboots \
         | kpersist wall, zero bake (computed) | kpersist wall, default waves (computed) |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for &n in &args.nodes {
        out.push_str(&format!(
            "| {} | {} | {} | {} | 0 | {} | {} |\n",
            thousands(n),
            thousands(n),
            human(kured_wall_mean(n, kured, Phases::Spread, args.seeds)),
            human(kured_wall_mean(n, kured, Phases::Aligned, 1)),
            human(kpersist_wall(n, zero_bake)),
            human(kpersist_wall(n, default_plan)),
        ));
    }
    let measured = if args.rollout_nodes == 1000 {
        "1,000".to_string()
    } else {
        thousands(args.rollout_nodes)
    };
    out.push_str(&format!(
        "\nMeasured input: kpersist rollout of {measured} simulated nodes through zero-bake waves \
         on the local API server, {:.1} s from policy apply to Complete (e2e/bench/rollout.sh).\n\
         Every cell above is computed from that figure and the assumptions below.\n\n\
         Assumptions:\n\
         - Every node needs the fix at time 0 (a kernel CVE); nothing else blocks kured (no \
           alerts, no blocking pods, reboot window all day: its defaults).\n\
         - kured: --concurrency={} --period={}m (defaults 1 and 60m); a node that finds the lock \
           taken waits for its next check. One reboot holds the lock {} min (cordon, drain, \
           reboot, node Ready, kured pod back to release the lock); set with --reboot-minutes.\n\
         - Phases spread: each node's kured pod started at an unrelated time, so checks are \
           uniform over the hour (mean of {} seeds; the floor, the lock never idle, is {} for \
           {} nodes). Phases aligned: the DaemonSet was rolled out at once, so \
           every pod checks in the same minute of each hour and one node reboots per period.\n\
         - kpersist: no reboot; wall(N) = measured wall * N/{} (control plane, linear) + \
           ceil(N/maxInFlight={}) * {:.1} s per node on a real kernel + bakes. Zero bake: no \
           bake; default waves: the policy's default plan (canary 1 node, 10%, rest) with {} min \
           of bake in all. Linear scaling is an assumption: only {measured} nodes were run.\n",
        args.rollout_seconds,
        kured.concurrency,
        args.period_minutes,
        args.reboot_minutes,
        args.seeds,
        human(kured_wall_floor(
            args.nodes.last().copied().unwrap_or(0),
            kured
        )),
        thousands(args.nodes.last().copied().unwrap_or(0)),
        args.rollout_nodes,
        args.max_in_flight,
        args.node_apply_seconds,
        args.bake_minutes,
    ));
    out
}

/// 12345 as "12,345".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds as the largest two units that matter: "42 s", "12 min 30 s", "5 h 20 min",
/// "34 d 17 h".
fn human(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) => format!("{m} min {} s", s % 60),
        (0, _, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(thousands(100), "100");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(human(42.4), "42 s");
        assert_eq!(human(750.0), "12 min 30 s");
        assert_eq!(human(5.0 * 3600.0 + 20.0 * 60.0), "5 h 20 min");
        assert_eq!(human(34.0 * 86_400.0 + 17.0 * 3600.0 + 59.0), "34 d 17 h");
    }

    #[test]
    fn the_table_has_a_row_per_fleet_and_says_what_is_measured() {
        let args = Args::try_parse_from(["x", "--rollout-seconds", "45"]).unwrap();
        let text = render(&args);
        assert_eq!(text.lines().filter(|l| l.starts_with("| 1")).count(), 3);
        assert!(text.contains("| 10,000 | 10,000 |"), "{text}");
        assert!(text.contains("45.0 s from policy apply"), "{text}");
        assert!(text.contains("--period=60m"), "{text}");
    }
}
