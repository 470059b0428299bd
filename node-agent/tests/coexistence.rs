//! Other tools' livepatches, modules built without atomic replace, and module names already
//! in use, on the simulated kernel with the fixture modules.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use kpersist_crds::{NodeErrorReason, NodePatchState, PatchAction};
use kpersist_kmod::kernel::{Kernel, SimFault, SimTransition};

#[tokio::test]
async fn a_foreign_livepatch_is_named_and_kept_unless_the_policy_opts_in() {
    let h = harness();
    h.sim.add_foreign_patch("kpatch_cve_2024_1234", true);
    let message = h
        .refused_before_load(
            h.release("kpersist_v1.ko", 1),
            NodePatchState::Failed,
            NodeErrorReason::ForeignLivepatch,
        )
        .await;
    assert!(message.contains("kpatch_cve_2024_1234"), "{message}");
    assert_eq!(h.live(), vec!["kpatch_cve_2024_1234"]);

    let mut desired = apply_on_probation(h.release("kpersist_v1.ko", 1), "1h");
    desired.replace_foreign = true;
    let report = h.reconcile_with(&h.engine, &desired, None, 2).await;
    assert_eq!(report.state, NodePatchState::Applied, "{report:?}");
    assert_eq!(h.live(), vec!["kpersist_v1"]);
}

#[tokio::test]
async fn a_foreign_livepatch_appearing_later_stops_the_next_apply() {
    let h = harness();
    let v1 = h.run(PatchAction::Apply, Some(h.release("kpersist_v1.ko", 1)));
    assert_eq!(v1.await.state, NodePatchState::Applied);
    // A vendor service loads its own patch, without replace, beside kpersist's.
    h.sim.add_foreign_patch("livepatch_vendor_5", false);
    let report = h
        .run(PatchAction::Apply, Some(h.release("kpersist_v2.ko", 2)))
        .await;
    assert_eq!(reason(&report), NodeErrorReason::ForeignLivepatch);
    assert_eq!(h.sim.load_log(), vec!["kpersist_v1"]);
    assert_eq!(h.live(), vec!["kpersist_v1", "livepatch_vendor_5"]);
}

#[tokio::test]
async fn a_module_without_replace_is_undone_on_a_kernel_without_the_attribute() {
    let h = harness();
    let v1 = h.run(PatchAction::Apply, Some(h.release("kpersist_v1.ko", 1)));
    assert_eq!(v1.await.state, NodePatchState::Applied);
    let fault = SimFault {
        not_cumulative: true,
        ..SimFault::default()
    };
    let report = h
        .apply_failing("kpersist_v2.ko", 2, fault, NodeErrorReason::NotCumulative)
        .await;
    let message = report.error.unwrap().message;
    assert!(message.contains("kpersist_v1 stayed enabled"), "{message}");
    assert_eq!(h.live(), vec!["kpersist_v1"]);
    assert_eq!(h.sim.modules(), vec!["kpersist_v1"]);
    let status = h
        .engine
        .status(&report_applied(), Some(1), None)
        .await
        .unwrap();
    assert_eq!(
        status.applied.map(|a| a.module_name),
        Some("kpersist_v1".into())
    );
}

#[tokio::test]
async fn a_module_without_replace_is_undone_before_its_transition_where_the_kernel_says() {
    let h = harness();
    h.sim.set_replace_attribute(true);
    let v1 = h.run(PatchAction::Apply, Some(h.release("kpersist_v1.ko", 1)));
    assert_eq!(v1.await.state, NodePatchState::Applied);
    let fault = SimFault {
        not_cumulative: true,
        // The transition would never end: the attribute is read before waiting for it.
        transition: Some(SimTransition::Stall(vec![])),
        ..SimFault::default()
    };
    let report = h
        .apply_failing("kpersist_v2.ko", 2, fault, NodeErrorReason::NotCumulative)
        .await;
    let message = report.error.unwrap().message;
    assert!(message.contains("replace=0"), "{message}");
    assert_eq!(h.live(), vec!["kpersist_v1"]);
    assert_eq!(h.sim.unload_log(), vec!["kpersist_v2"]);
}

#[tokio::test]
async fn a_kpersist_leftover_of_the_same_name_is_unloaded_first() {
    let h = harness();
    let v1 = h.release("kpersist_v1.ko", 1);
    assert_eq!(
        h.run(PatchAction::Apply, Some(v1.clone())).await.state,
        NodePatchState::Applied
    );
    // Another tool's patch replaced kpersist's and was then disabled: kpersist_v1's module
    // lingers with no livepatch.
    h.sim.add_foreign_patch("vendor", true);
    h.sim.set_enabled("vendor", false).unwrap();
    h.sim.loaded_patches().unwrap();
    assert!(h.live().is_empty() && h.sim.modules().contains(&"kpersist_v1".to_string()));

    let report = h.run(PatchAction::Apply, Some(v1)).await;
    assert_eq!(report.state, NodePatchState::Applied, "{report:?}");
    assert_eq!(h.sim.unload_log(), vec!["kpersist_v1"]);
    assert_eq!(h.live(), vec!["kpersist_v1"]);
}

#[tokio::test]
async fn a_module_name_in_use_by_something_else_is_a_node_problem_before_the_load() {
    let h = harness();
    // A module of the release's name that kpersist never loaded, its patch disabled.
    h.sim.add_foreign_patch("kpersist_v2", false);
    h.sim.set_enabled("kpersist_v2", false).unwrap();
    h.sim.loaded_patches().unwrap();
    let message = h
        .refused_before_load(
            h.release("kpersist_v2.ko", 2),
            NodePatchState::Failed,
            NodeErrorReason::ModuleNameInUse,
        )
        .await;
    assert!(message.contains("kpersist did not load it"), "{message}");
    assert_eq!(
        NodeErrorReason::ModuleNameInUse.blame(),
        kpersist_crds::Blame::Node
    );
}

#[tokio::test]
async fn a_live_patch_of_the_same_name_from_another_release_is_a_name_in_use() {
    let h = harness();
    let v1 = h.release("kpersist_v1.ko", 1);
    assert_eq!(
        h.run(PatchAction::Apply, Some(v1.clone())).await.state,
        NodePatchState::Applied
    );
    // Release 3 of the same kernel build reuses the module name of release 1.
    let mut v3 = h.release("kpersist_v1.ko", 3);
    v3.id = format!("{RELEASE}/v3");
    let report = h.run(PatchAction::Apply, Some(v3)).await;
    assert_eq!(reason(&report), NodeErrorReason::ModuleNameInUse);
    assert_eq!(h.sim.load_log(), vec!["kpersist_v1"]);
    assert_eq!(h.live(), vec!["kpersist_v1"]);
}

fn report_applied() -> kpersist_agent::status::Report {
    kpersist_agent::status::Report::state(NodePatchState::Applied)
}
