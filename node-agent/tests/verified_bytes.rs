//! What the kernel loads is what was verified: a module file replaced in the cache after
//! its hash and modinfo were checked does not change the bytes handed to the kernel.

// Test support: a failed unwrap is the test's report (clippy.toml exempts #[test]
// functions only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kpersist_agent::fetch::Fetcher;
use kpersist_agent::patch_run::{Action, Request};
use kpersist_agent::patcher::Patcher;
use kpersist_agent::state::StateDir;
use kpersist_crds::NodePatchState;
use kpersist_kmod::kernel::Kernel;

#[tokio::test]
async fn a_module_file_replaced_after_verification_is_not_what_gets_loaded() {
    let h = harness();
    let release = h.release("kpersist_v1.ko", 1);
    let state = StateDir::open(h.state_dir()).unwrap();
    let cached = state.module_path(&release.sha256);
    let forged = std::fs::read(fixture("kpersist_v2.ko")).unwrap();
    let swap = {
        let cached = cached.clone();
        // Runs after the checks and right before the load: the window a file-based load
        // left open. A valid livepatch of another name stands in for an attacker's module.
        Arc::new(move |_: &kpersist_crds::PatchRelease| {
            std::fs::write(&cached, &forged).unwrap();
        })
    };
    let patcher = Patcher::new(
        h.sim.clone(),
        state,
        Fetcher::new(),
        Duration::from_millis(5),
    )
    .with_before_load(swap);
    let request = Request {
        policy: Some("fleet".into()),
        transition_timeout: Duration::from_secs(5),
        ..Request::new(release.clone())
    };

    let outcome = patcher.load_release(&request, Action::Apply, &|_| {}).await;

    assert_eq!(outcome.state, NodePatchState::Applied, "{outcome:?}");
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        std::fs::read(fixture("kpersist_v2.ko")).unwrap(),
        "the cache file was not swapped, so the test proves nothing"
    );
    assert_eq!(h.sim.load_log(), vec!["kpersist_v1"]);
    let names: Vec<String> = h
        .sim
        .loaded_patches()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["kpersist_v1"]);
}
