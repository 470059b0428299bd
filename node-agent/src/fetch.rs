//! Getting a release's module into the host cache, verified. Downloads go to
//! `<sha256>.ko.part` and are renamed to `<sha256>.ko` only after size and SHA-256 match the
//! signed index, so nothing half-written or forged is ever in the cache; an interrupted HTTP
//! download resumes from the partial file with a range request.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use kpersist_crds::{NodeErrorReason, PatchRelease};
use kpersist_kmod::repository::{Release, verify_module};

use crate::checks::Failure;
use crate::state::StateDir;

/// Fetches modules over HTTP(S) or from local files.
#[derive(Clone, Debug, Default)]
pub struct Fetcher {
    /// Built on first HTTP use, so local mode on a bare host (no CA store, no network)
    /// never needs a TLS client.
    client: Arc<OnceLock<reqwest::Client>>,
}

impl Fetcher {
    /// A fetcher that follows redirects only within the origin of the first URL.
    pub fn new() -> Fetcher {
        Fetcher::default()
    }

    fn client(&self) -> Result<&reqwest::Client, reqwest::Error> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt
                .previous()
                .first()
                .is_some_and(|first| first.origin() == attempt.url().origin());
            if !same_origin {
                attempt.error("redirect to another origin refused")
            } else if attempt.previous().len() > 5 {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .redirect(policy)
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(300))
            .build()?;
        Ok(self.client.get_or_init(|| client))
    }

    /// The path of `release`'s module in the cache, downloading and verifying it first when
    /// it is not there.
    pub async fn ensure_cached(
        &self,
        state: &StateDir,
        release: &PatchRelease,
    ) -> Result<PathBuf, Failure> {
        let path = state.module_path(&release.sha256);
        if path.exists() {
            match verify_file(&path, release) {
                Ok(()) => return Ok(path),
                // A cache entry that no longer verifies is dropped and fetched again.
                Err(_) => remove_quietly(&path),
            }
        }
        let part = state.partial_path(&release.sha256);
        let url = release.module_url.as_str();
        if url.starts_with("http://") || url.starts_with("https://") {
            self.download(url, &part, release.size).await?;
        } else {
            copy_local(url, &part)?;
        }
        if let Err(failure) = verify_file(&part, release) {
            // The source delivered all it had and it is wrong: start over next time.
            remove_quietly(&part);
            return Err(failure);
        }
        std::fs::rename(&part, &path).map_err(|e| {
            host_failure(format!(
                "cannot move {} into the cache: {e}",
                part.display()
            ))
        })?;
        Ok(path)
    }

    async fn download(&self, url: &str, part: &Path, size: u64) -> Result<(), Failure> {
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let resume = have > 0 && have < size;
        let fail = |e: String| {
            Failure::new(
                NodeErrorReason::DownloadFailed,
                format!("download of {url} failed: {e}; it will be retried"),
            )
        };
        let client = self
            .client()
            .map_err(|e| fail(format!("no HTTP client: {e}")))?;
        let mut request = client.get(url);
        if resume {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let response = request.send().await.map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!("HTTP status {status}")));
        }
        let append = resume && status == reqwest::StatusCode::PARTIAL_CONTENT;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(part)
            .map_err(|e| host_failure(format!("cannot write {}: {e}", part.display())))?;
        let mut written = if append { have } else { 0 };
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            // What arrived so far stays in the partial file for the next attempt to resume.
            let chunk = chunk.map_err(|e| fail(format!("{e} after {written} of {size} bytes")))?;
            written += chunk.len() as u64;
            if written > size {
                return Err(Failure::new(
                    NodeErrorReason::SizeMismatch,
                    format!(
                        "{url} is larger than the {size} bytes the signed index says; refusing it"
                    ),
                ));
            }
            file.write_all(&chunk)
                .map_err(|e| host_failure(format!("cannot write {}: {e}", part.display())))?;
        }
        file.sync_all()
            .map_err(|e| host_failure(format!("cannot sync {}: {e}", part.display())))?;
        Ok(())
    }
}

/// Copies a `file://` URL or plain path into the partial file.
fn copy_local(url: &str, part: &Path) -> Result<(), Failure> {
    let source = url.strip_prefix("file://").unwrap_or(url);
    std::fs::copy(source, part).map(|_| ()).map_err(|e| {
        Failure::new(
            NodeErrorReason::DownloadFailed,
            format!("cannot read module {source}: {e}"),
        )
    })
}

/// Checks a module file against the release: size first, then SHA-256.
pub fn verify_file(path: &Path, release: &PatchRelease) -> Result<(), Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| host_failure(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 != release.size {
        return Err(Failure::new(
            NodeErrorReason::SizeMismatch,
            format!(
                "module of release {} from {} is {} bytes, the signed index says {}; the \
                 download was truncated or the file was replaced",
                release.id,
                release.module_url,
                bytes.len(),
                release.size
            ),
        ));
    }
    verify_module(&bytes, &index_release(release)).map_err(|e| {
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
