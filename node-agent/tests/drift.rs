//! Drift on the simulated kernel: a patch disabled behind the agent's back, replaced by
//! another tool, another tool's patch appearing later; and liveness when the kernel's
//! livepatch interface cannot be read.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Harness, harness};
use kpersist_agent::drift::DriftKind;
use kpersist_agent::status::{DRIFT, READY};
use kpersist_crds::{LivePatchNodeStatus, NodeErrorReason, NodePatchState, PatchAction};
use kpersist_kmod::kernel::Kernel;

/// Applies fixture kpersist_v1 and returns the status the agent writes after it.
async fn applied(h: &Harness) -> LivePatchNodeStatus {
    let report = h
        .run(PatchAction::Apply, Some(h.release("kpersist_v1.ko", 1)))
        .await;
    assert_eq!(report.state, NodePatchState::Applied, "{report:?}");
    h.engine.status(&report, Some(1), None).await.unwrap()
}

/// Looks again, as the periodic read does, and returns the status to write, if any.
async fn look_again(h: &Harness, prior: &LivePatchNodeStatus) -> Option<LivePatchNodeStatus> {
    let report = h.engine.drift(prior).await.unwrap()?;
    Some(
        h.engine
            .status(&report, Some(1), Some(prior))
            .await
            .unwrap(),
    )
}

