//! A patch repository served over HTTP on loopback, as nginx or S3 would serve the tree
//! `kpersist-repo` writes: files read from disk on every request (so publishing a release
//! is just rewriting the directory), strong ETags with `If-None-Match`, and switches for
//! the faults the suites inject: down (refused or 503), a wrong index signature,
//! corrupted or missing module files, slow answers.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use crate::{Error, Result};

/// The signature file the index signature fault alters.
const SIGNATURE_FILE: &str = "index.json.sig";

/// Faults applied to every answer while set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Answer every request with 503 Service Unavailable.
    pub unavailable: bool,
    /// Serve `index.json.sig` with one signature byte changed: well-formed, but it does
    /// not verify.
    pub wrong_signature: bool,
    /// Serve every `.ko` with one byte flipped in the middle: same size, other SHA-256.
    pub corrupt_modules: bool,
    /// Answer every `.ko` with 404 Not Found, as a repository whose module files were
    /// removed or never uploaded: agents fail the download at once (DownloadFailed), while
    /// the index still verifies.
    pub missing_modules: bool,
    /// Wait this long before answering.
    pub delay: Duration,
}

/// One request the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// Request path, e.g. `/index.json`.
    pub path: String,
    /// Status code sent.
    pub status: u16,
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    faults: Mutex<Faults>,
    served: Mutex<Vec<Served>>,
}

impl Shared {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        // A panicking test thread cannot leave the faults half-written; keep serving.
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn served(&self) -> MutexGuard<'_, Vec<Served>> {
        self.served.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running repository server; it stops when dropped.
#[derive(Debug)]
pub struct RepoServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl RepoServer {
    /// Serves `root` on a free loopback port.
    pub async fn start(root: &Path) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::Listen)?;
        let addr = listener.local_addr().map_err(Error::Listen)?;
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            faults: Mutex::new(Faults::default()),
            served: Mutex::new(Vec::new()),
        });
        let mut server = Self {
            addr,
            shared,
            task: None,
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let router = axum::Router::new()
            .fallback(answer)
            .with_state(self.shared.clone());
        self.task = Some(tokio::spawn(async move {
            // serve() only returns on a listener error, which ends this server.
            let _ = axum::serve(listener, router).await;
        }));
    }

    /// Base URL of the repository, `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The directory served.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Replaces every fault switch at once.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults() = faults;
    }

    /// Changes some fault switches.
    pub fn update_faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.shared.faults());
    }

    /// Stops listening: new connections are refused until `accept_connections`. Requests
    /// on connections kept alive from before get 503, as from a server going away.
    pub fn refuse_connections(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.update_faults(|f| f.unavailable = true);
    }

    /// Listens again on the same port after `refuse_connections`.
    pub async fn accept_connections(&mut self) -> Result<()> {
        if self.task.is_none() {
            let listener = tokio::net::TcpListener::bind(self.addr)
                .await
                .map_err(Error::Listen)?;
            self.serve(listener);
        }
        self.update_faults(|f| f.unavailable = false);
        Ok(())
    }

    /// Every request answered so far.
    pub fn served(&self) -> Vec<Served> {
        self.shared.served().clone()
    }

    /// How many requests for `path` (e.g. `/index.json`) got status `status`.
    pub fn count(&self, path: &str, status: u16) -> usize {
        self.shared
            .served()
            .iter()
            .filter(|s| s.path == path && s.status == status)
            .count()
    }
}

impl Drop for RepoServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn answer(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let faults = shared.faults().clone();
    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    let path = uri.path().to_string();
    let response = if faults.unavailable {
        plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "repository unavailable (injected fault)",
        )
    } else if faults.missing_modules && path.ends_with(".ko") {
        plain(StatusCode::NOT_FOUND, "module missing (injected fault)")
    } else {
        file_response(&shared.root, &path, &headers, &faults).await
    };
    shared.served().push(Served {
        path,
        status: response.status().as_u16(),
    });
    response
}

async fn file_response(root: &Path, path: &str, headers: &HeaderMap, faults: &Faults) -> Response {
    let Some(file) = resolve(root, path) else {
        return plain(StatusCode::NOT_FOUND, "no such file");
    };
    let mut body = match tokio::fs::read(&file).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return plain(StatusCode::NOT_FOUND, "no such file");
        }
        Err(_) => return plain(StatusCode::NOT_FOUND, "not a readable file"),
    };
    if faults.wrong_signature && path.ends_with(SIGNATURE_FILE) {
        spoil_signature(&mut body);
    }
    if faults.corrupt_modules && path.ends_with(".ko") && !body.is_empty() {
        let middle = body.len() / 2;
        body[middle] ^= 0xff;
    }
    let etag = format!("\"{}\"", hex::encode(Sha256::digest(&body)));
    let mut builder = Response::builder().header(header::ETAG, &etag);
    if if_none_match(headers, &etag) {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response"));
    }
    let content_type = if path.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    builder = builder.header(header::CONTENT_TYPE, content_type);
    builder
        .status(StatusCode::OK)
        .body(Body::from(body))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// The file under `root` a request path names; `None` for anything escaping `root`.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path.trim_start_matches('/'));
    let plain_parts = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    (plain_parts && !relative.as_os_str().is_empty()).then(|| root.join(relative))
}

/// Changes one character of a base64 signature line into another base64 character, so
/// the file still decodes to 64 bytes but no longer verifies.
fn spoil_signature(body: &mut [u8]) {
    if let Some(first) = body.first_mut() {
        *first = if *first == b'A' { b'B' } else { b'A' };
    }
}

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag == etag || tag.strip_prefix("W/") == Some(etag))
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
#[path = "repo_server_tests.rs"]
mod tests;
