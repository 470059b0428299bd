//! Kernel log and taint after a load, on the simulated kernel: only the kernel's own records
//! count, only the patch's own warnings and the taint its load explains fail the release,
//! and everything else is reported in the `KernelFindings` condition.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use kpersist_agent::status::KERNEL_FINDINGS;
use kpersist_crds::{Condition, LivePatchNodeStatus, NodeErrorReason, NodePatchState, PatchAction};
use kpersist_kmod::kernel::{SimFault, TAINT_RANDSTRUCT, TAINT_WARN};

fn findings(status: &LivePatchNodeStatus) -> Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == KERNEL_FINDINGS)
        .cloned()
        .expect("a KernelFindings condition")
}

async fn apply_with(h: &Harness, fault: SimFault) -> LivePatchNodeStatus {
    h.sim.set_fault("kpersist_v1", fault);
    let report = h
        .run(PatchAction::Apply, Some(h.release("kpersist_v1.ko", 1)))
        .await;
    h.engine.status(&report, Some(1), None).await.unwrap()
}

#[tokio::test]
async fn warnings_written_from_user_space_do_not_count() {
    let h = harness();
    let status = apply_with(
        &h,
        SimFault {
            user_kmsg_on_load: vec![
                "WARNING: CPU: 0 PID: 1 at fs/proc/cmdline.c:9 f+0x1/0x2 [kpersist_v1]".into(),
                "BUG: unable to handle page fault".into(),
            ],
            ..SimFault::default()
        },
    )
    .await;
    assert_eq!(status.state, Some(NodePatchState::Applied), "{status:?}");
    assert_eq!(
        findings(&status).status,
        kpersist_crds::ConditionStatus::False
    );
}

#[tokio::test]
async fn an_unrelated_kernel_warning_is_reported_not_failed() {
    let h = harness();
    let status = apply_with(
        &h,
        SimFault {
            unrelated_kmsg_on_load: vec![
                "WARNING: CPU: 3 PID: 9 at drivers/net/e1000.c:1 e1000_watchdog+0x1/0x2 [e1000]"
                    .into(),
                "Modules linked in: kpersist_v1(OEK) e1000".into(),
            ],
            ..SimFault::default()
        },
    )
    .await;
    assert_eq!(status.state, Some(NodePatchState::Applied), "{status:?}");
    assert_eq!(status.last_error, None);
    let condition = findings(&status);
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "UnattributedFindings")
    );
    assert!(
        condition.message.contains("e1000_watchdog"),
        "{}",
        condition.message
    );

    // The next event changes nothing: the finding stays reported.
    let again = h
        .run_with(
            PatchAction::Apply,
            Some(h.release("kpersist_v1.ko", 1)),
            Some(&status),
        )
        .await;
    let status = h
        .engine
        .status(&again, Some(1), Some(&status))
        .await
        .unwrap();
    assert_eq!(
        findings(&status).status,
        kpersist_crds::ConditionStatus::True
    );
    assert_eq!(h.sim.load_log(), vec!["kpersist_v1"]);
}

#[tokio::test]
async fn an_unrelated_taint_is_reported_not_failed() {
    let h = harness();
    // A machine check (M) during the apply is not the patch's doing.
    let status = apply_with(
        &h,
        SimFault {
            taint_on_load: 1 << 4,
            ..SimFault::default()
        },
    )
    .await;
    assert_eq!(status.state, Some(NodePatchState::Applied), "{status:?}");
    let condition = findings(&status);
    assert_eq!(condition.status, kpersist_crds::ConditionStatus::True);
    assert!(
        condition.message.contains("taint M"),
        "{}",
        condition.message
    );
}

#[tokio::test]
async fn taint_the_load_sets_fails_the_release() {
    let h = harness();
    let status = apply_with(
        &h,
        SimFault {
            taint_on_load: TAINT_RANDSTRUCT,
            ..SimFault::default()
        },
    )
    .await;
    assert_eq!(
        status.last_error.map(|e| e.reason),
        Some(NodeErrorReason::NewTaint)
    );
}

#[tokio::test]
async fn the_patchs_own_warning_fails_it_even_with_an_unrelated_one_first() {
    let h = harness();
    let fault = SimFault {
        unrelated_kmsg_on_load: vec!["WARNING: CPU: 3 PID: 9 at mm/x.c:1 y+0x1/0x2".into()],
        kmsg_on_load: vec!["WARNING: CPU: 1 PID: 77 at fs/proc/cmdline.c:9".into()],
        ..SimFault::default()
    };
    h.apply_failing("kpersist_v1.ko", 1, fault, NodeErrorReason::KernelWarning)
        .await;
    let fault = SimFault {
        taint_on_load: TAINT_WARN,
        ..SimFault::default()
    };
    let h = harness();
    h.apply_failing("kpersist_v1.ko", 1, fault, NodeErrorReason::NewTaint)
        .await;
}
