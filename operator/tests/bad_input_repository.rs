//! The repository poller against a server that sends an index larger than any real one:
//! the size cap is enforced while the body is read (and from a declared length before it
//! is read), so the operator stops reading at the cap instead of buffering whatever it is
//! sent, and reports the repository's index as invalid.
//!
//! Every case prints one row of the bad-input catalogue (`input | component | outcome`);
//! `e2e/tools/bad-input-catalogue.sh` collects the rows into the table in RELIABILITY.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kpersist_kmod::signing::{PrivateKey, PublicKey};
use kpersist_operator::repository::fetch::INDEX_LIMIT;
use kpersist_operator::repository::keys::TrustedKeys;
use kpersist_operator::repository::{
    FailureReason, PollOutcome, RepositorySource, RepositoryState, poll_repository,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHUNK: usize = 64 * 1024;
/// Where the server gives up if the client never does: far past the cap.
const SERVER_STOP: u64 = 4 * INDEX_LIMIT;

/// An HTTP server on 127.0.0.1 whose every answer is an endless run of spaces, chunked or
/// under a declared `Content-Length`. Returns its repository URL and the body bytes it got
/// into the socket before the client hung up.
async fn endless_server(declared: Option<u64>) -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = match declared {
                    Some(len) => format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n"),
                    None => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".into(),
                };
                let body = vec![b' '; CHUNK];
                let framed = match declared {
                    Some(_) => body,
                    None => [
                        format!("{CHUNK:x}\r\n").into_bytes(),
                        body,
                        b"\r\n".to_vec(),
                    ]
                    .concat(),
                };
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                while counter.load(Ordering::Relaxed) < SERVER_STOP {
                    if socket.write_all(&framed).await.is_err() {
                        return;
                    }
                    counter.fetch_add(CHUNK as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (format!("http://{addr}/repo/"), sent)
}

async fn poll(url: &str) -> RepositoryState {
    kpersist_operator::install_crypto_provider();
    let mut state = RepositoryState::new(RepositorySource {
        url: url.to_string(),
        ca_bundle: None,
        allowed_redirect_hosts: Vec::new(),
        keys: Vec::new(),
        keys_secret: None,
    });
    let key = PrivateKey::generate().public_key().to_base64_line();
    let keys = TrustedKeys {
        keys: vec![PublicKey::from_base64(&key, "test key").unwrap()],
        problems: Vec::new(),
    };
    poll_repository(&mut state, keys, "2026-03-01T12:00:00Z".parse().unwrap()).await;
    state
}

#[tokio::test]
async fn an_endless_or_oversized_index_is_refused_at_the_cap() {
    for (input, declared, max_read) in [
        // Socket buffers on both ends hold a few MiB the client never asked for.
        (
            "index streamed without end (chunked, no length)",
            None,
            INDEX_LIMIT + 16 * 1024 * 1024,
        ),
        (
            "index declaring 1 TiB (Content-Length)",
            Some(1 << 40),
            16 * 1024 * 1024,
        ),
    ] {
        let (url, sent) = endless_server(declared).await;
        let state = poll(&url).await;
        let Some(PollOutcome::Failed(failure)) = &state.outcome else {
            panic!("{input}: the poll did not fail: {:?}", state.outcome);
        };
        assert_eq!(
            failure.reason,
            FailureReason::IndexInvalid,
            "{input}: {failure:?}"
        );
        assert!(
            failure.message.contains("index.json")
                && failure.message.contains(&INDEX_LIMIT.to_string()),
            "{input}: the refusal should name the index and the cap: {}",
            failure.message
        );
        assert!(state.view.is_none(), "{input}: no index may be kept");
        let read = sent.load(Ordering::Relaxed);
        assert!(
            read <= max_read,
            "{input}: the server got {read} bytes out before the operator stopped"
        );
        let message = failure.message.replace(&url, "http://<server>/repo/");
        println!(
            "| {input} | operator (repository poll) | refused (IndexInvalid), reading stopped at the cap: {} |",
            message.replace('|', "\\|")
        );
    }
}
