//! One poll of one repository: conditional GET of the index, GET of its signature,
//! verification (signature, then no rollback below the accepted serial), the state update,
//! and the staleness of what is in use. Network required, no Kubernetes client.

use std::sync::Arc;

use kpersist_kmod::repository::{INDEX_FILE, RepositoryError, SIGNATURE_FILE, verify_index};
use kpersist_kmod::signing::SigningError;

use super::fetch::{self, FetchError, Fetched};

use super::keys::TrustedKeys;
use super::{FailureReason, PollFailure, PollOutcome, RepositoryState};
use crate::engine::RepositoryView;

/// Polls the repository of `state` now and records the outcome in it. The verified view
/// and ETag change only when a new index verified.
#[tracing::instrument(skip_all, fields(url = %state.source.url))]
pub async fn poll_repository(state: &mut RepositoryState, keys: TrustedKeys, now: jiff::Timestamp) {
    let fingerprint = fingerprint(&keys);
    if state.verified_with != fingerprint {
        // What was verified with other keys proves nothing now: fetch and verify afresh.
        state.view = None;
        state.etag = None;
    }
    let outcome = match fetch_and_verify(state, &keys).await {
        Ok(None) => PollOutcome::NotModified,
        Ok(Some((view, etag))) => {
            let releases = view.index.releases.len();
            state.accepted_serial = state.accepted_serial.max(view.index.serial());
            state.view = Some(Arc::new(view));
            state.etag = etag;
            state.verified_with = fingerprint;
            PollOutcome::Updated { releases }
        }
        Err(failure) => {
            tracing::warn!(reason = failure.reason.reason(), message = %failure.message, "repository poll failed");
            PollOutcome::Failed(failure)
        }
    };
    if !matches!(outcome, PollOutcome::Failed(_)) {
        state.verified_at = Some(now);
        state.key_problems = keys.problems;
    }
    let outcome = match (outcome, state.view.as_deref()) {
        (PollOutcome::Updated { .. } | PollOutcome::NotModified, Some(view))
            if view.index.is_expired(now) =>
        {
            tracing::warn!(serial = view.index.serial(), expires = ?view.index.expires, "repository index expired");
            PollOutcome::Expired {
                serial: view.index.serial(),
                expires: view.index.expires.clone().unwrap_or_default(),
            }
        }
        (outcome, _) => outcome,
    };
    state.polled_at = Some(now);
    state.outcome = Some(outcome);
}

/// The trusted keys in a comparable form.
fn fingerprint(keys: &TrustedKeys) -> Vec<String> {
    let mut lines: Vec<String> = keys.keys.iter().map(|k| k.to_base64_line()).collect();
    lines.sort();
    lines
}

/// `Ok(None)` for 304, `Ok(Some)` for a newly verified index.
async fn fetch_and_verify(
    state: &RepositoryState,
    keys: &TrustedKeys,
) -> Result<Option<(RepositoryView, Option<String>)>, PollFailure> {
    if keys.keys.is_empty() {
        let mut message = "repository has no usable trusted key, so no index can be verified; set repository.trustedKeys or repository.trustedKeysSecret to the publisher's public key".to_string();
        for problem in &keys.problems {
            message.push_str("; ");
            message.push_str(problem);
        }
        return Err(PollFailure {
            reason: FailureReason::NoTrustedKeys,
            message,
        });
    }
    let source = &state.source;
    let client = fetch::client_for(
        &source.url,
        source.ca_bundle.as_deref(),
        &source.allowed_redirect_hosts,
    )
    .map_err(unreachable)?;
    let index_url = fetch::file_url(&source.url, INDEX_FILE);
    // Without a verified view a 304 would leave us with nothing, so only send the ETag when
    // there is a view it stands for.
    let etag = state.view.as_ref().and(state.etag.as_deref());
    let (index_bytes, new_etag) =
        match fetch::get(&client, &index_url, etag, fetch::INDEX_LIMIT, "index").await {
            Ok(Fetched::NotModified) => return Ok(None),
            Ok(Fetched::Modified { body, etag }) => (body, etag),
            Err(error) => return Err(fetch_failure(error)),
        };
    let sig_url = fetch::file_url(&source.url, SIGNATURE_FILE);
    let signature =
        match fetch::get(&client, &sig_url, None, fetch::SIGNATURE_LIMIT, "signature").await {
            Ok(Fetched::Modified { body, .. }) => body,
            Ok(Fetched::NotModified) => Vec::new(),
            Err(error) => return Err(fetch_failure(error)),
        };
    let index =
        verify_index(&index_bytes, &signature, &keys.keys).map_err(|error| PollFailure {
            reason: verify_reason(&error),
            message: format!("{index_url}: {error}"),
        })?;
    index
        .check_not_rolled_back(state.accepted_serial)
        .map_err(|error| PollFailure {
            reason: FailureReason::RolledBack,
            message: format!("{index_url}: {error}"),
        })?;
    let view = RepositoryView {
        base_url: source.url.clone(),
        index,
    };
    Ok(Some((view, new_etag)))
}

fn unreachable(error: FetchError) -> PollFailure {
    PollFailure {
        reason: FailureReason::Unreachable,
        message: error.to_string(),
    }
}

fn fetch_failure(error: FetchError) -> PollFailure {
    let reason = match error {
        // An oversized file is a bad repository, not a network problem.
        FetchError::TooLarge {
            what: "signature", ..
        } => FailureReason::SignatureInvalid,
        FetchError::TooLarge { .. } => FailureReason::IndexInvalid,
        _ => FailureReason::Unreachable,
    };
    PollFailure {
        reason,
        message: error.to_string(),
    }
}

/// Sorts kmod's verification errors into the condition's reasons.
fn verify_reason(error: &RepositoryError) -> FailureReason {
    match error.root_cause() {
        RepositoryError::Signature(SigningError::NoTrustedKeys) => FailureReason::NoTrustedKeys,
        RepositoryError::Signature(_)
        | RepositoryError::SignatureMismatch { .. }
        | RepositoryError::SignatureTooLarge { .. } => FailureReason::SignatureInvalid,
        _ => FailureReason::IndexInvalid,
    }
}
