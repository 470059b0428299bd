//! The repository poller against a real HTTP server on 127.0.0.1 serving a repository
//! signed with kmod's functions: ETag round trips, bad signatures, bad indexes, rollbacks
//! below the accepted serial, expired indexes, and a server that is not there.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kpersist_kmod::repository::{Index, Release};
use kpersist_kmod::signing::{PrivateKey, PublicKey};
use kpersist_operator::repository::keys::TrustedKeys;
use kpersist_operator::repository::{
    FailureReason, PollOutcome, RepositorySource, RepositoryState, poll_repository,
};

/// What the test server serves, and what it saw.
#[derive(Default)]
struct Served {
    index: Vec<u8>,
    signature: Vec<u8>,
    etag: String,
    /// `If-None-Match` of every index request.
    conditional: Vec<Option<String>>,
}

type Shared = Arc<Mutex<Served>>;

async fn index(State(served): State<Shared>, headers: HeaderMap) -> Response {
    let mut served = served.lock().unwrap();
    let sent = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    served.conditional.push(sent.clone());
    if sent.as_deref() == Some(served.etag.as_str()) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    ([(header::ETAG, served.etag.clone())], served.index.clone()).into_response()
}

async fn signature(State(served): State<Shared>) -> Vec<u8> {
    served.lock().unwrap().signature.clone()
}

async fn serve(served: Shared) -> String {
    let app = Router::new()
        .route("/repo/index.json", get(index))
        .route("/repo/index.json.sig", get(signature))
        .with_state(served);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/repo/")
}

/// Serves `index` and `signature` with `etag`; returns what the server saw and a fresh
/// poll state for it.
async fn serve_files(index: Vec<u8>, signature: Vec<u8>, etag: &str) -> (Shared, RepositoryState) {
    let served = Arc::new(Mutex::new(Served {
        index,
        signature,
        etag: etag.to_string(),
        ..Served::default()
    }));
    let url = serve(served.clone()).await;
    (served, state_for(&url))
}

fn release(version: u64) -> Release {
    let sha256 = format!("{:064x}", version);
    Release {
        kernel_release: "6.1.0-56-amd64".into(),
        build_id: "ab".repeat(20),
        version,
        module: format!("modules/{sha256}.ko"),
        sha256,
        size: 4096,
        module_name: format!("kpersist_lp_v{version}"),
        cves: vec!["CVE-2026-0001".into()],
        channels: vec!["stable".into()],
        published: "2026-01-01T00:00:00Z".into(),
        yanked: None,
    }
}

/// A signed repository with `versions`, as (index bytes, signature bytes).
fn signed(key: &PrivateKey, versions: &[u64]) -> (Vec<u8>, Vec<u8>) {
    let mut index = Index::empty("2026-01-01T00:00:00Z".parse().unwrap());
    for v in versions {
        index.add_release(release(*v)).unwrap();
    }
    let bytes = index.to_json_bytes();
    let sig = key.sign_to_base64_line(&bytes).into_bytes();
    (bytes, sig)
}

fn state_for(url: &str) -> RepositoryState {
    RepositoryState::new(RepositorySource {
        url: url.to_string(),
        ca_bundle: None,
        allowed_redirect_hosts: Vec::new(),
        keys: Vec::new(),
        keys_secret: None,
    })
}

fn trusting(key: &PublicKey) -> TrustedKeys {
    let text = key.to_base64_line();
    TrustedKeys {
        keys: vec![PublicKey::from_base64(&text, "test").unwrap()],
        problems: Vec::new(),
    }
}

