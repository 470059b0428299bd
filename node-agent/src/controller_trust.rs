//! The controller's trust gate: before the engine sees `spec.desired`, read the policy it
//! names (`get` is the agent's only right on policies), fetch that policy's signed index and
//! check the release against it (see [`crate::trust`]). A refusal is written as status
//! `UntrustedRelease` and nothing is downloaded or loaded.

use kpersist_crds::{
    DesiredPatch, LivePatchNodeStatus, LivePatchPolicy, NodeError, NodeErrorReason, NodePatchState,
    PatchAction, PatchRelease,
};
use kpersist_kmod::kernel::Kernel;

use super::{NodeController, is_transient_or_unsynced, retry_when, same_status};
use crate::checks::Failure;
use crate::engine::now;
use crate::error::AgentError;
use crate::status::Report;
use crate::trust::{PolicyTrust, trusted_desired};

impl<K: Kernel + Clone + 'static> NodeController<K> {
    /// `desired` as verified against the signed index of the policy it names, or why not.
    /// A desired state that loads nothing (revert to none) needs no policy.
    pub(super) async fn trusted(&self, desired: &DesiredPatch) -> Result<DesiredPatch, Failure> {
        if desired.release.is_none() {
            return Ok(desired.clone());
        }
        if let Some((seen, trusted)) = self.lock_verified().as_ref()
            && seen == desired
        {
            return Ok(trusted.clone());
        }
        let trust = PolicyTrust::of_policy(&self.policy(desired).await?)?;
        // A revert that can load its cached module does not wait out a repository outage.
        let from_cache = self.revert_from_cache(desired);
        let fetched = if from_cache {
            self.fetcher.fetch_signed_index_once(&trust).await
        } else {
            self.fetcher.fetch_signed_index(&trust).await
        };
        let unreachable = fetched.is_err();
        let checked = match fetched {
            Ok(signed) => trusted_desired(desired, &trust, &signed),
            Err(failure) => {
                let id = desired.release.as_ref().map_or("", |r| r.id.as_str());
                Err(Failure {
                    message: format!("release {id}: {}", failure.message),
                    ..failure
                })
            }
        };
        match checked {
            Ok(trusted) => {
                *self.lock_verified() = Some((desired.clone(), trusted.clone()));
                Ok(trusted)
            }
            // A revert must work while the repository is down, and after it pruned the
            // release the node goes back to. Only verified modules enter the host cache,
            // and the engine checks the cached bytes against the release's hash and module
            // name before loading them.
            Err(failure)
                if from_cache
                    && (unreachable || failure.reason == NodeErrorReason::RevertFailed) =>
            {
                tracing::warn!(message = %failure.message, "reverting to the cached module");
                Ok(DesiredPatch {
                    repository: Some(trust.access.clone()),
                    ..desired.clone()
                })
            }
            Err(failure) => Err(failure),
        }
    }

    /// Whether `desired` is a revert to a release whose module is in the host cache.
    fn revert_from_cache(&self, desired: &DesiredPatch) -> bool {
        desired.action == PatchAction::Revert
            && desired.release.as_ref().is_some_and(|release| {
                let state = self.engine.patcher().state_dir();
                state.module_path(&release.sha256).is_file()
            })
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, Option<(DesiredPatch, DesiredPatch)>> {
        // A poisoned memo only costs one more index fetch.
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The policy `desired` names, read with `get` (the agent's only right on policies).
    async fn policy(&self, desired: &DesiredPatch) -> Result<LivePatchPolicy, Failure> {
        let release = desired.release.as_ref().map_or("", |r| r.id.as_str());
        let name = &desired.policy;
        // Up to a minute of retries: a 403 right after an API server restart goes away
        // once its RBAC caches have synced; one that stays is a missing ClusterRole rule.
        let read = || self.policies.get_opt(name);
        let backoff = crate::backoff::policy_read();
        match retry_when(
            "reading the LivePatchPolicy",
            backoff,
            is_transient_or_unsynced,
            read,
        )
        .await
        {
            Ok(Some(policy)) => Ok(policy),
            Ok(None) => Err(Failure::new(
                NodeErrorReason::UntrustedRelease,
                format!(
                    "release {release}: spec.desired names policy {name:?}, which does not \
                     exist (it was deleted, or the operator did not write this spec), so the \
                     release cannot be verified; nothing is loaded"
                ),
            )),
            Err(e) => Err(Failure::new(
                NodeErrorReason::UntrustedRelease,
                format!(
                    "release {release}: cannot read LivePatchPolicy {name} to verify it ({e}); \
                     the agent's ClusterRole needs get on livepatchpolicies (upgrade the chart)"
                ),
            )),
        }
    }

    /// Reports `failure` for `desired` without acting on it.
    pub(super) async fn refuse(
        &self,
        desired: &DesiredPatch,
        failure: Failure,
        generation: Option<i64>,
        prior: Option<&LivePatchNodeStatus>,
    ) -> Result<LivePatchNodeStatus, AgentError> {
        let release = desired
            .release
            .as_ref()
            .map(|r: &PatchRelease| r.id.clone());
        tracing::warn!(node = %self.name, ?release, reason = ?failure.reason, message = %failure.message, "spec.desired refused");
        let report = Report {
            state: NodePatchState::Failed,
            error: Some(NodeError {
                reason: failure.reason,
                message: failure.message,
                release,
                at: Some(now()),
            }),
            timings: None,
            notes: Vec::new(),
            drift: Vec::new(),
        };
        let status = self.engine.status(&report, generation, prior).await?;
        if prior.is_none_or(|p| !same_status(p, &status)) {
            self.write_status(&status).await?;
        }
        Ok(status)
    }
}
