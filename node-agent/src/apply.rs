//! Carrying out an apply or a revert on the kernel, step by step, in the order that keeps a
//! node safe: fetch and verify, check modinfo, check other livepatches and the module name,
//! write the crash marker, load, wait for the transition (reversing it when it stalls or the
//! module would stack), record, begin probation, check taint and the kernel log. A failed
//! step ends the run; nothing is loaded after a failed check.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kpersist_crds::{NodeErrorReason, NodePatchState, PatchRelease, PatchRun, PatchTimings};
use kpersist_kmod::kernel::{Kernel, KernelError, KmsgMark, ModuleImage, SyscallFailure};
use kpersist_kmod::modinfo::ModInfo;
use tokio::time::Instant;

use crate::checks::{self, Failure};
use crate::coexist::{self, NameInUse};
use crate::fetch::{Fetcher, RepositoryAccess};
use crate::findings;
use crate::state::{CrashMarker, MarkerRelease, StateDir};
use crate::transition::{Settled, unload_module, wait_settled};

/// What to load, and under which rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The release to have loaded.
    pub release: PatchRelease,
    /// The policy asking for it.
    pub policy: Option<String>,
    /// How long the transition may take before it is reversed.
    pub transition_timeout: Duration,
    /// Whether new taint and kernel warnings count as failures.
    pub kmsg_checks: bool,
    /// CAs and redirect hosts for the download, from the policy; `None`: the defaults.
    pub repository: Option<RepositoryAccess>,
    /// The `metadata.generation` of the spec asking, if any.
    pub generation: Option<i64>,
    /// How long the release is on probation after its transition; `None` or zero: none.
    pub probation: Option<Duration>,
    /// Whether enabled livepatches of other tools may be replaced.
    pub replace_foreign: bool,
    /// Module names that are kpersist's besides those the state directory records.
    pub kpersist_modules: Vec<String>,
}

impl Request {
    /// A request for `release` with the defaults: no policy, a 60 s transition timeout,
    /// kernel log checks, no probation, other tools' livepatches refused.
    pub fn new(release: PatchRelease) -> Request {
        Request {
            release,
            policy: None,
            transition_timeout: Duration::from_secs(60),
            kmsg_checks: true,
            repository: None,
            generation: None,
            probation: None,
            replace_foreign: false,
            kpersist_modules: Vec::new(),
        }
    }
}

/// Whether a load is an apply of a newer release or a revert to an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Apply (state `Applying`).
    Apply,
    /// Revert by atomic replace (state `Reverting`).
    Revert,
}

impl Action {
    /// The kind of run this action makes, as the status's timings name it.
    pub fn run(self) -> PatchRun {
        match self {
            Action::Apply => PatchRun::Apply,
            Action::Revert => PatchRun::Revert,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The node's state now.
    pub state: NodePatchState,
    /// The failure and the release it concerns, when the run failed.
    pub failure: Option<(Failure, Option<String>)>,
    /// How long the steps took.
    pub timings: PatchTimings,
    /// Kernel findings of the run that are not the release's fault (reported, not failed).
    pub notes: Vec<String>,
}

impl Outcome {
    pub(crate) fn failed(
        state: NodePatchState,
        failure: Failure,
        release: Option<&str>,
        timings: PatchTimings,
    ) -> Outcome {
        Outcome {
            state,
            failure: Some((failure, release.map(str::to_string))),
            timings,
            notes: Vec::new(),
        }
    }
}

/// Reports the state while a run is under way (to status and logs).
pub type Progress<'a> = &'a (dyn Fn(NodePatchState) + Send + Sync);

/// A hook run right before a module is loaded, with the release; the simulated kernel uses
/// it to inject per-release faults.
pub type BeforeLoad = Arc<dyn Fn(&PatchRelease) + Send + Sync>;

/// Runs applies and reverts against a kernel, the state directory and a fetcher.
#[derive(Clone)]
pub struct Patcher<K> {
    pub(crate) kernel: K,
    pub(crate) state: StateDir,
    fetcher: Fetcher,
    pub(crate) poll_interval: Duration,
    before_load: Option<BeforeLoad>,
}

/// What the kernel looked like right before a load, to tell what the load changed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Baseline {
    pub(crate) taint: u64,
    pub(crate) kmsg: KmsgMark,
}

impl<K: Kernel + Clone + 'static> Patcher<K> {
    /// A patcher polling transitions every `poll_interval`.
    pub fn new(
        kernel: K,
        state: StateDir,
        fetcher: Fetcher,
        poll_interval: Duration,
    ) -> Patcher<K> {
        Patcher {
            kernel,
            state,
            fetcher,
            poll_interval,
            before_load: None,
        }
    }

