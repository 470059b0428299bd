//! One reconcile of the node: read the truth from the kernel and the state directory, decide
//! with [`plan`], carry the decision out with the [`Patcher`], and build the status. Both the
//! Kubernetes controller and the one-shot local mode drive this.

use std::time::Duration;

use kpersist_crds::{DesiredPatch, LivePatchNodeStatus, NodePatchState, parse_duration};
use kpersist_kmod::kernel::Kernel;

use crate::drift::{find_drift, merge};
use crate::error::AgentError;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::patch_run::{Action, Progress, Request};
use crate::patcher::Patcher;
use crate::plan::{NodeView, Plan, hold_after_failure, plan};
use crate::status::{HostRecords, Observation, Report, build_status, live_release};

/// The node's reconciler.
#[derive(Clone)]
pub struct Engine<K> {
    patcher: Patcher<K>,
    metrics: Metrics,
    /// Module names that are kpersist's besides those the state directory records.
    extra_kpersist: Vec<String>,
    /// When the agent started, and whether an apply has ended Applied since.
    started: std::time::Instant,
    applied_since_start: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// What the agent's kernel reads and watch saw last, for `/healthz` and `Ready`.
    liveness: Liveness,
}

/// The transition timeout used when `spec.desired.transitionTimeout` cannot be parsed.
const FALLBACK_TIMEOUT: Duration = Duration::from_secs(60);
/// The probation used when `spec.desired.probation` cannot be parsed (the API default).
const FALLBACK_PROBATION: Duration = Duration::from_secs(3600);

