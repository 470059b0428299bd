//! Getting a release's module into the host cache, verified. Downloads go to
//! `<sha256>.ko.part` and are renamed to `<sha256>.ko` only after size and SHA-256 match the
//! signed index, so nothing half-written or forged is ever in the cache; an interrupted HTTP
//! download resumes from the partial file with a range request. The verified bytes are
//! handed back in memory: they, not the file, are what gets loaded. The signed index of a
//! policy's repository is fetched here too, for [`crate::trust`] to check a release against
//! before anything is downloaded.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use kpersist_crds::{NodeErrorReason, PatchRelease};
use kpersist_kmod::kernel::{KernelError, ModuleImage};
use kpersist_kmod::repository::{
    INDEX_FILE, MAX_INDEX_SIZE, MAX_SIGNATURE_SIZE, Release, SIGNATURE_FILE, verify_module,
};

use crate::checks::Failure;
use crate::state::StateDir;
use crate::trust::{PolicyTrust, SignedIndex};

#[path = "fetch_client.rs"]
mod client;
pub use client::RepositoryAccess;

/// Fetches modules over HTTP(S) or from local files.
#[derive(Clone, Debug)]
pub struct Fetcher {
    /// One client per repository access settings, built on first HTTP use, so local mode
    /// on a bare host (no CA store, no network) never needs a TLS client.
    clients: Arc<Mutex<HashMap<RepositoryAccess, reqwest::Client>>>,
    /// The waits before each further attempt of a download that failed on the way
    /// (connection refused or reset, timeout, HTTP 5xx, 408, 429), so a repository that
    /// restarts or flaps does not fail a wave, while one that stays down still does.
    /// Answers that will not change (404, a refused redirect, a bad certificate) are not
    /// retried.
    retry: ExponentialBuilder,
    /// The same for the fetch of a policy's signed index, within a shorter budget.
    index_retry: ExponentialBuilder,
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher {
            index_retry: crate::backoff::index(),
            ..Fetcher::with_retry(crate::backoff::download())
        }
    }
}

impl Fetcher {
    /// A fetcher; each download says which CAs it trusts and where it may be redirected.
    /// Downloads that fail on the way are retried with [`crate::backoff::download`].
    pub fn new() -> Fetcher {
        Fetcher::default()
    }

    /// A fetcher that retries a download, or a signed index's fetch, that failed on the
    /// way after each wait `retry` gives.
    pub fn with_retry(retry: ExponentialBuilder) -> Fetcher {
        Fetcher {
            clients: Arc::default(),
            index_retry: retry,
            retry,
        }
    }

    fn client(&self, access: &RepositoryAccess) -> Result<reqwest::Client, String> {
        // A panic elsewhere while holding the lock leaves the map as valid as before.
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(access) {
            return Ok(client.clone());
        }
        let client = client::build_client(access)?;
        clients.insert(access.clone(), client.clone());
        Ok(client)
    }

    /// The `index.json` and `index.json.sig` of the policy's repository, each read against
    /// its size cap through a client with the policy's CAs and redirect hosts. A fetch that
    /// fails on the way is retried as a download is, for up to about 30 s, so a flapping
    /// repository does not fail a node.
    pub async fn fetch_signed_index(&self, trust: &PolicyTrust) -> Result<SignedIndex, Failure> {
        self.signed_index(trust, self.index_retry.build()).await
    }

    /// [`Fetcher::fetch_signed_index`] in one attempt, for a caller that has something
    /// else to fall back on (a revert to a cached module) rather than wait.
    pub async fn fetch_signed_index_once(
        &self,
        trust: &PolicyTrust,
    ) -> Result<SignedIndex, Failure> {
        self.signed_index(trust, std::iter::empty()).await
    }

    async fn signed_index(
        &self,
        trust: &PolicyTrust,
        delays: impl Iterator<Item = Duration>,
    ) -> Result<SignedIndex, Failure> {
        let client = self.client(&trust.access).map_err(|e| {
            Failure::new(
                NodeErrorReason::DownloadFailed,
                format!(
                    "no HTTP client for policy {}'s repository: {e}",
                    trust.policy
                ),
            )
        })?;
        let index_url = trust.file_url(INDEX_FILE);
        let signature_url = trust.file_url(SIGNATURE_FILE);
        let both = || async {
            let index = get_capped(&client, &index_url, MAX_INDEX_SIZE).await?;
            let signature = get_capped(&client, &signature_url, MAX_SIGNATURE_SIZE).await?;
            Ok(SignedIndex { index, signature })
        };
        with_retries(&index_url, "its signed index", delays, both).await
    }

