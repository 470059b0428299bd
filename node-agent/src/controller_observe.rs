//! Observing the kernel between events: a task reads sysfs every
//! [`OBSERVE_EVERY`](crate::liveness::OBSERVE_EVERY) (which keeps `/healthz` honest) and
//! wakes the controller only when what it sees changed, so an idle node costs no API call.
//! The controller then reports drift, a kernel it cannot read, or simply what the kernel
//! shows now, writing status only when it differs.

use std::sync::Arc;

use kpersist_crds::LivePatchNodeStatus;
use kpersist_kmod::kernel::{Kernel, PatchState};
use tokio::sync::Notify;

use super::{NodeController, same_status};
use crate::engine::{Engine, now};
use crate::liveness::OBSERVE_EVERY;
use crate::status::{Report, with_ready};

/// Reads the kernel every [`OBSERVE_EVERY`] and wakes `changed` when the livepatches, or
/// whether they could be read, differ from the read before.
pub(super) async fn watch_kernel<K: Kernel + Clone + 'static>(
    engine: Engine<K>,
    changed: Arc<Notify>,
) {
    let mut every = tokio::time::interval(OBSERVE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Option<Vec<PatchState>>> = None;
    loop {
        every.tick().await;
        let seen = engine.observe().await.ok().map(|o| o.loaded);
        if last.as_ref().is_some_and(|l| *l != seen) {
            changed.notify_one();
        }
        last = Some(seen);
    }
}

/// Aborts a task when dropped, so the observer ends with the controller on every return.
pub(super) struct Background(pub(super) tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<K: Kernel + Clone + 'static> NodeController<K> {
    /// The status after a fresh read of the kernel, given `prior` (the status written last):
    /// with the drift found, with `Ready` False when the kernel cannot be read, or, when
    /// `refresh`, as the kernel shows it now. Written only when it differs; `None` when there
    /// is nothing to compare with or the write failed.
    pub(super) async fn observed_status(
        &self,
        prior: Option<&LivePatchNodeStatus>,
        refresh: bool,
    ) -> Option<LivePatchNodeStatus> {
        let prior = prior?;
        let generation = prior.observed_generation;
        let status = match self.engine.drift(prior).await {
            Ok(Some(report)) => self.engine.status(&report, generation, Some(prior)).await,
            Ok(None) if refresh => {
                // A status of an earlier boot waits for the reconcile of the first event.
                let boot = self.engine.observe().await.ok().map(|o| o.boot_id);
                if boot.is_none() || boot != prior.boot_id {
                    return None;
                }
                let report = Report::from_status(prior);
                self.engine.status(&report, generation, Some(prior)).await
            }
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(error = %e, "reading the kernel's livepatch state failed");
                let not_live = self
                    .engine
                    .liveness()
                    .check(std::time::Instant::now())
                    .err();
                Ok(with_ready(prior, not_live.as_ref(), &now()))
            }
        };
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(error = %e, "building the status after a kernel read failed");
                return None;
            }
        };
        if same_status(prior, &status) {
            return Some(status);
        }
        match self.write_status(&status).await {
            Ok(()) => Some(status),
            Err(e) => {
                tracing::warn!(error = %e, "writing the observed status failed");
                None
            }
        }
    }
}
