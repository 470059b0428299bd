//! The policy status a decision writes: node counts, targets, the summaries `kubectl get`
//! prints, and the Ready, Progressing and Degraded conditions (RepositoryReachable belongs
//! to the controller and is copied through).

use jiff::Timestamp;
use kpersist_crds::{Condition, ConditionStatus, NodeCounts, NodePatchState, PolicyPhase};

use super::nodes::{NodeFacts, Progress, Standing};

/// Counts the selected nodes by state; every node is in `total` and in one state.
pub(crate) fn count_nodes(facts: &[NodeFacts<'_>], pinned: bool) -> NodeCounts {
    let mut counts = NodeCounts {
        total: u32::try_from(facts.len()).unwrap_or(u32::MAX),
        ..NodeCounts::default()
    };
    for f in facts {
        let bucket = match (&f.standing, f.state()) {
            (Standing::Conflicted, _) => &mut counts.conflicted,
            (Standing::Unknown, _) => &mut counts.unknown,
            _ if f.troubled() => &mut counts.node_problems,
            (_, Some(NodePatchState::CrashSuspected)) => &mut counts.crash_suspected,
            (_, Some(NodePatchState::Failed)) => &mut counts.failed,
            (_, Some(NodePatchState::Downloading | NodePatchState::Applying)) => {
                &mut counts.applying
            }
            (_, Some(NodePatchState::Reverting)) => &mut counts.reverting,
            (Standing::Unsupported, _) => &mut counts.unsupported,
            _ if on_target(f, pinned) => &mut counts.patched,
            _ => &mut counts.pending,
        };
        *bucket += 1;
    }
    counts
}

/// Whether the node runs its target (or, without a pin, a newer release).
fn on_target(f: &NodeFacts<'_>, pinned: bool) -> bool {
    let (Some(target), Some(status)) = (&f.target, f.status) else {
        return false;
    };
    status.state == Some(NodePatchState::Applied)
        && status
            .applied
            .as_ref()
            .is_some_and(|a| a.id == target.id || (!pinned && a.version >= target.version))
}

/// `v3` when every kernel build's target has one version, `mixed` otherwise.
pub(crate) fn target_summary(versions: impl Iterator<Item = u64>) -> Option<String> {
    let mut versions = versions.peekable();
    let first = *versions.peek()?;
    Some(if versions.all(|v| v == first) {
        format!("v{first}")
    } else {
        "mixed".to_string()
    })
}

/// What the conditions are computed from.
pub(crate) struct ConditionInput<'a> {
    pub phase: PolicyPhase,
    pub note: Option<&'a str>,
    pub wave: Option<(u32, u32)>,
    pub facts: &'a [NodeFacts<'a>],
    pub counts: &'a NodeCounts,
    pub have_targets: bool,
    pub have_index: bool,
    pub failed_wave: bool,
    /// Why the policy waits for a person after a late failure.
    pub late_pause: Option<&'a str>,
}

/// The conditions this engine owns, with the previous ones' transition times kept where
/// nothing changed, and every other condition (RepositoryReachable) copied through.
pub(crate) fn conditions(
    input: &ConditionInput<'_>,
    previous: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let note = input.note.unwrap_or_default();
    let ready = match input.phase {
        PolicyPhase::Idle | PolicyPhase::Complete if !input.have_index && !input.have_targets => (
            ConditionStatus::False,
            "NoRepositoryIndex",
            "no verified repository index yet, so no node has a target".to_string(),
        ),
        PolicyPhase::Idle | PolicyPhase::Complete if input.counts.conflicted > 0 => (
            ConditionStatus::False,
            "Conflict",
            format!(
                "{} of {} node(s) run their target; {} selected by an older policy too are \
                 left to it (see Degraded)",
                input.counts.patched, input.counts.total, input.counts.conflicted
            ),
        ),
        PolicyPhase::Idle | PolicyPhase::Complete if pruned(input) > 0 => (
            ConditionStatus::False,
            "RunningReleasePruned",
            format!(
                "{} of {} node(s) run their target; {} run a release that is no longer in the \
                 index and that their LivePatchNode holds no record of (loaded by hand, or the \
                 request was cleared), so a revert would have nowhere to go and they are not \
                 moved on: publish that release again",
                input.counts.patched,
                input.counts.total,
                pruned(input)
            ),
        ),
        PolicyPhase::Idle | PolicyPhase::Complete => (
            ConditionStatus::True,
            "UpToDate",
            format!(
                "{} of {} node(s) run their target; {} unsupported, {} pending{}",
                input.counts.patched,
                input.counts.total,
                input.counts.unsupported,
                input.counts.pending,
                suffix(note)
            ),
        ),
        PolicyPhase::Progressing | PolicyPhase::Baking => (
            ConditionStatus::False,
            "RolloutInProgress",
            wave_text(input.wave),
        ),
        PolicyPhase::Paused => (ConditionStatus::False, "Paused", note.to_string()),
        PolicyPhase::RollingBack => (ConditionStatus::False, "RollingBack", note.to_string()),
        PolicyPhase::Failed => (
            ConditionStatus::False,
            "RolloutFailed",
            "the last rollout failed and was reverted; see badReleases".to_string(),
        ),
    };
    let progressing = match input.phase {
        PolicyPhase::Progressing => (
            ConditionStatus::True,
            "WaveInProgress",
            wave_text(input.wave),
        ),
        PolicyPhase::Baking => (ConditionStatus::True, "Baking", wave_text(input.wave)),
        PolicyPhase::RollingBack => (ConditionStatus::True, "RollingBack", note.to_string()),
        PolicyPhase::Paused => (ConditionStatus::False, "Paused", note.to_string()),
        PolicyPhase::Complete => (ConditionStatus::False, "RolloutComplete", note.to_string()),
        PolicyPhase::Failed => (ConditionStatus::False, "RolloutFailed", note.to_string()),
        PolicyPhase::Idle => (ConditionStatus::False, "Idle", note.to_string()),
    };
    let degraded = degraded(input);
    let mine = [
        ("Ready", ready),
        ("Progressing", progressing),
        ("Degraded", degraded),
    ];
    let mut out: Vec<Condition> = mine
        .into_iter()
        .map(|(type_, (status, reason, message))| {
            let since = Condition::since(previous, type_, status, &now.to_string());
            Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message,
                last_transition_time: Some(since),
                observed_generation: generation,
            }
        })
        .collect();
    out.extend(
        previous
            .iter()
            .filter(|c| !matches!(c.type_.as_str(), "Ready" | "Progressing" | "Degraded"))
            .cloned(),
    );
    out
}