fn condition(status: &LivePatchNodeStatus, type_: &str) -> (String, String, String) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"));
    (c.status.to_string(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn nothing_changed_is_nothing_to_write() {
    let h = harness();
    let status = applied(&h).await;
    assert!(look_again(&h, &status).await.is_none());
    assert_eq!(condition(&status, DRIFT).0, "False");
    // After a reboot the kernel has nothing, and that is not drift: the agent applies again.
    h.sim.reboot();
    assert!(look_again(&h, &status).await.is_none());
}

#[tokio::test]
async fn a_patch_disabled_by_hand_is_reported_and_not_enabled_again_for_the_same_spec() {
    let h = harness();
    let status = applied(&h).await;
    // echo 0 > /sys/kernel/livepatch/kpersist_v1/enabled
    h.sim.set_enabled("kpersist_v1", false).unwrap();
    let drifted = look_again(&h, &status).await.expect("drift found");
    assert_eq!(drifted.state, Some(NodePatchState::Failed));
    assert_eq!(drifted.applied, None, "the kernel no longer runs it");
    let error = drifted.last_error.clone().unwrap();
    assert_eq!(error.reason, NodeErrorReason::HostError);
    assert_eq!(error.release.as_deref(), Some("6.1.0-56-amd64/v1"));
    let (on, why, message) = condition(&drifted, DRIFT);
    assert_eq!((on.as_str(), why.as_str()), ("True", "PatchDisabled"));
    assert!(message.contains("kpersist_v1"), "{message}");
    let metrics = h.engine.metrics().render();
    assert!(
        metrics.contains(r#"kpersist_agent_drift{kind="PatchDisabled"} 1"#)
            && metrics.contains(r#"kpersist_agent_drift_found_total{kind="PatchDisabled"} 1"#),
        "{metrics}"
    );
    // Looking again finds nothing new.
    assert!(look_again(&h, &drifted).await.is_none());
    // The same spec again (any event): the agent does not fight whoever disabled it.
    let report = h
        .run_with(
            PatchAction::Apply,
            Some(h.release("kpersist_v1.ko", 1)),
            Some(&drifted),
        )
        .await;
    assert_eq!(report.state, NodePatchState::Failed);
    assert_eq!(report.drift.len(), 1);
    assert_eq!(h.sim.load_log(), vec!["kpersist_v1"], "not loaded again");
    // A new spec applies it again, and the drift is cleared.
    let desired = common::apply_on_probation(h.release("kpersist_v1.ko", 1), "1h");
    let report = h
        .reconcile_with(&h.engine, &desired, Some(&drifted), 2)
        .await;
    assert_eq!(report.state, NodePatchState::Applied, "{report:?}");
    let status = h
        .engine
        .status(&report, Some(2), Some(&drifted))
        .await
        .unwrap();
    assert_eq!(condition(&status, DRIFT).0, "False");
    assert!(
        h.engine
            .metrics()
            .render()
            .contains(r#"kpersist_agent_drift{kind="PatchDisabled"} 0"#)
    );
}

#[tokio::test]
async fn a_patch_replaced_by_another_tool_names_it() {
    let h = harness();
    let status = applied(&h).await;
    // Another tool's atomic replace retires kpersist's patch.
    h.sim.add_foreign_patch("livepatch_vendor_1", true);
    let drifted = look_again(&h, &status).await.expect("drift found");
    assert_eq!(drifted.state, Some(NodePatchState::Failed));
    assert_eq!(drifted.applied, None);
    assert_eq!(
        drifted.last_error.as_ref().map(|e| e.reason),
        Some(NodeErrorReason::ForeignLivepatch)
    );
    let (on, why, message) = condition(&drifted, DRIFT);
    assert_eq!((on.as_str(), why.as_str()), ("True", "PatchReplaced"));
    assert!(
        message.contains("livepatch_vendor_1") && message.contains("kpersist_v1"),
        "{message}"
    );
}

#[tokio::test]
async fn a_foreign_patch_appearing_later_is_reported_while_the_release_stays_applied() {
    let h = harness();
    let status = applied(&h).await;
    h.sim.add_foreign_patch("kpatch_cve_2025_1", false);
    let drifted = look_again(&h, &status).await.expect("drift found");
    assert_eq!(drifted.state, Some(NodePatchState::Applied));
    assert_eq!(
        drifted.applied.as_ref().map(|a| a.id.as_str()),
        Some("6.1.0-56-amd64/v1"),
        "kpersist's patch is still enabled"
    );
    let (on, why, message) = condition(&drifted, DRIFT);
    assert_eq!(
        (on.as_str(), why.as_str()),
        ("True", "ForeignPatchAppeared")
    );
    assert!(message.contains("kpatch_cve_2025_1"), "{message}");
    assert!(drifted.loaded.iter().any(|p| p.name == "kpatch_cve_2025_1"));
    // Reported once; the condition stays on later events with the same spec.
    assert!(look_again(&h, &drifted).await.is_none());
    let report = h
        .run_with(
            PatchAction::Apply,
            Some(h.release("kpersist_v1.ko", 1)),
            Some(&drifted),
        )
        .await;
    assert_eq!(report.state, NodePatchState::Applied);
    assert_eq!(report.drift[0].kind, DriftKind::ForeignPatchAppeared);
    // Disabling kpersist's patch too is drift of its own, added to the first.
    h.sim.set_enabled("kpersist_v1", false).unwrap();
    let worse = look_again(&h, &drifted).await.expect("more drift");
    assert_eq!(reason_of(&worse), NodeErrorReason::HostError);
    assert_eq!(worse.state, Some(NodePatchState::Failed));
    let message = condition(&worse, DRIFT).2;
    assert_eq!(message.lines().count(), 2, "{message}");
    assert!(
        message
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("PatchDisabled: "),
        "{message}"
    );
}

fn reason_of(status: &LivePatchNodeStatus) -> NodeErrorReason {
    status.last_error.as_ref().map(|e| e.reason).unwrap()
}

#[tokio::test]
async fn an_unreadable_livepatch_interface_makes_the_agent_not_live() {
    let h = harness();
    let status = applied(&h).await;
    assert_eq!(condition(&status, READY).0, "True");
    h.sim.set_livepatch_unreadable(true);
    assert!(h.engine.drift(&status).await.is_err());
    let not_live = h
        .engine
        .liveness()
        .check(std::time::Instant::now())
        .unwrap_err();
    assert_eq!(not_live.reason, "KernelUnreadable");
    assert!(
        not_live.message.contains("/sys/kernel/livepatch"),
        "{}",
        not_live.message
    );
    h.sim.set_livepatch_unreadable(false);
    assert!(h.engine.drift(&status).await.unwrap().is_none());
    assert_eq!(h.engine.liveness().check(std::time::Instant::now()), Ok(()));
}
