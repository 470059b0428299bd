//! The rollout engine: a pure function from a policy, the nodes it selects, the verified
//! repository index and the current time to what the controller should write (node
//! `spec.desired`, the policy status) and announce (Events). No client, clock or randomness.
//!
//! # Contract
//!
//! The controller calls [`decide`] on every change of the policy, of a selected node or of
//! its LivePatchNode, on each repository poll and when [`Decision::requeue_after`] elapses.
//! It writes every entry of [`Decision::desired`], replaces the policy status with
//! [`Decision::status`] (merging its own `RepositoryReachable` condition and
//! `lastRepositoryCheck`, which the engine copies through unchanged), and records each
//! [`RolloutEvent`] as a Kubernetes Event. Node writes go first, then the status, except
//! when the decision marks a release bad ([`Decision::marks_releases_bad`]): then the
//! status goes first, so the bad release is recorded before any node is sent back from it.
//!
//! State lives in the API objects only: the policy status (`rollout`, `badReleases`,
//! `targets`, `lastWave`) and each node's `spec.desired`, which records the release, the
//! wave that gave the node its release and the release it ran before (the revert target).
//! The status holds counts, never a list of nodes, so its size does not grow with the
//! fleet: which nodes a rollout has handed a release is read from the nodes. Each rollout
//! numbers its waves on nodes past the earlier rollouts' (`rollout.waveOffset`, reserved in
//! `lastWave`), so a node an earlier rollout gave the same release is told apart from one
//! of this rollout. An operator restarted at any
//! point, or a controller whose caches lag behind its own writes, gets the same decision
//! from the same objects: assignment follows a fixed node order, so a repeated decision
//! repeats the same writes.
//!
//! # Rules
//!
//! - **Targets.** A node's target is the newest release for its exact kernel build in the
//!   policy's channel, published at least `delay` ago (or exactly `pinnedVersion`), not in
//!   `badReleases` and not in the node's `refusedReleases`. A node without one, or whose
//!   agent reports no livepatch support, is Unsupported, not failed. Without a pin a node
//!   already running a newer release is left alone.
//! - **Waves.** The rollout's nodes are the selected nodes that need their target when it
//!   starts, plus those that join later. After wave *k* has started, `quota(k)` of them have
//!   been handed their release: `nodes`, or `percent` of them rounded up, cumulative and never
//!   decreasing; a final wave takes whatever the last wave left. Nodes are taken in a fixed
//!   order (a hash of policy, target release and node name; nodes that reported a problem
//!   of their own within a day go last), skipping nodes that are NotReady. A node is done
//!   when its agent reports `Applied` with the asked release for the current generation. A
//!   wave is done when every node of it is done or failed (failures within `maxFailures`)
//!   and `bake` has passed since the last of them settled (`bakeStartedAt`), with a passing
//!   Prometheus verdict when the policy has a gate; only then does the next wave start.
//!   A gate that cannot judge the bake (inconclusive) holds the wave: phase Paused,
//!   `gateInconclusive` set, nothing blamed, until the gate answers pass or fail.
//! - **Failures.** Counted per wave among the nodes it was handed: a failed apply (the
//!   agent's reason, e.g. TransitionStalled, NewTaint, KernelWarning), CrashSuspected, and,
//!   with `health.nodeReady`, a node that applied and then went NotReady. A failed gate fails
//!   the wave outright. More than `maxFailures` fails the wave: with `Revert` the releases the
//!   failed nodes were given are marked bad (with a gate failure, every release of the wave)
//!   and every node this policy gave one of them gets `Revert` to the release its
//!   `spec.desired.previous` recorded (none: unload); nothing new starts until all of them
//!   settled, then the phase is Failed. With `Pause` the rollout stops (`failedWave`) until
//!   the policy is edited.
//! - **maxInFlight** bounds the nodes with an unfinished apply (asked and not yet observed,
//!   downloading or applying). Reverts are not bounded: going back to a release that ran
//!   before is the safe direction and should not wait.
//! - **Maintenance windows** gate only handing out releases; bakes, wave changes and reverts
//!   go on outside them. `paused` stops handing out releases and moving to the next wave.
//!   `dryRun` writes nothing to any node and fills `plannedWaves` (a count per wave and
//!   the first ten names).
//! - **Nodes selected by two policies** are patched by the older policy (the controller
//!   tells the newer one, through `other_policies`); the newer counts them as `conflicted`
//!   and names them in its Degraded condition.
//! - **Nodes joining and leaving.** A node that joins and needs its target takes its place
//!   in the order; one that leaves is forgotten. A wave left with no node (all left, or
//!   rounding gave it none) is done at once, without a bake. Only nodes with a
//!   LivePatchNode (a running agent) are written to. A node whose apply failed is not asked
//!   again until its target changes.
//! - **No verified index** (`repository: None`): no node is handed a release; targets are
//!   taken from the previous status, and failures and reverts are handled as usual.
//! - **An invalid policy** ([`crate::validate::validate`]) gets phase Failed with Ready and
//!   Progressing False, reason InvalidPolicy; nothing is written, the rollout state is kept.
//! - **Conditions.** Ready is True when every node that can be patched runs its target
//!   (phase Idle or Complete), so `kubectl wait --for=condition=Ready` waits for a rollout.
//!   Progressing is True while waves or reverts run. Degraded is True after a failed wave,
//!   a failed revert, nodes selected twice, or failed nodes.
//! - **Waking up.** [`Decision::requeue_after`] is the earliest of: the end of the current
//!   bake (or the gate's interval while a gate verdict is awaited), the next window opening
//!   when nodes wait for one, and a newer release clearing `delay`.
//!
//! # A newer release mid-rollout: finish, then roll the newer one out
//!
//! A rollout keeps the releases it started with (`status.rollout.releases`) until its last
//! wave is done; a release published meanwhile starts its own rollout, from the canary wave,
//! right after. Superseding instead would restart the canary on every publication, so a
//! channel that publishes more often than a rollout takes would never get past its first
//! waves; and every node handed the running release gets one that already passed the
//! earlier waves' bakes. Kernel builds that join mid-rollout join it with their newest
//! release. The rollout does start over when one of its releases is no longer offered: the
//! pin changed to another version, or the release left the channel or the index.

