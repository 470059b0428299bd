//! Leader election over a `coordination.k8s.io/v1` Lease, so two replicas can run and only
//! one reconciles. kube 5 ships no elector, so this follows client-go's protocol: the leader
//! renews `renewTime`; a candidate takes over once it has seen the record unchanged for the
//! lease duration (measured on its own monotonic clock, so clock skew between replicas does
//! not matter); the leader releases the Lease on a clean shutdown so the next one starts at
//! once. Client required.
//!
//! A leader must stop writing before any other replica can take the Lease over. Another
//! replica takes over no sooner than `lease_duration` after it first sees our latest
//! renewal, which it cannot see before we sent it. So the leader counts its renew deadline
//! from the moment it *started* its last successful renewal, bounds every renewal call by
//! that deadline (a call that hangs on a slow API server is abandoned, not awaited), and
//! steps down when the deadline passes: `renew_deadline < lease_duration` leaves the
//! difference for the step-down to take effect. Without that bound a call could outlast
//! the Lease by minutes: kube's client sets no read timeout and itself retries 429, 503
//! and 504 answers with a backoff growing up to many minutes.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;

/// Timings of the election, client-go's defaults.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Name of the Lease object.
    pub name: String,
    /// Namespace of the Lease object.
    pub namespace: String,
    /// This replica's identity, unique among the candidates (the pod name).
    pub identity: String,
    /// How long a record must stay unchanged before another replica may take over.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long steps down. Must be shorter than
    /// `lease_duration`, by enough for the step-down to take effect.
    pub renew_deadline: Duration,
    /// How often the leader renews and candidates retry.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// A config with client-go's default timings (15 s, 10 s, 2 s).
    pub fn new(name: String, namespace: String, identity: String) -> Self {
        Self {
            name,
            namespace,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a candidate does with the Lease it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No Lease exists: create it, holding it.
    Create,
    /// It holds the Lease: renew it.
    Renew,
    /// The Lease is free or its holder stopped renewing: take it over.
    TakeOver,
    /// Someone else holds a live Lease: wait.
    Wait,
}

/// Decides the claim from the Lease's spec and whether its record has gone stale. Pure.
pub fn claim(spec: Option<&LeaseSpec>, identity: &str, stale: bool) -> Claim {
    let Some(spec) = spec else {
        return Claim::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Claim::Renew,
        None | Some("") => Claim::TakeOver,
        Some(_) if stale => Claim::TakeOver,
        Some(_) => Claim::Wait,
    }
}

/// The part of a Lease record whose change proves its holder is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<String>,
    transitions: Option<i32>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            transitions: spec.lease_transitions,
        }
    }
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDown {
    /// Another replica holds the Lease.
    Lost,
    /// No renewal succeeded within the renew deadline.
    DeadlinePassed,
}

/// One replica's side of the election.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<(Record, Instant)>,
    /// When the last successful acquisition or renewal started.
    renewed_at: Option<Instant>,
}

