//! Late failures: a release's fault reported outside the rollout that judged the release.
//! A node that joined later fails a release the fleet already runs, or a node crashes on
//! probation after its rollout ended. Revoking a proven release fleet-wide would reopen
//! every CVE it fixes on every node, so by default (`lateFailurePolicy: Pause`) the
//! policy records the failure, hands out nothing new, and waits for a person: editing the
//! policy acknowledges the failure and goes on; `lateFailurePolicy: Revert` marks the
//! release bad and sends every node holding it back.

use std::collections::{BTreeSet, HashSet};

use jiff::Timestamp;
use kpersist_crds::{
    Blame, FailurePolicy, LateFailure, LivePatchPolicyStatus, NodePatchState, PatchAction,
};

use super::nodes::{NodeFacts, Progress, Standing};

/// How many late failures the status keeps, newest last.
const KEPT: usize = 10;

/// What the late failures of one decision come to.
#[derive(Debug, Default)]
pub(crate) struct LateFailures {
    /// Releases an ended rollout gave out that nodes outside the running rollout run:
    /// their failures are late failures, not the running wave's.
    pub proven: HashSet<String>,
    /// The status list: the previous one plus those found now, at most [`KEPT`].
    pub listed: Vec<LateFailure>,
    /// Those found now, for Events.
    pub found: Vec<LateFailure>,
    /// With `Pause`: why nothing new is handed out, while a listed failure is
    /// unacknowledged (seen at the current generation).
    pub pause: Option<String>,
    /// With `Revert`: the listed releases to mark bad and take back.
    pub revoke: BTreeSet<String>,
}

/// Finds the late failures among `facts`.
pub(crate) fn judge(
    facts: &[NodeFacts<'_>],
    previous: &LivePatchPolicyStatus,
    bad: &HashSet<String>,
    policy: FailurePolicy,
    generation: Option<i64>,
    now: Timestamp,
) -> LateFailures {
    let ended = previous
        .last_rollout_end
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok());
    // Most of a fleet runs the same few releases: each is copied into the set once.
    let mut proven: HashSet<String> = HashSet::new();
    if ended.is_some() {
        for f in facts {
            if matches!(f.standing, Standing::Member { .. }) {
                continue;
            }
            let Some(asked) = asked_release(f) else {
                continue;
            };
            let runs = f
                .status
                .and_then(|s| s.applied.as_ref())
                .is_some_and(|a| a.id == asked);
            if runs && !bad.contains(asked) && !proven.contains(asked) {
                proven.insert(asked.to_string());
            }
        }
    }
    let mut found = Vec::new();
    for f in facts {
        let Some((release, evidence)) = late_evidence(f, &proven, ended, bad) else {
            continue;
        };
        let known = previous
            .late_failures
            .iter()
            .chain(&found)
            .any(|l| l.node == f.view.name && l.release == release);
        if !known {
            found.push(LateFailure {
                node: f.view.name.clone(),
                release: release.to_string(),
                evidence,
                seen_at: now.to_string(),
                generation,
            });
        }
    }
    let mut listed: Vec<LateFailure> = previous.late_failures.clone();
    listed.extend(found.iter().cloned());
    let excess = listed.len().saturating_sub(KEPT);
    listed.drain(..excess);
    let open: Vec<&LateFailure> = listed
        .iter()
        .filter(|l| l.generation == generation && !bad.contains(&l.release))
        .collect();
    let (pause, revoke) = match policy {
        FailurePolicy::Pause => (
            open.first().map(|l| pause_note(l, open.len())),
            BTreeSet::new(),
        ),
        FailurePolicy::Revert => (
            None,
            listed
                .iter()
                .map(|l| l.release.clone())
                .filter(|r| !bad.contains(r))
                .collect(),
        ),
    };
    LateFailures {
        proven,
        listed,
        found,
        pause,
        revoke,
    }
}

/// The release a node failed late and the evidence, when it did: a member of the running
/// rollout that failed a proven release, or a node outside it whose agent reported a
/// release's fault after the last rollout ended.
fn late_evidence<'f>(
    f: &'f NodeFacts<'_>,
    proven: &HashSet<String>,
    ended: Option<Timestamp>,
    bad: &HashSet<String>,
) -> Option<(&'f str, String)> {
    let asked = asked_release(f)?;
    if bad.contains(asked) {
        return None;
    }
    if let Standing::Member {
        progress: Progress::Failed(reason),
        ..
    } = &f.standing
    {
        return proven.contains(asked).then(|| (asked, reason.clone()));
    }
    if matches!(f.standing, Standing::Member { .. }) {
        return None;
    }
    let status = f.status?;
    let error = status.last_error.as_ref()?;
    let at = error.at.as_deref()?.parse::<Timestamp>().ok()?;
    let about = error.release.as_deref().unwrap_or(asked);
    let crashed = status.state == Some(NodePatchState::CrashSuspected)
        || status.refused_releases.iter().any(|r| r == asked);
    let fault = error.reason.blame() == Blame::Release || crashed;
    (fault && about == asked && ended.is_some_and(|end| at > end))
        .then(|| (asked, format!("{:?}: {}", error.reason, error.message)))
}

/// The release this policy asked the node to apply.
fn asked_release<'f>(f: &'f NodeFacts<'_>) -> Option<&'f str> {
    f.ours
        .filter(|d| d.action == PatchAction::Apply)
        .and_then(|d| d.release.as_ref())
        .map(|r| r.id.as_str())
}

fn pause_note(first: &LateFailure, open: usize) -> String {
    let more = if open > 1 {
        format!(" (and {} more, see status.lateFailures)", open - 1)
    } else {
        String::new()
    };
    format!(
        "late failure: {} reported {} with release {}, which an earlier rollout already \
         gave out{more}; nothing new is handed out. To go on, set spec.rollout.acknowledged \
         to a new value (any spec edit does); to take the release back from every node, \
         set spec.rollout.lateFailurePolicy: Revert",
        first.node, first.evidence, first.release
    )
}