mod events;
mod exposure;
mod failure;
mod late;
mod nodes;
mod order;
mod retry;
mod rollout;
mod settings;
mod status;
mod targets;
mod waves;
pub(crate) mod window;

use std::collections::HashSet;
use std::time::Duration;

use kpersist_crds::{
    Condition, ConditionStatus, DesiredPatch, LivePatchNode, LivePatchPolicy,
    LivePatchPolicyStatus, PatchAction, PolicyPhase,
};
use kpersist_kmod::repository::Index;

use crate::validate::FieldError;
pub use events::RolloutEvent;
use nodes::{Context, RunningRollout, Standing, classify, kernel_of};
pub(crate) use nodes::{digest_ca_bundle, holds_desired};
use rollout::{Outcome, Step};
use settings::Settings;
pub(crate) use settings::repository_access;
use targets::Targets;

/// The verified repository index a policy reads, with the URL module paths are relative to.
#[derive(Clone, Debug)]
pub struct RepositoryView {
    /// Base URL of the repository (the directory holding `index.json`).
    pub base_url: String,
    /// The index, already checked against the policy's trusted keys.
    pub index: Index,
}

/// One node the policy's selector matches, as the controller sees it.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// Node name (the LivePatchNode has the same name).
    pub name: String,
    /// Whether the Node's `Ready` condition is True.
    pub ready: bool,
    /// Since when the Node has not been Ready (its Ready condition's last transition);
    /// `None` while it is Ready or when the time is unknown.
    pub not_ready_since: Option<jiff::Timestamp>,
    /// The Node is cordoned or being deleted: it is handed nothing, and its NotReady is
    /// nobody's problem.
    pub leaving: bool,
    /// Kernel release from the Node object, used until the agent reports its own.
    pub kernel_release: Option<String>,
    /// Kernel build id, when known outside the LivePatchNode.
    pub build_id: Option<String>,
    /// The node's LivePatchNode with metadata, spec and status; `None` while no agent runs.
    /// Shared with the controller's store, so building the views of a large fleet on every
    /// reconcile copies no LivePatchNode.
    pub lpn: Option<std::sync::Arc<LivePatchNode>>,
    /// Older policies whose selector also matches this node, oldest first. The oldest
    /// policy selecting a node owns it; the others leave it alone and report the conflict.
    pub other_policies: Vec<String>,
}

