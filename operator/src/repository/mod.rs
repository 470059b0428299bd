//! Polling each policy's patch repository: a conditional GET of `index.json` at the policy's
//! `checkInterval`, its detached signature checked against the policy's trusted keys, and
//! the result kept in memory as the verified view the engine reads. An index that fails to
//! fetch or verify changes nothing: the previous verified view stays, and the failure shows
//! as `RepositoryReachable=False` with a reason.

pub mod fetch;
pub mod keys;
mod poll;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kpersist_crds::PolicyCondition;

use crate::engine::RepositoryView;
pub use poll::poll_repository;

/// Condition type this module owns.
pub const CONDITION_TYPE: &str = "RepositoryReachable";

/// Why a poll did not produce a verified index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Fetching `index.json` or its signature failed (network, TLS, HTTP status).
    Unreachable,
    /// The signature is malformed or made by none of the trusted keys.
    SignatureInvalid,
    /// The signature verifies but the index is not a valid index.
    IndexInvalid,
    /// The policy has no usable trusted key.
    NoTrustedKeys,
}

impl FailureReason {
    /// The condition reason, CamelCase.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unreachable => "Unreachable",
            Self::SignatureInvalid => "SignatureInvalid",
            Self::IndexInvalid => "IndexInvalid",
            Self::NoTrustedKeys => "NoTrustedKeys",
        }
    }

    /// The `result` label of `kpersist_repository_polls_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::SignatureInvalid => "signature_invalid",
            Self::IndexInvalid => "index_invalid",
            Self::NoTrustedKeys => "no_trusted_keys",
        }
    }
}

/// A failed poll: reason and a message naming the URL and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollFailure {
    /// Machine-readable reason.
    pub reason: FailureReason,
    /// For people.
    pub message: String,
}

/// How the last poll went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// A new index arrived and verified.
    Updated {
        /// Releases in the index.
        releases: usize,
    },
    /// The server said 304; the verified view is current.
    NotModified,
    /// Nothing changed; see the failure.
    Failed(PollFailure),
}

impl PollOutcome {
    /// The `result` label of `kpersist_repository_polls_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Updated { .. } => "updated",
            Self::NotModified => "not_modified",
            Self::Failed(failure) => failure.reason.metric_label(),
        }
    }
}

/// What the operator remembers of one policy's repository between polls. Lost on restart,
/// which costs one full fetch, nothing more.
#[derive(Debug, Clone)]
pub struct RepositoryState {
    /// What the state was fetched for; a change of any of it starts over.
    pub source: RepositorySource,
    /// The `ETag` of the verified index, sent as `If-None-Match`.
    pub etag: Option<String>,
    /// The last verified view.
    pub view: Option<Arc<RepositoryView>>,
    /// When the last poll ran.
    pub polled_at: Option<jiff::Timestamp>,
    /// When an index was last fetched and verified (or confirmed by 304).
    pub verified_at: Option<jiff::Timestamp>,
    /// How the last poll went.
    pub outcome: Option<PollOutcome>,
    /// Problems with individual keys, shown with a successful poll.
    pub key_problems: Vec<String>,
    /// The trusted keys the view was verified with, sorted; a view verified with keys no
    /// longer trusted (a rotated Secret) is dropped rather than kept on a 304.
    pub verified_with: Vec<String>,
}

/// The parts of a policy's repository spec that a cached index depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepositorySource {
    /// `repository.url`.
    pub url: String,
    /// `repository.caBundle`.
    pub ca_bundle: Option<String>,
    /// `repository.allowedRedirectHosts`.
    pub allowed_redirect_hosts: Vec<String>,
    /// Inline keys and the Secret reference, as given.
    pub keys: Vec<String>,
    /// `trustedKeysSecret` as `namespace/name`.
    pub keys_secret: Option<String>,
}

impl RepositorySource {
    /// The source of a policy's repository spec.
    pub fn of(spec: &kpersist_crds::RepositorySpec) -> Self {
        Self {
            url: spec.url.clone(),
            ca_bundle: spec.ca_bundle.clone(),
            allowed_redirect_hosts: spec.allowed_redirect_hosts.clone(),
            keys: spec.trusted_keys.clone(),
            keys_secret: spec
                .trusted_keys_secret
                .as_ref()
                .map(|s| format!("{}/{}", s.namespace, s.name)),
        }
    }
}

impl RepositoryState {
    /// A state that has never polled.
    pub fn new(source: RepositorySource) -> Self {
        Self {
            source,
            etag: None,
            view: None,
            polled_at: None,
            verified_at: None,
            outcome: None,
            key_problems: Vec::new(),
            verified_with: Vec::new(),
        }
    }

    /// Whether a poll is due at `now` with the given interval. No client required.
    pub fn due(&self, now: jiff::Timestamp, interval: Duration) -> bool {
        match self.polled_at {
            None => true,
            Some(at) => elapsed(at, now) >= interval,
        }
    }

    /// How long until the next poll is due.
    pub fn next_poll_in(&self, now: jiff::Timestamp, interval: Duration) -> Duration {
        match self.polled_at {
            None => Duration::ZERO,
            Some(at) => interval.saturating_sub(elapsed(at, now)),
        }
    }

    /// The `RepositoryReachable` condition for the last poll, without transition time (the
    /// caller keeps the old one when the status did not change). `None` before any poll.
    pub fn condition(&self) -> Option<PolicyCondition> {
        let (status, reason, message) = match self.outcome.as_ref()? {
            PollOutcome::Failed(failure) => {
                let kept = if self.view.is_some() {
                    " The last verified index stays in use."
                } else {
                    ""
                };
                (
                    "False",
                    failure.reason.reason(),
                    format!("{}{kept}", failure.message),
                )
            }
            PollOutcome::Updated { .. } | PollOutcome::NotModified => {
                let releases = self.view.as_ref().map_or(0, |v| v.index.releases.len());
                let mut message = format!(
                    "{} verified: {releases} release(s)",
                    fetch::file_url(&self.source.url, "index.json")
                );
                for problem in &self.key_problems {
                    message.push_str("; ignored ");
                    message.push_str(problem);
                }
                ("True", "Verified", message)
            }
        };
        Some(PolicyCondition {
            type_: CONDITION_TYPE.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            last_transition_time: None,
            observed_generation: None,
        })
    }
}

fn elapsed(from: jiff::Timestamp, to: jiff::Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

/// Every policy's repository state, keyed by policy name. A reconcile takes its policy's
/// state out, polls without holding the lock, and puts it back; the controller never runs
/// two reconciles of one policy at once.
#[derive(Debug, Default, Clone)]
pub struct RepositoryStates {
    states: Arc<Mutex<HashMap<String, RepositoryState>>>,
}

impl RepositoryStates {
    /// The policy's state, fresh when none is kept or its source changed.
    pub fn take(&self, policy: &str, source: RepositorySource) -> RepositoryState {
        let kept = self.lock().remove(policy);
        match kept {
            Some(state) if state.source == source => state,
            _ => RepositoryState::new(source),
        }
    }

    /// Stores the policy's state.
    pub fn put(&self, policy: &str, state: RepositoryState) {
        self.lock().insert(policy.to_string(), state);
    }

    /// Forgets a deleted policy.
    pub fn forget(&self, policy: &str) {
        self.lock().remove(policy);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RepositoryState>> {
        // A poisoned map only means a reconcile panicked mid-insert; the data is still a
        // valid cache (worst case one extra fetch).
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }
}
