//! Where each selected node stands in this policy's rollout, read from its LivePatchNode
//! alone: the spec the operator wrote (which release, which wave, what ran before) and the
//! status its agent reported. Nothing is remembered between decisions.

use std::collections::HashSet;

use kpersist_crds::{DesiredPatch, LivePatchNodeStatus, NodePatchState, PatchAction};

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
    /// The apply failed; the text is the agent's reason.
    Failed(String),
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
    /// Was asked for its target outside the current rollout and failed; not asked again
    /// until the target changes.
    Failed,
    /// Busy with work that is not part of the current rollout.
    InFlight,
    /// Should get its target; `startable` when it can be handed it now.
    Needing { startable: bool },
}

/// One selected node with what the engine worked out about it.
#[derive(Clone, Debug)]
pub(crate) struct NodeFacts<'a> {
    pub view: &'a NodeView,
    pub order: u64,
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
}

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
/// the store keeps its CA bundle whole or as a digest ([`digest_ca_bundle`]).
pub(crate) fn holds_desired(view: &NodeView, wanted: &DesiredPatch) -> bool {
    let Some(held) = view.lpn.as_ref().and_then(|l| l.spec.desired.as_ref()) else {
        return false;
    };
    if held == wanted {
        return true;
    }
    let mut digested = wanted.clone();
    digest_ca_bundle(&mut digested);
    *held == digested
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
        order: rollout_order(ctx.policy, &view.name),
        standing: Standing::Unknown,
        target: None,
        ours: None,
        status: None,
        state: None,
        reverted: false,
    };
    if !view.other_policies.is_empty() {
        facts.standing = Standing::Conflicted;
        return facts;
    }
    let Some(lpn) = &view.lpn else {
        return facts;
    };
    facts.ours = lpn.spec.desired.as_ref().filter(|d| d.policy == ctx.policy);
    facts.reverted = facts.ours.is_some_and(|d| d.action == PatchAction::Revert);
    let Some(status) = &lpn.status else {
        return facts;
    };
    facts.status = Some(status);
    facts.state = status.state;
    let observed = status.observed_generation == lpn.metadata.generation;
    let busy = matches!(
        status.state,
        Some(NodePatchState::Downloading | NodePatchState::Applying | NodePatchState::Reverting)
    );
    let settled = observed && !busy;
    let applying = facts.ours.filter(|d| d.action == PatchAction::Apply);
    let asked = applying
        .and_then(|d| d.release.as_ref())
        .map(|r| r.id.as_str());

    // A revert is followed through whatever else is true of the node.
    if facts.reverted() && !settled {
        facts.standing = Standing::Reverting;
        return facts;
    }
    if asked.is_some_and(|id| ctx.bad.contains(id)) {
        facts.standing = Standing::RevertNeeded;
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
    if let (Some(desired), Some(asked)) = (applying, asked)
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
            facts.standing = Standing::Member {
                wave,
                progress: progress(status, observed, asked),
            };
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
    if let Some(asked) = asked.filter(|a| *a == target.id) {
        facts.standing = match progress(status, observed, asked) {
            _ if !settled => Standing::InFlight,
            Progress::Done => Standing::OnTarget,
            Progress::Failed(_) => Standing::Failed,
            Progress::InFlight => Standing::InFlight,
        };
        facts.target = Some(target);
        return facts;
    }
    if busy || (applying.is_some() && !observed) {
        facts.standing = Standing::InFlight;
        facts.target = Some(target);
        return facts;
    }
    let needs = match &status.applied {
        None => true,
        Some(applied) if ctx.pinned => applied.id != target.id,
        Some(applied) => applied.version < target.version,
    };
    facts.standing = if needs {
        let previous_known = status
            .applied
            .as_ref()
            .is_none_or(|a| targets.has_release(&a.id));
        Standing::Needing {
            startable: view.ready && target.release.is_some() && previous_known,
        }
    } else {
        Standing::OnTarget
    };
    facts.target = Some(target);
    facts
}

fn progress(status: &LivePatchNodeStatus, observed: bool, release: &str) -> Progress {
    if !observed {
        return Progress::InFlight;
    }
    if status.refused_releases.iter().any(|r| r == release)
        || status.state == Some(NodePatchState::CrashSuspected)
    {
        return Progress::Failed("CrashSuspected".to_string());
    }
    match status.state {
        Some(NodePatchState::Failed) => Progress::Failed(
            status
                .last_error
                .as_ref()
                .map_or_else(|| "ApplyFailed".to_string(), |e| format!("{:?}", e.reason)),
        ),
        Some(NodePatchState::Applied)
            if status.applied.as_ref().is_some_and(|a| a.id == release) =>
        {
            Progress::Done
        }
        _ => Progress::InFlight,
    }
}