impl<K: Kernel + Clone + 'static> Engine<K> {
    /// An engine over `patcher`, recording into `metrics`.
    pub fn new(patcher: Patcher<K>, metrics: Metrics) -> Engine<K> {
        let started = std::time::Instant::now();
        Engine {
            patcher,
            metrics,
            extra_kpersist: Vec::new(),
            started,
            applied_since_start: Default::default(),
            liveness: Liveness::new(started),
        }
    }

    /// The liveness record every kernel read of [`Engine::observe`] updates.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// Also treats these module names as kpersist's (local mode: every name in the index).
    pub fn with_kpersist_modules(mut self, names: Vec<String>) -> Engine<K> {
        self.extra_kpersist = names;
        self
    }

    /// Measures the time from the agent's start to its first apply that ended Applied: after
    /// a reboot, how long the node ran without its patch.
    fn note_first_applied(&self, outcome: &crate::patch_run::Outcome) {
        use std::sync::atomic::Ordering;
        if outcome.state != NodePatchState::Applied
            || self.applied_since_start.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let elapsed = self.started.elapsed();
        self.metrics.set_start_to_applied(elapsed);
        tracing::info!(
            start_to_applied_ms = elapsed.as_millis() as u64,
            "first apply since the agent started"
        );
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The patcher.
    pub fn patcher(&self) -> &Patcher<K> {
        &self.patcher
    }

    /// Reads what the kernel shows now, and records in the liveness record whether that
    /// worked.
    pub async fn observe(&self) -> Result<Observation, AgentError> {
        let observation = self.read_kernel().await;
        let error = observation.as_ref().err().map(ToString::to_string);
        self.liveness.observed(std::time::Instant::now(), error);
        observation
    }

    async fn read_kernel(&self) -> Result<Observation, AgentError> {
        let p = &self.patcher;
        let identity = p.kernel_call(|k| k.identity()).await.ok();
        let supported = p.kernel_call(|k| Ok(k.livepatch_supported())).await?;
        let boot_id = p.kernel_call(|k| k.boot_id()).await?;
        let loaded = p.kernel_call(|k| k.loaded_patches()).await?;
        Ok(Observation {
            identity,
            supported,
            boot_id,
            loaded,
        })
    }

    /// What changed in the kernel behind the agent's back since `prior` (the status written
    /// last): `None` when nothing did, else the report to write, which keeps `prior`'s and
    /// adds the drift found. Drift that took the release away makes the node `Failed`
    /// (reason `ForeignLivepatch` when another tool's patch replaced it, `HostError`
    /// otherwise), which stands for this generation and boot: the agent does not fight
    /// whoever disabled or replaced its patch, the next spec or a reboot applies it again.
    pub async fn drift(&self, prior: &LivePatchNodeStatus) -> Result<Option<Report>, AgentError> {
        let obs = self.observe().await?;
        let record = self.patcher.state_dir().applied()?;
        let known: Vec<String> = record
            .known_modules
            .iter()
            .chain(&self.extra_kpersist)
            .cloned()
            .collect();
        let found = find_drift(prior, &obs.boot_id, &obs.loaded, &known);
        if found.is_empty() {
            return Ok(None);
        }
        let mut report = Report::from_status(prior);
        for d in &found {
            tracing::warn!(kind = d.kind.as_str(), message = %d.message, "drift");
            self.metrics.observe_drift(d.kind);
        }
        let foreign_enabled = obs
            .loaded
            .iter()
            .any(|p| p.enabled && !known.contains(&p.name));
        let release = prior
            .applied
            .as_ref()
            .map(|a| a.id.clone())
            .unwrap_or_default();
        if let Some(lost) = found.iter().find(|d| d.kind.loses_the_release()) {
            report.state = NodePatchState::Failed;
            report.error = Some(lost.failure(&release, foreign_enabled, &now()));
        }
        report.drift = merge(&report.drift, found);
        Ok(Some(report))
    }

    /// Handles a crash marker left from before this start; see [`Patcher::recover`].
    pub async fn recover(&self) -> Option<Report> {
        let outcome = self.patcher.recover().await?;
        self.metrics.observe_run(&outcome);
        Some(Report::from_outcome(outcome, &now()))
    }

    /// Brings the node to `desired` (the spec of `generation`), given the status written
    /// before (`prior`), and returns the report of what happened.
    pub async fn reconcile(
        &self,
        desired: Option<&DesiredPatch>,
        prior: Option<&LivePatchNodeStatus>,
        generation: Option<i64>,
        progress: Progress<'_>,
    ) -> Result<Report, AgentError> {
        self.metrics.set_policy(desired.map(|d| d.policy.as_str()));
        let obs = self.observe().await?;
        let Some(identity) = obs.identity.clone() else {
            return Ok(Report::state(NodePatchState::Unsupported));
        };
        let record = self.patcher.state_dir().applied()?;
        let refused = self.patcher.state_dir().refused()?;
        self.patcher
            .state_dir()
            .settle_held_generations(generation)?;
        let unclean_ends = self.patcher.state_dir().unclean_ends()?;
        let known: Vec<&String> = record
            .known_modules
            .iter()
            .chain(&self.extra_kpersist)
            .collect();
        let view = NodeView {
            supported: obs.supported,
            identity: &identity,
            applied: live_release(&record, &obs.loaded),
            kpersist_loaded: obs.loaded.iter().any(|p| known.contains(&&p.name)),
            refused: &refused,
            unclean_ends: &unclean_ends,
            generation,
        };
        let decision = plan(desired, &view);
        // Even a plan that would do nothing keeps a failure standing: after `NewTaint` the
        // release is loaded and would otherwise read as Applied on the next event.
        if hold_after_failure(prior, generation, &obs.boot_id) {
            return Ok(prior
                .map(Report::from_status)
                .unwrap_or_else(|| Report::state(NodePatchState::Failed)));
        }
        let timeout = desired
            .and_then(|d| parse_duration(&d.transition_timeout).ok())
            .unwrap_or(FALLBACK_TIMEOUT);
        let kmsg_checks = desired.is_none_or(|d| d.kmsg_checks);
        let outcome = match decision {
            Plan::Keep(state) => {
                // The timings and findings of the run that got here stay until the next run.
                let before = prior
                    .filter(|p| p.state == Some(state))
                    .map(Report::from_status);
                return Ok(Report {
                    state,
                    error: None,
                    ..before.unwrap_or_else(|| Report::state(state))
                });
            }
            Plan::Refuse {
                state,
                failure,
                release,
            } => {
                // A refusal right after a crash was found keeps the crash as its reason.
                if let Some(p) = prior.filter(|p| {
                    p.state == Some(NodePatchState::CrashSuspected)
                        && p.last_error.as_ref().is_some_and(|e| e.release == release)
                }) {
                    return Ok(Report::from_status(p));
                }
                let outcome = crate::patch_run::Outcome::failed(
                    state,
                    failure,
                    release.as_deref(),
                    Default::default(),
                );
                return Ok(Report {
                    timings: None,
                    ..Report::from_outcome(outcome, &now())
                });
            }
            Plan::Load { release, action } => {
                // The plan loads a held release only for a newer spec: it asked again, once.
                self.patcher.state_dir().lift_hold(&release.id)?;
                let probation = desired
                    .filter(|_| action == Action::Apply)
                    .map(|d| parse_duration(&d.probation).unwrap_or(FALLBACK_PROBATION));
                let req = Request {
                    policy: desired.map(|d| d.policy.clone()),
                    transition_timeout: timeout,
                    kmsg_checks,
                    repository: desired.and_then(|d| d.repository.clone()),
                    generation,
                    probation,
                    replace_foreign: desired.is_some_and(|d| d.replace_foreign),
                    kpersist_modules: self.extra_kpersist.clone(),
                    ..Request::new(release)
                };
                let outcome = self.patcher.load_release(&req, action, progress).await;
                self.metrics.observe_run(&outcome);
                self.note_first_applied(&outcome);
                outcome
            }
            Plan::RevertToNone => {
                let outcome = self
                    .patcher
                    .revert_to_none(&self.extra_kpersist, timeout, progress)
                    .await;
                self.metrics.observe_run(&outcome);
                outcome
            }
        };
        Ok(Report::from_outcome(outcome, &now()))
    }

    /// The status for `report`, read from the kernel and the state directory now.
    pub async fn status(
        &self,
        report: &Report,
        observed_generation: Option<i64>,
        prior: Option<&LivePatchNodeStatus>,
    ) -> Result<LivePatchNodeStatus, AgentError> {
        let obs = self.observe().await?;
        let state = self.patcher.state_dir();
        let record = state.applied()?;
        let live_module = live_release(&record, &obs.loaded).map(|r| r.module_name.as_str());
        let probation_until = self.patcher.probation_until(&obs.boot_id, live_module);
        let mut refused: Vec<String> = state.refused()?.into_iter().map(|r| r.id).collect();
        for held in state.unclean_ends()?.into_iter().filter(|e| e.held) {
            if !refused.contains(&held.id) {
                refused.push(held.id);
            }
        }
        let host = HostRecords {
            applied: &record,
            refused,
            probation_until,
        };
        let not_live = self.liveness.check(std::time::Instant::now()).err();
        let status = build_status(
            &obs,
            &host,
            report,
            observed_generation,
            prior,
            not_live.as_ref(),
            &now(),
        );
        self.metrics.set_drift(&report.drift);
        let kernel = status.kernel_release.clone().unwrap_or_default();
        self.metrics.set_applied(status.applied.as_ref(), &kernel);
        Ok(status)
    }
}

/// The time now, RFC 3339.
pub fn now() -> String {
    jiff::Timestamp::now().to_string()
}
