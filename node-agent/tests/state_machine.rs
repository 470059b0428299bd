//! The apply / replace / revert state machine on the simulated kernel, with the real fixture
//! modules from kmod/tests/fixtures: every path ends in the right state with a clear reason,
//! and no module is loaded after a failed check (the simulated kernel logs every load call).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kpersist_agent::apply::Patcher;
use kpersist_agent::engine::Engine;
use kpersist_agent::fetch::Fetcher;
use kpersist_agent::metrics::Metrics;
use kpersist_agent::state::{CRASH_MARKER_FILE, StateDir};
use kpersist_agent::status::Report;
use kpersist_crds::{
    DesiredPatch, LivePatchNodeStatus, NodeErrorReason, NodePatchState, PatchAction, PatchRelease,
};
use kpersist_kmod::kernel::{
    BlockingTask, Kernel, SimFault, SimKernel, SimTransition, SyscallFailure,
};
use kpersist_kmod::repository::sha256_hex;

/// The release the fixtures were built for (kmod/tests/fixtures/README).
const RELEASE: &str = "6.1.0-56-amd64";
const BUILD_ID: &str = "0123abcd";

struct Harness {
    dir: tempfile::TempDir,
    sim: SimKernel,
    engine: Engine<SimKernel>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kmod/tests/fixtures")
        .join(name)
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimKernel::new(RELEASE, BUILD_ID);
    let engine = engine_for(&sim, dir.path());
    Harness { dir, sim, engine }
}

/// A fresh agent (as after a restart) on the same kernel and state directory.
fn engine_for(sim: &SimKernel, dir: &Path) -> Engine<SimKernel> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state = StateDir::open(dir.join("state")).unwrap();
    let patcher = Patcher::new(
        sim.clone(),
        state,
        Fetcher::new().unwrap(),
        Duration::from_millis(5),
    );
    Engine::new(patcher, Metrics::new().unwrap())
}

impl Harness {
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A release of fixture `ko` (module name = file stem), published in the repo dir.
    fn release(&self, ko: &str, version: u64) -> PatchRelease {
        let bytes = std::fs::read(fixture(ko)).unwrap();
        let repo = self.dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        let path = repo.join(ko);
        std::fs::write(&path, &bytes).unwrap();
        PatchRelease {
            id: format!("{RELEASE}/v{version}"),
            version,
            kernel_release: RELEASE.into(),
            build_id: BUILD_ID.into(),
            module_name: ko.trim_end_matches(".ko").into(),
            module_url: format!("file://{}", path.display()),
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
            cves: vec![format!("CVE-2024-{version}")],
        }
    }

    async fn run(&self, action: PatchAction, release: Option<PatchRelease>) -> Report {
        self.run_with(action, release, None).await
    }

    async fn run_with(
        &self,
        action: PatchAction,
        release: Option<PatchRelease>,
        prior: Option<&LivePatchNodeStatus>,
    ) -> Report {
        let desired = DesiredPatch {
            policy: "fleet".into(),
            action,
            release,
            previous: None,
            wave: Some(1),
            transition_timeout: "300ms".into(),
            kmsg_checks: true,
        };
        self.engine
            .reconcile(Some(&desired), prior, Some(1), &|_| {})
            .await
            .unwrap()
    }

    fn live(&self) -> Vec<String> {
        self.sim.patches().into_iter().map(|p| p.name).collect()
    }
}

fn reason(report: &Report) -> NodeErrorReason {
    report
        .error
        .as_ref()
        .map(|e| e.reason)
        .unwrap_or_else(|| panic!("no error in {report:?}"))
}

fn fault(sim: &SimKernel, module: &str, fault: SimFault) {
    sim.set_fault(module, fault);
}

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
    let report = h.run(PatchAction::Apply, Some(v1)).await;
    assert_eq!(
        (report.state, reason(&report)),
        (NodePatchState::Failed, NodeErrorReason::HashMismatch)
    );
    assert!(report.error.unwrap().message.contains("sha256"));
    assert!(h.sim.load_log().is_empty());
}

#[tokio::test]
async fn truncated_download_loads_nothing() {
    let h = harness();
    let v1 = h.release("kpersist_v1.ko", 1);
    let path = v1.module_url.trim_start_matches("file://").to_string();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let report = h.run(PatchAction::Apply, Some(v1)).await;
    assert_eq!(
        (report.state, reason(&report)),
        (NodePatchState::Failed, NodeErrorReason::SizeMismatch)
    );
    assert!(h.sim.load_log().is_empty());
}

