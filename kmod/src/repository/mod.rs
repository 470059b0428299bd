//! The patch repository: a static tree of `index.json`, its detached ed25519 signature
//! `index.json.sig`, and the modules under `modules/`. Readers verify the signature over the
//! index's exact bytes before parsing it, then each module's size and SHA-256. A signed index
//! carries a serial that grows with each signing and an expiry, so readers can refuse an
//! older index than one they accepted and notice one nobody re-signed.

mod error;
mod freshness;
mod index;
mod publish;
mod redirect;
mod select;
mod validate;
mod verify;

pub use error::RepositoryError;
pub use freshness::DEFAULT_VALIDITY;
pub use index::{INDEX_FILE, Index, Release, SCHEMA_VERSION, SIGNATURE_FILE};
pub use publish::{LocalRepository, MODULES_DIR, NewRelease};
#[cfg(feature = "http")]
pub use redirect::redirect_policy;
pub use redirect::{MAX_REDIRECTS, redirect_refusal};
pub use select::ReleaseQuery;
pub use validate::{check_module_path, check_yank_reason, is_channel, is_cve_id};
pub use verify::{
    MAX_SIGNATURE_SIZE, sha256_hex, verify_index, verify_module, verify_repository_dir,
};

/// Largest index accepted, checked before the index is parsed or its signature checked.
pub const MAX_INDEX_SIZE: u64 = 16 * 1024 * 1024;
/// Largest module accepted; real livepatch modules are tens of kilobytes.
pub const MAX_MODULE_SIZE: u64 = 64 * 1024 * 1024;

#[cfg(test)]
mod tests;
