//! Probation on the host: writing and ending the probation record, the clean-stop mark, and
//! judging at start how the previous boot ended (see [`crate::probation`] for the rules).

use kpersist_crds::{NodeErrorReason, NodePatchState, PatchTimings};
use kpersist_kmod::kernel::Kernel;

use super::{Patcher, host_failure, kernel_failure};
use crate::checks::Failure;
use crate::error::AgentError;
use crate::patch_run::{Outcome, Request};
use crate::probation::{
    CLEAN_STOP_FILE, CleanStop, PROBATION_FILE, PreviousBoot, ProbationRecord, UNCLEAN_ENDS_FILE,
    UNCLEAN_ENDS_LIMIT, UncleanEnds, count_unclean_end, judge, settle_held_generations,
    unclean_end_message,
};
use crate::state::{RefusalCause, RefusedRelease, StateDir};

impl StateDir {
    /// The release on probation, if any.
    pub fn probation(&self) -> Result<Option<ProbationRecord>, AgentError> {
        self.read_json(PROBATION_FILE)
    }

    /// Ends any probation (no error when there is none).
    pub fn end_probation(&self) -> Result<(), AgentError> {
        self.remove(PROBATION_FILE)
    }

    /// Unclean ends on probation, per release.
    pub fn unclean_ends(&self) -> Result<Vec<UncleanEnds>, AgentError> {
        Ok(self.read_json(UNCLEAN_ENDS_FILE)?.unwrap_or_default())
    }

    /// Records the spec generation in force now for releases held since the last start;
    /// see [`settle_held_generations`].
    pub fn settle_held_generations(&self, generation: Option<i64>) -> Result<(), AgentError> {
        let mut ends = self.unclean_ends()?;
        if settle_held_generations(&mut ends, generation) {
            self.write_json(UNCLEAN_ENDS_FILE, &ends)?;
        }
        Ok(())
    }

    /// Lets release `id` be loaded again (a newer spec asked for it); its count stays.
    pub fn lift_hold(&self, id: &str) -> Result<(), AgentError> {
        let mut ends = self.unclean_ends()?;
        let Some(entry) = ends.iter_mut().find(|e| e.id == id && e.held) else {
            return Ok(());
        };
        entry.held = false;
        self.write_json(UNCLEAN_ENDS_FILE, &ends)
    }

    /// Records that the agent stops cleanly in boot `boot_id`.
    pub fn mark_clean_stop(&self, boot_id: &str) -> Result<(), AgentError> {
        let mark = CleanStop {
            boot_id: boot_id.to_string(),
            stopped_at: jiff::Timestamp::now(),
        };
        self.write_json(CLEAN_STOP_FILE, &mark)
    }
}

