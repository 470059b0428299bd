//! Apply and replace on the simulated kernel with the fixture modules: every failed check
//! ends in Failed with its reason, and the simulated kernel's load log shows nothing loaded.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use kpersist_agent::state::CRASH_MARKER_FILE;
use kpersist_crds::{NodeErrorReason, NodePatchState, PatchAction};
use kpersist_kmod::kernel::{BlockingTask, SimFault, SimTransition, SyscallFailure};

#[tokio::test]
async fn apply_then_replace_atomically() {
    let h = harness();
    let v1 = h.release("kpersist_v1.ko", 1);
    let report = h.run(PatchAction::Apply, Some(v1)).await;
    assert_eq!(report.state, NodePatchState::Applied, "{report:?}");
    assert_eq!(h.live(), vec!["kpersist_v1"]);

    let v2 = h.release("kpersist_v2.ko", 2);
    let report = h.run(PatchAction::Apply, Some(v2.clone())).await;
    assert_eq!(report.state, NodePatchState::Applied, "{report:?}");
    assert_eq!(h.live(), vec!["kpersist_v2"]);
    // The replaced patch's module was unloaded, so it can be loaded again later.
    assert_eq!(h.sim.unload_log(), vec!["kpersist_v1"]);
    let timings = report.timings.clone().unwrap();
    assert!(
        timings.total_ms.is_some()
            && timings.transition_ms.is_some()
            && timings.download_ms.is_some()
    );

    let status = h.engine.status(&report, Some(1), None).await.unwrap();
    assert_eq!(
        status.applied.as_ref().map(|a| a.id.clone()),
        Some(v2.id.clone())
    );
    assert_eq!(status.applied.unwrap().cves, vec!["CVE-2024-2"]);
    assert_eq!(status.kernel_release.as_deref(), Some(RELEASE));

    // Asked again: nothing is loaded twice.
    let again = h.run(PatchAction::Apply, Some(v2)).await;
    assert_eq!(again.state, NodePatchState::Applied);
    assert_eq!(h.sim.load_log(), vec!["kpersist_v1", "kpersist_v2"]);
    assert!(!h.state_dir().join(CRASH_MARKER_FILE).exists());
}

#[tokio::test]
async fn hash_mismatch_loads_nothing() {
    let h = harness();
    let mut v1 = h.release("kpersist_v1.ko", 1);
    v1.sha256 = "f".repeat(64);
    let message = h
        .refused_before_load(v1, NodePatchState::Failed, NodeErrorReason::HashMismatch)
        .await;
    assert!(message.contains("sha256"), "{message}");
}

#[tokio::test]
async fn truncated_download_loads_nothing() {
    let h = harness();
    let v1 = h.release("kpersist_v1.ko", 1);
    let path = v1.module_url.trim_start_matches("file://").to_string();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    h.refused_before_load(v1, NodePatchState::Failed, NodeErrorReason::SizeMismatch)
        .await;
}

#[tokio::test]
async fn wrong_vermagic_loads_nothing() {
    let h = harness();
    let bad = h.release("kpersist_badvermagic.ko", 1);
    let message = h
        .refused_before_load(
            bad,
            NodePatchState::Failed,
            NodeErrorReason::VermagicMismatch,
        )
        .await;
    assert!(message.contains("6.1.0-99-amd64"), "{message}");
}

#[tokio::test]
async fn non_livepatch_module_loads_nothing() {
    let h = harness();
    let plain = h.release("not_livepatch.ko", 1);
    h.refused_before_load(plain, NodePatchState::Failed, NodeErrorReason::NotLivepatch)
        .await;
}

#[tokio::test]
async fn module_name_other_than_the_index_loads_nothing() {
    let h = harness();
    let mut v1 = h.release("kpersist_v1.ko", 1);
    v1.module_name = "kpersist_other".into();
    h.refused_before_load(
        v1,
        NodePatchState::Failed,
        NodeErrorReason::ModuleNameMismatch,
    )
    .await;
}

#[tokio::test]
async fn release_for_another_kernel_build_loads_nothing() {
    let h = harness();
    let mut v1 = h.release("kpersist_v1.ko", 1);
    v1.build_id = "ffff".into();
    h.refused_before_load(v1, NodePatchState::Failed, NodeErrorReason::KernelMismatch)
        .await;
}