    /// `release`'s module, read once from the cache and verified against the signed index,
    /// downloading it first when it is not cached. The caller checks and loads these bytes,
    /// never the file again, so the file changing afterwards cannot change what is loaded.
    /// `access` names the CAs trusted and the hosts redirects may go to, besides the
    /// module URL's origin.
    pub async fn ensure_cached(
        &self,
        state: &StateDir,
        release: &PatchRelease,
        access: &RepositoryAccess,
    ) -> Result<ModuleImage, Failure> {
        let path = state.module_path(&release.sha256);
        if path.exists() {
            match read_verified(&path, release) {
                Ok(image) => return Ok(image),
                // A cache entry that no longer verifies is dropped and fetched again.
                Err(_) => remove_quietly(&path),
            }
        }
        let part = state.partial_path(&release.sha256);
        let url = release.module_url.as_str();
        if url.starts_with("http://") || url.starts_with("https://") {
            self.download(url, &part, release.size, access).await?;
        } else {
            copy_local(release, &part)?;
        }
        let image = match read_verified(&part, release) {
            Ok(image) => image,
            Err(failure) => {
                // The source delivered all it had and it is wrong: start over next time.
                remove_quietly(&part);
                return Err(failure);
            }
        };
        std::fs::rename(&part, &path).map_err(|e| {
            host_failure(format!(
                "cannot move {} into the cache: {e}",
                part.display()
            ))
        })?;
        Ok(image.with_source(path.display().to_string()))
    }

    /// Downloads into `part`, resuming from what earlier attempts left there, and tries
    /// again after each retry delay while the failure is one that may pass.
    async fn download(
        &self,
        url: &str,
        part: &Path,
        size: u64,
        access: &RepositoryAccess,
    ) -> Result<(), Failure> {
        let once = || self.download_once(url, part, size, access);
        with_retries(url, "this module", self.retry.build(), once).await
    }

    async fn download_once(
        &self,
        url: &str,
        part: &Path,
        size: u64,
        access: &RepositoryAccess,
    ) -> Result<(), Attempt> {
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let resume = have > 0 && have < size;
        let fail = |e: String| {
            Failure::new(
                NodeErrorReason::DownloadFailed,
                format!("download of {url} failed: {e}"),
            )
        };
        let client = self
            .client(access)
            .map_err(|e| Attempt::Final(fail(format!("no HTTP client: {e}"))))?;
        let mut request = client.get(url);
        if resume {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let response = request.send().await.map_err(|e| send_failed(&e, fail))?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_failed(status, fail));
        }
        let append = resume && status == reqwest::StatusCode::PARTIAL_CONTENT;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(part)
            .map_err(|e| {
                Attempt::Final(host_failure(format!(
                    "cannot write {}: {e}",
                    part.display()
                )))
            })?;
        let mut written = if append { have } else { 0 };
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            // What arrived so far stays in the partial file for the next attempt to resume.
            let chunk = chunk.map_err(|e| {
                Attempt::Passing(fail(format!(
                    "{} after {written} of {size} bytes",
                    client::error_chain(&e)
                )))
            })?;
            written += chunk.len() as u64;
            if written > size {
                return Err(Attempt::Final(Failure::new(
                    NodeErrorReason::SizeMismatch,
                    format!(
                        "{url} is larger than the {size} bytes the signed index says; refusing it"
                    ),
                )));
            }
            file.write_all(&chunk).map_err(|e| {
                Attempt::Final(host_failure(format!(
                    "cannot write {}: {e}",
                    part.display()
                )))
            })?;
        }
        file.sync_all().map_err(|e| {
            Attempt::Final(host_failure(format!("cannot sync {}: {e}", part.display())))
        })?;
        Ok(())
    }
}

/// Runs `attempt` until it succeeds or fails for good, waiting each of `delays` before
/// trying again; the failure after several attempts says how many and over how long.
async fn with_retries<T, F, Fut>(
    url: &str,
    what: &str,
    mut delays: impl Iterator<Item = Duration>,
    mut attempt: F,
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Attempt>>,
{
    let mut tries = 1;
    let mut waited = Duration::ZERO;
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(Attempt::Passing(failure)) => match delays.next() {
                Some(delay) => {
                    tracing::warn!(%url, message = %failure.message, ?delay, "fetch failed; retrying");
                    tokio::time::sleep(delay).await;
                    tries += 1;
                    waited += delay;
                }
                None if tries == 1 => return Err(failure),
                None => {
                    return Err(Failure {
                        message: format!(
                            "{} (after {tries} attempts over {}s; check that the repository \
                             serves {what})",
                            failure.message,
                            waited.as_secs()
                        ),
                        ..failure
                    });
                }
            },
            Err(Attempt::Final(failure)) => return Err(failure),
        }
    }
}

