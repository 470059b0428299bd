//! Finishing the engine's decision for writing: the controller's own `RepositoryReachable`
//! condition and `lastRepositoryCheck` merged into the status, the next wake-up, and the
//! metrics the rollout events move. No client required.

use std::collections::BTreeMap;
use std::time::Duration;

use kpersist_crds::{Condition, LivePatchPolicyStatus, PatchTimings, PolicyPhase};

use crate::engine::{NodeView, RolloutEvent};
use crate::metrics::{Metrics, ROLLOUT_COMPLETE, ROLLOUT_FAILED};

/// How often a policy is looked at when nothing asks sooner, so a lost watch event or a
/// missed requeue cannot stall a rollout for long.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Puts `condition` into `conditions`, replacing one of the same type. The transition
/// time is kept when the status did not change, else set to `now`.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    mut condition: Condition,
    previous: &[Condition],
    now: jiff::Timestamp,
) {
    let since = Condition::since(
        previous,
        &condition.type_,
        condition.status,
        &now.to_string(),
    );
    condition.last_transition_time = Some(since);
    conditions.retain(|c| c.type_ != condition.type_);
    conditions.push(condition);
}

/// Merges the repository poll's results into the status the engine produced.
pub fn merge_repository(
    status: &mut LivePatchPolicyStatus,
    previous: Option<&LivePatchPolicyStatus>,
    condition: Option<Condition>,
    verified_at: Option<jiff::Timestamp>,
    generation: Option<i64>,
    now: jiff::Timestamp,
) {
    let old_conditions = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if let Some(mut condition) = condition {
        condition.observed_generation = generation;
        set_condition(&mut status.conditions, condition, old_conditions, now);
    }
    if let Some(at) = verified_at {
        status.last_repository_check = Some(at.to_string());
    }
}

/// When to reconcile again: the soonest of the engine's wish, the next repository poll,
/// the next gate evaluation, and the resync period.
pub fn requeue_after(
    engine: Option<Duration>,
    next_poll: Duration,
    next_gate: Option<Duration>,
) -> Duration {
    [Some(RESYNC), engine, Some(next_poll), next_gate]
        .into_iter()
        .flatten()
        // A zero wait would spin; a second is soon enough for anything the engine times.
        .map(|d| d.max(Duration::from_secs(1)))
        .min()
        .unwrap_or(RESYNC)
}

/// Counts what the events say into the rollout and revert counters.
pub fn count_events(metrics: &Metrics, policy: &str, events: &[RolloutEvent]) {
    for event in events {
        match event {
            RolloutEvent::RolloutComplete { .. } => metrics.rollout_ended(policy, ROLLOUT_COMPLETE),
            RolloutEvent::WaveFailed { .. } => metrics.rollout_ended(policy, ROLLOUT_FAILED),
            RolloutEvent::RevertStarted { .. } => metrics.revert_started(policy),
            _ => {}
        }
    }
}

/// The nodes among `views` whose LivePatchNode reports a failure, counted by reason (the
/// API's spelling).
pub fn node_errors(views: &[NodeView]) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    let reasons = views
        .iter()
        .filter_map(|v| v.lpn.as_ref()?.status.as_ref()?.last_error.as_ref());
    for error in reasons {
        let reason = serde_json::to_value(error.reason).ok();
        let reason = reason
            .as_ref()
            .and_then(|r| r.as_str())
            .unwrap_or("Unknown");
        *counts.entry(reason.to_string()).or_insert(0) += 1;
    }
    counts
}

/// Each node the policy owns, with the timings of its agent's last run.
pub fn last_runs(views: &[NodeView]) -> impl Iterator<Item = (&str, Option<&PatchTimings>)> {
    views
        .iter()
        .filter(|v| v.other_policies.is_empty())
        .map(|v| {
            let status = v.lpn.as_ref().and_then(|lpn| lpn.status.as_ref());
            (v.name.as_str(), status.and_then(|s| s.timings.as_ref()))
        })
}

/// Whether the status says a bake is running, so the Prometheus gate must be evaluated:
/// phase Baking, or Paused because the gate could not judge the bake (it is asked again
/// until it answers). A rollout paused for any other reason is not judged.
pub fn baking(status: Option<&LivePatchPolicyStatus>) -> Option<String> {
    let status = status?;
    let rollout = status.rollout.as_ref()?;
    let held = status.phase == Some(PolicyPhase::Paused) && rollout.gate_inconclusive.is_some();
    if status.phase != Some(PolicyPhase::Baking) && !held {
        return None;
    }
    // The bake's start names the bake; without one, the wave start does.
    Some(
        rollout
            .bake_started_at
            .clone()
            .unwrap_or_else(|| rollout.wave_started_at.clone()),
    )
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
