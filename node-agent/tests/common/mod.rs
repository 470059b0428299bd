//! The harness of the state machine tests: a simulated kernel, a state directory and a
//! repository directory holding the real fixture modules from kmod/tests/fixtures.

#![allow(dead_code)]
// Test support: a failed unwrap, expect or panic is the test's report (clippy.toml exempts
// #[test] functions only, not helpers shared by test crates and benches).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use kpersist_agent::engine::Engine;
use kpersist_agent::fetch::Fetcher;
use kpersist_agent::metrics::Metrics;
use kpersist_agent::patcher::Patcher;
use kpersist_agent::state::StateDir;
use kpersist_agent::status::Report;
use kpersist_crds::{
    DesiredPatch, LivePatchNodeStatus, NodeErrorReason, NodePatchState, PatchAction, PatchRelease,
};
use kpersist_kmod::kernel::{SimFault, SimKernel};
use kpersist_kmod::repository::sha256_hex;

/// The release the fixtures were built for (kmod/tests/fixtures/README).
pub const RELEASE: &str = "6.1.0-56-amd64";
pub const BUILD_ID: &str = "0123abcd";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub sim: SimKernel,
    pub engine: Engine<SimKernel>,
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kmod/tests/fixtures")
        .join(name)
}

pub fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimKernel::new(RELEASE, BUILD_ID);
    let engine = engine_for(&sim, dir.path());
    Harness { dir, sim, engine }
}

/// A fresh agent (as after a restart) on the same kernel and state directory.
pub fn engine_for(sim: &SimKernel, dir: &Path) -> Engine<SimKernel> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state = StateDir::open(dir.join("state")).unwrap();
    let patcher = Patcher::new(sim.clone(), state, Fetcher::new(), Duration::from_millis(5));
    Engine::new(patcher, Metrics::new().unwrap())
}

impl Harness {
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A release of fixture `ko` (module name = file stem), published in the repo dir.
    pub fn release(&self, ko: &str, version: u64) -> PatchRelease {
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

    /// Applies fixture `ko` as release `version` with `fault` set on its module, checks
    /// that the apply failed with `expected`, and returns the report.
    pub async fn apply_failing(
        &self,
        ko: &str,
        version: u64,
        fault: SimFault,
        expected: NodeErrorReason,
    ) -> Report {
        self.sim.set_fault(ko.trim_end_matches(".ko"), fault);
        let report = self
            .run(PatchAction::Apply, Some(self.release(ko, version)))
            .await;
        assert_eq!(
            (report.state, reason(&report)),
            (NodePatchState::Failed, expected)
        );
        report
    }

    pub async fn run(&self, action: PatchAction, release: Option<PatchRelease>) -> Report {
        self.run_with(action, release, None).await
    }

    pub async fn run_with(
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
            probation: "1h".to_string(),
            replace_foreign: false,
            asked_at: None,
            repository: None,
        };
        self.engine
            .reconcile(Some(&desired), prior, Some(1), &|_| {})
            .await
            .unwrap()
    }

    /// Applies `release`, asserts that it ends in `state` with `reason` and that nothing was
    /// handed to the kernel, and returns the error message.
    pub async fn refused_before_load(
        &self,
        release: PatchRelease,
        state: NodePatchState,
        reason_wanted: NodeErrorReason,
    ) -> String {
        let report = self.run(PatchAction::Apply, Some(release)).await;
        assert_eq!(
            (report.state, reason(&report)),
            (state, reason_wanted),
            "{report:?}"
        );
        assert!(
            self.sim.load_log().is_empty(),
            "loaded after a failed check: {:?}",
            self.sim.load_log()
        );
        report.error.map(|e| e.message).unwrap_or_default()
    }

    /// Reconciles `desired` as spec generation `generation` with the agent `engine`.
    pub async fn reconcile_with(
        &self,
        engine: &Engine<SimKernel>,
        desired: &DesiredPatch,
        prior: Option<&LivePatchNodeStatus>,
        generation: i64,
    ) -> Report {
        engine
            .reconcile(Some(desired), prior, Some(generation), &|_| {})
            .await
            .unwrap()
    }

    pub fn live(&self) -> Vec<String> {
        self.sim.patches().into_iter().map(|p| p.name).collect()
    }
}

pub fn reason(report: &Report) -> NodeErrorReason {
    report
        .error
        .as_ref()
        .map(|e| e.reason)
        .unwrap_or_else(|| panic!("no error in {report:?}"))
}

/// An apply of `release` with probation `probation` (e.g. `1h`).
pub fn apply_on_probation(release: PatchRelease, probation: &str) -> DesiredPatch {
    DesiredPatch {
        policy: "fleet".into(),
        action: PatchAction::Apply,
        release: Some(release),
        previous: None,
        wave: Some(1),
        transition_timeout: "300ms".into(),
        kmsg_checks: true,
        probation: probation.to_string(),
        replace_foreign: false,
        asked_at: None,
        repository: None,
    }
}