fn now() -> jiff::Timestamp {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

fn failure_reason(state: &RepositoryState) -> Option<FailureReason> {
    match &state.outcome {
        Some(PollOutcome::Failed(f)) => Some(f.reason),
        _ => None,
    }
}

#[tokio::test]
async fn full_fetch_then_not_modified_with_the_etag() {
    kpersist_operator::install_crypto_provider();
    let key = PrivateKey::generate();
    let (index, signature) = signed(&key, &[1, 2]);
    let (served, mut state) = serve_files(index, signature, "\"v2\"").await;

    poll_repository(&mut state, trusting(&key.public_key()), now()).await;
    assert_eq!(state.outcome, Some(PollOutcome::Updated { releases: 2 }));
    assert_eq!(state.view.as_ref().unwrap().index.releases.len(), 2);
    assert_eq!(state.view.as_ref().unwrap().base_url, state.source.url);
    assert!(state.source.url.starts_with("http://127.0.0.1:"));
    assert_eq!(state.etag.as_deref(), Some("\"v2\""));
    let condition = state.condition().unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "Verified")
    );
    assert_eq!(state.verified_at, Some(now()));

    let later = now() + jiff::SignedDuration::from_secs(3600);
    poll_repository(&mut state, trusting(&key.public_key()), later).await;
    assert_eq!(state.outcome, Some(PollOutcome::NotModified));
    assert_eq!(state.view.as_ref().unwrap().index.releases.len(), 2);
    assert_eq!(state.verified_at, Some(later));
    assert_eq!(
        served.lock().unwrap().conditional,
        [None, Some("\"v2\"".to_string())]
    );
}

#[tokio::test]
async fn a_bad_signature_sets_the_condition_false_and_gives_no_view() {
    kpersist_operator::install_crypto_provider();
    let publisher = PrivateKey::generate();
    let stranger = PrivateKey::generate();
    let (index, signature) = signed(&stranger, &[1]);
    let (_served, mut state) = serve_files(index, signature, "\"x\"").await;

    poll_repository(&mut state, trusting(&publisher.public_key()), now()).await;
    assert_eq!(
        failure_reason(&state),
        Some(FailureReason::SignatureInvalid)
    );
    assert!(state.view.is_none());
    assert!(state.etag.is_none());
    assert!(state.verified_at.is_none());
    let condition = state.condition().unwrap();
    assert_eq!(condition.status, kpersist_crds::ConditionStatus::False);
    assert_eq!(condition.reason, "SignatureInvalid");
    assert!(
        condition.message.contains("index.json"),
        "{}",
        condition.message
    );
}

#[tokio::test]
async fn a_tampered_index_keeps_the_last_verified_view() {
    kpersist_operator::install_crypto_provider();
    let key = PrivateKey::generate();
    let (index, signature) = signed(&key, &[1]);
    let (served, mut state) = serve_files(index, signature, "\"a\"").await;
    poll_repository(&mut state, trusting(&key.public_key()), now()).await;
    assert!(state.view.is_some());

    {
        // A new index whose signature is the old one: someone changed the file.
        let (tampered, _) = signed(&key, &[1, 2]);
        let mut served = served.lock().unwrap();
        served.index = tampered;
        served.etag = "\"b\"".into();
    }
    poll_repository(&mut state, trusting(&key.public_key()), now()).await;
    assert_eq!(
        failure_reason(&state),
        Some(FailureReason::SignatureInvalid)
    );
    assert_eq!(state.view.as_ref().unwrap().index.releases.len(), 1);
    assert_eq!(state.etag.as_deref(), Some("\"a\""));
    let condition = state.condition().unwrap();
    assert!(
        condition.message.contains("last verified index stays"),
        "{}",
        condition.message
    );
}

#[tokio::test]
async fn a_signed_index_that_is_not_an_index_is_index_invalid() {
    kpersist_operator::install_crypto_provider();
    let key = PrivateKey::generate();
    let bytes = b"{\"schemaVersion\": 1, \"releases\": 7}".to_vec();
    let signature = key.sign_to_base64_line(&bytes).into_bytes();
    let (_served, mut state) = serve_files(bytes, signature, "\"x\"").await;
    poll_repository(&mut state, trusting(&key.public_key()), now()).await;
    assert_eq!(failure_reason(&state), Some(FailureReason::IndexInvalid));
    assert!(state.view.is_none());
}

#[tokio::test]
async fn a_server_that_is_not_there_is_unreachable() {
    kpersist_operator::install_crypto_provider();
    // Bind and drop a listener so the port is known to be closed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}/repo");
    let mut state = state_for(&url);
    let key = PrivateKey::generate();
    poll_repository(&mut state, trusting(&key.public_key()), now()).await;
    assert_eq!(failure_reason(&state), Some(FailureReason::Unreachable));
    let condition = state.condition().unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "Unreachable")
    );
    assert!(
        condition.message.contains(&addr.to_string()),
        "{}",
        condition.message
    );
    assert_eq!(state.polled_at, Some(now()));
}

