//! Kernel livepatch modules as artifacts: modinfo, the signed patch repository format, and
//! the Linux livepatch kernel interface. No Kubernetes here.
//!
//! # What each part is for
//!
//! - [`modinfo`]: [`ModInfo::from_bytes`](modinfo::ModInfo::from_bytes) /
//!   [`ModInfo::from_file`](modinfo::ModInfo::from_file) read a `.ko` file's `.modinfo`
//!   (name, vermagic, `livepatch`, license, srcversion, depends, and every raw entry);
//!   [`vermagic_release`](modinfo::ModInfo::vermagic_release) is the kernel release it was
//!   built for.
//! - [`buildid`]: the running kernel's release and GNU build id, from
//!   `/proc/sys/kernel/osrelease` and `/sys/kernel/notes` or any paths given in
//!   [`KernelPaths`](buildid::KernelPaths); the parsers
//!   ([`parse_build_id`](buildid::parse_build_id),
//!   [`parse_kernel_release`](buildid::parse_kernel_release)) are pure.
//! - [`signing`]: ed25519 [`PrivateKey`](signing::PrivateKey) and
//!   [`PublicKey`](signing::PublicKey) in their one-line base64 file formats, and
//!   [`verify`](signing::verify) of a detached signature against a set of trusted keys.
//! - [`repository`]: the patch repository (`index.json`, `index.json.sig`, `modules/`).
//!   Clients call [`verify_index`](repository::verify_index) on the fetched index and
//!   signature bytes (signature first, over the exact bytes; then size cap, schema version,
//!   and validation), [`Index::check_not_rolled_back`](repository::Index::check_not_rolled_back)
//!   against the highest serial they accepted before and
//!   [`Index::is_expired`](repository::Index::is_expired) to report a stale repository,
//!   [`Index::newest_for`](repository::Index::newest_for) to choose a
//!   node's target, and [`verify_module`](repository::verify_module) on a downloaded module.
//!   Publishers use [`LocalRepository`](repository::LocalRepository) (init, add, sign) and
//!   [`verify_repository_dir`](repository::verify_repository_dir).
//! - [`kernel`]: the Linux livepatch kernel interface behind a `Kernel` trait.
//!
//! Every error names the file or release at fault, says what is wrong, and what to do.
//!
//! # A client's view of a repository
//!
//! ```
//! use kpersist_kmod::repository::{ReleaseQuery, verify_index, verify_module};
//! use kpersist_kmod::signing::PublicKey;
//!
//! fn target_for_node(
//!     index_bytes: &[u8],
//!     signature_bytes: &[u8],
//!     trusted_keys: &[PublicKey],
//!     bad_release_ids: &[String],
//!     published_before: jiff::Timestamp,
//! ) -> Result<Option<String>, kpersist_kmod::repository::RepositoryError> {
//!     // Never look inside an index whose signature does not verify.
//!     let index = verify_index(index_bytes, signature_bytes, trusted_keys)?;
//!     let query = ReleaseQuery {
//!         kernel_release: "6.1.0-28-amd64",
//!         build_id: "4f1f5bd3e0b2a6c4d8e9f0a1b2c3d4e5f6a7b8c9",
//!         channel: "stable",
//!         published_before: Some(published_before),
//!         pinned_version: None,
//!     };
//!     let is_bad = |r: &kpersist_kmod::repository::Release| bad_release_ids.contains(&r.id());
//!     Ok(index.newest_for(&query, &is_bad).map(|r| r.id()))
//! }
//!
//! fn check_download(
//!     module: &[u8],
//!     release: &kpersist_kmod::repository::Release,
//! ) -> Result<(), kpersist_kmod::repository::RepositoryError> {
//!     // Size and SHA-256 must match the signed index before the module goes near the kernel.
//!     verify_module(module, release)
//! }
//! ```

pub mod buildid;
pub mod kernel;
pub mod modinfo;
pub mod repository;
pub mod signing;

#[cfg(test)]
mod test_elf;