/// A request that got no answer, worth another attempt when the connection failed or
/// timed out, never when TLS or a redirect refused it.
fn send_failed(e: &reqwest::Error, fail: impl Fn(String) -> Failure) -> Attempt {
    let mut message = client::error_chain(e);
    let certificate = message.contains("certificate");
    if certificate {
        message.push_str(
            "; if the repository's certificate comes from a private CA, put that CA \
             in the policy's repository.caBundle",
        );
    }
    let passing = (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body())
        && !e.is_redirect()
        && !certificate;
    Attempt::of(fail(message), passing)
}

/// An answer other than success, worth another attempt when the server may recover
/// (5xx, 408, 429), never for one that will not change (404, 403).
fn status_failed(status: reqwest::StatusCode, fail: impl Fn(String) -> Failure) -> Attempt {
    let passing = status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
    Attempt::of(fail(format!("HTTP status {status}")), passing)
}

/// GETs `url` and reads at most `limit` bytes of the body.
async fn get_capped(client: &reqwest::Client, url: &str, limit: u64) -> Result<Vec<u8>, Attempt> {
    let fail = |problem: String| {
        Failure::new(
            NodeErrorReason::DownloadFailed,
            format!(
                "GET {url} failed: {problem}; the release cannot be verified until it is served"
            ),
        )
    };
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| send_failed(&e, fail))?;
    let status = response.status();
    if !status.is_success() {
        return Err(status_failed(status, fail));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Attempt::Passing(fail(client::error_chain(&e))))?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(Attempt::Final(Failure::new(
                NodeErrorReason::UntrustedRelease,
                format!(
                    "{url} is larger than {limit} bytes; this is not a kpersist repository file"
                ),
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How one download attempt failed: with something that may pass, so worth another
/// attempt, or for good.
enum Attempt {
    Passing(Failure),
    Final(Failure),
}

impl Attempt {
    fn of(failure: Failure, passing: bool) -> Attempt {
        if passing {
            Attempt::Passing(failure)
        } else {
            Attempt::Final(failure)
        }
    }
}

/// Copies a `file://` URL or plain path into the partial file. A file whose size is not
/// the one the signed index says is refused before a byte of it is read.
fn copy_local(release: &PatchRelease, part: &Path) -> Result<(), Failure> {
    let url = release.module_url.as_str();
    let source = url.strip_prefix("file://").unwrap_or(url);
    let unreadable = |e: std::io::Error| {
        Failure::new(
            NodeErrorReason::DownloadFailed,
            format!("cannot read module {source}: {e}"),
        )
    };
    let found = std::fs::metadata(source).map_err(unreadable)?.len();
    if found != release.size {
        return Err(size_mismatch(release, found));
    }
    std::fs::copy(source, part).map(|_| ()).map_err(unreadable)
}

/// Reads a module file once (capped at the largest size an index may declare) and checks
/// those bytes against the release.
fn read_verified(path: &Path, release: &PatchRelease) -> Result<ModuleImage, Failure> {
    let image = ModuleImage::read(path).map_err(|e| match e {
        KernelError::ModuleTooLarge { .. } => Failure::new(
            NodeErrorReason::SizeMismatch,
            format!("{e}; the signed index says {} bytes", release.size),
        ),
        e => host_failure(e.to_string()),
    })?;
    verify_image(&image, release)?;
    Ok(image)
}

fn size_mismatch(release: &PatchRelease, found: u64) -> Failure {
    Failure::new(
        NodeErrorReason::SizeMismatch,
        format!(
            "module of release {} from {} is {found} bytes, the signed index says {}; the \
             download was truncated or the file was replaced",
            release.id, release.module_url, release.size
        ),
    )
}

/// Checks a module's bytes against the release: size first, then SHA-256.
pub fn verify_image(image: &ModuleImage, release: &PatchRelease) -> Result<(), Failure> {
    let bytes = image.bytes();
    if bytes.len() as u64 != release.size {
        return Err(size_mismatch(release, bytes.len() as u64));
    }
    verify_module(bytes, &index_release(release)).map_err(|e| {
        Failure::new(
            NodeErrorReason::HashMismatch,
            format!("{e}; the module does not match the signed index and will not be loaded"),
        )
    })
}

/// The index entry a release was copied from, as far as module verification needs it.
fn index_release(release: &PatchRelease) -> Release {
    Release {
        kernel_release: release.kernel_release.clone(),
        build_id: release.build_id.clone(),
        version: release.version,
        module: release.module_url.clone(),
        sha256: release.sha256.clone(),
        size: release.size,
        module_name: release.module_name.clone(),
        cves: release.cves.clone(),
        channels: Vec::new(),
        published: String::new(),
        yanked: None,
    }
}

fn host_failure(message: String) -> Failure {
    Failure::new(NodeErrorReason::HostError, message)
}

fn remove_quietly(path: &Path) {
    // Best effort: a file that cannot be removed is overwritten by the next download.
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
#[path = "fetch_tests.rs"]
mod tests;