#[tokio::test]
async fn no_trusted_keys_fetches_nothing() {
    kpersist_operator::install_crypto_provider();
    let served = Arc::new(Mutex::new(Served::default()));
    let url = serve(served.clone()).await;
    let mut state = state_for(&url);
    let keys = TrustedKeys {
        keys: Vec::new(),
        problems: vec!["repository.trustedKeys[0]: not valid base64".into()],
    };
    poll_repository(&mut state, keys, now()).await;
    assert_eq!(failure_reason(&state), Some(FailureReason::NoTrustedKeys));
    assert!(
        state
            .condition()
            .unwrap()
            .message
            .contains("trustedKeys[0]")
    );
    assert!(served.lock().unwrap().conditional.is_empty());
}

#[test]
fn polls_are_due_at_the_check_interval() {
    let mut state = state_for("http://r");
    let hour = std::time::Duration::from_secs(3600);
    assert!(state.due(now(), hour));
    state.polled_at = Some(now());
    let soon = now() + jiff::SignedDuration::from_secs(600);
    assert!(!state.due(soon, hour));
    assert_eq!(
        state.next_poll_in(soon, hour),
        std::time::Duration::from_secs(3000)
    );
    assert!(state.due(now() + jiff::SignedDuration::from_secs(3600), hour));
}

#[tokio::test]
async fn a_view_verified_with_keys_no_longer_trusted_is_dropped() {
    kpersist_operator::install_crypto_provider();
    let old_key = PrivateKey::generate();
    let new_key = PrivateKey::generate();
    let (index, signature) = signed(&old_key, &[1]);
    let (served, mut state) = serve_files(index, signature, "\"a\"").await;
    poll_repository(&mut state, trusting(&old_key.public_key()), now()).await;
    assert!(state.view.is_some());

    // The Secret now trusts only the new key: the unchanged index must not pass on a 304.
    poll_repository(&mut state, trusting(&new_key.public_key()), now()).await;
    assert_eq!(
        failure_reason(&state),
        Some(FailureReason::SignatureInvalid)
    );
    assert!(state.view.is_none());
    assert_eq!(served.lock().unwrap().conditional, [None, None]);
}

/// A signed repository with `versions`, stamped as `kpersist-repo sign` does at `signed_at`
/// with `serial` and a week's validity.
fn signed_fresh(
    key: &PrivateKey,
    versions: &[u64],
    serial: u64,
    signed_at: &str,
) -> (Vec<u8>, Vec<u8>) {
    let mut index = Index::empty("2026-01-01T00:00:00Z".parse().unwrap());
    for v in versions {
        index.add_release(release(*v)).unwrap();
    }
    index.refresh(
        signed_at.parse().unwrap(),
        kpersist_kmod::repository::DEFAULT_VALIDITY,
    );
    index.serial = Some(serial);
    let bytes = index.to_json_bytes();
    let sig = key.sign_to_base64_line(&bytes).into_bytes();
    (bytes, sig)
}

fn serve_next(served: &Shared, (index, signature): (Vec<u8>, Vec<u8>), etag: &str) {
    let mut served = served.lock().unwrap();
    served.index = index;
    served.signature = signature;
    served.etag = etag.to_string();
}