/// The Prometheus gate's result for the current bake, computed by the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateVerdict {
    /// Every sample held.
    Pass,
    /// The condition did not hold; the text says which sample and value.
    Fail(String),
    /// The query could not be evaluated (Prometheus unreachable, an error, no samples):
    /// the wave neither passes nor fails, it holds until the gate can judge it.
    Inconclusive(String),
}

/// Everything one decision is made from.
#[derive(Clone, Debug)]
pub struct EngineInput<'a> {
    /// The policy with its metadata (name, generation), spec and current status.
    pub policy: &'a LivePatchPolicy,
    /// The nodes the policy's selector matches, in any order.
    pub nodes: &'a [NodeView],
    /// The verified index, or `None` when none has been fetched and verified yet.
    pub repository: Option<&'a RepositoryView>,
    /// The gate's verdict for the bake in progress; `None` when there is no gate or it has
    /// not been evaluated for this bake yet.
    pub gate: Option<GateVerdict>,
    /// The time the decision is made at.
    pub now: jiff::Timestamp,
}

/// What the controller should do.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// `spec.desired` to write per node name; only nodes whose desired changes are listed.
    pub desired: Vec<(String, Option<DesiredPatch>)>,
    /// The policy status to write.
    pub status: LivePatchPolicyStatus,
    /// Events to record on the policy, in order.
    pub events: Vec<RolloutEvent>,
    /// When to decide again even if nothing changes (a bake ends, a window opens).
    pub requeue_after: Option<Duration>,
}

impl Decision {
    /// Whether this decision's status lists a bad release that `current` (the status the
    /// decision was made from) does not. The controller then writes the status before any
    /// node: the `Revert` writes of the same decision may be the only other record of a
    /// bad release, and a node that leaves the cluster takes its record with it, so the
    /// status must not be the write that can still be lost once the nodes were written.
    pub fn marks_releases_bad(&self, current: Option<&LivePatchPolicyStatus>) -> bool {
        let known: HashSet<&str> = current
            .map(|s| s.bad_releases.iter().map(|b| b.release.as_str()).collect())
            .unwrap_or_default();
        self.status
            .bad_releases
            .iter()
            .any(|b| !known.contains(b.release.as_str()))
    }
}

