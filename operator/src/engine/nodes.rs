//! Where each selected node stands in this policy's rollout, read from its LivePatchNode
//! alone: the spec the operator wrote (which release, which wave, what ran before) and the
//! status its agent reported. Nothing is remembered between decisions.

use std::collections::HashSet;
use std::time::Duration;

use jiff::Timestamp;
use kpersist_crds::{
    Blame, DesiredPatch, LivePatchNodeStatus, NodeErrorReason, NodePatchState, PatchAction,
    PatchRelease,
};

use super::NodeView;
use super::order::rollout_order;
use super::targets::{NodeTarget, Targets};

/// How far a node handed a release of the current rollout has got with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Not yet observed by the agent, or downloading or applying.
    InFlight,
    /// Applied and reported healthy.
    Done,
    /// The apply failed and it is the release's fault; the text is the agent's reason.
    Failed(String),
    /// The node could not take part (download, host, another kernel, NotReady past the
    /// grace, agent silent past the deadline): its slot is freed and nothing is blamed.
    Troubled(String),
}

/// Where a node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Another policy selects it too, so this one leaves it alone.
    Conflicted,
    /// No agent has reported its kernel yet.
    Unknown,
    /// No verified index yet and no earlier target for its kernel.
    Waiting,
    /// No livepatch support, or no release for its kernel.
    Unsupported,
    /// Asked by this policy to revert, and the agent has not finished. Once it has, the
    /// node stands like any other, by the release it runs.
    Reverting,
    /// Holds this policy's request for a release now marked bad: it must be reverted.
    RevertNeeded,
    /// Handed a release of the current rollout in wave `wave`.
    Member { wave: u32, progress: Progress },
    /// Runs its target (or newer, without a pin).
    OnTarget,
    /// Was asked for its target outside the current rollout and failed by the release's
    /// fault; not asked again until the target changes.
    Failed,
    /// Has a node problem outside the current rollout; asked again once its retry is due.
    Troubled(String),
    /// Busy with work that is not part of the current rollout.
    InFlight,
    /// Should get its target; `startable` when it can be handed it now. `pruned` when it
    /// cannot because the release it runs is no longer in the index and its LivePatchNode
    /// holds no record of it (patched outside this operator): a revert would have nowhere
    /// to go.
    Needing { startable: bool, pruned: bool },
}

/// One selected node with what the engine worked out about it.
#[derive(Clone, Debug)]
pub(crate) struct NodeFacts<'a> {
    pub view: &'a NodeView,
    /// The node's place in the order its target is handed out in (see `order.rs`); a node
    /// that reported a problem of its own within a day comes after all others, so it is
    /// nobody's canary while it may still be ailing.
    pub order: (bool, u64),
    pub standing: Standing,
    pub target: Option<NodeTarget<'a>>,
    /// This policy's request on the node, if any.
    pub ours: Option<&'a DesiredPatch>,
    pub status: Option<&'a LivePatchNodeStatus>,
    /// The agent's state and whether this policy asked for a revert, copied here because
    /// the counts and conditions read them for every node: on a large fleet a second trip
    /// into each LivePatchNode costs more than the rest of the pass.
    state: Option<NodePatchState>,
    reverted: bool,
    /// The earliest future time at which this node's standing changes by itself (a
    /// deadline, the end of the NotReady grace, a retry), so the decision wakes up then.
    pub wake_at: Option<Timestamp>,
}

impl NodeFacts<'_> {
    pub(crate) fn state(&self) -> Option<NodePatchState> {
        self.state
    }

    /// Whether this policy asked the node to revert.
    pub(crate) fn reverted(&self) -> bool {
        self.reverted
    }

    /// Whether the node finished a revert this policy asked for, and it failed.
    pub(crate) fn revert_failed(&self) -> bool {
        self.reverted()
            && self.standing != Standing::Reverting
            && self.state() == Some(NodePatchState::Failed)
    }

    /// Whether the node has a node problem, in or outside the rollout.
    pub(crate) fn troubled(&self) -> bool {
        matches!(
            self.standing,
            Standing::Troubled(_)
                | Standing::Member {
                    progress: Progress::Troubled(_),
                    ..
                }
        )
    }

    fn wake(&mut self, at: Timestamp, now: Timestamp) {
        if at > now {
            self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
        }
    }

    /// Whether the node counts against `maxInFlight`.
    pub(crate) fn in_flight(&self) -> bool {
        matches!(
            self.standing,
            Standing::InFlight
                | Standing::Member {
                    progress: Progress::InFlight,
                    ..
                }
        )
    }
}

