use super::*;
use kpersist_crds::{ConditionStatus, RolloutProgress};

fn condition(status: ConditionStatus, at: Option<&str>) -> Condition {
    Condition {
        type_: "RepositoryReachable".into(),
        status,
        reason: "Verified".into(),
        message: String::new(),
        last_transition_time: at.map(str::to_string),
        observed_generation: None,
    }
}

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

#[test]
fn transition_time_moves_only_when_the_status_changes() {
    let previous = vec![condition(
        ConditionStatus::True,
        Some("2026-01-01T00:00:00Z"),
    )];
    let now = ts("2026-02-01T00:00:00Z");

    let mut same = previous.clone();
    set_condition(
        &mut same,
        condition(ConditionStatus::True, None),
        &previous,
        now,
    );
    assert_eq!(same.len(), 1);
    assert_eq!(
        same[0].last_transition_time.as_deref(),
        Some("2026-01-01T00:00:00Z")
    );

    let mut flipped = previous.clone();
    set_condition(
        &mut flipped,
        condition(ConditionStatus::False, None),
        &previous,
        now,
    );
    assert_eq!(flipped.len(), 1);
    assert_eq!(
        flipped[0].last_transition_time.as_deref(),
        Some("2026-02-01T00:00:00Z")
    );
}

#[test]
fn repository_merge_sets_check_time_and_generation() {
    let mut status = LivePatchPolicyStatus::default();
    let now = ts("2026-02-01T00:00:00Z");
    merge_repository(
        &mut status,
        None,
        Some(condition(ConditionStatus::True, None)),
        Some(now),
        Some(4),
        now,
    );
    assert_eq!(
        status.last_repository_check.as_deref(),
        Some("2026-02-01T00:00:00Z")
    );
    assert_eq!(status.conditions[0].observed_generation, Some(4));

    // A failed poll keeps the last successful check time the engine copied through.
    let mut status = LivePatchPolicyStatus {
        last_repository_check: Some("2026-01-01T00:00:00Z".into()),
        ..LivePatchPolicyStatus::default()
    };
    merge_repository(
        &mut status,
        None,
        Some(condition(ConditionStatus::False, None)),
        None,
        Some(4),
        now,
    );
    assert_eq!(
        status.last_repository_check.as_deref(),
        Some("2026-01-01T00:00:00Z")
    );
}

#[test]
fn requeue_takes_the_soonest_but_never_zero() {
    let s = Duration::from_secs;
    assert_eq!(requeue_after(None, s(3600), None), RESYNC);
    assert_eq!(requeue_after(Some(s(20)), s(60), Some(s(30))), s(20));
    assert_eq!(requeue_after(Some(s(90)), s(60), Some(s(30))), s(30));
    assert_eq!(requeue_after(None, Duration::ZERO, None), s(1));
}

#[test]
fn events_move_the_counters() {
    let metrics = Metrics::new();
    count_events(
        &metrics,
        "web",
        &[
            RolloutEvent::WaveFailed {
                wave: 1,
                reason: "r".into(),
            },
            RolloutEvent::RevertStarted {
                release: "k/v2".into(),
                nodes: 1,
            },
        ],
    );
    let text = metrics.render();
    assert!(
        text.contains(r#"kpersist_rollouts_total{policy="web",result="failed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"kpersist_reverts_total{policy="web"} 1"#),
        "{text}"
    );
}

#[test]
fn a_bake_is_named_by_its_start() {
    let mut status = LivePatchPolicyStatus {
        phase: Some(PolicyPhase::Baking),
        rollout: Some(RolloutProgress {
            wave_started_at: "w".into(),
            bake_started_at: Some("b".into()),
            ..RolloutProgress::default()
        }),
        ..LivePatchPolicyStatus::default()
    };
    assert_eq!(baking(Some(&status)).as_deref(), Some("b"));
    status.phase = Some(PolicyPhase::Progressing);
    assert_eq!(baking(Some(&status)), None);
    // Paused after the bake (spec.rollout.paused, a late failure): not judged.
    status.phase = Some(PolicyPhase::Paused);
    assert_eq!(baking(Some(&status)), None);
    // Held by a gate that could not judge the bake: judged until it answers.
    if let Some(rollout) = status.rollout.as_mut() {
        rollout.gate_inconclusive = Some("connection refused".into());
    }
    assert_eq!(baking(Some(&status)).as_deref(), Some("b"));
}

#[test]
fn node_errors_are_counted_by_reason() {
    use kpersist_crds::{LivePatchNodeStatus, NodeError, NodeErrorReason};
    let view = |name: &str, reason: Option<NodeErrorReason>| {
        let status = LivePatchNodeStatus {
            last_error: reason.map(|reason| NodeError {
                reason,
                message: String::new(),
                release: None,
                at: None,
            }),
            ..LivePatchNodeStatus::default()
        };
        view_with(name, Vec::new(), status)
    };
    let views = [
        view("a", Some(NodeErrorReason::DownloadFailed)),
        view("b", Some(NodeErrorReason::DownloadFailed)),
        view("c", Some(NodeErrorReason::TransitionStalled)),
        view("d", None),
    ];
    let counts = node_errors(&views);
    assert_eq!(counts.get("DownloadFailed"), Some(&2));
    assert_eq!(counts.get("TransitionStalled"), Some(&1));
    assert_eq!(counts.len(), 2);
}

#[test]
fn last_runs_are_those_of_the_nodes_the_policy_owns() {
    use kpersist_crds::{LivePatchNodeStatus, PatchTimings};
    let view = |name: &str, other_policies: Vec<String>, timings: Option<PatchTimings>| {
        let status = LivePatchNodeStatus {
            timings,
            ..LivePatchNodeStatus::default()
        };
        view_with(name, other_policies, status)
    };
    let stamped = PatchTimings {
        finished_at: Some("t1".into()),
        ..PatchTimings::default()
    };
    let views = [
        view("mine", Vec::new(), Some(stamped.clone())),
        view("idle", Vec::new(), None),
        view(
            "older-policy's",
            vec!["older".into()],
            Some(stamped.clone()),
        ),
    ];
    let runs: Vec<(&str, Option<&PatchTimings>)> = last_runs(&views).collect();
    assert_eq!(runs, [("mine", Some(&stamped)), ("idle", None)]);
}

/// A ready node whose LivePatchNode reports `status`, also selected by `other_policies`.
fn view_with(
    name: &str,
    other_policies: Vec<String>,
    status: kpersist_crds::LivePatchNodeStatus,
) -> NodeView {
    let mut lpn = kpersist_crds::LivePatchNode::new(name, Default::default());
    lpn.status = Some(status);
    NodeView {
        name: name.into(),
        ready: true,
        not_ready_since: None,
        leaving: false,
        kernel_release: None,
        build_id: None,
        lpn: Some(std::sync::Arc::new(lpn)),
        other_policies,
    }
}