/// Decides what to write and announce for one policy. Pure: same input, same decision.
pub fn decide(input: &EngineInput) -> Decision {
    let policy = input.policy;
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let generation = policy.metadata.generation;
    let previous = policy.status.clone().unwrap_or_default();
    let settings = match Settings::read(&policy.spec) {
        Ok(settings) => settings,
        Err(errors) => return invalid(input, previous, &errors),
    };
    let retries = retry::retries(
        &policy.spec.rollout.retry_releases,
        &previous.retried_releases,
        &previous.bad_releases,
        input.now,
    );
    let mut bad_releases: Vec<_> = previous
        .bad_releases
        .iter()
        .filter(|b| !retries.cleared.contains(&b.release))
        .cloned()
        .collect();
    let on_nodes =
        failure::bad_releases_on_nodes(name, input.nodes, &bad_releases, &retries, input.now);
    bad_releases.extend(on_nodes);
    let yanked = failure::yanked(input.repository, &bad_releases);
    let bad: HashSet<String> = bad_releases
        .iter()
        .map(|b| b.release.clone())
        .chain(yanked.iter().map(|(release, _)| release.clone()))
        .collect();
    let targets = Targets::new(
        input.repository,
        &settings,
        &bad,
        previous.rollout.as_ref(),
        &previous.targets,
        input.now,
        input.nodes.iter().filter_map(kernel_of),
    );
    let rollout = previous.rollout.as_ref().filter(|_| !targets.superseded);
    let ctx = Context {
        policy: name,
        bad: &bad,
        rollout: rollout.map(|r| RunningRollout {
            // A status without a wave count still covers the waves it reached.
            waves: r.waves.max(r.wave),
            offset: r.wave_offset,
            releases: r.releases.as_slice(),
        }),
        pinned: settings.pinned_version.is_some(),
        have_index: input.repository.is_some(),
        now: input.now,
        node_ready: settings.node_ready,
        not_ready_grace: settings.not_ready_grace,
        node_deadline: settings.node_deadline,
    };
    let mut facts: Vec<_> = input
        .nodes
        .iter()
        .map(|view| classify(view, &targets, &ctx))
        .collect();
    let late = late::judge(
        &facts,
        &previous,
        &bad,
        settings.late_failure_policy,
        generation,
        input.now,
    );
    let mut revoked = Vec::new();
    // A yanked release is offered to no one (it is in `bad`); it is recorded as bad only
    // where this policy gave it to nodes, which it now sends back.
    for (release, reason) in yanked {
        let nodes = failure::take_back(&mut facts, &release);
        if nodes > 0 {
            let reason = format!("yanked from the repository: {reason}");
            revoked.push((release, reason, nodes));
        }
    }
    for release in &late.revoke {
        let nodes = failure::take_back(&mut facts, release);
        let reason = format!(
            "late failure, revoked by lateFailurePolicy: Revert ({})",
            late.listed
                .iter()
                .rev()
                .find(|l| &l.release == release)
                .map_or_else(String::new, |l| format!("{}: {}", l.node, l.evidence))
        );
        revoked.push((release.clone(), reason, nodes));
    }
    let step = Step {
        settings: &settings,
        previous: &previous,
        generation,
        now: input.now,
        gate: input.gate.as_ref(),
        have_index: input.repository.is_some(),
        superseded: targets.superseded,
        proven: &late.proven,
        late_pause: late.pause.as_deref(),
    };
    let mut outcome = rollout::run(&step, &mut facts);
    for l in &late.found {
        outcome.events.push(RolloutEvent::LateFailure {
            node: l.node.clone(),
            release: l.release.clone(),
            evidence: l.evidence.clone(),
        });
    }
    for release in &retries.cleared {
        outcome.events.push(RolloutEvent::BadReleaseCleared {
            release: release.clone(),
        });
    }
    for (release, reason, nodes) in revoked {
        outcome.mark_bad(release, reason, nodes, input.now);
    }
    pause_events(&previous, &mut outcome);

    let desired = if settings.dry_run {
        Vec::new()
    } else {
        node_writes(name, &settings, &targets, &facts, &outcome, input.now)
    };

    let counts = status::count_nodes(&facts, settings.pinned_version.is_some());
    let kernel_targets = targets.kernel_targets();
    if let Some(r) = outcome.rollout.as_mut() {
        let members = facts
            .iter()
            .filter(|f| matches!(f.standing, Standing::Member { .. }))
            .count();
        r.assigned = u32::try_from(members).unwrap_or(u32::MAX);
    }
    let conditions = status::conditions(
        &status::ConditionInput {
            phase: outcome.phase,
            note: outcome.note.as_deref(),
            wave: outcome.rollout.as_ref().map(|r| (r.wave, r.waves)),
            facts: &facts,
            counts: &counts,
            have_targets: !kernel_targets.is_empty(),
            have_index: input.repository.is_some(),
            failed_wave: outcome
                .rollout
                .as_ref()
                .is_some_and(|r| r.failed_wave.is_some()),
            late_pause: late.pause.as_deref(),
        },
        &previous.conditions,
        generation,
        input.now,
    );
    bad_releases.extend(outcome.new_bad.iter().cloned());
    let until = |at: jiff::Timestamp| Duration::try_from(at.duration_since(input.now)).ok();
    let requeue_after = [
        outcome.requeue,
        // During a bake the wave itself holds nodes back, and the bake's end wakes us.
        outcome
            .proven_in
            .filter(|_| outcome.phase == PolicyPhase::Progressing),
        targets.next_eligible.and_then(until),
        facts.iter().filter_map(|f| f.wake_at).min().and_then(until),
    ]
    .into_iter()
    .flatten()
    .min();
    let rollout_ended = outcome.events.iter().any(|e| {
        matches!(
            e,
            RolloutEvent::RolloutComplete { .. } | RolloutEvent::RevertComplete { .. }
        )
    });
    let last_rollout_end = if rollout_ended {
        Some(input.now.to_string())
    } else {
        previous.last_rollout_end.clone()
    };
    let status = LivePatchPolicyStatus {
        phase: Some(outcome.phase),
        conditions,
        wave_summary: outcome
            .rollout
            .as_ref()
            .map(|r| format!("{}/{}", r.wave, r.waves)),
        rollout: outcome.rollout,
        patched_summary: Some(format!("{}/{}", counts.patched, counts.total)),
        nodes: counts,
        target_summary: status::target_summary(kernel_targets.iter().map(|t| t.version)),
        targets: kernel_targets,
        bad_releases,
        retried_releases: retries.record,
        last_wave: outcome.last_wave,
        last_rollout_end,
        late_failures: late.listed,
        planned_waves: outcome.planned,
        last_repository_check: previous.last_repository_check.clone(),
        repository_serial: previous.repository_serial,
        observed_generation: generation,
    };
    Decision {
        desired,
        status,
        events: outcome.events,
        requeue_after,
    }
}