/// What classification needs besides the node.
pub(crate) struct Context<'a> {
    pub policy: &'a str,
    pub bad: &'a HashSet<String>,
    /// The rollout in progress, as the previous status recorded it.
    pub rollout: Option<RunningRollout<'a>>,
    pub pinned: bool,
    pub have_index: bool,
    pub now: Timestamp,
    /// Whether NotReady is watched (`health.nodeReady`), and for how long it is tolerated.
    pub node_ready: bool,
    pub not_ready_grace: Duration,
    /// How long a node handed a release may stay unfinished.
    pub node_deadline: Duration,
}

/// How long a node with a passing problem (a failed download, a host error) waits before
/// it is asked again.
pub(crate) const NODE_RETRY: Duration = Duration::from_secs(30 * 60);
/// How long a node with a problem that needs a person (another tool's livepatch, lockdown,
/// a leftover module, a forged request) waits before it is asked again, in case the
/// person has acted.
pub(crate) const NODE_RETRY_SLOW: Duration = Duration::from_secs(6 * 3600);

/// The rollout in progress: how many waves it has, its releases, and the offset its wave
/// numbers carry on nodes (`status.rollout.waveOffset`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunningRollout<'a> {
    pub waves: u32,
    pub offset: u32,
    pub releases: &'a [String],
}

impl RunningRollout<'_> {
    /// The wave of this rollout that gave a node a release with `spec.desired.wave` =
    /// `given`: numbered past the offset and not past its last wave. Otherwise another
    /// rollout of the same release gave it: an earlier one numbers up to the offset, a
    /// later one past `offset + waves`. The bound is the wave count, not the current wave:
    /// a decision whose status write was lost may have moved on and handed nodes a later
    /// wave, and that wave must still count them (and bake) when it is decided again.
    pub(crate) fn wave_of(&self, given: u32) -> Option<u32> {
        given
            .checked_sub(self.offset)
            .filter(|w| (1..=self.waves).contains(w))
    }
}

/// What a CA bundle in a stored `spec.desired` is replaced with: its SHA-256. PEM text
/// never starts with this, so a bundle replaced once is left alone.
const CA_BUNDLE_DIGEST: &str = "sha256:";

/// Replaces the CA bundle in `desired` by its digest. The controller's store keeps
/// LivePatchNodes this way: every node of a policy holds a copy of the same bundle (a few
/// KiB of PEM), and the engine only compares it, which the digest does as well.
pub(crate) fn digest_ca_bundle(desired: &mut DesiredPatch) {
    if let Some(bundle) = desired
        .repository
        .as_mut()
        .and_then(|r| r.ca_bundle.as_mut())
        .filter(|b| !b.starts_with(CA_BUNDLE_DIGEST))
    {
        *bundle = format!(
            "{CA_BUNDLE_DIGEST}{}",
            kpersist_kmod::repository::sha256_hex(bundle.as_bytes())
        );
    }
}

/// Whether the node's LivePatchNode already holds `wanted` as its `spec.desired`, whether
/// the store keeps its CA bundle whole or as a digest ([`digest_ca_bundle`]). When it was
/// asked is not part of the request: the same request asked again keeps its time.
pub(crate) fn holds_desired(view: &NodeView, wanted: &DesiredPatch) -> bool {
    let Some(held) = view.lpn.as_ref().and_then(|l| l.spec.desired.as_ref()) else {
        return false;
    };
    let mut wanted = wanted.clone();
    wanted.asked_at.clone_from(&held.asked_at);
    if *held == wanted {
        return true;
    }
    digest_ca_bundle(&mut wanted);
    *held == wanted
}

