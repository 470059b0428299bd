//! Checking what a repository serves against the publisher's keys: the index's signature over
//! its exact bytes, then the index, then each module's size and SHA-256.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::{INDEX_FILE, Index, MAX_INDEX_SIZE, Release, RepositoryError, SIGNATURE_FILE};
use crate::signing::{self, PublicKey, SigningError};

/// Largest signature file accepted; a real one is 89 bytes.
pub const MAX_SIGNATURE_SIZE: u64 = 1024;

/// Verifies a fetched index: the signature in `signature` (the text of `index.json.sig`) must
/// be by one of `trusted` over exactly `index` (the bytes of `index.json`); only then is the
/// index parsed and validated (see [`Index::from_json_bytes`]).
pub fn verify_index(
    index: &[u8],
    signature: &[u8],
    trusted: &[PublicKey],
) -> Result<Index, RepositoryError> {
    verify_index_named(index, signature, INDEX_FILE, SIGNATURE_FILE, trusted)
}

/// [`verify_index`] with errors naming the files `index_file` and `signature_file`.
fn verify_index_named(
    index: &[u8],
    signature: &[u8],
    index_file: &str,
    signature_file: &str,
    trusted: &[PublicKey],
) -> Result<Index, RepositoryError> {
    // Refuse oversized input before spending time hashing it.
    if index.len() as u64 > MAX_INDEX_SIZE {
        return Err(RepositoryError::IndexTooLarge {
            file: index_file.to_string(),
            size: index.len() as u64,
            max: MAX_INDEX_SIZE,
        });
    }
    if signature.len() as u64 > MAX_SIGNATURE_SIZE {
        return Err(RepositoryError::SignatureTooLarge {
            file: signature_file.to_string(),
            size: signature.len() as u64,
        });
    }
    match signing::verify(index, signature, signature_file, trusted) {
        Ok(()) => {}
        Err(SigningError::Mismatch { keys, .. }) => {
            return Err(RepositoryError::SignatureMismatch {
                index_file: index_file.to_string(),
                signature_file: signature_file.to_string(),
                keys,
            });
        }
        Err(other) => return Err(other.into()),
    }
    Index::parse_named(index, index_file)
}

/// Checks a downloaded module against its release: exact size, then SHA-256.
pub fn verify_module(module: &[u8], release: &Release) -> Result<(), RepositoryError> {
    verify_module_named(module, release, &release.module)
}

fn verify_module_named(
    module: &[u8],
    release: &Release,
    name: &str,
) -> Result<(), RepositoryError> {
    check_module_size(module.len() as u64, release, name)?;
    let digest = sha256_hex(module);
    if digest != release.sha256 {
        let problem = format!("sha256 is {digest}, the index says {}", release.sha256);
        return Err(mismatch(release, name, problem));
    }
    Ok(())
}

fn check_module_size(size: u64, release: &Release, name: &str) -> Result<(), RepositoryError> {
    if size != release.size {
        let problem = format!("size is {size} bytes, the index says {}", release.size);
        return Err(mismatch(release, name, problem));
    }
    Ok(())
}

fn mismatch(release: &Release, name: &str, problem: String) -> RepositoryError {
    RepositoryError::ModuleMismatch {
        module: name.to_string(),
        id: release.id(),
        problem,
    }
}

/// Verifies a repository directory as a client would see it: `index.json` signed by one of
/// `trusted`, and every module it lists present with the listed size and SHA-256. Errors
/// name the file at fault by its path.
pub fn verify_repository_dir(root: &Path, trusted: &[PublicKey]) -> Result<Index, RepositoryError> {
    let index_path = root.join(INDEX_FILE);
    let index_name = index_path.display().to_string();
    let index_bytes = read_capped(&index_path, MAX_INDEX_SIZE, |size| {
        RepositoryError::IndexTooLarge {
            file: index_name.clone(),
            size,
            max: MAX_INDEX_SIZE,
        }
    })?;
    let sig_path = root.join(SIGNATURE_FILE);
    let sig_name = sig_path.display().to_string();
    if !sig_path.exists() {
        return Err(RepositoryError::MissingSignature { path: sig_name });
    }
    let signature = read_capped(&sig_path, MAX_SIGNATURE_SIZE, |size| {
        RepositoryError::SignatureTooLarge {
            file: sig_name.clone(),
            size,
        }
    })?;
    let index = verify_index_named(&index_bytes, &signature, &index_name, &sig_name, trusted)?;
    for release in &index.releases {
        let path = root.join(&release.module);
        let name = path.display().to_string();
        let size = std::fs::metadata(&path)
            .map_err(RepositoryError::io(&path))?
            .len();
        // A wrong size fails anyway; checking it first avoids reading a huge file.
        check_module_size(size, release, &name)?;
        let module = std::fs::read(&path).map_err(RepositoryError::io(&path))?;
        verify_module_named(&module, release, &name)?;
    }
    Ok(index)
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads a file, refusing one larger than `max` bytes before reading it.
pub(super) fn read_capped(
    path: &Path,
    max: u64,
    too_large: impl FnOnce(u64) -> RepositoryError,
) -> Result<Vec<u8>, RepositoryError> {
    let size = std::fs::metadata(path)
        .map_err(RepositoryError::io(path))?
        .len();
    if size > max {
        return Err(too_large(size));
    }
    std::fs::read(path).map_err(RepositoryError::io(path))
}
