//! Carrying out an apply or a revert on the kernel, step by step, in the order that keeps a
//! node safe: fetch and verify, check modinfo, check other livepatches and the module name,
//! write the crash marker, load, wait for the transition (reversing it when it stalls or the
//! module would stack), record, begin probation, check taint and the kernel log. A failed
//! step ends the run; nothing is loaded after a failed check.

use std::sync::Arc;

use kpersist_crds::{NodeErrorReason, NodePatchState, PatchTimings};
use kpersist_kmod::kernel::{Kernel, KernelError, ModuleImage, SyscallFailure};
use kpersist_kmod::modinfo::ModInfo;
use tokio::time::Instant;

use super::transition::{Settled, unload_module, wait_settled};
use super::{Baseline, Patcher, host_failure, kernel_failure, millis};
use crate::checks::{self, Failure};
use crate::coexist::{self, NameInUse};
use crate::fetch::RepositoryAccess;
use crate::findings;
use crate::patch_run::{Action, Outcome, Progress, Request};
use crate::state::{CrashMarker, MarkerRelease};

impl<K: Kernel + Clone + 'static> Patcher<K> {
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
        let identity = self
            .kernel_call(|k| k.identity())
            .await
            .map_err(kernel_failure)?;
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
        let taint = self
            .kernel_call(|k| k.tainted())
            .await
            .map_err(kernel_failure)?;
        let kmsg = self
            .kernel_call(|k| k.kmsg_mark())
            .await
            .map_err(kernel_failure)?;
        let boot_id = self
            .kernel_call(|k| k.boot_id())
            .await
            .map_err(kernel_failure)?;
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
            .map_err(|e| host_failure(e.to_string()))?;

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
        let patches = self
            .kernel_call(|k| k.loaded_patches())
            .await
            .map_err(kernel_failure)?;
        let known = self
            .state
            .applied()
            .map_err(|e| host_failure(e.to_string()))?
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
            .kernel_call(move |k| k.module_loaded(&name))
            .await
            .map_err(kernel_failure)?;
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
        self.kernel_call(move |k| k.load_module(&image))
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
            self.kernel_call(move |k| k.patch_replaces(&name)).await
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
            .map_err(kernel_failure)?;
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
        let patches = self
            .kernel_call(|k| k.loaded_patches())
            .await
            .map_err(kernel_failure)?;
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
        let taint = self
            .kernel_call(|k| k.tainted())
            .await
            .map_err(kernel_failure)?;
        let mark = baseline.kmsg;
        let lines = self
            .kernel_call(move |k| k.kmsg_since(mark))
            .await
            .map_err(kernel_failure)?;
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
        let mut record = self
            .state
            .applied()
            .map_err(|e| host_failure(e.to_string()))?;
        let name = &req.release.module_name;
        if !record.known_modules.contains(name) {
            record.known_modules.push(name.clone());
        }
        record.current = Some(req.release.clone());
        record.policy = req.policy.clone();
        record.applied_at = Some(jiff::Timestamp::now().to_string());
        self.state
            .write_applied(&record)
            .map_err(|e| host_failure(e.to_string()))?;
        let patches = self
            .kernel_call(|k| k.loaded_patches())
            .await
            .map_err(kernel_failure)?;
        for old in record.known_modules.iter().filter(|m| *m != name) {
            if patches.iter().any(|p| &p.name == old) {
                continue;
            }
            // Best effort: ENOENT (never loaded or already gone) is the common case.
            let _ = unload_module(self, old).await;
        }
        Ok(())
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