/// The kernel build a node runs, preferring what its agent reported.
pub(crate) fn kernel_of(view: &NodeView) -> Option<(&str, &str)> {
    let status = view.lpn.as_ref().and_then(|l| l.status.as_ref());
    let kernel = status
        .and_then(|s| s.kernel_release.as_deref())
        .or(view.kernel_release.as_deref())?;
    let build = status
        .and_then(|s| s.build_id.as_deref())
        .or(view.build_id.as_deref())?;
    Some((kernel, build))
}

/// Works out where `view` stands.
pub(crate) fn classify<'a>(
    view: &'a NodeView,
    targets: &'a Targets<'_>,
    ctx: &Context<'_>,
) -> NodeFacts<'a> {
    let mut facts = NodeFacts {
        view,
        order: (false, 0),
        standing: Standing::Unknown,
        target: None,
        ours: None,
        status: None,
        state: None,
        reverted: false,
        wake_at: None,
    };
    let Some(lpn) = &view.lpn else {
        facts.standing = conflicted_or(view, Standing::Unknown);
        return facts;
    };
    facts.ours = lpn.spec.desired.as_ref().filter(|d| d.policy == ctx.policy);
    // A node another policy also selects is left alone, except that what this policy
    // asked of it before the overlap is followed through (below).
    if !view.other_policies.is_empty() && facts.ours.is_none() {
        facts.standing = Standing::Conflicted;
        return facts;
    }
    facts.reverted = facts.ours.is_some_and(|d| d.action == PatchAction::Revert);
    let Some(status) = &lpn.status else {
        return facts;
    };
    facts.status = Some(status);
    facts.state = status.state;
    let observed = status.observed_generation == lpn.metadata.generation;
    let busy = status.state.is_some_and(NodePatchState::is_in_flight);
    let settled = observed && !busy;
    let applying = facts.ours.filter(|d| d.action == PatchAction::Apply);
    let asked = applying
        .and_then(|d| d.release.as_ref())
        .map(|r| r.id.as_str());

    // A revert is followed through whatever else is true of the node, up to the deadline.
    if let Some(revert) = facts.ours.filter(|_| facts.reverted() && !settled) {
        facts.standing = if overdue(&mut facts, revert, ctx) {
            Standing::Troubled(silent_or_stuck(observed))
        } else {
            Standing::Reverting
        };
        return facts;
    }
    if asked.is_some_and(|id| ctx.bad.contains(id)) {
        facts.standing = Standing::RevertNeeded;
        return facts;
    }
    if !view.other_policies.is_empty() {
        // Requests this policy made before the overlap are followed to their end; nothing
        // new is asked.
        facts.standing = if settled {
            Standing::Conflicted
        } else {
            Standing::InFlight
        };
        return facts;
    }
    let Some((kernel, build)) = kernel_of(view) else {
        return facts;
    };
    if status.state == Some(NodePatchState::Unsupported) || !status.livepatch_supported {
        facts.standing = Standing::Unsupported;
        return facts;
    }
    let target = targets.for_node(kernel, build, &status.refused_releases);

    // A node of the running rollout is judged by the release it was handed, even when its
    // target has changed since (it crashed on it and now refuses it, for one).
    // Which rollout gave it the release is read from the wave number on the node, which
    // each rollout numbers past the earlier ones' (see `status.rollout.waveOffset`).
    // A node that booted another kernel since is no longer judged by the release it was
    // handed for the old one: it follows its new build like any other node.
    let same_kernel = applying
        .and_then(|d| d.release.as_ref())
        .is_none_or(|r| r.kernel_release == kernel && r.build_id == build);
    if let (Some(desired), Some(asked), true) = (applying, asked, same_kernel)
        && let Some(rollout) = ctx
            .rollout
            .filter(|r| r.releases.iter().any(|id| id == asked))
    {
        let given = desired.wave.unwrap_or(1);
        // A node still applying a release of the rollout is taken in whatever its wave
        // number says (a write of an earlier rollout, or one whose status write was lost),
        // so its wave waits for it and counts its failure.
        let wave = rollout
            .wave_of(given)
            .or_else(|| (!settled).then(|| given.saturating_sub(rollout.offset).max(1)));
        if let Some(wave) = wave {
            let progress = judge(&mut facts, desired, observed, asked, ctx);
            facts.standing = Standing::Member { wave, progress };
            facts.target = target;
            return facts;
        }
    }
    let Some(target) = target else {
        facts.standing = if ctx.have_index {
            Standing::Unsupported
        } else {
            Standing::Waiting
        };
        return facts;
    };
    // Asked for its target outside the running rollout (an earlier rollout, or a lost
    // status write): follow that request, and never ask again after a failure.
    if let (Some(desired), Some(asked)) = (applying, asked.filter(|a| *a == target.id)) {
        facts.standing = match judge(&mut facts, desired, observed, asked, ctx) {
            Progress::Troubled(_) if retry_due(&mut facts, status, ctx) => {
                needing(&mut facts, &target, status, targets, ctx)
            }
            Progress::Troubled(reason) => Standing::Troubled(reason),
            _ if !settled => Standing::InFlight,
            Progress::Done => Standing::OnTarget,
            Progress::Failed(_) => Standing::Failed,
            Progress::InFlight => Standing::InFlight,
        };
        facts.target = Some(target);
        return facts;
    }
    // A request the agent has not seen yet is waited for, another policy's too (a newer
    // overlapping policy's revert, or one of a policy the node just left): writing over it
    // would drop it. The deadline bounds the wait.
    let unseen = lpn.spec.desired.as_ref().filter(|_| !observed);
    if busy || unseen.is_some() {
        facts.standing = match applying.or(unseen) {
            Some(desired) if overdue(&mut facts, desired, ctx) => {
                Standing::Troubled(silent_or_stuck(observed))
            }
            _ => Standing::InFlight,
        };
        facts.target = Some(target);
        return facts;
    }
    let needs = match &status.applied {
        None => true,
        Some(applied) if ctx.pinned => applied.id != target.id,
        Some(applied) => applied.version < target.version,
    };
    facts.standing = if needs {
        needing(&mut facts, &target, status, targets, ctx)
    } else {
        Standing::OnTarget
    };
    facts.target = Some(target);
    facts
}

