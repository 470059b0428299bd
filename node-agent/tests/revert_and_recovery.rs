//! Reverts (to a cached release, to none), crash markers from this and earlier boots,
//! reboots and held failures, on the simulated kernel with the fixture modules.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use kpersist_agent::state::{CRASH_MARKER_FILE, StateDir};
use kpersist_crds::{DesiredPatch, NodeErrorReason, NodePatchState, PatchAction, PatchRelease};
use kpersist_kmod::kernel::{Kernel, ModuleImage, SimFault, SimTransition, SyscallFailure};

#[tokio::test]
async fn a_failure_is_not_retried_for_the_same_generation_and_boot() {
    let h = harness();
    h.sim.set_fault(
        "kpersist_v1",
        SimFault {
            load_error: Some(SyscallFailure::InvalidArgument),
            ..SimFault::default()
        },
    );
    let v1 = h.release("kpersist_v1.ko", 1);
    let report = h.run(PatchAction::Apply, Some(v1.clone())).await;
    assert_eq!(reason(&report), NodeErrorReason::LoadRefused);
    let status = h.engine.status(&report, Some(1), None).await.unwrap();
    let again = h
        .run_with(PatchAction::Apply, Some(v1), Some(&status))
        .await;
    assert_eq!(again, report);
    assert_eq!(h.sim.load_log().len(), 1);
}

#[tokio::test]
async fn crash_marker_from_a_previous_boot_refuses_the_release_for_good() {
    let h = harness();
    let v2 = h.release("kpersist_v2.ko", 2);
    // As the kernel suite does: a marker naming the previous boot, written by hand.
    let marker = format!(
        r#"{{"bootId":"{}","release":{{"id":"{}"}}}}"#,
        h.sim.boot_id().unwrap(),
        v2.id
    );
    std::fs::write(h.state_dir().join(CRASH_MARKER_FILE), marker).unwrap();
    h.sim.reboot();

    let engine = engine_for(&h.sim, h.dir.path());
    let report = engine.recover().await.unwrap();
    assert_eq!(
        (report.state, reason(&report)),
        (
            NodePatchState::CrashSuspected,
            NodeErrorReason::CrashSuspected
        )
    );
    assert!(!h.state_dir().join(CRASH_MARKER_FILE).exists());
    let status = engine.status(&report, None, None).await.unwrap();
    assert_eq!(status.refused_releases, vec![v2.id.clone()]);

    // The operator still asks for it: the crash stays the reason, nothing is loaded.
    let desired = |r: PatchRelease| DesiredPatch {
        policy: "fleet".into(),
        action: PatchAction::Apply,
        release: Some(r),
        previous: None,
        wave: None,
        transition_timeout: "1s".into(),
        kmsg_checks: true,
        probation: "1h".to_string(),
        replace_foreign: false,
        asked_at: None,
        repository: None,
    };
    let again = engine
        .reconcile(Some(&desired(v2.clone())), Some(&status), Some(1), &|_| {})
        .await
        .unwrap();
    assert_eq!(
        (again.state, reason(&again)),
        (
            NodePatchState::CrashSuspected,
            NodeErrorReason::CrashSuspected
        )
    );
    // Even after another restart with no prior status it stays refused.
    let later = engine_for(&h.sim, h.dir.path());
    assert!(later.recover().await.is_none());
    let refused = later
        .reconcile(Some(&desired(v2)), None, Some(2), &|_| {})
        .await
        .unwrap();
    assert_eq!(
        (refused.state, reason(&refused)),
        (
            NodePatchState::CrashSuspected,
            NodeErrorReason::ReleaseRefused
        )
    );
    assert!(h.sim.load_log().is_empty());
    // Another release is still fine.
    let v1 = h.release("kpersist_v1.ko", 1);
    let ok = later
        .reconcile(Some(&desired(v1)), None, Some(3), &|_| {})
        .await
        .unwrap();
    assert_eq!(ok.state, NodePatchState::Applied);
}

#[tokio::test]
async fn agent_restarted_after_the_load_finishes_the_apply_without_reloading() {
    let h = harness();
    let v1 = h.release("kpersist_v1.ko", 1);
    h.sim.set_fault(
        "kpersist_v1",
        SimFault {
            transition: Some(SimTransition::FinishAfter(3)),
            ..SimFault::default()
        },
    );
    // The first agent got as far as the load, then died.
    let state = StateDir::open(h.state_dir()).unwrap();
    let cached = state.module_path(&v1.sha256);
    std::fs::copy(fixture("kpersist_v1.ko"), &cached).unwrap();
    let marker = serde_json::json!({
        "bootId": h.sim.boot_id().unwrap(),
        "release": v1,
        "action": "Apply",
        "taintBefore": 0,
        "kmsgMark": 0,
        "transitionTimeoutMs": 1000,
    });
    std::fs::write(h.state_dir().join(CRASH_MARKER_FILE), marker.to_string()).unwrap();
    h.sim
        .load_module(&ModuleImage::read(&cached).unwrap())
        .unwrap();

    let engine = engine_for(&h.sim, h.dir.path());
    let report = engine.recover().await.unwrap();
    assert_eq!(report.state, NodePatchState::Applied, "{report:?}");
    assert_eq!(h.sim.load_log(), vec!["kpersist_v1"]);
    assert!(!h.state_dir().join(CRASH_MARKER_FILE).exists());
    let status = engine.status(&report, None, None).await.unwrap();
    assert_eq!(status.applied.map(|a| a.id), Some(v1.id));
}

