//! Wave arithmetic: how many of a rollout's nodes are handed the release once each wave
//! has started (cumulative, so `percent: 50` means half of all), and how long each bakes.

use std::time::Duration;

/// How large a wave is, as written in the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaveSize {
    /// This many nodes in total once the wave has started.
    Nodes(u32),
    /// This share of the rollout's nodes in total, rounded up.
    Percent(u32),
}

/// One wave of the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WaveRule {
    pub size: WaveSize,
    pub bake: Duration,
}

/// Number of waves of a rollout: the policy's, plus a final one for the nodes left over
/// when the last wave does not say 100%.
pub(crate) fn wave_count(rules: &[WaveRule]) -> u32 {
    let covers_all = matches!(rules.last(), Some(r) if r.size == WaveSize::Percent(100));
    let count = if covers_all {
        rules.len()
    } else {
        rules.len() + 1
    };
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// How many of `population` nodes have been handed the release once wave `wave` (from 1)
/// has started. Never decreasing from one wave to the next, and all of them in the last.
pub(crate) fn quota(rules: &[WaveRule], wave: u32, population: usize) -> usize {
    if wave >= wave_count(rules) {
        return population;
    }
    rules
        .iter()
        .take(wave as usize)
        .map(|rule| match rule.size {
            WaveSize::Nodes(n) => n as usize,
            // Rounded up so that a small fleet's canary wave still has a node.
            WaveSize::Percent(p) => (population * p as usize).div_ceil(100),
        })
        .max()
        .unwrap_or(0)
        .min(population)
}

/// How long wave `wave` (from 1) bakes; the extra final wave bakes as long as the last.
pub(crate) fn bake(rules: &[WaveRule], wave: u32) -> Duration {
    let index = (wave as usize)
        .saturating_sub(1)
        .min(rules.len().saturating_sub(1));
    rules.get(index).map(|r| r.bake).unwrap_or_default()
}

/// Splits `waiting` nodes not handed the release yet (in rollout order) into the waves
/// from `first_wave` on, given that `assigned` nodes already have it: each wave with the
/// range of the waiting nodes it takes.
pub(crate) fn plan(
    rules: &[WaveRule],
    first_wave: u32,
    population: usize,
    assigned: usize,
    waiting: usize,
) -> Vec<(u32, std::ops::Range<usize>)> {
    let mut taken = assigned;
    let mut next = 0;
    let mut out = Vec::new();
    for wave in first_wave..=wave_count(rules) {
        let room = quota(rules, wave, population)
            .saturating_sub(taken)
            .min(waiting - next);
        if room > 0 {
            out.push((wave, next..next + room));
        }
        taken += room;
        next += room;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(sizes: &[WaveSize]) -> Vec<WaveRule> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| WaveRule {
                size,
                bake: Duration::from_secs(60 * (i as u64 + 1)),
            })
            .collect()
    }

    use WaveSize::{Nodes, Percent};

    #[test]
    fn default_waves_on_a_small_fleet() {
        let r = rules(&[Nodes(1), Percent(10), Percent(100)]);
        assert_eq!(wave_count(&r), 3);
        assert_eq!(quota(&r, 1, 7), 1);
        assert_eq!(quota(&r, 2, 7), 1, "10% of 7 rounds up to 1");
        assert_eq!(quota(&r, 3, 7), 7);
        assert_eq!(quota(&r, 2, 25), 3, "10% of 25 rounds up to 3");
    }

    #[test]
    fn leftover_nodes_get_a_final_wave() {
        let r = rules(&[Nodes(2), Percent(50)]);
        assert_eq!(wave_count(&r), 3);
        assert_eq!(quota(&r, 2, 10), 5);
        assert_eq!(quota(&r, 3, 10), 10);
        assert_eq!(bake(&r, 3), bake(&r, 2));
    }

    #[test]
    fn quota_never_shrinks_nor_exceeds_the_population() {
        let r = rules(&[Nodes(10), Percent(5), Nodes(3), Percent(100)]);
        assert_eq!(quota(&r, 1, 100), 10);
        assert_eq!(quota(&r, 2, 100), 10);
        assert_eq!(quota(&r, 3, 100), 10);
        assert_eq!(quota(&r, 1, 4), 4);
        assert_eq!(quota(&r, 0, 4), 0);
    }

    #[test]
    fn plan_splits_in_order() {
        let r = rules(&[Nodes(1), Percent(50), Percent(100)]);
        assert_eq!(plan(&r, 1, 5, 0, 5), vec![(1, 0..1), (2, 1..3), (3, 3..5)]);
        // One node already assigned in wave 1: the plan starts at wave 2.
        assert_eq!(plan(&r, 2, 5, 1, 4), vec![(2, 0..2), (3, 2..4)]);
    }
}