/// `fallback`, or Conflicted when another policy selects the node too.
fn conflicted_or(view: &NodeView, fallback: Standing) -> Standing {
    if view.other_policies.is_empty() {
        fallback
    } else {
        Standing::Conflicted
    }
}

/// A node that should get `target`: startable when it is Ready, not leaving, and the
/// release it runs is known (so a revert has somewhere to go). Sets its place in the
/// order `target` is handed out in.
fn needing(
    facts: &mut NodeFacts<'_>,
    target: &NodeTarget<'_>,
    status: &LivePatchNodeStatus,
    targets: &Targets<'_>,
    ctx: &Context<'_>,
) -> Standing {
    let view = facts.view;
    facts.order = (
        troubled_lately(status, ctx.now),
        rollout_order(ctx.policy, &target.id, &view.name),
    );
    let previous_known = status
        .applied
        .as_ref()
        .is_none_or(|a| targets.has_release(&a.id) || recorded_release(view, &a.id).is_some());
    Standing::Needing {
        startable: view.ready && !view.leaving && target.release.is_some() && previous_known,
        pruned: !previous_known,
    }
}

/// The signed record of release `id` the node's LivePatchNode still holds: the release of
/// its request or the one it ran before (each written from the index when it was asked
/// for). A node whose running release was pruned from the index is moved on with this
/// record as the release a revert goes back to; the agent then loads it from its cache.
pub(crate) fn recorded_release<'a>(view: &'a NodeView, id: &str) -> Option<&'a PatchRelease> {
    let desired = view.lpn.as_ref()?.spec.desired.as_ref()?;
    [desired.release.as_ref(), desired.previous.as_ref()]
        .into_iter()
        .flatten()
        .find(|r| r.id == id)
}

/// Whether the node reported a problem of its own (a failed download, a host error, ...)
/// within the last day, and has not succeeded since (a success clears the error).
fn troubled_lately(status: &LivePatchNodeStatus, now: Timestamp) -> bool {
    const LATELY: Duration = Duration::from_secs(24 * 3600);
    status
        .last_error
        .as_ref()
        .filter(|e| e.reason.blame() == Blame::Node)
        .and_then(|e| e.at.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok())
        .and_then(|at| at.checked_add(LATELY).ok())
        .is_some_and(|until| now < until)
}

