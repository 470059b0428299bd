//! Polling each policy's patch repository: a conditional GET of `index.json` at the policy's
//! `checkInterval`, its detached signature checked against the policy's trusted keys, and
//! the result kept in memory as the verified view the engine reads. An index that fails to
//! fetch or verify changes nothing: the previous verified view stays, and the failure shows
//! as `RepositoryReachable=False` with a reason. An index whose serial is below the highest
//! one accepted for the policy is refused as a rollback; a verified index past its expiry
//! stays in use but shows as `RepositoryReachable=False` with reason `Expired` (stale).

pub mod fetch;
pub mod keys;
mod poll;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kpersist_crds::{Condition, ConditionStatus};

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
    /// The index verifies but its serial is below one already accepted for the policy.
    RolledBack,
}

impl FailureReason {
    /// The condition reason, CamelCase.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unreachable => "Unreachable",
            Self::SignatureInvalid => "SignatureInvalid",
            Self::IndexInvalid => "IndexInvalid",
            Self::NoTrustedKeys => "NoTrustedKeys",
            Self::RolledBack => "RolledBack",
        }
    }

    /// The `result` label of `kpersist_repository_polls_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::SignatureInvalid => "signature_invalid",
            Self::IndexInvalid => "index_invalid",
            Self::NoTrustedKeys => "no_trusted_keys",
            Self::RolledBack => "rolled_back",
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
    /// The index verified (new or confirmed by 304) but has expired: it stays in use, and
    /// the repository is reported stale.
    Expired {
        /// The index's serial.
        serial: u64,
        /// When it expired (RFC 3339).
        expires: String,
    },
    /// Nothing changed; see the failure.
    Failed(PollFailure),
}

impl PollOutcome {
    /// The `result` label of `kpersist_repository_polls_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Updated { .. } => "updated",
            Self::NotModified => "not_modified",
            Self::Expired { .. } => "expired",
            Self::Failed(failure) => failure.reason.metric_label(),
        }
    }
}

/// What the operator remembers of one policy's repository between polls. Lost on restart,
/// which costs one full fetch, nothing more: the one thing that must survive,
/// `accepted_serial`, is also kept in the policy's `status.repositorySerial` and restored
/// with [`RepositoryState::remember_accepted_serial`].
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
    /// The highest index serial accepted for the policy; an index below it is a rollback.
    /// Kept across changes of keys or URL: the publisher's sequence goes on.
    pub accepted_serial: u64,
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
            accepted_serial: 0,
        }
    }

    /// Raises the accepted serial to `serial` (the policy's `status.repositorySerial`), so a
    /// restarted operator refuses the rollbacks its predecessor would have.
    pub fn remember_accepted_serial(&mut self, serial: Option<u64>) {
        self.accepted_serial = self.accepted_serial.max(serial.unwrap_or(0));
    }

    /// The serial to keep in the policy's status; `None` before any index with a serial.
    pub fn serial_to_keep(&self) -> Option<u64> {
        (self.accepted_serial > 0).then_some(self.accepted_serial)
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
    pub fn condition(&self) -> Option<Condition> {
        let (status, reason, message) = match self.outcome.as_ref()? {
            PollOutcome::Failed(failure) => {
                let kept = if self.view.is_some() {
                    " The last verified index stays in use."
                } else {
                    ""
                };
                (
                    ConditionStatus::False,
                    failure.reason.reason(),
                    format!("{}{kept}", failure.message),
                )
            }
            PollOutcome::Expired { serial, expires } => (
                ConditionStatus::False,
                "Expired",
                format!(
                    "{} (serial {serial}) verified but expired at {expires}: the publisher has \
                     not signed a newer index since, or it is being withheld, so new releases \
                     may be missing; publish a fresh index with `kpersist-repo sign` and sign \
                     on a schedule shorter than its --valid-for. The last verified index stays \
                     in use.",
                    fetch::file_url(&self.source.url, "index.json")
                ),
            ),
            PollOutcome::Updated { .. } | PollOutcome::NotModified => {
                (ConditionStatus::True, "Verified", self.verified_message())
            }
        };
        Some(Condition {
            type_: CONDITION_TYPE.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time: None,
            observed_generation: None,
        })
    }
}

impl RepositoryState {
    fn verified_message(&self) -> String {
        let url = fetch::file_url(&self.source.url, "index.json");
        let mut message = match self.view.as_deref().map(|v| &v.index) {
            Some(index) if index.has_freshness() => format!(
                "{url} verified: {} release(s), serial {}, valid until {}",
                index.releases.len(),
                index.serial(),
                index.expires.as_deref().unwrap_or_default()
            ),
            Some(index) => format!(
                "{url} verified: {} release(s); the index has no serial or expiry, so a \
                 rollback to an older index or a withheld one cannot be noticed: re-sign it \
                 with a current `kpersist-repo sign`",
                index.releases.len()
            ),
            None => format!("{url} verified: 0 release(s)"),
        };
        for problem in &self.key_problems {
            message.push_str("; ignored ");
            message.push_str(problem);
        }
        message
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
