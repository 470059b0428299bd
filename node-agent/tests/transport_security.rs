//! Module downloads against real loopback servers: certificates are verified (an unknown CA
//! is refused, the repository's CA bundle makes it work), and redirects leave the module
//! URL's origin only to hosts the policy lists, never from https to http. The signed index
//! a release is verified against is fetched under the same rules, with the policy's CAs.

// Test support: a failed unwrap is the test's report (clippy.toml exempts #[test]
// functions only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/servers.rs"]
mod servers;

use kpersist_agent::fetch::{Fetcher, RepositoryAccess};
use kpersist_agent::state::StateDir;
use kpersist_agent::trust::PolicyTrust;
use kpersist_crds::{NodeErrorReason, PatchRelease};
use kpersist_kmod::repository::sha256_hex;
use servers::{Answer, TestPki};

const BODY: &[u8] = b"livepatch module bytes";

fn release(url: String) -> PatchRelease {
    PatchRelease {
        id: "6.1.0-56-amd64/v1".into(),
        version: 1,
        kernel_release: "6.1.0-56-amd64".into(),
        build_id: "abcd".into(),
        module_name: "kpersist_v1".into(),
        module_url: url,
        sha256: sha256_hex(BODY),
        size: BODY.len() as u64,
        cves: vec![],
    }
}

/// Downloads `url` with `access` into a fresh state directory.
async fn download(
    access: &RepositoryAccess,
    url: String,
) -> Result<Vec<u8>, (NodeErrorReason, String)> {
    // The agent's main installs the process-wide TLS provider; tests do it here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    Fetcher::new()
        .ensure_cached(&state, &release(url), access)
        .await
        .map(|image| image.bytes().to_vec())
        .map_err(|f| (f.reason, f.message))
}

fn allowing(hosts: &[&str]) -> RepositoryAccess {
    RepositoryAccess {
        allowed_redirect_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ..RepositoryAccess::default()
    }
}

#[tokio::test]
async fn an_unknown_ca_is_refused_and_the_ca_bundle_makes_it_work() {
    let pki = TestPki::new();
    let addr = servers::https(&pki, Answer::Body(BODY.to_vec())).await;
    let url = format!("https://{addr}/m.ko");

    let (reason, message) = download(&RepositoryAccess::default(), url.clone())
        .await
        .unwrap_err();
    assert_eq!(reason, NodeErrorReason::DownloadFailed);
    assert!(message.contains("certificate"), "{message}");
    assert!(message.contains("repository.caBundle"), "{message}");

    let trusting = RepositoryAccess {
        ca_bundle: Some(pki.ca_pem.clone()),
        ..RepositoryAccess::default()
    };
    assert_eq!(download(&trusting, url).await.unwrap(), BODY);
}

#[tokio::test]
async fn another_ca_in_the_bundle_does_not_make_the_server_trusted() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let addr = servers::https(&pki, Answer::Body(BODY.to_vec())).await;
    let access = RepositoryAccess {
        ca_bundle: Some(other.ca_pem.clone()),
        ..RepositoryAccess::default()
    };
    let (_, message) = download(&access, format!("https://{addr}/m.ko"))
        .await
        .unwrap_err();
    assert!(message.contains("certificate"), "{message}");
}

#[tokio::test]
async fn a_redirect_off_origin_is_refused_unless_its_host_is_listed() {
    let cdn = servers::http("127.0.0.2", Answer::Body(BODY.to_vec())).await;
    let origin = servers::http("127.0.0.1", Answer::Redirect(format!("http://{cdn}/m.ko"))).await;
    let url = format!("http://{origin}/m.ko");

    let (reason, message) = download(&RepositoryAccess::default(), url.clone())
        .await
        .unwrap_err();
    assert_eq!(reason, NodeErrorReason::DownloadFailed);
    assert!(message.contains("127.0.0.2"), "{message}");
    assert!(
        message.contains("repository.allowedRedirectHosts"),
        "{message}"
    );

    assert_eq!(
        download(&allowing(&["127.0.0.2"]), url).await.unwrap(),
        BODY
    );
}

#[tokio::test]
async fn a_redirect_within_the_origin_is_followed() {
    let server = servers::http(
        "127.0.0.1",
        Answer::Moved {
            path: "/pool/m.ko".into(),
            body: BODY.to_vec(),
        },
    )
    .await;
    let url = format!("http://{server}/m.ko");
    assert_eq!(
        download(&RepositoryAccess::default(), url).await.unwrap(),
        BODY
    );
}

#[tokio::test]
async fn https_to_http_is_refused_even_to_a_listed_host() {
    let pki = TestPki::new();
    let plain = servers::http("127.0.0.2", Answer::Body(BODY.to_vec())).await;
    let secure = servers::https(&pki, Answer::Redirect(format!("http://{plain}/m.ko"))).await;
    let access = RepositoryAccess {
        ca_bundle: Some(pki.ca_pem.clone()),
        allowed_redirect_hosts: vec!["127.0.0.2".into()],
    };
    let (_, message) = download(&access, format!("https://{secure}/m.ko"))
        .await
        .unwrap_err();
    assert!(message.contains("leaves https"), "{message}");
}

/// The trust of a policy at `url` with the transport settings `access` (no keys needed:
/// these tests stop at the fetch).
fn policy_trust(url: String, access: RepositoryAccess) -> PolicyTrust {
    PolicyTrust {
        policy: "fleet".into(),
        repository_url: reqwest::Url::parse(&url).unwrap(),
        access,
        keys: Vec::new(),
        accepted_serial: 0,
    }
}

#[tokio::test]
async fn the_signed_index_is_fetched_with_the_policys_ca_and_redirect_rules() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = TestPki::new();
    let addr = servers::https(&pki, Answer::Body(b"signed bytes".to_vec())).await;
    let url = format!("https://{addr}/repo/");

    let failure = Fetcher::new()
        .fetch_signed_index(&policy_trust(url.clone(), RepositoryAccess::default()))
        .await
        .unwrap_err();
    assert_eq!(failure.reason, NodeErrorReason::DownloadFailed);
    assert!(
        failure.message.contains("index.json"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("certificate"),
        "{}",
        failure.message
    );

    let with_ca = RepositoryAccess {
        ca_bundle: Some(pki.ca_pem.clone()),
        ..RepositoryAccess::default()
    };
    let signed = Fetcher::new()
        .fetch_signed_index(&policy_trust(url, with_ca))
        .await
        .unwrap();
    assert_eq!(signed.index, b"signed bytes");
    assert_eq!(signed.signature, b"signed bytes");

    let elsewhere = servers::http("127.0.0.2", Answer::Body(b"x".to_vec())).await;
    let origin = servers::http(
        "127.0.0.1",
        Answer::Redirect(format!("http://{elsewhere}/i")),
    )
    .await;
    let failure = Fetcher::new()
        .fetch_signed_index(&policy_trust(
            format!("http://{origin}/repo"),
            RepositoryAccess::default(),
        ))
        .await
        .unwrap_err();
    assert!(
        failure.message.contains("repository.allowedRedirectHosts"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn an_oversized_signature_is_refused_unread() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let addr = servers::http("127.0.0.1", Answer::Body(vec![b'A'; 4096])).await;
    let failure = Fetcher::new()
        .fetch_signed_index(&policy_trust(
            format!("http://{addr}/repo/"),
            RepositoryAccess::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(failure.reason, NodeErrorReason::UntrustedRelease);
    assert!(
        failure
            .message
            .contains("index.json.sig is larger than 1024 bytes"),
        "{}",
        failure.message
    );
}