/// How far a node has got with `asked` (this policy's `desired`), with the node's own
/// trouble told apart from the release's fault: a failure whose reason is the node's,
/// NotReady past the grace (never for a node that is leaving) and an agent that has not
/// finished by the deadline free the node's slot and blame nothing.
fn judge(
    facts: &mut NodeFacts<'_>,
    desired: &DesiredPatch,
    observed: bool,
    asked: &str,
    ctx: &Context<'_>,
) -> Progress {
    let Some(status) = facts.status else {
        return Progress::InFlight;
    };
    let reported = reported_progress(status, observed, asked);
    let not_ready = not_ready_past_grace(facts, ctx);
    match reported {
        Progress::InFlight if overdue(facts, desired, ctx) => {
            Progress::Troubled(silent_or_stuck(observed))
        }
        Progress::InFlight | Progress::Done if not_ready => {
            Progress::Troubled("NodeNotReady".to_string())
        }
        other => other,
    }
}

/// Whether the node has been NotReady past the grace (and watching readiness is on).
fn not_ready_past_grace(facts: &mut NodeFacts<'_>, ctx: &Context<'_>) -> bool {
    let view = facts.view;
    if !ctx.node_ready || view.ready || view.leaving {
        return false;
    }
    let Some(since) = view.not_ready_since else {
        return false;
    };
    let end = since.checked_add(ctx.not_ready_grace).unwrap_or(since);
    facts.wake(end, ctx.now);
    ctx.now >= end
}

/// Whether the request has gone unfinished past the node deadline.
fn overdue(facts: &mut NodeFacts<'_>, desired: &DesiredPatch, ctx: &Context<'_>) -> bool {
    let Some(asked_at) = desired
        .asked_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
    else {
        return false;
    };
    let end = asked_at.checked_add(ctx.node_deadline).unwrap_or(asked_at);
    facts.wake(end, ctx.now);
    ctx.now >= end
}

fn silent_or_stuck(observed: bool) -> String {
    if observed {
        "AgentStuck".to_string()
    } else {
        "AgentSilent".to_string()
    }
}

/// Whether a node problem reported by the agent is old enough to ask the node again.
fn retry_due(facts: &mut NodeFacts<'_>, status: &LivePatchNodeStatus, ctx: &Context<'_>) -> bool {
    let Some(error) = status
        .last_error
        .as_ref()
        .filter(|e| e.reason.blame() == Blame::Node)
    else {
        return false;
    };
    let Some(at) = error
        .at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
    else {
        return false;
    };
    let wait = match error.reason {
        NodeErrorReason::DownloadFailed | NodeErrorReason::HostError => NODE_RETRY,
        _ => NODE_RETRY_SLOW,
    };
    let due = at.checked_add(wait).unwrap_or(at);
    facts.wake(due, ctx.now);
    ctx.now >= due
}

/// What the agent's status says of `release`, read as the taxonomy says.
fn reported_progress(status: &LivePatchNodeStatus, observed: bool, release: &str) -> Progress {
    if !observed {
        return Progress::InFlight;
    }
    // A crash counts against the release it happened with: the node may have gone down
    // with the release it ran before this one was asked for.
    let crashed_with_it = status.state == Some(NodePatchState::CrashSuspected)
        && status
            .last_error
            .as_ref()
            .and_then(|e| e.release.as_deref())
            .is_none_or(|r| r == release);
    if status.refused_releases.iter().any(|r| r == release) || crashed_with_it {
        return Progress::Failed("CrashSuspected".to_string());
    }
    match status.state {
        Some(NodePatchState::Failed) => match status.last_error.as_ref() {
            Some(e) if e.reason.blame() == Blame::Node => {
                Progress::Troubled(format!("{:?}", e.reason))
            }
            Some(e) => Progress::Failed(format!("{:?}", e.reason)),
            None => Progress::Failed("ApplyFailed".to_string()),
        },
        Some(NodePatchState::Applied)
            if status.applied.as_ref().is_some_and(|a| a.id == release) =>
        {
            Progress::Done
        }
        _ => Progress::InFlight,
    }
}