    /// Runs `hook` right before every load.
    pub fn with_before_load(mut self, hook: BeforeLoad) -> Patcher<K> {
        self.before_load = Some(hook);
        self
    }

    /// The kernel.
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The state directory.
    pub fn state_dir(&self) -> &StateDir {
        &self.state
    }

    /// Runs a blocking kernel call off the async threads.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&K) -> Result<T, KernelError> + Send + 'static,
    ) -> Result<T, KernelError> {
        let kernel = self.kernel.clone();
        tokio::task::spawn_blocking(move || f(&kernel))
            .await
            .unwrap_or_else(|e| {
                Err(KernelError::Io {
                    path: PathBuf::from("<kernel call>"),
                    source: std::io::Error::other(e),
                })
            })
    }

    /// Loads `req.release`, replacing whatever kpersist patch is live.
    pub async fn load_release(
        &self,
        req: &Request,
        action: Action,
        progress: Progress<'_>,
    ) -> Outcome {
        let started = Instant::now();
        let mut timings = PatchTimings {
            run: Some(action.run()),
            ..PatchTimings::default()
        };
        let result = self.load_steps(req, action, progress, &mut timings).await;
        timings.total_ms = Some(millis(started.elapsed()));
        match result {
            Ok(notes) => Outcome {
                state: NodePatchState::Applied,
                failure: None,
                timings,
                notes,
            },
            Err(failure) => Outcome::failed(
                NodePatchState::Failed,
                failure,
                Some(&req.release.id),
                timings,
            ),
        }
    }

    async fn load_steps(
        &self,
        req: &Request,
        action: Action,
        progress: Progress<'_>,
        timings: &mut PatchTimings,
    ) -> Result<Vec<String>, Failure> {
        let release = &req.release;
        let identity = self.call(|k| k.identity()).await.map_err(host)?;
        checks::check_kernel(release, &identity)?;

        progress(NodePatchState::Downloading);
        let fetch_started = Instant::now();
        let image = self
            .fetcher
            .ensure_cached(
                &self.state,
                release,
                req.repository
                    .as_ref()
                    .unwrap_or(&RepositoryAccess::default()),
            )
            .await
            .map_err(|f| match action {
                Action::Revert if f.reason == NodeErrorReason::DownloadFailed => Failure::new(
                    NodeErrorReason::RevertFailed,
                    format!(
                        "release {} is not in the host cache and fetching it failed: {}",
                        release.id, f.message
                    ),
                ),
                _ => f,
            })?;
        timings.download_ms = Some(millis(fetch_started.elapsed()));

        progress(match action {
            Action::Apply => NodePatchState::Applying,
            Action::Revert => NodePatchState::Reverting,
        });
        // Modinfo is checked on the very bytes whose hash was verified and that get loaded.
        let info = ModInfo::from_bytes(image.bytes()).map_err(|e| {
            Failure::new(
                NodeErrorReason::InvalidModule,
                format!(
                    "module of release {} is not a readable kernel module: {e}",
                    release.id
                ),
            )
        })?;
        checks::check_module(&info, release, &identity.release)?;
        self.check_coexistence(req).await?;

        if let Some(hook) = &self.before_load {
            hook(release);
        }
        let taint = self.call(|k| k.tainted()).await.map_err(host)?;
        let kmsg = self.call(|k| k.kmsg_mark()).await.map_err(host)?;
        let boot_id = self.call(|k| k.boot_id()).await.map_err(host)?;
        let baseline = Baseline { taint, kmsg };
        let marker = CrashMarker {
            boot_id,
            release: MarkerRelease::Full(release.clone()),
            action: format!("{action:?}"),
            policy: req.policy.clone(),
            started_at: jiff::Timestamp::now().to_string(),
            taint_before: taint,
            kmsg_mark: kmsg.0,
            transition_timeout_ms: millis(req.transition_timeout),
            kmsg_checks: req.kmsg_checks,
            generation: req.generation,
            probation_ms: req.probation.map(millis),
        };
        // From here the crash marker covers the node; an earlier release's probation ends.
        self.state
            .end_probation()
            .and_then(|()| self.state.write_crash_marker(&marker))
            .map_err(|e| host_msg(e.to_string()))?;

        let load_started = Instant::now();
        if let Err(failure) = self.load(Arc::new(image), &release.module_name).await {
            self.clear_marker()?;
            return Err(failure);
        }
        let result = self
            .settle_and_check(req, baseline, load_started, timings)
            .await;
        self.clear_marker()?;
        result
    }

    /// Checks the release can go in beside what the kernel runs: no other tool's livepatch
    /// would be replaced unasked, and its module name is free. A leftover module of that name
    /// that kpersist loaded and whose patch was already replaced or disabled is unloaded.
    async fn check_coexistence(&self, req: &Request) -> Result<(), Failure> {
        let release = &req.release;
        let patches = self.call(|k| k.loaded_patches()).await.map_err(host)?;
        let known = self
            .state
            .applied()
            .map_err(|e| host_msg(e.to_string()))?
            .known_modules;
        let kpersist: Vec<String> = known
            .iter()
            .chain(&req.kpersist_modules)
            .chain([&release.module_name])
            .cloned()
            .collect();
        coexist::check_foreign(&patches, &kpersist, release, req.replace_foreign)?;
        let name = release.module_name.clone();
        let loaded = self
            .call(move |k| k.module_loaded(&name))
            .await
            .map_err(host)?;
        if coexist::check_name_in_use(loaded, &patches, &known, release)?
            == NameInUse::KpersistLeftover
        {
            unload_module(self, &release.module_name)
                .await
                .map_err(|e| {
                    Failure::new(
                        NodeErrorReason::ModuleNameInUse,
                        format!(
                            "unloading the leftover module {} before loading release {}: {e}",
                            release.module_name, release.id
                        ),
                    )
                })?;
        }
        Ok(())
    }

    /// Loads the verified module bytes.
    async fn load(&self, image: Arc<ModuleImage>, name: &str) -> Result<(), Failure> {
        self.call(move |k| k.load_module(&image))
            .await
            .map_err(|e| load_failure(name, e))
    }

    /// Waits for the transition of the loaded release, then checks what the load did;
    /// returns the findings that are not the release's fault.
    pub(crate) async fn settle_and_check(
        &self,
        req: &Request,
        baseline: Baseline,
        load_started: Instant,
        timings: &mut PatchTimings,
    ) -> Result<Vec<String>, Failure> {
        let release = &req.release;
        let name = release.module_name.clone();
        // Kernels since 6.11 say at once whether the patch replaces the others.
        let replaces = {
            let name = name.clone();
            self.call(move |k| k.patch_replaces(&name)).await
        };
        if let Ok(Some(false)) = replaces {
            let outcome = self.withdraw(&name, req.transition_timeout).await;
            return Err(coexist::not_cumulative(
                release,
                "the kernel shows replace=0 for its livepatch",
                &outcome,
            ));
        }
        let settled = wait_settled(self, &name, true, req.transition_timeout)
            .await
            .map_err(host)?;
        timings.transition_ms = Some(millis(load_started.elapsed()));
        match settled {
            Settled::Done => {}
            Settled::Gone => {
                return Err(Failure::new(
                    NodeErrorReason::LoadRefused,
                    format!(
                        "livepatch {name} of release {} disappeared before its transition finished; see the kernel log",
                        release.id
                    ),
                ));
            }
            Settled::TimedOut => return Err(self.reverse_stalled(req).await),
        }
        // Older kernels do not show `replace`: a patch still enabled beside the new one after
        // its transition means the new one stacked on it.
        let patches = self.call(|k| k.loaded_patches()).await.map_err(host)?;
        let stacked = coexist::stacked_under(&patches, &name).join(", ");
        if !stacked.is_empty() {
            let outcome = self.withdraw(&name, req.transition_timeout).await;
            return Err(coexist::not_cumulative(
                release,
                &format!("after its transition {stacked} stayed enabled beside it"),
                &outcome,
            ));
        }
        self.record_applied(req).await?;
        self.begin_probation(req).await?;
        if !req.kmsg_checks {
            return Ok(Vec::new());
        }
        let taint = self.call(|k| k.tainted()).await.map_err(host)?;
        let mark = baseline.kmsg;
        let lines = self.call(move |k| k.kmsg_since(mark)).await.map_err(host)?;
        let found = findings::judge(baseline.taint, taint, &lines, &name, &release.id);
        for note in &found.notes {
            tracing::warn!(release = %release.id, "{note}");
        }
        match found.failure {
            Some(failure) => Err(failure),
            None => Ok(found.notes),
        }
    }

    /// Records the release as the one the kernel runs, and unloads the modules of the
    /// kpersist patches it replaced (their livepatches are gone, their modules linger).
    async fn record_applied(&self, req: &Request) -> Result<(), Failure> {
        let mut record = self.state.applied().map_err(|e| host_msg(e.to_string()))?;
        let name = &req.release.module_name;
        if !record.known_modules.contains(name) {
            record.known_modules.push(name.clone());
        }
        record.current = Some(req.release.clone());
        record.policy = req.policy.clone();
        record.applied_at = Some(jiff::Timestamp::now().to_string());
        self.state
            .write_applied(&record)
            .map_err(|e| host_msg(e.to_string()))?;
        let patches = self.call(|k| k.loaded_patches()).await.map_err(host)?;
        for old in record.known_modules.iter().filter(|m| *m != name) {
            if patches.iter().any(|p| &p.name == old) {
                continue;
            }
            // Best effort: ENOENT (never loaded or already gone) is the common case.
            let _ = unload_module(self, old).await;
        }
        Ok(())
    }

    pub(crate) fn clear_marker(&self) -> Result<(), Failure> {
        self.state
            .clear_crash_marker()
            .map_err(|e| host_msg(e.to_string()))
    }
}

fn load_failure(name: &str, e: KernelError) -> Failure {
    let reason = match e.syscall_failure() {
        Some(SyscallFailure::NotPermitted | SyscallFailure::KeyRejected) => {
            NodeErrorReason::LockdownRefused
        }
        // Checked before the load; a module of that name came in meanwhile.
        Some(SyscallFailure::AlreadyLoaded) => NodeErrorReason::ModuleNameInUse,
        Some(_) => NodeErrorReason::LoadRefused,
        None => NodeErrorReason::HostError,
    };
    Failure::new(reason, format!("loading livepatch {name}: {e}"))
}

pub(crate) fn host(e: KernelError) -> Failure {
    Failure::new(NodeErrorReason::HostError, e.to_string())
}

pub(crate) fn host_msg(message: String) -> Failure {
    Failure::new(NodeErrorReason::HostError, message)
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
