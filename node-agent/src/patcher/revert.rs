//! Reverting to no livepatch at all: disable every kpersist patch, wait for the kernel to go
//! back to its original code, unload the modules. (A revert to an earlier release is an
//! atomic replace, done by [`Patcher::load_release`].)

use std::time::Duration;

use kpersist_crds::{NodeErrorReason, NodePatchState, PatchRun, PatchTimings};
use kpersist_kmod::kernel::{Kernel, SyscallFailure};
use tokio::time::Instant;

use super::transition::{Settled, unload_module, wait_settled};
use super::{Patcher, host_failure, kernel_failure, millis};
use crate::checks::Failure;
use crate::patch_run::{Outcome, Progress};

impl<K: Kernel + Clone + 'static> Patcher<K> {
    /// Disables and unloads every kpersist livepatch: those the agent ever loaded here and
    /// those named in `also_kpersist` (for example every module name in the repository).
    pub async fn revert_to_none(
        &self,
        also_kpersist: &[String],
        timeout: Duration,
        progress: Progress<'_>,
    ) -> Outcome {
        let started = Instant::now();
        let result = self.revert_steps(also_kpersist, timeout, progress).await;
        let timings = PatchTimings {
            run: Some(PatchRun::Revert),
            total_ms: Some(millis(started.elapsed())),
            ..PatchTimings::default()
        };
        match result {
            Ok(()) => Outcome {
                state: NodePatchState::Idle,
                failure: None,
                timings,
                notes: Vec::new(),
            },
            Err(f) => Outcome::failed(NodePatchState::Failed, f, None, timings),
        }
    }

    async fn revert_steps(
        &self,
        also_kpersist: &[String],
        timeout: Duration,
        progress: Progress<'_>,
    ) -> Result<(), Failure> {
        progress(NodePatchState::Reverting);
        let mut record = self
            .state
            .applied()
            .map_err(|e| host_failure(e.to_string()))?;
        let mut names = record.known_modules.clone();
        names.extend(also_kpersist.iter().cloned());
        names.sort();
        names.dedup();
        let patches = self
            .kernel_call(|k| k.loaded_patches())
            .await
            .map_err(kernel_failure)?;
        for patch in patches.iter().filter(|p| names.contains(&p.name)) {
            if patch.enabled {
                let name = patch.name.clone();
                self.kernel_call(move |k| k.set_enabled(&name, false))
                    .await
                    .map_err(|e| {
                        Failure::new(
                            NodeErrorReason::UnloadFailed,
                            format!("disabling livepatch {}: {e}", patch.name),
                        )
                    })?;
            }
            match wait_settled(self, &patch.name, false, timeout)
                .await
                .map_err(kernel_failure)?
            {
                Settled::Done | Settled::Gone => {}
                Settled::TimedOut => {
                    return Err(self.undo_stalled_disable(&patch.name, timeout).await);
                }
            }
        }
        // With every patch disabled, unload each kpersist module still loaded; modules of
        // patches replaced earlier linger too.
        for name in &names {
            match unload_module(self, name).await {
                Ok(()) => {}
                Err(e) if e.syscall_failure() == Some(SyscallFailure::NotFound) => {}
                Err(e) => {
                    return Err(Failure::new(
                        NodeErrorReason::UnloadFailed,
                        format!("unloading module {name}: {e}"),
                    ));
                }
            }
        }
        record.current = None;
        record.policy = None;
        record.applied_at = None;
        // No release is live any more, so none is on probation.
        self.state
            .write_applied(&record)
            .and_then(|()| self.state.end_probation())
            .map_err(|e| host_failure(e.to_string()))
    }

    /// A disable that did not finish in time is reversed (re-enabled) so the kernel is not
    /// left between two states, and reported with the tasks that held it up.
    async fn undo_stalled_disable(&self, name: &str, timeout: Duration) -> Failure {
        let blockers = {
            let name = name.to_string();
            self.kernel_call(move |k| k.blocking_tasks(&name))
                .await
                .unwrap_or_default()
        };
        let owned = name.to_string();
        let undone = self.kernel_call(move |k| k.set_enabled(&owned, true)).await;
        let tasks: Vec<String> = blockers.iter().map(ToString::to_string).collect();
        Failure::new(
            NodeErrorReason::TransitionStalled,
            format!(
                "disabling livepatch {name} did not finish within {timeout:?}; tasks blocking it: {}; {}",
                if tasks.is_empty() {
                    "none found".to_string()
                } else {
                    tasks.join(", ")
                },
                match undone {
                    Ok(()) => "the patch was re-enabled".to_string(),
                    Err(e) => format!("re-enabling it failed: {e}"),
                }
            ),
        )
    }
}
