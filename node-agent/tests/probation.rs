//! Probation after an apply on the simulated kernel: unclean ends of a boot at several points
//! of probation, clean reboots, agent restarts, a new generation asking again once, and the
//! two-strikes rule.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use kpersist_agent::engine::Engine;
use kpersist_agent::probation::{CLEAN_STOP_FILE, PROBATION_FILE};
use kpersist_crds::{LivePatchNodeStatus, NodeErrorReason, NodePatchState};
use kpersist_kmod::kernel::{Kernel, SimKernel};

/// Applies `release` on probation `probation` as generation 1; returns the status.
async fn applied(h: &Harness, ko: &str, probation: &str) -> LivePatchNodeStatus {
    let desired = apply_on_probation(h.release(ko, 1), probation);
    let report = h.reconcile_with(&h.engine, &desired, None, 1).await;
    assert_eq!(report.state, NodePatchState::Applied, "{report:?}");
    h.engine.status(&report, Some(1), None).await.unwrap()
}

/// The node's boot ends with no clean stop; a new agent starts and recovers.
async fn unclean_end(h: &Harness) -> (Engine<SimKernel>, Option<LivePatchNodeStatus>) {
    h.sim.reboot();
    let engine = engine_for(&h.sim, h.dir.path());
    let status = match engine.recover().await {
        Some(report) => Some(engine.status(&report, Some(1), None).await.unwrap()),
        None => None,
    };
    (engine, status)
}

fn crash_suspected(status: &LivePatchNodeStatus) -> String {
    let error = status.last_error.clone().expect("an error");
    assert_eq!(
        (status.state, error.reason),
        (
            Some(NodePatchState::CrashSuspected),
            NodeErrorReason::CrashSuspected
        )
    );
    error.message
}

#[tokio::test]
async fn an_unclean_end_just_after_the_transition_holds_the_release_until_a_new_generation() {
    let h = harness();
    let first = applied(&h, "kpersist_v1.ko", "1h").await;
    assert!(first.probation_until.is_some(), "{first:?}");
    let crashed_boot = h.sim.boot_id().unwrap();
    let v1 = h.release("kpersist_v1.ko", 1);

    let (engine, status) = unclean_end(&h).await;
    let status = status.expect("the unclean end is reported");
    let message = crash_suspected(&status);
    assert!(
        message.contains(&crashed_boot) && message.contains(&v1.id) && message.contains("1 of 2"),
        "{message}"
    );
    assert_eq!(status.refused_releases, vec![v1.id.clone()]);
    assert_eq!(status.probation_until, None);

    // The same generation asks: the crash stands and nothing is loaded, with or without
    // the status written before.
    let desired = apply_on_probation(v1.clone(), "1h");
    let again = h.reconcile_with(&engine, &desired, Some(&status), 1).await;
    assert_eq!(reason(&again), NodeErrorReason::CrashSuspected);
    let fresh = h.reconcile_with(&engine, &desired, None, 1).await;
    assert_eq!(
        (fresh.state, reason(&fresh)),
        (
            NodePatchState::CrashSuspected,
            NodeErrorReason::ReleaseRefused
        )
    );
    assert_eq!(h.sim.load_log(), vec!["kpersist_v1"]);

    // A new generation asks again, once.
    let asked = h.reconcile_with(&engine, &desired, None, 2).await;
    assert_eq!(asked.state, NodePatchState::Applied, "{asked:?}");
    assert_eq!(h.sim.load_log(), vec!["kpersist_v1", "kpersist_v1"]);
    let status = engine.status(&asked, Some(2), None).await.unwrap();
    assert!(status.refused_releases.is_empty(), "{status:?}");

    // The second unclean end with the same release refuses it for good.
    let (engine, status) = unclean_end(&h).await;
    let message = crash_suspected(&status.expect("the second unclean end is reported"));
    assert!(message.contains("for good"), "{message}");
    for generation in [3, 40] {
        let refused = h.reconcile_with(&engine, &desired, None, generation).await;
        assert_eq!(reason(&refused), NodeErrorReason::ReleaseRefused);
        let message = refused.error.unwrap().message;
        assert!(
            message.contains("twice while it was on probation"),
            "{message}"
        );
    }
    assert_eq!(h.sim.load_log().len(), 2);
    // Another release is still loaded.
    let v2 = apply_on_probation(h.release("kpersist_v2.ko", 2), "1h");
    let other = h.reconcile_with(&engine, &v2, None, 41).await;
    assert_eq!(other.state, NodePatchState::Applied, "{other:?}");
}

#[tokio::test]
async fn an_unclean_end_mid_probation_counts() {
    let h = harness();
    applied(&h, "kpersist_v1.ko", "2s").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!h.engine.patcher().end_probation_if_due().await.unwrap());
    let (_, status) = unclean_end(&h).await;
    crash_suspected(&status.expect("the unclean end is reported"));
}