#[tokio::test]
async fn unsupported_kernel_loads_nothing() {
    let h = harness();
    h.sim.set_livepatch_supported(false);
    let v1 = h.release("kpersist_v1.ko", 1);
    h.refused_before_load(
        v1,
        NodePatchState::Unsupported,
        NodeErrorReason::Unsupported,
    )
    .await;
}

#[tokio::test]
async fn lockdown_refusal_is_reported_and_marker_cleared() {
    let h = harness();
    let lockdown = SimFault {
        load_error: Some(SyscallFailure::NotPermitted),
        ..SimFault::default()
    };
    let report = h
        .apply_failing(
            "kpersist_v1.ko",
            1,
            lockdown,
            NodeErrorReason::LockdownRefused,
        )
        .await;
    assert!(report.error.unwrap().message.contains("lockdown"));
    assert!(h.sim.modules().is_empty());
    assert!(!h.state_dir().join(CRASH_MARKER_FILE).exists());
}

#[tokio::test]
async fn stalled_transition_is_reversed_and_names_its_blockers() {
    let h = harness();
    h.run(PatchAction::Apply, Some(h.release("kpersist_v1.ko", 1)))
        .await;
    let sleeper = BlockingTask {
        pid: 4242,
        comm: "kpersist_sleep".into(),
    };
    let stall = SimFault {
        transition: Some(SimTransition::Stall(vec![sleeper])),
        ..SimFault::default()
    };
    let report = h
        .apply_failing(
            "kpersist_v2.ko",
            2,
            stall,
            NodeErrorReason::TransitionStalled,
        )
        .await;
    let message = report.error.clone().unwrap().message;
    assert!(
        message.contains("4242 (kpersist_sleep)") && message.contains("reversed"),
        "{message}"
    );
    // v1 is still the live patch; v2 was disabled and unloaded.
    assert_eq!(h.live(), vec!["kpersist_v1"]);
    assert_eq!(h.sim.modules(), vec!["kpersist_v1"]);
    let status = h.engine.status(&report, Some(1), None).await.unwrap();
    assert_eq!(
        status.applied.map(|a| a.module_name),
        Some("kpersist_v1".into())
    );
}

#[tokio::test]
async fn new_taint_fails_the_apply() {
    let h = harness();
    let taint = SimFault {
        taint_on_load: 1 << 9,
        ..SimFault::default()
    };
    let report = h
        .apply_failing("kpersist_v1.ko", 1, taint, NodeErrorReason::NewTaint)
        .await;
    assert!(report.error.unwrap().message.contains('W'));
}

#[tokio::test]
async fn kernel_warning_fails_the_apply() {
    let h = harness();
    let warning = "WARNING: CPU: 1 PID: 77 at kernel/livepatch/patch.c:42".to_string();
    let warns = SimFault {
        kmsg_on_load: vec![warning],
        ..SimFault::default()
    };
    h.apply_failing("kpersist_v1.ko", 1, warns, NodeErrorReason::KernelWarning)
        .await;
}

#[tokio::test]
async fn a_taint_failure_stands_when_the_object_comes_back_unchanged() {
    let h = harness();
    h.sim.set_fault(
        "kpersist_v1",
        SimFault {
            taint_on_load: 1 << 9,
            ..SimFault::default()
        },
    );
    let v1 = h.release("kpersist_v1.ko", 1);
    let report = h.run(PatchAction::Apply, Some(v1.clone())).await;
    assert_eq!(reason(&report), NodeErrorReason::NewTaint);
    let status = h.engine.status(&report, Some(1), None).await.unwrap();
    // The module is loaded, yet the echo of our own status write must not read as Applied.
    let again = h
        .run_with(PatchAction::Apply, Some(v1), Some(&status))
        .await;
    assert_eq!(
        (again.state, reason(&again)),
        (NodePatchState::Failed, NodeErrorReason::NewTaint)
    );
}

#[tokio::test]
async fn timings_of_the_last_run_stay_while_nothing_changes() {
    let h = harness();
    let v1 = h.release("kpersist_v1.ko", 1);
    let report = h.run(PatchAction::Apply, Some(v1.clone())).await;
    let status = h.engine.status(&report, Some(1), None).await.unwrap();
    assert!(status.timings.is_some());
    let again = h
        .run_with(PatchAction::Apply, Some(v1), Some(&status))
        .await;
    assert_eq!(again.state, NodePatchState::Applied);
    assert_eq!(again.timings, status.timings);
    assert_eq!(h.sim.load_log().len(), 1);
}
