//! The rollout state machine: from where the nodes stand and the previous status, decide
//! whether a rollout starts, which nodes of the current wave are handed their release,
//! whether the wave failed, baked or is done, and what phase the policy is in.

use std::time::Duration;

use jiff::Timestamp;
use kpersist_crds::{
    BadRelease, FailurePolicy, LivePatchPolicyStatus, PlannedWave, PolicyPhase, RolloutProgress,
};

use super::exposure::Exposure;
use super::failure::{describe, failing_releases, take_back, wave_failures};
use super::nodes::{NodeFacts, Progress, Standing};
use super::settings::Settings;
use super::waves::{bake, plan, quota, wave_count};
use super::{GateVerdict, RolloutEvent};

/// Everything the state machine reads besides the nodes.
pub(crate) struct Step<'a> {
    pub settings: &'a Settings,
    pub previous: &'a LivePatchPolicyStatus,
    pub generation: Option<i64>,
    pub now: Timestamp,
    pub gate: Option<&'a GateVerdict>,
    pub have_index: bool,
    pub superseded: bool,
    /// Releases proven by an ended rollout (their failures are late failures, judged
    /// apart), and why nothing new starts while a late failure waits for a person.
    pub proven: &'a std::collections::HashSet<String>,
    pub late_pause: Option<&'a str>,
}

/// What the state machine decided.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub phase: PolicyPhase,
    pub rollout: Option<RolloutProgress>,
    /// Nodes (index into the facts) handed their target now, with the wave number to write
    /// on the node (the rollout's wave plus its offset).
    pub assigned: Vec<(usize, u32)>,
    /// The policy's `lastWave`: the highest wave number reserved for nodes so far.
    pub last_wave: u32,
    pub new_bad: Vec<BadRelease>,
    pub events: Vec<RolloutEvent>,
    pub requeue: Option<Duration>,
    /// When a release whose canary is baking is proven, so more nodes may get it.
    pub proven_in: Option<Duration>,
    pub planned: Vec<PlannedWave>,
    /// What the rollout waits for or why it stopped, for the conditions.
    pub note: Option<String>,
}

impl Outcome {
    /// Records `release` as bad for `reason`, with `nodes` nodes sent back from it.
    pub(crate) fn mark_bad(&mut self, release: String, reason: String, nodes: u32, now: Timestamp) {
        self.events.push(RolloutEvent::ReleaseMarkedBad {
            release: release.clone(),
            reason: reason.clone(),
        });
        self.events.push(RolloutEvent::RevertStarted {
            release: release.clone(),
            nodes,
        });
        self.new_bad.push(BadRelease {
            release,
            reason,
            marked_at: now.to_string(),
        });
    }
}

