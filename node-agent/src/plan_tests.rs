use super::*;

fn release(version: u64) -> PatchRelease {
    PatchRelease {
        id: format!("6.1.0-56-amd64/v{version}"),
        version,
        kernel_release: "6.1.0-56-amd64".into(),
        build_id: "abcd".into(),
        module_name: format!("kpersist_v{version}"),
        module_url: "file:///m.ko".into(),
        sha256: "a".repeat(64),
        size: 10,
        cves: vec![],
    }
}

fn desired(action: PatchAction, release: Option<PatchRelease>) -> DesiredPatch {
    DesiredPatch {
        policy: "p".into(),
        action,
        release,
        previous: None,
        wave: None,
        transition_timeout: "60s".into(),
        kmsg_checks: true,
        probation: "1h".to_string(),
        replace_foreign: false,
        asked_at: None,
        repository: None,
    }
}

fn identity() -> KernelIdentity {
    KernelIdentity {
        release: "6.1.0-56-amd64".into(),
        build_id: "abcd".into(),
    }
}

fn view<'a>(
    identity: &'a KernelIdentity,
    applied: Option<&'a PatchRelease>,
    refused: &'a [RefusedRelease],
) -> NodeView<'a> {
    NodeView {
        supported: true,
        identity,
        applied,
        kpersist_loaded: applied.is_some(),
        refused,
        unclean_ends: &[],
        generation: Some(1),
    }
}

#[test]
fn nothing_desired_reports_the_truth() {
    let id = identity();
    let v1 = release(1);
    assert_eq!(
        plan(None, &view(&id, None, &[])),
        Plan::Keep(NodePatchState::Idle)
    );
    assert_eq!(
        plan(None, &view(&id, Some(&v1), &[])),
        Plan::Keep(NodePatchState::Applied)
    );
    let unsupported = NodeView {
        supported: false,
        ..view(&id, None, &[])
    };
    assert_eq!(
        plan(None, &unsupported),
        Plan::Keep(NodePatchState::Unsupported)
    );
}

#[test]
fn apply_loads_unless_already_live() {
    let id = identity();
    let (v1, v2) = (release(1), release(2));
    let d = desired(PatchAction::Apply, Some(v2.clone()));
    assert_eq!(
        plan(Some(&d), &view(&id, Some(&v1), &[])),
        Plan::Load {
            release: v2.clone(),
            action: Action::Apply
        }
    );
    assert_eq!(
        plan(Some(&d), &view(&id, Some(&v2), &[])),
        Plan::Keep(NodePatchState::Applied)
    );
}

#[test]
fn wrong_kernel_unsupported_and_refused_are_refused_with_reasons() {
    let id = identity();
    let mut other = release(1);
    other.build_id = "ffff".into();
    let reason = |p: Plan| match p {
        Plan::Refuse { state, failure, .. } => (state, failure.reason),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let d = desired(PatchAction::Apply, Some(other));
    assert_eq!(
        reason(plan(Some(&d), &view(&id, None, &[]))),
        (NodePatchState::Failed, NodeErrorReason::KernelMismatch)
    );
    let d = desired(PatchAction::Apply, Some(release(1)));
    let unsupported = NodeView {
        supported: false,
        ..view(&id, None, &[])
    };
    assert_eq!(
        reason(plan(Some(&d), &unsupported)),
        (NodePatchState::Unsupported, NodeErrorReason::Unsupported)
    );
    let refused = [RefusedRelease {
        id: release(1).id,
        crashed_boot_id: "b".into(),
        detected_at: "t".into(),
        cause: RefusalCause::Load,
    }];
    assert_eq!(
        reason(plan(Some(&d), &view(&id, None, &refused))),
        (
            NodePatchState::CrashSuspected,
            NodeErrorReason::ReleaseRefused
        )
    );
}

#[test]
fn revert_to_release_or_to_none() {
    let id = identity();
    let (v1, v2) = (release(1), release(2));
    let back = desired(PatchAction::Revert, Some(v1.clone()));
    assert_eq!(
        plan(Some(&back), &view(&id, Some(&v2), &[])),
        Plan::Load {
            release: v1,
            action: Action::Revert
        }
    );
    let none = desired(PatchAction::Revert, None);
    assert_eq!(
        plan(Some(&none), &view(&id, Some(&v2), &[])),
        Plan::RevertToNone
    );
    assert_eq!(
        plan(Some(&none), &view(&id, None, &[])),
        Plan::Keep(NodePatchState::Idle)
    );
}

#[test]
fn failures_are_held_for_the_same_generation_and_boot_only() {
    let prior = LivePatchNodeStatus {
        state: Some(NodePatchState::Failed),
        observed_generation: Some(3),
        boot_id: Some("boot-1".into()),
        ..LivePatchNodeStatus::default()
    };
    assert!(hold_after_failure(Some(&prior), Some(3), "boot-1"));
    assert!(!hold_after_failure(Some(&prior), Some(4), "boot-1"));
    assert!(!hold_after_failure(Some(&prior), Some(3), "boot-2"));
    let applied = LivePatchNodeStatus {
        state: Some(NodePatchState::Applied),
        ..prior.clone()
    };
    assert!(!hold_after_failure(Some(&applied), Some(3), "boot-1"));
    assert!(!hold_after_failure(None, Some(3), "boot-1"));
}

#[test]
fn an_unclean_end_on_probation_holds_the_release_until_a_newer_generation() {
    let id = identity();
    let d = desired(PatchAction::Apply, Some(release(2)));
    let ends = [UncleanEnds {
        id: release(2).id,
        count: 1,
        last_boot_id: "boot-1".into(),
        last_started_at: jiff::Timestamp::UNIX_EPOCH,
        held: true,
        held_generation: Some(3),
        generation_pending: false,
    }];
    let reason = |p: Plan| match p {
        Plan::Refuse { state, failure, .. } => (state, failure.reason),
        other => panic!("not refused: {other:?}"),
    };
    let at = |generation| NodeView {
        unclean_ends: &ends,
        generation,
        ..view(&id, None, &[])
    };
    for generation in [Some(2), Some(3), None] {
        let decision = plan(Some(&d), &at(generation));
        assert_eq!(
            reason(decision.clone()),
            (
                NodePatchState::CrashSuspected,
                NodeErrorReason::ReleaseRefused
            )
        );
        let Plan::Refuse { failure, .. } = decision else {
            unreachable!()
        };
        assert!(failure.message.contains("boot-1"), "{}", failure.message);
    }
    assert!(matches!(plan(Some(&d), &at(Some(4))), Plan::Load { .. }));
    // Another release is not held.
    let other = desired(PatchAction::Apply, Some(release(3)));
    assert!(matches!(
        plan(Some(&other), &at(Some(3))),
        Plan::Load { .. }
    ));
}