fn degraded(input: &ConditionInput<'_>) -> (ConditionStatus, &'static str, String) {
    let conflicted: Vec<String> = input
        .facts
        .iter()
        .filter(|f| matches!(f.standing, Standing::Conflicted))
        .take(5)
        .map(|f| {
            format!(
                "{} (owned by {})",
                f.view.name,
                f.view.other_policies.first().map_or("", String::as_str)
            )
        })
        .collect();
    let revert_failed = input.facts.iter().filter(|f| f.revert_failed()).count();
    let failed_members = input
        .facts
        .iter()
        .filter(|f| {
            matches!(
                f.standing,
                Standing::Member {
                    progress: Progress::Failed(_),
                    ..
                }
            )
        })
        .count();
    let note = input.note.unwrap_or_default().to_string();
    if input.phase == PolicyPhase::RollingBack || input.failed_wave {
        (ConditionStatus::True, "WaveFailed", note)
    } else if let Some(why) = input.late_pause {
        (ConditionStatus::True, "LateFailure", why.to_string())
    } else if revert_failed > 0 {
        (
            ConditionStatus::True,
            "RevertFailed",
            format!(
                "{revert_failed} node(s) could not go back to their previous release; see their LivePatchNode status"
            ),
        )
    } else if input.phase == PolicyPhase::Failed {
        (
            ConditionStatus::True,
            "RolloutFailed",
            "the last rollout failed and was reverted".to_string(),
        )
    } else if !conflicted.is_empty() {
        (
            ConditionStatus::True,
            "ConflictingPolicies",
            format!(
                "node(s) selected by an older policy too are patched by it, not this one: {}",
                conflicted.join(", ")
            ),
        )
    } else if failed_members + input.counts.failed as usize + input.counts.crash_suspected as usize
        > 0
    {
        (
            ConditionStatus::True,
            "NodesFailed",
            format!(
                "{} node(s) failed to apply and {} went down while applying; see their LivePatchNode status",
                input.counts.failed, input.counts.crash_suspected
            ),
        )
    } else if input.counts.node_problems > 0 {
        (
            ConditionStatus::True,
            "NodeProblems",
            format!(
                "{} node(s) could not take part (not the release's fault; retried): {}",
                input.counts.node_problems,
                troubled_sample(input.facts)
            ),
        )
    } else {
        (ConditionStatus::False, "Healthy", String::new())
    }
}

fn pruned(input: &ConditionInput<'_>) -> usize {
    input
        .facts
        .iter()
        .filter(|f| matches!(f.standing, Standing::Needing { pruned: true, .. }))
        .count()
}

/// The first few nodes with a node problem, with their reasons.
fn troubled_sample(facts: &[NodeFacts<'_>]) -> String {
    const SHOWN: usize = 5;
    facts
        .iter()
        .filter_map(|f| match &f.standing {
            Standing::Troubled(reason)
            | Standing::Member {
                progress: Progress::Troubled(reason),
                ..
            } => Some(format!("{} ({reason})", f.view.name)),
            _ => None,
        })
        .take(SHOWN)
        .collect::<Vec<_>>()
        .join(", ")
}

fn wave_text(wave: Option<(u32, u32)>) -> String {
    match wave {
        Some((wave, waves)) => format!("wave {wave} of {waves}"),
        None => String::new(),
    }
}

fn suffix(note: &str) -> String {
    if note.is_empty() {
        String::new()
    } else {
        format!("; {note}")
    }
}