#[tokio::test]
async fn an_index_with_a_lower_serial_is_refused_as_a_rollback() {
    kpersist_operator::install_crypto_provider();
    let key = PrivateKey::generate();
    let trusted = || trusting(&key.public_key());
    let fresh = signed_fresh(&key, &[1, 2], 10, "2026-03-01T00:00:00Z");
    let (served, mut state) = serve_files(fresh.0, fresh.1, "\"s10\"").await;
    poll_repository(&mut state, trusted(), now()).await;
    assert_eq!(state.outcome, Some(PollOutcome::Updated { releases: 2 }));
    assert_eq!(state.serial_to_keep(), Some(10));
    let condition = state.condition().unwrap();
    assert!(
        condition
            .message
            .contains("serial 10, valid until 2026-03-08"),
        "{}",
        condition.message
    );

    // An older signed index served again, with fewer releases.
    let old = signed_fresh(&key, &[1], 9, "2026-02-27T00:00:00Z");
    serve_next(&served, old.clone(), "\"s9\"");
    poll_repository(&mut state, trusted(), now()).await;
    assert_eq!(failure_reason(&state), Some(FailureReason::RolledBack));
    assert_eq!(
        state.outcome.as_ref().unwrap().metric_label(),
        "rolled_back"
    );
    assert_eq!(state.view.as_ref().unwrap().index.serial(), 10);
    assert_eq!(state.etag.as_deref(), Some("\"s10\""));
    let condition = state.condition().unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "RolledBack")
    );
    for words in ["serial 9 is below serial 10", "last verified index stays"] {
        assert!(condition.message.contains(words), "{}", condition.message);
    }

    // A restarted operator knows serial 10 from the policy status and refuses 9 as well.
    let mut restarted = state_for(&state.source.url);
    restarted.remember_accepted_serial(Some(10));
    poll_repository(&mut restarted, trusted(), now()).await;
    assert_eq!(failure_reason(&restarted), Some(FailureReason::RolledBack));
    assert!(restarted.view.is_none());

    // Nor does an index without serial pass once a serial was accepted.
    serve_next(&served, signed(&key, &[1]), "\"legacy\"");
    poll_repository(&mut state, trusted(), now()).await;
    assert_eq!(failure_reason(&state), Some(FailureReason::RolledBack));

    // A newer signing is taken, and the accepted serial follows it.
    serve_next(
        &served,
        signed_fresh(&key, &[1, 2, 3], 11, "2026-03-01T06:00:00Z"),
        "\"s11\"",
    );
    poll_repository(&mut state, trusted(), now()).await;
    assert_eq!(state.outcome, Some(PollOutcome::Updated { releases: 3 }));
    assert_eq!(state.serial_to_keep(), Some(11));
}

#[tokio::test]
async fn an_expired_index_stays_in_use_and_is_reported_stale() {
    kpersist_operator::install_crypto_provider();
    let key = PrivateKey::generate();
    // Signed a week and a day before now(): it expired a day ago.
    let stale = signed_fresh(&key, &[1], 5, "2026-02-21T12:00:00Z");
    let (_served, mut state) = serve_files(stale.0, stale.1, "\"s5\"").await;
    poll_repository(&mut state, trusting(&key.public_key()), now()).await;
    assert_eq!(
        state.outcome,
        Some(PollOutcome::Expired {
            serial: 5,
            expires: "2026-02-28T12:00:00Z".into()
        })
    );
    assert_eq!(state.outcome.as_ref().unwrap().metric_label(), "expired");
    assert_eq!(state.view.as_ref().unwrap().index.releases.len(), 1);
    assert_eq!(state.serial_to_keep(), Some(5));
    let condition = state.condition().unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "Expired")
    );
    for words in [
        "expired at 2026-02-28T12:00:00Z",
        "kpersist-repo sign",
        "stays in use",
    ] {
        assert!(condition.message.contains(words), "{}", condition.message);
    }
    // Confirmed by a 304 an hour later, it is still stale.
    let later = now() + jiff::SignedDuration::from_secs(3600);
    poll_repository(&mut state, trusting(&key.public_key()), later).await;
    assert!(matches!(state.outcome, Some(PollOutcome::Expired { .. })));
}

#[tokio::test]
async fn an_index_without_serial_is_accepted_with_a_warning() {
    kpersist_operator::install_crypto_provider();
    let key = PrivateKey::generate();
    let (index, signature) = signed(&key, &[1]);
    let (_served, mut state) = serve_files(index, signature, "\"x\"").await;
    poll_repository(&mut state, trusting(&key.public_key()), now()).await;
    assert_eq!(state.outcome, Some(PollOutcome::Updated { releases: 1 }));
    assert_eq!(state.serial_to_keep(), None);
    let condition = state.condition().unwrap();
    assert_eq!(condition.status, kpersist_crds::ConditionStatus::True);
    assert!(
        condition.message.contains("no serial or expiry"),
        "{}",
        condition.message
    );
}