impl<K: Kernel + Clone + 'static> Patcher<K> {
    /// Puts the release of `req` on probation from now, when the request has one.
    pub(crate) async fn begin_probation(&self, req: &Request) -> Result<(), Failure> {
        let Some(length) = req.probation.filter(|d| !d.is_zero()) else {
            return self
                .state
                .end_probation()
                .map_err(|e| host_failure(e.to_string()));
        };
        let boot_id = self
            .kernel_call(|k| k.boot_id())
            .await
            .map_err(kernel_failure)?;
        let record = ProbationRecord::begin(
            &req.release.id,
            &req.release.module_name,
            &boot_id,
            jiff::Timestamp::now(),
            length,
            req.generation,
        );
        self.state
            .write_json(PROBATION_FILE, &record)
            .map_err(|e| host_failure(e.to_string()))
    }

    /// Ends the probation of this boot when its time is up; returns whether one ended.
    pub async fn end_probation_if_due(&self) -> Result<bool, AgentError> {
        let Some(record) = self.state.probation()? else {
            return Ok(false);
        };
        let boot_id = self.kernel_call(|k| k.boot_id()).await?;
        let due = record.boot_id == boot_id && jiff::Timestamp::now() >= record.until;
        if due {
            self.state.end_probation()?;
            tracing::info!(release = %record.release_id, "probation over");
        }
        Ok(due)
    }

    /// Records that the agent stops cleanly now (on SIGTERM).
    pub async fn mark_clean_stop(&self) -> Result<(), AgentError> {
        let boot_id = self.kernel_call(|k| k.boot_id()).await?;
        self.state.mark_clean_stop(&boot_id)
    }

    /// When the probation of the release live in `live_module` ends, if it is on probation
    /// in boot `boot_id` now.
    pub fn probation_until(&self, boot_id: &str, live_module: Option<&str>) -> Option<String> {
        let record = self.state.probation().ok()??;
        let on = record.boot_id == boot_id
            && live_module == Some(record.module_name.as_str())
            && jiff::Timestamp::now() < record.until;
        on.then(|| record.until.to_string())
    }

    /// At start: judges the probation record against the clean-stop mark and this boot, and
    /// counts an unclean end against the release. Removes the clean-stop mark, which speaks
    /// only for the boot before this start.
    pub(crate) async fn recover_probation(&self, boot_id: &str) -> Option<Outcome> {
        let outcome = self.judge_previous_boot(boot_id).await;
        if let Err(e) = self.state.remove(CLEAN_STOP_FILE) {
            tracing::warn!(error = %e, "removing the clean-stop mark failed");
        }
        outcome
    }

    /// Drops the probation record and the clean-stop mark without judging them.
    pub(crate) fn forget_probation(&self) {
        let removed = self
            .state
            .end_probation()
            .and_then(|()| self.state.remove(CLEAN_STOP_FILE));
        if let Err(e) = removed {
            tracing::warn!(error = %e, "removing the probation record failed");
        }
    }

    async fn judge_previous_boot(&self, boot_id: &str) -> Option<Outcome> {
        let read = self.state.probation().and_then(|record| {
            let mark: Option<CleanStop> = self.state.read_json(CLEAN_STOP_FILE)?;
            Ok((record, mark))
        });
        let (record, mark) = match read {
            Ok(found) => found,
            Err(e) => return Some(host_outcome(e.to_string(), None)),
        };
        let now = jiff::Timestamp::now();
        let ended = match judge(record.as_ref(), mark.as_ref(), boot_id, now) {
            PreviousBoot::NoProbation | PreviousBoot::ThisBoot { over: false } => return None,
            PreviousBoot::ThisBoot { over: true } | PreviousBoot::Clean => {
                if let Err(e) = self.state.end_probation() {
                    tracing::warn!(error = %e, "ending the probation failed");
                }
                return None;
            }
            PreviousBoot::Unclean(ended) => ended,
        };
        let id = ended.release_id.clone();
        let counted = self.count_unclean_end(&ended, boot_id, now);
        Some(match counted {
            Ok(message) => Outcome::failed(
                NodePatchState::CrashSuspected,
                Failure::new(NodeErrorReason::CrashSuspected, message),
                Some(&id),
                PatchTimings::default(),
            ),
            Err(e) => host_outcome(
                format!(
                    "recording the unclean end of boot {} with release {id} failed: {e}",
                    ended.boot_id
                ),
                Some(&id),
            ),
        })
    }

    /// Counts the unclean end of `ended`'s boot; refuses the release for good at the limit.
    fn count_unclean_end(
        &self,
        ended: &ProbationRecord,
        boot_id: &str,
        now: jiff::Timestamp,
    ) -> Result<String, AgentError> {
        let mut ends = self.state.unclean_ends()?;
        let entry = count_unclean_end(&mut ends, ended);
        self.state.write_json(UNCLEAN_ENDS_FILE, &ends)?;
        if entry.count >= UNCLEAN_ENDS_LIMIT {
            self.state.refuse(RefusedRelease {
                id: ended.release_id.clone(),
                crashed_boot_id: ended.boot_id.clone(),
                detected_at: now.to_string(),
                cause: RefusalCause::Probation,
            })?;
        }
        self.state.end_probation()?;
        Ok(unclean_end_message(ended, &entry, boot_id))
    }
}

fn host_outcome(message: String, release: Option<&str>) -> Outcome {
    Outcome::failed(
        NodePatchState::Failed,
        host_failure(message),
        release,
        PatchTimings::default(),
    )
}
