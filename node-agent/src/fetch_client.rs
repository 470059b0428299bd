//! The HTTP client for module downloads: certificates always verified (the system roots
//! plus the repository's CA bundle), redirects followed only within the origin of the
//! module URL or to hosts the policy lists, and never from https to plain http.

use kpersist_kmod::repository::redirect_policy;
use reqwest::{Certificate, Client};

/// How the repository may be reached: the policy's CA bundle and redirect hosts, as the
/// operator copies them into the node's `spec.desired.repository`.
pub use kpersist_crds::RepositoryAccess;

/// A client for `access`. There is no way to turn certificate verification off.
pub(super) fn build_client(access: &RepositoryAccess) -> Result<Client, String> {
    let policy = redirect_policy(access.allowed_redirect_hosts.clone());
    let mut builder = Client::builder()
        .user_agent(concat!("kpersist-agent/", env!("CARGO_PKG_VERSION")))
        .redirect(policy)
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(300));
    if let Some(pem) = access.ca_bundle.as_deref().filter(|p| !p.trim().is_empty()) {
        let certs = Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
            format!(
                "repository.caBundle is not a PEM certificate bundle ({}); paste the CA \
                 certificates in PEM form",
                error_chain(&e)
            )
        })?;
        if certs.is_empty() {
            return Err(
                "repository.caBundle holds no certificate; paste the CA certificates \
                        in PEM form"
                    .to_string(),
            );
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| error_chain(&e))
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