/// Runs one step. Marks nodes handed a release as members and nodes holding a release
/// marked bad now as needing a revert, so the caller writes what `facts` say.
pub(crate) fn run(step: &Step<'_>, facts: &mut [NodeFacts<'_>]) -> Outcome {
    let mut out = Outcome {
        phase: PolicyPhase::Idle,
        rollout: None,
        assigned: Vec::new(),
        new_bad: Vec::new(),
        events: Vec::new(),
        requeue: None,
        proven_in: None,
        planned: Vec::new(),
        note: None,
        last_wave: step.previous.last_wave,
    };
    let reverting = facts
        .iter()
        .filter(|f| matches!(f.standing, Standing::RevertNeeded | Standing::Reverting))
        .count();
    if reverting > 0 {
        // Nothing new starts until every node that took a bad release is back.
        out.phase = PolicyPhase::RollingBack;
        out.note = Some(format!(
            "{reverting} node(s) are going back to their previous release"
        ));
        return out;
    }
    let after_revert = step.previous.phase == Some(PolicyPhase::RollingBack);
    if after_revert {
        let reverted = facts.iter().filter(|f| f.reverted()).count();
        let failed = facts.iter().filter(|f| f.revert_failed()).count();
        out.events.push(RolloutEvent::RevertComplete {
            nodes: count(reverted),
            failed: count(failed),
        });
    }

    let settings = step.settings;
    let rules = &settings.waves;
    let waves = wave_count(rules);
    // Each release's first nodes are its canary, whatever wave the rollout is in.
    let canary = quota(rules, 1, population_of(facts));
    let mut exposure = Exposure::new(facts, canary, bake(rules, 1), step.now);
    let ready = startable_in_order(facts);
    let ready_count = ready.len();
    let startable: Vec<usize> = ready
        .into_iter()
        .filter(|&i| {
            // A dry run plans every node; the plan shows waves, not first exposures.
            settings.dry_run
                || facts[i]
                    .target
                    .as_ref()
                    .is_none_or(|t| exposure.admit(t.id.as_str()))
        })
        .collect();
    // Nodes waiting for their release's canary to bake: a wave that would take them is not
    // fully handed out until they are.
    let held = ready_count - startable.len();
    out.proven_in = exposure.wake_at().map(|at| until(step.now, at));
    let needing = facts
        .iter()
        .filter(|f| matches!(f.standing, Standing::Needing { .. }))
        .count();
    let members = |facts: &[NodeFacts<'_>]| {
        facts
            .iter()
            .filter(|f| matches!(f.standing, Standing::Member { .. }))
            .count()
    };
    let mut population = members(facts) + needing;

    let mut rollout = if step.superseded {
        None
    } else {
        step.previous.rollout.clone()
    };
    if rollout.is_none()
        && let Some(why) = step.late_pause
    {
        out.phase = PolicyPhase::Paused;
        out.note = Some(why.to_string());
        return out;
    }
    if rollout.is_none() {
        if startable.is_empty() || settings.dry_run {
            out.phase = terminal_phase(step.previous, after_revert);
            if needing > 0 && !settings.dry_run {
                out.note = Some(format!(
                    "{needing} node(s) need a release but none can start now \
                     (NotReady, or the release they run is not in the index)"
                ));
            }
            if settings.dry_run {
                out.planned = planned_waves(rules, 1, population, 0, facts, &startable);
                out.note = Some(format!(
                    "dry run: {} node(s) would be patched in the waves shown in plannedWaves; \
                     nothing is written to nodes",
                    startable.len()
                ));
            }
            return out;
        }
        let releases = rollout_releases(facts, &[]);
        let offset = wave_offset(step.previous, facts);
        adopt_unsettled(facts, &releases, offset);
        out.events.push(RolloutEvent::RolloutStarted {
            releases: releases.clone(),
            nodes: count(needing),
            waves,
        });
        let now = step.now.to_string();
        rollout = Some(RolloutProgress {
            releases,
            wave: 1,
            waves,
            wave_offset: offset,
            started_at: now.clone(),
            wave_started_at: now,
            ..RolloutProgress::default()
        });
    }
    let Some(mut r) = rollout else {
        return out;
    };
    r.waves = waves;
    // Set again below while the gate still cannot judge the bake.
    r.gate_inconclusive = None;
    r.wave = r.wave.clamp(1, waves);
    out.last_wave = out.last_wave.max(r.wave_offset.saturating_add(waves));
    // Kernel builds that joined the fleet during the rollout join it too, with the nodes
    // already applying their release (handed it by a decision whose status write was lost).
    r.releases = rollout_releases(facts, &r.releases);
    adopt_unsettled(facts, &r.releases, r.wave_offset);
    population = members(facts) + needing;

    if step.generation != step.previous.observed_generation {
        // An edit may have resized the waves: the current one is sized again.
        r.wave_quota = None;
    }
    if r.failed_wave.is_some() {
        if step.generation != step.previous.observed_generation {
            // The policy was edited: look at the wave again.
            r.failed_wave = None;
            r.paused_reason = None;
        } else {
            out.phase = PolicyPhase::Paused;
            out.note = r.paused_reason.clone();
            out.rollout = Some(r);
            return out;
        }
    }

    let window_open = settings.windows.is_open(step.now);
    let blocked = if settings.paused {
        Some("spec.rollout.paused is set".to_string())
    } else if let Some(why) = step.late_pause {
        Some(why.to_string())
    } else if settings.dry_run {
        Some("dryRun is set: nothing is written to nodes".to_string())
    } else if !step.have_index {
        Some("no verified repository index yet".to_string())
    } else if !window_open {
        let next = settings.windows.next_open(step.now);
        Some(match next {
            Some(at) => format!("outside every maintenance window; the next opens at {at}"),
            None => "outside every maintenance window".to_string(),
        })
    } else {
        None
    };
    let mut in_flight = facts.iter().filter(|f| f.in_flight()).count();
    let mut next = 0;
    out.phase = PolicyPhase::Progressing;
    loop {
        let wave = r.wave;
        let failures = wave_failures(facts, wave, step.proven);
        let gate_failure = match (step.gate, &r.bake_started_at) {
            (Some(GateVerdict::Fail(why)), Some(_)) => Some(why.as_str()),
            _ => None,
        };
        if failures.len() > settings.max_failures || gate_failure.is_some() {
            let reason = describe(&failures, gate_failure, settings.max_failures);
            let blamed =
                failing_releases(facts, wave, &failures, gate_failure.is_some(), step.proven);
            out.events.push(RolloutEvent::WaveFailed {
                wave,
                reason: reason.clone(),
            });
            match settings.failure_policy {
                FailurePolicy::Revert if !blamed.is_empty() => {
                    revert(step, facts, &mut out, wave, &reason, blamed);
                    return out;
                }
                _ => {
                    let why = if blamed.is_empty() {
                        format!(
                            "wave {wave} failed: {reason}; its releases were proven by an \
                             earlier rollout, so none is taken back automatically (revoking \
                             a proven release is a person's decision); edit the policy to \
                             look at the wave again"
                        )
                    } else {
                        format!(
                            "wave {wave} failed: {reason}; edit the policy to continue \
                             (for example raise maxFailures or set failurePolicy: Revert)"
                        )
                    };
                    r.failed_wave = Some(wave);
                    r.paused_reason = Some(why.clone());
                    out.phase = PolicyPhase::Paused;
                    out.note = Some(why);
                    out.rollout = Some(r);
                    return out;
                }
            }
        }

        let mut assigned = members(facts);
        // A wave's size is fixed when it starts, and once its bake has begun nobody joins
        // it: a node that joins the fleet meanwhile waits for a later wave. Nodes that
        // leave shrink it, as they shrink its share of the rollout.
        let now_wanted = quota(rules, wave, population);
        let fixed = *r.wave_quota.get_or_insert_with(|| count(now_wanted)) as usize;
        let wanted = fixed.min(now_wanted);
        let baking = r.bake_started_at.is_some();
        if blocked.is_none() && assigned < wanted && !baking {
            let room = settings.max_in_flight.saturating_sub(in_flight);
            let take = (wanted - assigned).min(room).min(startable.len() - next);
            let wave_had_nodes = facts
                .iter()
                .any(|f| matches!(f.standing, Standing::Member { wave: w, .. } if w == wave));
            if take > 0 && !wave_had_nodes {
                out.events.push(RolloutEvent::WaveStarted {
                    wave,
                    waves,
                    nodes: count(wanted - assigned),
                });
            }
            for &index in &startable[next..next + take] {
                facts[index].standing = Standing::Member {
                    wave,
                    progress: Progress::InFlight,
                };
                out.assigned
                    .push((index, r.wave_offset.saturating_add(wave)));
            }
            next += take;
            in_flight += take;
            assigned += take;
        }
        let fully_assigned = baking || assigned >= wanted || (next >= startable.len() && held == 0);
        let mut wave_nodes = facts.iter().filter_map(|f| match &f.standing {
            Standing::Member { wave: w, progress } if *w == wave => Some(progress),
            _ => None,
        });
        let has_nodes = wave_nodes.clone().next().is_some();
        let settled = fully_assigned && wave_nodes.all(|p| *p != Progress::InFlight);
        if !settled {
            r.bake_started_at = None;
            break;
        }
        if has_nodes {
            let started = r
                .bake_started_at
                .as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .unwrap_or(step.now);
            r.bake_started_at = Some(started.to_string());
            let end = started.checked_add(bake(rules, wave)).unwrap_or(started);
            let gate_pending =
                settings.gate_interval.is_some() && !matches!(step.gate, Some(GateVerdict::Pass));
            if step.now < end || gate_pending {
                out.phase = PolicyPhase::Baking;
                if let Some(GateVerdict::Inconclusive(why)) = step.gate {
                    r.gate_inconclusive = Some(why.clone());
                    out.phase = PolicyPhase::Paused;
                    out.note = Some(format!(
                        "wave {wave} holds: the Prometheus health gate cannot be evaluated \
                         ({why}); a gate that cannot judge a wave never passes it, and the \
                         wave goes on once the query answers again"
                    ));
                }
                let left = until(step.now, end);
                out.requeue = Some(match settings.gate_interval {
                    Some(interval) if !left.is_zero() => left.min(interval),
                    Some(interval) => interval,
                    None => left,
                });
                break;
            }
        }
        // Moving to the next wave is new work; a closed window only holds its nodes.
        if wave < waves && (settings.paused || settings.dry_run || step.late_pause.is_some()) {
            // The bake is over but starting the next wave is new work, which waits.
            break;
        }
        if has_nodes {
            out.events.push(RolloutEvent::WaveDone { wave, waves });
        }
        if wave >= waves {
            out.events.push(RolloutEvent::RolloutComplete {
                releases: r.releases.clone(),
                nodes: count(members(facts)),
            });
            out.phase = PolicyPhase::Complete;
            // Releases published during the rollout were held back until now: look again.
            out.requeue = Some(Duration::from_secs(1));
            finish(
                step,
                facts,
                &mut out,
                None,
                &blocked,
                in_flight,
                &startable[next..],
            );
            return out;
        }
        r.wave += 1;
        r.wave_started_at = step.now.to_string();
        r.bake_started_at = None;
        r.wave_quota = None;
    }
    finish(
        step,
        facts,
        &mut out,
        Some(r),
        &blocked,
        in_flight,
        &startable[next..],
    );
    out
}

