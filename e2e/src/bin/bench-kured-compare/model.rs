//! The reboot model of kured at its defaults, and the scaling of kpersist's measured
//! rollout. Pure: times are seconds as `f64`, randomness comes from a seed.
//!
//! kured (kubereboot/kured, `cmd/kured`): every node's daemon checks its reboot sentinel
//! once per `--period` (default 1h; the first check comes within a minute of the pod's
//! start), and reboots only while holding one of `--concurrency` (default 1) slots of a
//! lock kept on its DaemonSet. A node that finds the lock taken waits for its next check.
//! The holder cordons, drains, reboots, and releases the lock when its daemon starts again
//! with no reboot needed.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

/// kured's settings and the time one node holds the lock.
#[derive(Clone, Copy, Debug)]
pub struct Kured {
    /// `--period`, seconds between a node's sentinel checks.
    pub period: f64,
    /// `--concurrency`, nodes rebooting at once.
    pub concurrency: usize,
    /// Seconds a node holds the lock: cordon, drain, reboot, Ready, kured pod back.
    pub reboot: f64,
}

/// When each node's checks fall within the period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phases {
    /// Uniform over the whole period: the kured pods started at unrelated times.
    Spread,
    /// Within the first minute: the DaemonSet was installed or updated at once, so every
    /// pod's first check (and every later one) falls in the same minute of the hour.
    Aligned,
}

/// Seconds until every one of `nodes` nodes, all needing a reboot at time 0, has rebooted.
pub fn kured_wall(nodes: usize, kured: Kured, phases: Phases, seed: u64) -> f64 {
    let mut rng = SplitMix(seed);
    let spread = match phases {
        Phases::Spread => kured.period,
        Phases::Aligned => 60.0_f64.min(kured.period),
    };
    // Pending nodes ordered by the phase of their checks; ids break ties.
    let mut pending: BTreeSet<(Phase, usize)> = (0..nodes)
        .map(|id| (Phase(rng.unit() * spread), id))
        .collect();
    // When each lock slot is next free.
    let mut slots: BinaryHeap<Reverse<Phase>> = (0..kured.concurrency.max(1))
        .map(|_| Reverse(Phase(0.0)))
        .collect();
    let mut end: f64 = 0.0;
    while let Some(Reverse(Phase(free))) = slots.pop() {
        // The first pending node to check at or after `free` takes the slot.
        let within = free.rem_euclid(kured.period);
        let cycle_start = free - within;
        let next = pending
            .range((Phase(within), 0)..)
            .next()
            .map(|&(Phase(p), id)| (cycle_start + p, p, id))
            .or_else(|| {
                pending
                    .iter()
                    .next()
                    .map(|&(Phase(p), id)| (cycle_start + kured.period + p, p, id))
            });
        let Some((check, phase, id)) = next else {
            break;
        };
        pending.remove(&(Phase(phase), id));
        let done = check + kured.reboot;
        end = end.max(done);
        slots.push(Reverse(Phase(done)));
    }
    end
}

/// The mean of [`kured_wall`] over `runs` seeds.
pub fn kured_wall_mean(nodes: usize, kured: Kured, phases: Phases, runs: u64) -> f64 {
    let runs = runs.max(1);
    (0..runs)
        .map(|seed| kured_wall(nodes, kured, phases, seed))
        .sum::<f64>()
        / runs as f64
}

/// The floor for any phases: the lock never idle, `ceil(nodes / concurrency)` reboots one
/// after another.
pub fn kured_wall_floor(nodes: usize, kured: Kured) -> f64 {
    nodes.div_ceil(kured.concurrency.max(1)) as f64 * kured.reboot
}

/// kpersist's rollout at `nodes` nodes, computed from one measured run.
#[derive(Clone, Copy, Debug)]
pub struct Kpersist {
    /// Nodes of the measured rollout.
    pub measured_nodes: usize,
    /// Its wall time, policy applied to Complete, with zero bake: the control-plane cost.
    pub measured_wall: f64,
    /// The sum of the bakes of the wave plan being modelled.
    pub bakes: f64,
    /// The policy's `maxInFlight`.
    pub max_in_flight: usize,
    /// Seconds one node spends downloading and applying on a real kernel.
    pub node_apply: f64,
}

