//! A run of the patcher as the pure layer sees it: what is asked ([`Request`], [`Action`]),
//! how the run ended ([`Outcome`]) and the progress it reports. The planner, the status and
//! the metrics read these; the [`crate::patcher`] carries the run out.

use std::time::Duration;

use kpersist_crds::{NodePatchState, PatchRelease, PatchRun, PatchTimings};

use crate::checks::Failure;
use crate::fetch::RepositoryAccess;

/// What to load, and under which rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The release to have loaded.
    pub release: PatchRelease,
    /// The policy asking for it.
    pub policy: Option<String>,
    /// How long the transition may take before it is reversed.
    pub transition_timeout: Duration,
    /// Whether new taint and kernel warnings count as failures.
    pub kmsg_checks: bool,
    /// CAs and redirect hosts for the download, from the policy; `None`: the defaults.
    pub repository: Option<RepositoryAccess>,
    /// The `metadata.generation` of the spec asking, if any.
    pub generation: Option<i64>,
    /// How long the release is on probation after its transition; `None` or zero: none.
    pub probation: Option<Duration>,
    /// Whether enabled livepatches of other tools may be replaced.
    pub replace_foreign: bool,
    /// Module names that are kpersist's besides those the state directory records.
    pub kpersist_modules: Vec<String>,
}

impl Request {
    /// A request for `release` with the defaults: no policy, a 60 s transition timeout,
    /// kernel log checks, no probation, other tools' livepatches refused.
    pub fn new(release: PatchRelease) -> Request {
        Request {
            release,
            policy: None,
            transition_timeout: Duration::from_secs(60),
            kmsg_checks: true,
            repository: None,
            generation: None,
            probation: None,
            replace_foreign: false,
            kpersist_modules: Vec::new(),
        }
    }
}

/// Whether a load is an apply of a newer release or a revert to an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Apply (state `Applying`).
    Apply,
    /// Revert by atomic replace (state `Reverting`).
    Revert,
}

impl Action {
    /// The kind of run this action makes, as the status's timings name it.
    pub fn run(self) -> PatchRun {
        match self {
            Action::Apply => PatchRun::Apply,
            Action::Revert => PatchRun::Revert,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The node's state now.
    pub state: NodePatchState,
    /// The failure and the release it concerns, when the run failed.
    pub failure: Option<(Failure, Option<String>)>,
    /// How long the steps took.
    pub timings: PatchTimings,
    /// Kernel findings of the run that are not the release's fault (reported, not failed).
    pub notes: Vec<String>,
}

impl Outcome {
    pub(crate) fn failed(
        state: NodePatchState,
        failure: Failure,
        release: Option<&str>,
        timings: PatchTimings,
    ) -> Outcome {
        Outcome {
            state,
            failure: Some((failure, release.map(str::to_string))),
            timings,
            notes: Vec::new(),
        }
    }
}

/// Reports the state while a run is under way (to status and logs).
pub type Progress<'a> = &'a (dyn Fn(NodePatchState) + Send + Sync);