#[tokio::test]
async fn wrong_vermagic_loads_nothing() {
    let h = harness();
    let bad = h.release("kpersist_badvermagic.ko", 1);
    let report = h.run(PatchAction::Apply, Some(bad)).await;
    assert_eq!(
        (report.state, reason(&report)),
        (NodePatchState::Failed, NodeErrorReason::VermagicMismatch)
    );
    assert!(report.error.unwrap().message.contains("6.1.0-99-amd64"));
    assert!(h.sim.load_log().is_empty());
}

#[tokio::test]
async fn non_livepatch_module_loads_nothing() {
    let h = harness();
    let plain = h.release("not_livepatch.ko", 1);
    let report = h.run(PatchAction::Apply, Some(plain)).await;
    assert_eq!(
        (report.state, reason(&report)),
        (NodePatchState::Failed, NodeErrorReason::NotLivepatch)
    );
    assert!(h.sim.load_log().is_empty());
}

#[tokio::test]
async fn module_name_other_than_the_index_loads_nothing() {
    let h = harness();
    let mut v1 = h.release("kpersist_v1.ko", 1);
    v1.module_name = "kpersist_other".into();
    let report = h.run(PatchAction::Apply, Some(v1)).await;
    assert_eq!(reason(&report), NodeErrorReason::ModuleNameMismatch);
    assert!(h.sim.load_log().is_empty());
}

#[tokio::test]
async fn release_for_another_kernel_build_loads_nothing() {
    let h = harness();
    let mut v1 = h.release("kpersist_v1.ko", 1);
    v1.build_id = "ffff".into();
    let report = h.run(PatchAction::Apply, Some(v1)).await;
    assert_eq!(reason(&report), NodeErrorReason::KernelMismatch);
    assert!(h.sim.load_log().is_empty());
}

#[tokio::test]
async fn unsupported_kernel_loads_nothing() {
    let h = harness();
    h.sim.set_livepatch_supported(false);
    let report = h
        .run(PatchAction::Apply, Some(h.release("kpersist_v1.ko", 1)))
        .await;
    assert_eq!(
        (report.state, reason(&report)),
        (NodePatchState::Unsupported, NodeErrorReason::Unsupported)
    );
    assert!(h.sim.load_log().is_empty());
}

#[tokio::test]
async fn lockdown_refusal_is_reported_and_marker_cleared() {
    let h = harness();
    fault(
        &h.sim,
        "kpersist_v1",
        SimFault {
            load_error: Some(SyscallFailure::NotPermitted),
            ..SimFault::default()
        },
    );
    let report = h
        .run(PatchAction::Apply, Some(h.release("kpersist_v1.ko", 1)))
        .await;
    assert_eq!(
        (report.state, reason(&report)),
        (NodePatchState::Failed, NodeErrorReason::LockdownRefused)
    );
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
    fault(
        &h.sim,
        "kpersist_v2",
        SimFault {
            transition: Some(SimTransition::Stall(vec![sleeper])),
            ..SimFault::default()
        },
    );
    let report = h
        .run(PatchAction::Apply, Some(h.release("kpersist_v2.ko", 2)))
        .await;
    assert_eq!(
        (report.state, reason(&report)),
        (NodePatchState::Failed, NodeErrorReason::TransitionStalled)
    );
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
    fault(
        &h.sim,
        "kpersist_v1",
        SimFault {
            taint_on_load: 1 << 9,
            ..SimFault::default()
        },
    );
    let report = h
        .run(PatchAction::Apply, Some(h.release("kpersist_v1.ko", 1)))
        .await;
    assert_eq!(
        (report.state, reason(&report)),
        (NodePatchState::Failed, NodeErrorReason::NewTaint)
    );
    assert!(report.error.unwrap().message.contains('W'));
}

#[tokio::test]
async fn kernel_warning_fails_the_apply() {
    let h = harness();
    let warning = "WARNING: CPU: 1 PID: 77 at kernel/livepatch/patch.c:42".to_string();
    fault(
        &h.sim,
        "kpersist_v1",
        SimFault {
            kmsg_on_load: vec![warning],
            ..SimFault::default()
        },
    );
    let report = h
        .run(PatchAction::Apply, Some(h.release("kpersist_v1.ko", 1)))
        .await;
    assert_eq!(
        (report.state, reason(&report)),
        (NodePatchState::Failed, NodeErrorReason::KernelWarning)
    );
}

#[tokio::test]
async fn a_failure_is_not_retried_for_the_same_generation_and_boot() {
    let h = harness();
    fault(
        &h.sim,
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
    fault(
        &h.sim,
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
    h.sim.load_module(&cached).unwrap();

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
    };
    let report = engine
        .reconcile(Some(&desired), None, Some(1), &|_| {})
        .await
        .unwrap();
    assert_eq!(report.state, NodePatchState::Applied);
}
