//! Ed25519 keys and detached signatures for the repository index. Keys and signatures are
//! stored as one line of standard base64: a private key is its 32-byte seed, a public key
//! its 32 bytes, a signature its 64 bytes.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

/// Length of a private key seed and of a public key.
pub const KEY_LEN: usize = 32;
/// Length of a signature.
pub const SIGNATURE_LEN: usize = 64;

/// Why a key or signature could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The text is not standard base64.
    #[error("{origin}: not valid base64 ({reason}); expected one line of standard base64")]
    BadEncoding {
        /// Where the text came from: a file path or a description such as a policy field.
        origin: String,
        /// What the decoder found.
        reason: String,
    },
    /// The decoded bytes have the wrong length.
    #[error("{origin}: decodes to {actual} bytes, expected {expected}; {hint}")]
    WrongLength {
        /// Where the text came from.
        origin: String,
        /// Decoded length.
        actual: usize,
        /// Required length.
        expected: usize,
        /// What the caller should check.
        hint: &'static str,
    },
    /// The 32 bytes are not a valid Ed25519 public key.
    #[error("{origin}: not a valid Ed25519 public key; regenerate it with `kpersist-repo keygen`")]
    InvalidPublicKey {
        /// Where the key came from.
        origin: String,
    },
    /// A key or signature file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No trusted key was given, so nothing can verify.
    #[error("no trusted public keys configured; add the publisher's public key")]
    NoTrustedKeys,
    /// The signature is well-formed but made by none of the trusted keys, or over other bytes.
    #[error(
        "{origin}: signature does not verify against any of the {keys} trusted key(s); \
         the signed file was changed or signed with another key"
    )]
    Mismatch {
        /// The signature's origin.
        origin: String,
        /// How many keys were tried.
        keys: usize,
    },
}

/// An Ed25519 private key. Its `Debug` output never shows the secret.
pub struct PrivateKey(SigningKey);

/// An Ed25519 public key that signatures are checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PrivateKey")
            .field(&self.public_key())
            .finish()
    }
}

impl PrivateKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> PrivateKey {
        PrivateKey(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The seed as one line of base64 with a trailing newline, the private key file format.
    pub fn to_base64_line(&self) -> String {
        format!("{}\n", BASE64.encode(self.0.to_bytes()))
    }

    /// Parses a private key file's text; `origin` names it in errors.
    pub fn from_base64(text: &str, origin: &str) -> Result<PrivateKey, SigningError> {
        let seed = decode_exact::<KEY_LEN>(
            text,
            origin,
            "a private key is the base64 of a 32-byte seed",
        )?;
        Ok(PrivateKey(SigningKey::from_bytes(&seed)))
    }

    /// Reads a private key file.
    pub fn read(path: &Path) -> Result<PrivateKey, SigningError> {
        Self::from_base64(&read_text(path)?, &path.display().to_string())
    }

    /// Signs `message` and returns the signature file's contents: one line of base64.
    pub fn sign_to_base64_line(&self, message: &[u8]) -> String {
        format!("{}\n", BASE64.encode(self.0.sign(message).to_bytes()))
    }
}

impl PublicKey {
    /// The key as one line of base64 with a trailing newline, the public key file format.
    pub fn to_base64_line(&self) -> String {
        format!("{}\n", BASE64.encode(self.0.to_bytes()))
    }

    /// Parses a public key's base64 text; `origin` names where it came from in errors.
    pub fn from_base64(text: &str, origin: &str) -> Result<PublicKey, SigningError> {
        let bytes = decode_exact::<KEY_LEN>(
            text,
            origin,
            "a public key is the base64 of 32 bytes (the kpersist.pub file)",
        )?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| SigningError::InvalidPublicKey {
                origin: origin.to_string(),
            })
    }

    /// Reads a public key file.
    pub fn read(path: &Path) -> Result<PublicKey, SigningError> {
        Self::from_base64(&read_text(path)?, &path.display().to_string())
    }
}

/// Checks that `signature` (the text of a signature file, whose origin `origin` names) is a
/// valid signature over exactly `message` by at least one of `trusted`.
pub fn verify(
    message: &[u8],
    signature: &[u8],
    origin: &str,
    trusted: &[PublicKey],
) -> Result<(), SigningError> {
    if trusted.is_empty() {
        return Err(SigningError::NoTrustedKeys);
    }
    let text = std::str::from_utf8(signature).map_err(|_| SigningError::BadEncoding {
        origin: origin.to_string(),
        reason: "not UTF-8 text".to_string(),
    })?;
    let bytes = decode_exact::<SIGNATURE_LEN>(
        text,
        origin,
        "a signature is the base64 of 64 bytes; re-sign with `kpersist-repo sign`",
    )?;
    let signature = ed25519_dalek::Signature::from_bytes(&bytes);
    // Strict verification refuses the malleable forms plain Ed25519 would accept.
    if trusted
        .iter()
        .any(|key| key.0.verify_strict(message, &signature).is_ok())
    {
        Ok(())
    } else {
        Err(SigningError::Mismatch {
            origin: origin.to_string(),
            keys: trusted.len(),
        })
    }
}

/// Decodes one line of base64 (surrounding white space ignored) into exactly `N` bytes.
fn decode_exact<const N: usize>(
    text: &str,
    origin: &str,
    hint: &'static str,
) -> Result<[u8; N], SigningError> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|e| SigningError::BadEncoding {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
    let actual = bytes.len();
    bytes.try_into().map_err(|_| SigningError::WrongLength {
        origin: origin.to_string(),
        actual,
        expected: N,
        hint,
    })
}

fn read_text(path: &Path) -> Result<String, SigningError> {
    let read_error = |source| SigningError::Read {
        path: path.display().to_string(),
        source,
    };
    let bytes = std::fs::read(path).map_err(read_error)?;
    String::from_utf8(bytes).map_err(|_| SigningError::BadEncoding {
        origin: path.display().to_string(),
        reason: "not UTF-8 text".to_string(),
    })
}

#[cfg(test)]
#[path = "signing_tests.rs"]
mod tests;
