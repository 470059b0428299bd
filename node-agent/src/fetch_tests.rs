//! Fetching into the cache: local files, and HTTP against a loopback server that can cut a
//! body short, honour ranges, or redirect elsewhere.

use std::sync::{Arc, Mutex};

use kpersist_kmod::repository::sha256_hex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

pub(crate) fn release_for(bytes: &[u8], url: String) -> PatchRelease {
    PatchRelease {
        id: "6.1.0-56-amd64/v1".into(),
        version: 1,
        kernel_release: "6.1.0-56-amd64".into(),
        build_id: "abcd".into(),
        module_name: "kpersist_v1".into(),
        module_url: url,
        sha256: sha256_hex(bytes),
        size: bytes.len() as u64,
        cves: vec![],
    }
}

/// A fetcher that tries each download once, so each failure can be looked at.
fn fetcher() -> Fetcher {
    retrying(0, 1)
}

/// A fetcher that retries `times` times, waiting about `ms` milliseconds each time.
fn retrying(times: usize, ms: u64) -> Fetcher {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let wait = std::time::Duration::from_millis(ms);
    Fetcher::with_retry(
        backon::ExponentialBuilder::new()
            .with_min_delay(wait)
            .with_max_delay(wait)
            .with_max_times(times),
    )
}

#[tokio::test]
async fn local_file_is_verified_and_cached_by_hash() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path().join("state")).unwrap();
    let src = dir.path().join("m.ko");
    std::fs::write(&src, b"module bytes").unwrap();
    let release = release_for(b"module bytes", format!("file://{}", src.display()));
    let image = fetcher()
        .ensure_cached(&state, &release, &RepositoryAccess::default())
        .await
        .unwrap();
    assert_eq!(image.bytes(), b"module bytes");
    let path = state.module_path(&release.sha256);
    assert_eq!(std::fs::read(&path).unwrap(), b"module bytes");
    // Cached: the source may go away.
    std::fs::remove_file(&src).unwrap();
    let again = fetcher()
        .ensure_cached(&state, &release, &RepositoryAccess::default())
        .await
        .unwrap();
    assert_eq!(again.source(), path.display().to_string());
    assert_eq!(again.bytes(), b"module bytes");
}

#[tokio::test]
async fn truncated_and_forged_files_are_refused_and_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path().join("state")).unwrap();
    let src = dir.path().join("m.ko");
    let release = release_for(b"module bytes", src.display().to_string());
    std::fs::write(&src, b"module by").unwrap();
    let failure = fetcher()
        .ensure_cached(&state, &release, &RepositoryAccess::default())
        .await
        .unwrap_err();
    assert_eq!(failure.reason, NodeErrorReason::SizeMismatch);
    std::fs::write(&src, b"MODULE BYTES").unwrap();
    let failure = fetcher()
        .ensure_cached(&state, &release, &RepositoryAccess::default())
        .await
        .unwrap_err();
    assert_eq!(failure.reason, NodeErrorReason::HashMismatch);
    assert!(failure.message.contains("sha256"), "{}", failure.message);
    assert!(!state.module_path(&release.sha256).exists());
    assert!(!state.partial_path(&release.sha256).exists());
}

#[tokio::test]
async fn a_corrupted_cache_entry_is_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path().join("state")).unwrap();
    let src = dir.path().join("m.ko");
    std::fs::write(&src, b"module bytes").unwrap();
    let release = release_for(b"module bytes", src.display().to_string());
    std::fs::write(state.module_path(&release.sha256), b"bit rot").unwrap();
    let image = fetcher()
        .ensure_cached(&state, &release, &RepositoryAccess::default())
        .await
        .unwrap();
    assert_eq!(image.bytes(), b"module bytes");
    let cached = state.module_path(&release.sha256);
    assert_eq!(std::fs::read(cached).unwrap(), b"module bytes");
}

/// Serves `body` once per connection; the first response stops after `cut` bytes and
/// closes. Records each request's head.
async fn flaky_server(body: Vec<u8>, cut: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        for n in 0..4 {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            let len = sock.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..len]).to_string();
            seen.lock().unwrap().push(head.clone());
            let range_start = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("range: bytes=")
                        .map(str::to_string)
                })
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
            let (status, part) = match range_start {
                Some(start) => ("206 Partial Content", &body[start..]),
                None => ("200 OK", &body[..]),
            };
            let header = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                part.len()
            );
            let _ = sock.write_all(header.as_bytes()).await;
            let send = if n == 0 { &part[..cut] } else { part };
            let _ = sock.write_all(send).await;
            let _ = sock.shutdown().await;
        }
    });
    (format!("http://{addr}/modules/m.ko"), requests)
}

#[tokio::test]
async fn interrupted_download_fails_then_resumes_with_a_range() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path().join("state")).unwrap();
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let (url, requests) = flaky_server(body.clone(), 2000).await;
    let release = release_for(&body, url);
    let f = fetcher();
    let failure = f
        .ensure_cached(&state, &release, &RepositoryAccess::default())
        .await
        .unwrap_err();
    assert_eq!(
        failure.reason,
        NodeErrorReason::DownloadFailed,
        "{}",
        failure.message
    );
    assert_eq!(
        std::fs::metadata(state.partial_path(&release.sha256))
            .unwrap()
            .len(),
        2000
    );
    let image = f
        .ensure_cached(&state, &release, &RepositoryAccess::default())
        .await
        .unwrap();
    assert_eq!(image.bytes(), body);
    let requests = requests.lock().unwrap();
    assert!(
        requests[1]
            .to_ascii_lowercase()
            .contains("range: bytes=2000-"),
        "{}",
        requests[1]
    );
}

