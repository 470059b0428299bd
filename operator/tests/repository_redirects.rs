//! The repository client against real HTTP servers on loopback addresses: redirects within
//! the repository's origin are followed, redirects to another host only when
//! `repository.allowedRedirectHosts` lists it.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::Router;
use axum::response::Redirect;
use axum::routing::get;
use kpersist_operator::repository::fetch::{self, Fetched, INDEX_LIMIT};

const BODY: &str = "{\"schemaVersion\":1}";

/// Serves `router` on `ip` (any 127.x address); returns `http://ip:port`.
async fn serve(ip: &str, router: Router) -> String {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// A mirror on 127.0.0.2 holding the index, and the repository on 127.0.0.1 whose
/// `/repo/index.json` redirects there; returns the index URL at the repository.
async fn repository_redirecting_to_a_mirror() -> String {
    let mirror = serve(
        "127.0.0.2",
        Router::new().route("/pool/index.json", get(|| async { BODY })),
    )
    .await;
    let target = format!("{mirror}/pool/index.json");
    let repo = serve(
        "127.0.0.1",
        Router::new().route(
            "/repo/index.json",
            get(move || async move { Redirect::temporary(&target) }),
        ),
    )
    .await;
    format!("{repo}/repo/index.json")
}

async fn fetch_index(url: &str, allowed: &[&str]) -> Result<String, String> {
    // The operator's main installs the process-wide TLS provider; tests do it here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let allowed: Vec<String> = allowed.iter().map(|h| h.to_string()).collect();
    let client = fetch::client_for(url, None, &allowed).map_err(|e| e.to_string())?;
    match fetch::get(&client, url, None, INDEX_LIMIT, "index").await {
        Ok(Fetched::Modified { body, .. }) => Ok(String::from_utf8(body).unwrap()),
        Ok(Fetched::NotModified) => Err("unexpected 304".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn a_redirect_to_another_host_is_refused_by_default_naming_the_field() {
    let url = repository_redirecting_to_a_mirror().await;
    let message = fetch_index(&url, &[]).await.unwrap_err();
    assert!(message.contains("127.0.0.2"), "{message}");
    assert!(
        message.contains("repository.allowedRedirectHosts"),
        "{message}"
    );
}

#[tokio::test]
async fn a_redirect_to_a_listed_host_is_followed() {
    let url = repository_redirecting_to_a_mirror().await;
    assert_eq!(fetch_index(&url, &["127.0.0.2"]).await.unwrap(), BODY);
}

#[tokio::test]
async fn a_redirect_within_the_origin_is_followed() {
    let repo = serve(
        "127.0.0.1",
        Router::new()
            .route(
                "/repo/index.json",
                get(|| async { Redirect::temporary("/pool/index.json") }),
            )
            .route("/pool/index.json", get(|| async { BODY })),
    )
    .await;
    let url = format!("{repo}/repo/index.json");
    assert_eq!(fetch_index(&url, &[]).await.unwrap(), BODY);
}