/// Wall time for `nodes`: the measured control-plane cost scaled linearly with the fleet,
/// plus the kernel work in batches of `maxInFlight` one after another, plus the bakes.
/// Conservative: the measured run already holds its own (simulated) apply time.
pub fn kpersist_wall(nodes: usize, k: Kpersist) -> f64 {
    let scale = nodes as f64 / k.measured_nodes.max(1) as f64;
    let batches = nodes.div_ceil(k.max_in_flight.max(1)) as f64;
    k.measured_wall * scale + batches * k.node_apply + k.bakes
}

/// A total order on the finite times the model makes.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Phase(f64);

impl Eq for Phase {}

impl PartialOrd for Phase {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Phase {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// SplitMix64: a small seeded generator, enough to place check phases.
struct SplitMix(u64);

impl SplitMix {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Kured = Kured {
        period: 3600.0,
        concurrency: 1,
        reboot: 300.0,
    };

    #[test]
    fn one_node_reboots_once_right_after_its_first_check() {
        let wall = kured_wall(1, DEFAULTS, Phases::Spread, 7);
        assert!((300.0..3900.0).contains(&wall), "{wall}");
    }

    #[test]
    fn aligned_checks_give_one_reboot_per_period() {
        for nodes in [2, 10, 100] {
            let wall = kured_wall(nodes, DEFAULTS, Phases::Aligned, 1);
            let expected = (nodes - 1) as f64 * 3600.0 + 300.0;
            assert!(
                (wall - expected).abs() <= 60.0,
                "{nodes}: {wall} vs {expected}"
            );
        }
    }

    #[test]
    fn spread_checks_lie_between_the_floor_and_one_reboot_per_period() {
        for nodes in [100, 1000, 10_000] {
            let spread = kured_wall_mean(nodes, DEFAULTS, Phases::Spread, 3);
            let floor = kured_wall_floor(nodes, DEFAULTS);
            let aligned = kured_wall(nodes, DEFAULTS, Phases::Aligned, 1);
            assert!(
                floor <= spread && spread < aligned,
                "{nodes}: {floor} {spread} {aligned}"
            );
        }
        // With many nodes pending, someone checks soon after each release: the lock is
        // almost never idle.
        let big = kured_wall_mean(10_000, DEFAULTS, Phases::Spread, 2);
        assert!(big < 1.2 * kured_wall_floor(10_000, DEFAULTS), "{big}");
    }

    #[test]
    fn more_slots_never_take_longer_and_enough_slots_take_one_round() {
        let one = kured_wall(500, DEFAULTS, Phases::Spread, 3);
        let four = kured_wall(
            500,
            Kured {
                concurrency: 4,
                ..DEFAULTS
            },
            Phases::Spread,
            3,
        );
        assert!(four < one, "{four} !< {one}");
        let all = kured_wall(
            500,
            Kured {
                concurrency: 500,
                ..DEFAULTS
            },
            Phases::Spread,
            3,
        );
        assert!(all <= 3600.0 + 300.0, "{all}");
    }

    #[test]
    fn kpersist_scales_linearly_and_adds_batches_and_bakes() {
        let k = Kpersist {
            measured_nodes: 1000,
            measured_wall: 40.0,
            bakes: 1200.0,
            max_in_flight: 10,
            node_apply: 2.0,
        };
        assert_eq!(kpersist_wall(1000, k), 40.0 + 100.0 * 2.0 + 1200.0);
        assert_eq!(kpersist_wall(10_000, k), 400.0 + 1000.0 * 2.0 + 1200.0);
        assert_eq!(kpersist_wall(5, k), 0.2 + 2.0 + 1200.0);
    }
}