/// The `spec.desired` writes: the nodes handed their target now and the nodes holding a
/// bad release, each only when its LivePatchNode does not say so already.
fn node_writes(
    policy: &str,
    settings: &Settings,
    targets: &Targets<'_>,
    facts: &[nodes::NodeFacts<'_>],
    outcome: &Outcome,
    now: jiff::Timestamp,
) -> Vec<(String, Option<DesiredPatch>)> {
    let mut writes = Vec::new();
    for &(index, wave) in &outcome.assigned {
        let f = &facts[index];
        let Some(release) = f.target.as_ref().and_then(|t| t.release.clone()) else {
            continue;
        };
        let previous = f.status.and_then(|s| s.applied.as_ref()).and_then(|a| {
            targets
                .release_by_id(&a.id)
                .or_else(|| nodes::recorded_release(f.view, &a.id).cloned())
        });
        writes.push((
            f,
            DesiredPatch {
                policy: policy.to_string(),
                action: PatchAction::Apply,
                release: Some(release),
                previous,
                wave: Some(wave),
                asked_at: Some(now.to_string()),
                transition_timeout: settings.transition_timeout.clone(),
                kmsg_checks: settings.kmsg_checks,
                probation: settings.probation.clone(),
                replace_foreign: settings.replace_foreign,
                repository: settings.repository.clone(),
            },
        ));
    }
    for f in facts {
        if let (Standing::RevertNeeded, Some(ours)) = (&f.standing, f.ours) {
            writes.push((f, failure::revert_of(ours, settings, now)));
        }
    }
    writes
        .into_iter()
        .filter(|(f, desired)| !holds_desired(f.view, desired))
        .map(|(f, desired)| (f.view.name.clone(), Some(desired)))
        .collect()
}

/// RolloutPaused and RolloutResumed when the phase enters or leaves Paused.
fn pause_events(previous: &LivePatchPolicyStatus, outcome: &mut Outcome) {
    let was_paused = previous.phase == Some(PolicyPhase::Paused);
    let paused = outcome.phase == PolicyPhase::Paused;
    if paused && !was_paused {
        outcome.events.push(RolloutEvent::RolloutPaused {
            reason: outcome.note.clone().unwrap_or_default(),
        });
    } else if was_paused
        && matches!(
            outcome.phase,
            PolicyPhase::Progressing | PolicyPhase::Baking
        )
    {
        outcome.events.push(RolloutEvent::RolloutResumed);
    }
}

/// The decision for a policy that failed validation: phase Failed, Ready=False with reason
/// InvalidPolicy, nothing written to nodes. The rollout state is kept so that fixing the
/// policy carries on where it stopped.
fn invalid(
    input: &EngineInput,
    previous: LivePatchPolicyStatus,
    errors: &[FieldError],
) -> Decision {
    let generation = input.policy.metadata.generation;
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let already_reported = previous.observed_generation == generation
        && previous
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "InvalidPolicy");
    let message = format!("the policy is invalid: {}", messages.join("; "));
    let mut conditions: Vec<Condition> = previous
        .conditions
        .iter()
        .filter(|c| !matches!(c.type_.as_str(), "Ready" | "Progressing"))
        .cloned()
        .collect();
    for type_ in ["Ready", "Progressing"] {
        let since = previous
            .conditions
            .iter()
            .find(|c| {
                c.type_ == type_
                    && c.status == ConditionStatus::False
                    && c.reason == "InvalidPolicy"
            })
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| input.now.to_string());
        conditions.push(Condition {
            type_: type_.to_string(),
            status: ConditionStatus::False,
            reason: "InvalidPolicy".to_string(),
            message: message.clone(),
            last_transition_time: Some(since),
            observed_generation: generation,
        });
    }
    let events = if already_reported {
        Vec::new()
    } else {
        vec![RolloutEvent::PolicyInvalid { errors: messages }]
    };
    Decision {
        desired: Vec::new(),
        status: LivePatchPolicyStatus {
            phase: Some(PolicyPhase::Failed),
            conditions,
            observed_generation: generation,
            ..previous
        },
        events,
        requeue_after: None,
    }
}
