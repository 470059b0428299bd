//! HTTP for the patch repository: a client per policy (its `caBundle` added to the system
//! roots, certificate checks never off; redirects only within the repository's origin or to
//! its `allowedRedirectHosts`, never from https to http), conditional GETs with
//! `If-None-Match`, and bodies read against a size cap so a hostile or broken server cannot
//! exhaust memory.

use std::time::Duration;

use kpersist_kmod::repository::redirect_policy;
use reqwest::{Certificate, Client, StatusCode, header};

/// Largest `index.json` read: the size verification accepts.
pub const INDEX_LIMIT: u64 = kpersist_kmod::repository::MAX_INDEX_SIZE;
/// Largest `index.json.sig` read: the size verification accepts.
pub const SIGNATURE_LIMIT: u64 = kpersist_kmod::repository::MAX_SIGNATURE_SIZE;
/// Whole-request timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the operator introduces itself to repositories and Prometheus.
pub const USER_AGENT: &str = concat!("kpersist-operator/", env!("CARGO_PKG_VERSION"));

/// Why a file could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The policy's `caBundle` is not PEM.
    #[error(
        "repository.caBundle is not a PEM certificate bundle ({0}); paste the CA certificates in PEM form"
    )]
    CaBundle(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for {url}: {message}")]
    Client {
        /// The repository URL.
        url: String,
        /// The builder's complaint.
        message: String,
    },
    /// Connecting, TLS, or reading the answer failed.
    #[error("GET {url} failed: {message}")]
    Request {
        /// The file URL.
        url: String,
        /// The error chain, flattened.
        message: String,
    },
    /// The server answered with a status other than 200 or 304.
    #[error("GET {url} answered HTTP {status}; check repository.url and the server")]
    Status {
        /// The file URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// The body is larger than the cap.
    #[error("GET {url}: body exceeds {limit} bytes; this is not a kpersist {what}")]
    TooLarge {
        /// The file URL.
        url: String,
        /// The cap.
        limit: u64,
        /// "index" or "signature".
        what: &'static str,
    },
}

/// The answer to a conditional GET.
#[derive(Debug)]
pub enum Fetched {
    /// New content, with its ETag when the server sent one.
    Modified {
        /// The body.
        body: Vec<u8>,
        /// The `ETag` header.
        etag: Option<String>,
    },
    /// 304: what we have is current.
    NotModified,
}

/// Builds the HTTP client for one repository. An https repository's client refuses plain
/// http entirely, so a redirect cannot downgrade it; redirects leave the origin of the URL
/// asked for only to `allowed_redirect_hosts`.
pub fn client_for(
    url: &str,
    ca_bundle: Option<&str>,
    allowed_redirect_hosts: &[String],
) -> Result<Client, FetchError> {
    let redirects = redirect_policy(allowed_redirect_hosts.to_vec());
    let mut builder = Client::builder()
        .user_agent(USER_AGENT)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(redirects)
        .https_only(url.starts_with("https://"));
    builder = trust_ca_bundle(builder, ca_bundle).map_err(FetchError::CaBundle)?;
    builder.build().map_err(|e| FetchError::Client {
        url: url.to_string(),
        message: error_chain(&e),
    })
}

/// Trusts the certificate authorities of a PEM bundle besides the system's; nothing when
/// there is no bundle. The error says why the text is not one.
pub fn trust_ca_bundle(
    builder: reqwest::ClientBuilder,
    ca_bundle: Option<&str>,
) -> Result<reqwest::ClientBuilder, String> {
    let Some(pem) = ca_bundle.filter(|pem| !pem.trim().is_empty()) else {
        return Ok(builder);
    };
    let certs = Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| error_chain(&e))?;
    if certs.is_empty() {
        return Err("no certificate found".to_string());
    }
    Ok(builder.tls_certs_merge(certs))
}

/// The URL of `file` inside the repository at `base`.
pub fn file_url(base: &str, file: &str) -> String {
    format!("{}/{file}", base.trim_end_matches('/'))
}

/// GETs `url`, sending `If-None-Match` when an ETag is known, and reads at most `limit`
/// bytes of the body.
pub async fn get(
    client: &Client,
    url: &str,
    etag: Option<&str>,
    limit: u64,
    what: &'static str,
) -> Result<Fetched, FetchError> {
    let request_error = |e: reqwest::Error| FetchError::Request {
        url: url.to_string(),
        message: error_chain(&e),
    };
    let mut request = client.get(url);
    if let Some(etag) = etag {
        request = request.header(header::IF_NONE_MATCH, etag);
    }
    let mut response = request.send().await.map_err(request_error)?;
    match response.status() {
        StatusCode::NOT_MODIFIED if etag.is_some() => return Ok(Fetched::NotModified),
        StatusCode::OK => {}
        status => {
            return Err(FetchError::Status {
                url: url.to_string(),
                status,
            });
        }
    }
    let too_large = || FetchError::TooLarge {
        url: url.to_string(),
        limit,
        what,
    };
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let etag = response
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched::Modified { body, etag })
}

/// The error and its sources on one line: reqwest's top-level message alone ("error sending
/// request") hides the cause a person needs (refused, DNS, certificate).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_url_joins_with_one_slash() {
        assert_eq!(
            file_url("http://r/x/", "index.json"),
            "http://r/x/index.json"
        );
        assert_eq!(
            file_url("http://r/x", "index.json.sig"),
            "http://r/x/index.json.sig"
        );
    }

    #[test]
    fn a_ca_bundle_that_is_not_pem_is_refused() {
        let error = client_for("https://r", Some("not a certificate"), &[]).unwrap_err();
        assert!(matches!(error, FetchError::CaBundle(_)), "{error}");
    }
}
