//! Deciding what to do, with no I/O: the operator's `spec.desired` against what the kernel
//! really runs, the releases this node refuses, and what was already tried.

use kpersist_crds::{
    DesiredPatch, LivePatchNodeStatus, NodeErrorReason, NodePatchState, PatchAction, PatchRelease,
};
use kpersist_kmod::kernel::KernelIdentity;

use crate::checks::{Failure, check_kernel};
use crate::patch_run::Action;
use crate::probation::UncleanEnds;
use crate::state::{RefusalCause, RefusedRelease};

/// What the node is, as far as deciding goes.
#[derive(Clone, Copy, Debug)]
pub struct NodeView<'a> {
    /// Whether the kernel supports livepatch.
    pub supported: bool,
    /// The running kernel.
    pub identity: &'a KernelIdentity,
    /// The kpersist release the kernel runs now (loaded and enabled), if any.
    pub applied: Option<&'a PatchRelease>,
    /// Whether any kpersist livepatch is loaded at all.
    pub kpersist_loaded: bool,
    /// Releases refused on this node for good.
    pub refused: &'a [RefusedRelease],
    /// Releases that ended a boot uncleanly on probation here.
    pub unclean_ends: &'a [UncleanEnds],
    /// The `metadata.generation` of the spec being decided on, if any.
    pub generation: Option<i64>,
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to do; the node is in this state.
    Keep(NodePatchState),
    /// The desired state cannot be had here.
    Refuse {
        /// The state to report.
        state: NodePatchState,
        /// Why.
        failure: Failure,
        /// The release concerned.
        release: Option<String>,
    },
    /// Load this release (atomically replacing the live one).
    Load {
        /// The release.
        release: PatchRelease,
        /// Apply or revert.
        action: Action,
    },
    /// Disable and unload every kpersist livepatch.
    RevertToNone,
}

/// What to do about `desired` on the node `view` describes.
pub fn plan(desired: Option<&DesiredPatch>, view: &NodeView<'_>) -> Plan {
    let resting = if view.applied.is_some() {
        NodePatchState::Applied
    } else {
        NodePatchState::Idle
    };
    let Some(desired) = desired else {
        return Plan::Keep(if view.supported {
            resting
        } else {
            NodePatchState::Unsupported
        });
    };
    let action = match desired.action {
        PatchAction::Apply => Action::Apply,
        PatchAction::Revert => Action::Revert,
    };
    let release = match (&desired.release, action) {
        (Some(release), _) => release,
        (None, Action::Revert) if view.kpersist_loaded => return Plan::RevertToNone,
        (None, Action::Revert) => return Plan::Keep(NodePatchState::Idle),
        (None, Action::Apply) => {
            return Plan::Refuse {
                state: NodePatchState::Failed,
                failure: Failure::new(
                    NodeErrorReason::InvalidModule,
                    "spec.desired asks to apply but names no release; set spec.desired.release",
                ),
                release: None,
            };
        }
    };
    if !view.supported {
        return Plan::Refuse {
            state: NodePatchState::Unsupported,
            failure: Failure::new(
                NodeErrorReason::Unsupported,
                format!(
                    "kernel {} has no livepatch support (/sys/kernel/livepatch is missing); \
                     release {} cannot be applied here",
                    view.identity.release, release.id
                ),
            ),
            release: Some(release.id.clone()),
        };
    }
    if let Err(failure) = check_kernel(release, view.identity) {
        return Plan::Refuse {
            state: NodePatchState::Failed,
            failure,
            release: Some(release.id.clone()),
        };
    }
    if let Some(refused) = view.refused.iter().find(|r| r.id == release.id) {
        let when = match refused.cause {
            RefusalCause::Load => "the node went down while loading it",
            RefusalCause::Probation => "the node ended uncleanly twice while it was on probation",
        };
        return crash_refusal(
            release,
            format!(
                "release {} is refused on this node for good: {when} (boot {}, found {}); \
                 roll out a newer release",
                release.id, refused.crashed_boot_id, refused.detected_at
            ),
        );
    }
    if let Some(ends) = view
        .unclean_ends
        .iter()
        .find(|e| e.id == release.id && e.holds(view.generation))
    {
        return crash_refusal(
            release,
            format!(
                "release {} is not loaded on this node: boot {} ended uncleanly while it was on \
                 probation (since {}); ask again with a new spec generation (newer than {}) to \
                 load it once more",
                release.id,
                ends.last_boot_id,
                ends.last_started_at,
                ends.held_generation
                    .map_or_else(|| "none".to_string(), |g| g.to_string())
            ),
        );
    }
    if view
        .applied
        .is_some_and(|a| a.id == release.id && a.sha256 == release.sha256)
    {
        return Plan::Keep(NodePatchState::Applied);
    }
    Plan::Load {
        release: release.clone(),
        action,
    }
}

fn crash_refusal(release: &PatchRelease, message: String) -> Plan {
    Plan::Refuse {
        state: NodePatchState::CrashSuspected,
        failure: Failure::new(NodeErrorReason::ReleaseRefused, message),
        release: Some(release.id.clone()),
    }
}

/// Whether the last failure stands instead of a new decision: a run that failed for this same
/// spec generation during this same boot is neither retried nor reported away (the operator
/// decides what comes next); after a reboot the kernel has lost its livepatches, so the
/// desired state is acted on again.
pub fn hold_after_failure(
    prior: Option<&LivePatchNodeStatus>,
    generation: Option<i64>,
    boot_id: &str,
) -> bool {
    let Some(prior) = prior else { return false };
    let failed = matches!(
        prior.state,
        Some(NodePatchState::Failed | NodePatchState::CrashSuspected)
    );
    failed
        && prior.observed_generation == generation
        && generation.is_some()
        && prior.boot_id.as_deref() == Some(boot_id)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