impl LeaderElector {
    /// An elector for the Lease named in `config`.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        let api = Api::namespaced(client, &config.namespace);
        Self {
            api,
            config,
            observed: None,
            renewed_at: None,
        }
    }

    /// The election's settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Reads the Lease and creates, renews or takes it over when allowed. Returns whether
    /// this replica holds it afterwards. A conflict (someone else wrote first) is a loss,
    /// not an error.
    #[tracing::instrument(skip(self), fields(lease = %self.config.name))]
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let started = Instant::now();
        let current = self.api.get_opt(&self.config.name).await?;
        let now = Instant::now();
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let stale = match spec {
            Some(spec) => {
                let record = Record::of(spec);
                match &self.observed {
                    Some((seen, at)) if *seen == record => {
                        now.duration_since(*at) >= self.config.lease_duration
                    }
                    _ => {
                        self.observed = Some((record, now));
                        false
                    }
                }
            }
            None => false,
        };
        let decision = claim(spec, &self.config.identity, stale);
        let result = match decision {
            Claim::Wait => return Ok(false),
            Claim::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.held_spec(None, true)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Claim::Renew | Claim::TakeOver => {
                let Some(mut lease) = current else {
                    return Ok(false);
                };
                let taking_over = decision == Claim::TakeOver;
                lease.spec = Some(self.held_spec(lease.spec.as_ref(), taking_over));
                // The replace carries the resourceVersion we read: if another replica wrote
                // in between, the API answers 409 and we have not won.
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(written) => {
                self.renewed_at = Some(started);
                if let Some(spec) = written.spec.as_ref() {
                    self.observed = Some((Record::of(spec), Instant::now()));
                }
                if decision != Claim::Renew {
                    tracing::info!(identity = %self.config.identity, "acquired the leader lease");
                }
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => {
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    fn held_spec(&self, previous: Option<&LeaseSpec>, acquiring: bool) -> LeaseSpec {
        let now = MicroTime(jiff::Timestamp::now());
        // Like client-go: every change of holder on an existing Lease is a transition,
        // including taking over a released one.
        let transition = acquiring && previous.is_some();
        let previous = previous.cloned().unwrap_or_default();
        let transitions = previous.lease_transitions.unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if acquiring {
                Some(now.clone())
            } else {
                previous.acquire_time.clone()
            },
            renew_time: Some(now),
            lease_transitions: Some(if transition {
                transitions.saturating_add(1)
            } else {
                transitions
            }),
            ..previous
        }
    }

    /// Blocks until this replica holds the Lease, retrying every retry period. API errors
    /// are logged and retried (an apiserver blip must not kill a waiting candidate), except
    /// 403: missing RBAC never heals by waiting, so it is returned for the caller to exit.
    /// An attempt that takes longer than the renew deadline is abandoned and retried: a
    /// lead won that late would already be due to step down.
    pub async fn acquire(&mut self) -> Result<(), kube::Error> {
        loop {
            let attempt =
                tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew());
            match attempt.await {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => {}
                Ok(Err(kube::Error::Api(status))) if status.is_forbidden() => {
                    return Err(kube::Error::Api(status));
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "reading the leader lease failed; retrying")
                }
                Err(_) => tracing::warn!(
                    timeout = ?self.config.renew_deadline,
                    "the leader lease call did not answer in time; retrying"
                ),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews every retry period until the Lease is lost to another holder or no renewal
    /// succeeded within the renew deadline, then returns why; the caller steps down (stops
    /// writing) at once. Returns at once when the Lease was never acquired.
    pub async fn hold(&mut self) -> StepDown {
        // Renewals are spaced from the start of the previous one, so the first comes at
        // once after an acquisition that took long.
        let Some(mut last_try) = self.renewed_at else {
            return StepDown::DeadlinePassed;
        };
        while let Some(renewed_at) = self.renewed_at {
            let deadline = renewed_at + self.config.renew_deadline;
            tokio::time::sleep_until((last_try + self.config.retry_period).min(deadline)).await;
            last_try = Instant::now();
            if last_try >= deadline {
                break;
            }
            // The renewal may take only what is left of the deadline: a call that hangs
            // must not keep this replica leading past it.
            match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    self.renewed_at = None;
                    tracing::error!("another replica holds the leader lease");
                    return StepDown::Lost;
                }
                Ok(Err(error)) => tracing::warn!(%error, "renewing the leader lease failed"),
                Err(_) => tracing::warn!("renewing the leader lease did not answer in time"),
            }
        }
        self.renewed_at = None;
        tracing::error!(
            deadline = ?self.config.renew_deadline,
            "could not renew the leader lease in time; stepping down"
        );
        StepDown::DeadlinePassed
    }

    /// A handle that can release the Lease after the elector moved into its renewal task.
    pub fn releaser(&self) -> LeaseReleaser {
        LeaseReleaser {
            api: self.api.clone(),
            name: self.config.name.clone(),
            identity: self.config.identity.clone(),
        }
    }
}

/// Releases the Lease on shutdown.
#[derive(Clone)]
pub struct LeaseReleaser {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl LeaseReleaser {
    /// Gives the Lease up so another replica takes over without waiting for it to expire.
    /// Only clears the holder when it is still us.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        tracing::info!("released the leader lease");
        Ok(())
    }
}

/// This replica's identity: the pod name when the chart passes it, else the host name.
pub fn default_identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("kpersist-operator-{}", std::process::id()))
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