#[tokio::test]
async fn redirect_to_another_origin_is_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let reply = "HTTP/1.1 302 Found\r\nLocation: http://localhost:9/evil.ko\r\nContent-Length: 0\r\n\r\n";
            let _ = sock.write_all(reply.as_bytes()).await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let release = release_for(b"x", format!("http://{addr}/m.ko"));
    let failure = fetcher()
        .ensure_cached(&state, &release, &RepositoryAccess::default())
        .await
        .unwrap_err();
    assert_eq!(failure.reason, NodeErrorReason::DownloadFailed);
    assert!(
        failure.message.contains("another origin") || failure.message.contains("redirect"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn a_download_cut_short_is_retried_from_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path().join("state")).unwrap();
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 199) as u8).collect();
    let (url, requests) = flaky_server(body.clone(), 1500).await;
    let release = release_for(&body, url);
    let image = retrying(2, 10)
        .ensure_cached(&state, &release, &RepositoryAccess::default())
        .await
        .unwrap();
    assert_eq!(image.bytes(), body);
    let requests = requests.lock().unwrap();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        requests[1]
            .to_ascii_lowercase()
            .contains("range: bytes=1500-"),
        "{}",
        requests[1]
    );
}

/// Answers every request with `status` and counts them.
async fn answering(status: &'static str) -> (String, Arc<Mutex<usize>>) {
    let (addr, count) = counting(move |_| (status.to_string(), Vec::new())).await;
    (format!("http://{addr}/m.ko"), count)
}

/// A loopback server that answers request `n` (from 1) with the status and body
/// `reply(n)` gives, and counts the requests.
async fn counting(
    reply: impl Fn(usize) -> (String, Vec<u8>) + Send + 'static,
) -> (std::net::SocketAddr, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(Mutex::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let n = {
                let mut n = seen.lock().unwrap();
                *n += 1;
                *n
            };
            let (status, body) = reply(n);
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body).await;
            let _ = sock.shutdown().await;
        }
    });
    (addr, count)
}

#[tokio::test]
async fn server_errors_are_retried_and_a_missing_module_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let (url, count) = answering("503 Service Unavailable").await;
    let failure = retrying(3, 10)
        .ensure_cached(
            &state,
            &release_for(b"x", url),
            &RepositoryAccess::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(failure.reason, NodeErrorReason::DownloadFailed);
    assert!(failure.message.contains("503"), "{}", failure.message);
    assert!(
        failure.message.contains("after 4 attempts"),
        "{}",
        failure.message
    );
    assert_eq!(*count.lock().unwrap(), 4, "one attempt and three retries");

    let (url, count) = answering("404 Not Found").await;
    let failure = retrying(3, 10)
        .ensure_cached(
            &state,
            &release_for(b"y", url),
            &RepositoryAccess::default(),
        )
        .await
        .unwrap_err();
    assert!(failure.message.contains("404"), "{}", failure.message);
    assert_eq!(*count.lock().unwrap(), 1, "a 404 will not change: no retry");
}

#[tokio::test]
async fn a_refused_connection_is_retried_until_the_server_is_back() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Nothing listens at first: connections are refused.
    drop(listener);
    let body = b"module bytes".to_vec();
    let release = release_for(&body, format!("http://{addr}/m.ko"));
    let served = body.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        if let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                served.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&served).await;
            let _ = sock.shutdown().await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let image = retrying(5, 200)
        .ensure_cached(&state, &release, &RepositoryAccess::default())
        .await
        .unwrap();
    assert_eq!(image.bytes(), body);
}

/// Answers the first `failures` requests with 503, then every request with `body`.
async fn recovering(failures: usize, body: &'static [u8]) -> (String, Arc<Mutex<usize>>) {
    let (addr, count) = counting(move |n| {
        if n <= failures {
            ("503 Service Unavailable".to_string(), Vec::new())
        } else {
            ("200 OK".to_string(), body.to_vec())
        }
    })
    .await;
    (format!("http://{addr}/repo/"), count)
}

fn trust_of(url: &str) -> PolicyTrust {
    PolicyTrust {
        policy: "fleet".into(),
        repository_url: url.parse().unwrap(),
        access: RepositoryAccess::default(),
        keys: Vec::new(),
        accepted_serial: 0,
    }
}

#[tokio::test]
async fn the_signed_index_outlasts_a_repository_that_flaps() {
    let (url, count) = recovering(2, b"signed").await;
    let signed = retrying(3, 10)
        .fetch_signed_index(&trust_of(&url))
        .await
        .unwrap();
    assert_eq!(signed.index, b"signed");
    assert_eq!(signed.signature, b"signed");
    assert_eq!(
        *count.lock().unwrap(),
        4,
        "two refused, then index and signature"
    );

    let (url, count) = recovering(1, b"signed").await;
    let failure = retrying(3, 10)
        .fetch_signed_index_once(&trust_of(&url))
        .await
        .unwrap_err();
    assert_eq!(failure.reason, NodeErrorReason::DownloadFailed);
    assert!(failure.message.contains("503"), "{}", failure.message);
    assert_eq!(*count.lock().unwrap(), 1, "one attempt only");
}