/// The nodes a rollout counts its waves over: those handed a release of it and those that
/// still need one.
fn population_of(facts: &[NodeFacts<'_>]) -> usize {
    facts
        .iter()
        .filter(|f| {
            matches!(
                f.standing,
                Standing::Member { .. } | Standing::Needing { .. }
            )
        })
        .count()
}

/// The offset a new rollout's wave numbers carry on nodes: past every wave number an
/// earlier rollout of this policy reserved, so that a node an earlier rollout gave the same
/// release is not taken for one of this rollout. A status that never recorded one
/// (`lastWave` 0: new, or written before it existed) is made up from the wave numbers
/// settled nodes carry.
fn wave_offset(previous: &LivePatchPolicyStatus, facts: &[NodeFacts<'_>]) -> u32 {
    let recorded = previous
        .rollout
        .as_ref()
        .map_or(0, |r| r.wave_offset.saturating_add(r.waves))
        .max(previous.last_wave);
    if recorded > 0 {
        return recorded;
    }
    facts
        .iter()
        .filter(|f| !matches!(f.standing, Standing::InFlight | Standing::Reverting))
        .filter_map(|f| f.ours)
        .filter(|d| d.action == kpersist_crds::PatchAction::Apply)
        .filter_map(|d| d.wave)
        .max()
        .unwrap_or(0)
}

/// The nodes that can be handed their target now (indexes into `facts`), in rollout order.
/// Sorted by their order key held inline, so the sort does not reach into the facts for
/// every comparison; names only break the (unlikely) ties of two equal keys.
fn startable_in_order(facts: &[NodeFacts<'_>]) -> Vec<usize> {
    let mut keyed: Vec<((bool, u64), usize)> = facts
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            matches!(
                f.standing,
                Standing::Needing {
                    startable: true,
                    ..
                }
            )
        })
        .map(|(i, f)| (f.order, i))
        .collect();
    keyed.sort_unstable_by(|&(a, i), &(b, j)| {
        a.cmp(&b)
            .then_with(|| facts[i].view.name.cmp(&facts[j].view.name))
    });
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// A rollout starting while nodes already apply its releases: the previous decision
/// started it, its node writes landed and its status write did not. Counting them keeps
/// their waves from growing past their size and waiting for them.
fn adopt_unsettled(facts: &mut [NodeFacts<'_>], releases: &[String], offset: u32) {
    for f in facts.iter_mut() {
        let wave = f
            .ours
            .filter(|d| d.action == kpersist_crds::PatchAction::Apply)
            .filter(|d| d.release.as_ref().is_some_and(|r| releases.contains(&r.id)))
            .map(|d| d.wave.unwrap_or(1).saturating_sub(offset).max(1));
        if let (Standing::InFlight, Some(wave)) = (&f.standing, wave) {
            f.standing = Standing::Member {
                wave,
                progress: Progress::InFlight,
            };
        }
    }
}

/// Sets the phase for a rollout that goes on, the plan, and when to look again.
fn finish(
    step: &Step<'_>,
    facts: &[NodeFacts<'_>],
    out: &mut Outcome,
    rollout: Option<RolloutProgress>,
    blocked: &Option<String>,
    in_flight: usize,
    waiting: &[usize],
) {
    let settings = step.settings;
    let Some(mut r) = rollout else {
        out.rollout = None;
        return;
    };
    if out.phase == PolicyPhase::Progressing
        && let Some(why) = blocked
        && in_flight == 0
    {
        out.phase = PolicyPhase::Paused;
        out.note = Some(why.clone());
        if !waiting.is_empty()
            && !settings.windows.is_open(step.now)
            && let Some(at) = settings.windows.next_open(step.now)
        {
            out.requeue = Some(until(step.now, at));
        }
    }
    r.paused_reason = (out.phase == PolicyPhase::Paused)
        .then(|| out.note.clone())
        .flatten();
    if settings.dry_run {
        let assigned = facts
            .iter()
            .filter(|f| matches!(f.standing, Standing::Member { .. }))
            .count();
        let needing = facts
            .iter()
            .filter(|f| matches!(f.standing, Standing::Needing { .. }))
            .count();
        out.planned = planned_waves(
            &settings.waves,
            r.wave,
            assigned + needing,
            assigned,
            facts,
            waiting,
        );
    }
    out.rollout = Some(r);
}

/// Marks the blamed releases bad and every node holding one for revert.
fn revert(
    step: &Step<'_>,
    facts: &mut [NodeFacts<'_>],
    out: &mut Outcome,
    wave: u32,
    reason: &str,
    blamed: std::collections::BTreeSet<String>,
) {
    for release in blamed {
        let nodes = take_back(facts, &release);
        out.mark_bad(
            release,
            format!("wave {wave} failed: {reason}"),
            nodes,
            step.now,
        );
    }
    out.phase = PolicyPhase::RollingBack;
    out.rollout = None;
    out.note = Some(format!("wave {wave} failed: {reason}"));
}

/// The phase when no rollout is running.
fn terminal_phase(previous: &LivePatchPolicyStatus, after_revert: bool) -> PolicyPhase {
    let was_invalid = previous
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.reason == "InvalidPolicy");
    match previous.phase {
        _ if after_revert => PolicyPhase::Failed,
        Some(PolicyPhase::Failed) if !was_invalid => PolicyPhase::Failed,
        Some(
            PolicyPhase::Complete
            | PolicyPhase::Progressing
            | PolicyPhase::Baking
            | PolicyPhase::Paused,
        ) => PolicyPhase::Complete,
        _ => PolicyPhase::Idle,
    }
}

/// `existing` plus the targets of nodes that still need theirs or are applying them at
/// this policy's request, sorted.
fn rollout_releases(facts: &[NodeFacts<'_>], existing: &[String]) -> Vec<String> {
    let mut releases: Vec<String> = existing.to_vec();
    for f in facts {
        let wanted = match f.standing {
            Standing::Needing { .. } => true,
            Standing::InFlight => f
                .ours
                .filter(|d| d.action == kpersist_crds::PatchAction::Apply)
                .and_then(|d| d.release.as_ref())
                .zip(f.target.as_ref())
                .is_some_and(|(asked, target)| asked.id == target.id),
            _ => false,
        };
        if wanted
            && let Some(target) = &f.target
            && !releases.contains(&target.id)
        {
            releases.push(target.id.clone());
        }
    }
    releases.sort();
    releases
}

/// The waves `waiting` (indexes into `facts`, in rollout order) would be handed in: a
/// count per wave and the first few names, so the status stays small on any fleet.
fn planned_waves(
    rules: &[super::waves::WaveRule],
    first_wave: u32,
    population: usize,
    assigned: usize,
    facts: &[NodeFacts<'_>],
    waiting: &[usize],
) -> Vec<PlannedWave> {
    plan(rules, first_wave, population, assigned, waiting.len())
        .into_iter()
        .map(|(wave, nodes)| PlannedWave {
            wave,
            nodes: count(nodes.len()),
            first_nodes: waiting[nodes]
                .iter()
                .take(PlannedWave::SAMPLE)
                .map(|&i| facts[i].view.name.clone())
                .collect(),
        })
        .collect()
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(then.duration_since(now)).unwrap_or_default()
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
