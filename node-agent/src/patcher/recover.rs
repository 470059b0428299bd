//! Start-up recovery from the crash marker: a marker from another boot means the node went
//! down while a module was going in (the release is then refused for good); a marker from
//! this boot means only the agent was restarted, and its run is finished or dropped. Then
//! the probation record tells whether the previous boot ended uncleanly on probation.

use std::time::Duration;

use kpersist_crds::{NodeErrorReason, NodePatchState, PatchRun, PatchTimings};
use kpersist_kmod::kernel::{Kernel, KmsgMark};
use tokio::time::Instant;

use super::{Baseline, Patcher, host_failure, kernel_failure, millis};
use crate::checks::Failure;
use crate::patch_run::{Outcome, Request};
use crate::state::{MarkerRelease, RefusalCause, RefusedRelease};

impl<K: Kernel + Clone + 'static> Patcher<K> {
    /// Looks at start for what the previous boot or agent left: a crash marker, then a
    /// probation record. A crash marker from another boot refuses the release for good
    /// (`CrashSuspected`). From this boot (the agent restarted mid-apply): a run whose module
    /// is loaded is finished; otherwise the marker is dropped. A probation record from a boot
    /// that ended uncleanly is counted against its release (`CrashSuspected`). `None`: the
    /// desired state is acted on afresh.
    pub async fn recover(&self) -> Option<Outcome> {
        let marker = self.recover_marker().await;
        let crashed_loading = marker
            .as_ref()
            .is_some_and(|o| o.state == NodePatchState::CrashSuspected);
        let probation = match self.kernel_call(|k| k.boot_id()).await {
            // The crash marker already blames the load that brought the node down.
            _ if crashed_loading => {
                self.forget_probation();
                None
            }
            Ok(boot_id) => self.recover_probation(&boot_id).await,
            Err(_) => None,
        };
        let mut outcome = marker.or(probation)?;
        outcome.timings.run.get_or_insert(PatchRun::Recover);
        Some(outcome)
    }

    async fn recover_marker(&self) -> Option<Outcome> {
        let marker = match self.state.crash_marker() {
            Ok(marker) => marker?,
            Err(e) => {
                return Some(Outcome::failed(
                    NodePatchState::Failed,
                    host_failure(e.to_string()),
                    None,
                    PatchTimings::default(),
                ));
            }
        };
        let boot_id = match self.kernel_call(|k| k.boot_id()).await {
            Ok(id) => id,
            Err(e) => {
                return Some(Outcome::failed(
                    NodePatchState::Failed,
                    kernel_failure(e),
                    None,
                    PatchTimings::default(),
                ));
            }
        };
        let id = marker.release.id().to_string();
        if marker.boot_id != boot_id {
            let refused = RefusedRelease {
                id: id.clone(),
                crashed_boot_id: marker.boot_id.clone(),
                detected_at: jiff::Timestamp::now().to_string(),
                cause: RefusalCause::Load,
            };
            let message = format!(
                "the node went down while loading release {id} (crash marker from boot {}, now boot {boot_id}); \
                 {id} is refused on this node for good",
                marker.boot_id
            );
            let failure = match self
                .state
                .refuse(refused)
                .and_then(|()| self.state.clear_crash_marker())
            {
                Ok(()) => Failure::new(NodeErrorReason::CrashSuspected, message),
                Err(e) => host_failure(format!("{message}, but recording that failed: {e}")),
            };
            return Some(Outcome::failed(
                NodePatchState::CrashSuspected,
                failure,
                Some(&id),
                PatchTimings::default(),
            ));
        }
        let MarkerRelease::Full(release) = marker.release.clone() else {
            let _ = self.state.clear_crash_marker();
            return None;
        };
        let patches = self
            .kernel_call(|k| k.loaded_patches())
            .await
            .unwrap_or_default();
        if !patches
            .iter()
            .any(|p| p.name == release.module_name && p.enabled)
        {
            // The load never happened or failed: nothing to finish.
            let _ = self.state.clear_crash_marker();
            return None;
        }
        // Recovery loads nothing, so it neither downloads nor looks at other livepatches.
        let req = Request {
            policy: marker.policy.clone(),
            transition_timeout: Duration::from_millis(marker.transition_timeout_ms),
            kmsg_checks: marker.kmsg_checks,
            generation: marker.generation,
            probation: marker.probation_ms.map(Duration::from_millis),
            ..Request::new(release)
        };
        let baseline = Baseline {
            taint: marker.taint_before,
            kmsg: KmsgMark(marker.kmsg_mark),
        };
        let started = Instant::now();
        let mut timings = PatchTimings {
            run: Some(PatchRun::Recover),
            ..PatchTimings::default()
        };
        let result = self
            .settle_and_check(&req, baseline, started, &mut timings)
            .await;
        let cleared = self.clear_marker();
        timings.total_ms = Some(millis(started.elapsed()));
        Some(match result.and_then(|notes| cleared.map(|()| notes)) {
            Ok(notes) => Outcome {
                state: NodePatchState::Applied,
                failure: None,
                timings,
                notes,
            },
            Err(f) => Outcome::failed(NodePatchState::Failed, f, Some(&req.release.id), timings),
        })
    }
}