#[tokio::test]
async fn an_unclean_end_after_probation_reapplies_at_start() {
    let h = harness();
    let status = applied(&h, "kpersist_v1.ko", "100ms").await;
    assert!(status.probation_until.is_some());
    tokio::time::sleep(Duration::from_millis(150)).await;
    // What the agent's periodic check does.
    assert!(h.engine.patcher().end_probation_if_due().await.unwrap());
    assert!(!h.state_dir().join(PROBATION_FILE).exists());
    let status = h
        .engine
        .status(
            &kpersist_agent::status::Report::state(NodePatchState::Applied),
            Some(1),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status.probation_until, None);

    let (engine, status) = unclean_end(&h).await;
    assert_eq!(status, None);
    let desired = apply_on_probation(h.release("kpersist_v1.ko", 1), "100ms");
    let report = h.reconcile_with(&engine, &desired, None, 1).await;
    assert_eq!(report.state, NodePatchState::Applied, "{report:?}");
    assert_eq!(h.sim.load_log(), vec!["kpersist_v1", "kpersist_v1"]);
}

#[tokio::test]
async fn a_clean_reboot_on_probation_reapplies_at_start() {
    let h = harness();
    applied(&h, "kpersist_v1.ko", "1h").await;
    // The agent is stopped with SIGTERM as the node shuts down.
    h.engine.patcher().mark_clean_stop().await.unwrap();
    h.sim.reboot();
    let engine = engine_for(&h.sim, h.dir.path());
    assert!(engine.recover().await.is_none());
    assert!(!h.state_dir().join(CLEAN_STOP_FILE).exists());
    let desired = apply_on_probation(h.release("kpersist_v1.ko", 1), "1h");
    let report = h.reconcile_with(&engine, &desired, None, 1).await;
    assert_eq!(report.state, NodePatchState::Applied, "{report:?}");
    assert_eq!(h.sim.load_log(), vec!["kpersist_v1", "kpersist_v1"]);
    // How long the node ran without its patch after the agent started is measured.
    let metrics = engine.metrics().render();
    let seconds: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kpersist_agent_start_to_applied_seconds "))
        .expect("the start-to-applied gauge")
        .parse()
        .unwrap();
    assert!(seconds > 0.0 && seconds < 60.0, "{seconds}");
    // The new boot has its own probation, and an unclean end of it counts.
    let status = engine.status(&report, Some(1), None).await.unwrap();
    assert!(status.probation_until.is_some());
    let (_, status) = unclean_end(&h).await;
    crash_suspected(&status.expect("the unclean end is reported"));
}

#[tokio::test]
async fn a_clean_stop_is_forgotten_at_start_so_a_later_crash_still_counts() {
    let h = harness();
    applied(&h, "kpersist_v1.ko", "1h").await;
    // The agent pod is upgraded: clean stop, new start in the same boot.
    h.engine.patcher().mark_clean_stop().await.unwrap();
    let engine = engine_for(&h.sim, h.dir.path());
    assert!(engine.recover().await.is_none());
    let report = engine.reconcile(None, None, None, &|_| {}).await.unwrap();
    let status = engine.status(&report, None, None).await.unwrap();
    assert!(status.probation_until.is_some(), "{status:?}");
    // Then the kernel panics.
    let (_, status) = unclean_end(&h).await;
    crash_suspected(&status.expect("the unclean end is reported"));
}

#[tokio::test]
async fn a_crash_while_loading_is_not_counted_twice() {
    let h = harness();
    applied(&h, "kpersist_v1.ko", "1h").await;
    // The next load starts (the crash marker is written, v1's probation ends) and the node
    // goes down before its checks finish.
    let v2 = h.release("kpersist_v2.ko", 2);
    let marker = serde_json::json!({ "bootId": h.sim.boot_id().unwrap(), "release": v2 });
    std::fs::write(
        h.state_dir().join(kpersist_agent::state::CRASH_MARKER_FILE),
        marker.to_string(),
    )
    .unwrap();
    let (engine, status) = unclean_end(&h).await;
    let status = status.expect("the crash is reported");
    assert_eq!(status.last_error.unwrap().release, Some(v2.id.clone()));
    // v1, whose probation record was still there, is neither held nor judged later.
    assert!(!h.state_dir().join(PROBATION_FILE).exists());
    let desired = apply_on_probation(h.release("kpersist_v1.ko", 1), "1h");
    let report = h.reconcile_with(&engine, &desired, None, 1).await;
    assert_eq!(report.state, NodePatchState::Applied, "{report:?}");
}

#[tokio::test]
async fn a_spec_changed_for_another_reason_before_the_node_came_back_does_not_ask_again() {
    let h = harness();
    applied(&h, "kpersist_v1.ko", "1h").await;
    let (engine, status) = unclean_end(&h).await;
    crash_suspected(&status.expect("the unclean end is reported"));
    // Meanwhile the operator rewrote the spec (generation 5) for its own reasons.
    let desired = apply_on_probation(h.release("kpersist_v1.ko", 1), "1h");
    let refused = h.reconcile_with(&engine, &desired, None, 5).await;
    assert_eq!(reason(&refused), NodeErrorReason::ReleaseRefused);
    assert_eq!(h.sim.load_log(), vec!["kpersist_v1"]);
    // Asking again means a newer spec than the one in force when the node came back.
    let asked = h.reconcile_with(&engine, &desired, None, 6).await;
    assert_eq!(asked.state, NodePatchState::Applied, "{asked:?}");
}