#[tokio::test]
async fn agent_restarted_before_the_load_applies_afresh() {
    let h = harness();
    let v1 = h.release("kpersist_v1.ko", 1);
    let marker = serde_json::json!({ "bootId": h.sim.boot_id().unwrap(), "release": v1 });
    std::fs::write(h.state_dir().join(CRASH_MARKER_FILE), marker.to_string()).unwrap();
    let engine = engine_for(&h.sim, h.dir.path());
    assert!(engine.recover().await.is_none());
    assert!(!h.state_dir().join(CRASH_MARKER_FILE).exists());
    let report = h.run(PatchAction::Apply, Some(v1)).await;
    assert_eq!(report.state, NodePatchState::Applied);
    assert_eq!(h.sim.load_log(), vec!["kpersist_v1"]);
}

#[tokio::test]
async fn revert_to_the_cached_previous_module() {
    let h = harness();
    let v1 = h.release("kpersist_v1.ko", 1);
    h.run(PatchAction::Apply, Some(v1.clone())).await;
    h.run(PatchAction::Apply, Some(h.release("kpersist_v2.ko", 2)))
        .await;
    // The repository no longer serves v1: the host cache must provide it.
    std::fs::remove_file(v1.module_url.trim_start_matches("file://")).unwrap();
    let report = h.run(PatchAction::Revert, Some(v1.clone())).await;
    assert_eq!(report.state, NodePatchState::Applied, "{report:?}");
    assert_eq!(h.live(), vec!["kpersist_v1"]);
    assert_eq!(h.sim.modules(), vec!["kpersist_v1"]);
    let status = h.engine.status(&report, Some(1), None).await.unwrap();
    assert_eq!(status.applied.map(|a| a.id), Some(v1.id));
}

#[tokio::test]
async fn revert_to_an_uncached_unreachable_release_fails_clearly() {
    let h = harness();
    h.run(PatchAction::Apply, Some(h.release("kpersist_v2.ko", 2)))
        .await;
    let mut v1 = h.release("kpersist_v1.ko", 1);
    v1.module_url = "file:///nonexistent/kpersist_v1.ko".into();
    let report = h.run(PatchAction::Revert, Some(v1)).await;
    assert_eq!(
        (report.state, reason(&report)),
        (NodePatchState::Failed, NodeErrorReason::RevertFailed)
    );
    assert_eq!(h.live(), vec!["kpersist_v2"]);
}

#[tokio::test]
async fn revert_without_a_previous_module_disables_and_unloads() {
    let h = harness();
    h.run(PatchAction::Apply, Some(h.release("kpersist_v1.ko", 1)))
        .await;
    h.run(PatchAction::Apply, Some(h.release("kpersist_v2.ko", 2)))
        .await;
    let report = h.run(PatchAction::Revert, None).await;
    assert_eq!(report.state, NodePatchState::Idle, "{report:?}");
    assert!(h.live().is_empty());
    assert!(h.sim.modules().is_empty());
    let status = h.engine.status(&report, Some(1), None).await.unwrap();
    assert_eq!(status.applied, None);
    // Nothing left to revert: still Idle, nothing unloaded twice.
    let unloads = h.sim.unload_log().len();
    assert_eq!(
        h.run(PatchAction::Revert, None).await.state,
        NodePatchState::Idle
    );
    assert_eq!(h.sim.unload_log().len(), unloads);
}

#[tokio::test]
async fn a_reboot_loses_the_patch_and_the_status_says_so() {
    let h = harness();
    let v1 = h.release("kpersist_v1.ko", 1);
    h.run(PatchAction::Apply, Some(v1.clone())).await;
    h.sim.reboot();
    let engine = engine_for(&h.sim, h.dir.path());
    let report = engine.reconcile(None, None, None, &|_| {}).await.unwrap();
    assert_eq!(report.state, NodePatchState::Idle);
    // The desired release is applied again on the new boot.
    let desired = DesiredPatch {
        policy: "fleet".into(),
        action: PatchAction::Apply,
        release: Some(v1),
        previous: None,
        wave: None,
        transition_timeout: "1s".into(),
        kmsg_checks: true,
        probation: "1h".to_string(),
        replace_foreign: false,
        asked_at: None,
        repository: None,
    };
    let report = engine
        .reconcile(Some(&desired), None, Some(1), &|_| {})
        .await
        .unwrap();
    assert_eq!(report.state, NodePatchState::Applied);
}
