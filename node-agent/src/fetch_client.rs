//! The HTTP client for module downloads: certificates always verified (the system roots
//! plus the repository's CA bundle), redirects followed only within the origin of the
//! module URL or to hosts the policy lists, and never from https to plain http.

use kpersist_kmod::repository::redirect_policy;
use reqwest::{Certificate, Client};

/// How the repository may be reached: the policy's CA bundle and redirect hosts, as the
/// operator copies them into the node's `spec.desired.repository`.
pub use kpersist_crds::RepositoryAccess;

/// A client for `access`. There is no way to turn certificate verification off. A host
/// with no CA store of its own (a minimal image) trusts only the policy's CA bundle, which
/// is all a plain-http repository or one with `repository.caBundle` needs.
pub(super) fn build_client(access: &RepositoryAccess) -> Result<Client, String> {
    let bundle = ca_bundle(access)?;
    match builder(access).tls_certs_merge(bundle.clone()).build() {
        Ok(client) => Ok(client),
        Err(e) if error_chain(&e).contains(NO_SYSTEM_ROOTS) => {
            tracing::warn!(
                "this host has no CA certificates of its own; only repository.caBundle is \
                 trusted for https repositories"
            );
            builder(access)
                .tls_certs_only(bundle)
                .build()
                .map_err(|e| error_chain(&e))
        }
        Err(e) => Err(error_chain(&e)),
    }
}

/// What the platform verifier says when the host has no CA store.
const NO_SYSTEM_ROOTS: &str = "No CA certificates were loaded from the system";

fn builder(access: &RepositoryAccess) -> reqwest::ClientBuilder {
    Client::builder()
        .user_agent(concat!("kpersist-agent/", env!("CARGO_PKG_VERSION")))
        .redirect(redirect_policy(access.allowed_redirect_hosts.clone()))
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(300))
}

/// The certificates of `repository.caBundle` (none when it is not set).
fn ca_bundle(access: &RepositoryAccess) -> Result<Vec<Certificate>, String> {
    let Some(pem) = access.ca_bundle.as_deref().filter(|p| !p.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let certs = Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
        format!(
            "repository.caBundle is not a PEM certificate bundle ({}); paste the CA \
             certificates in PEM form",
            error_chain(&e)
        )
    })?;
    if certs.is_empty() {
        return Err(
            "repository.caBundle holds no certificate; paste the CA certificates in PEM form"
                .to_string(),
        );
    }
    Ok(certs)
}

/// The error and its causes on one line: reqwest's own message ("error sending request")
/// hides what a person needs (certificate, refused redirect, DNS).
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some layers repeat their cause in their own message.
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_bundle_that_is_not_pem_is_refused_naming_the_field() {
        let access = RepositoryAccess {
            ca_bundle: Some("not a certificate".into()),
            ..RepositoryAccess::default()
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let message = build_client(&access).unwrap_err();
        assert!(message.contains("repository.caBundle"), "{message}");
    }
}
