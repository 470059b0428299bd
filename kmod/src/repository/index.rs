//! `index.json`: the list of cumulative releases a repository offers, one module per kernel
//! build and version. The exact bytes of this file are what `index.json.sig` signs.

use serde::{Deserialize, Serialize};

use super::{MAX_INDEX_SIZE, RepositoryError};

/// The only index schema version this code reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
/// File name of the index inside a repository.
pub const INDEX_FILE: &str = "index.json";
/// File name of the detached signature over the index's exact bytes.
pub const SIGNATURE_FILE: &str = "index.json.sig";

/// A repository index.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Index {
    /// Format version; readers refuse versions they do not know.
    pub schema_version: u32,
    /// When the index was last written (RFC 3339).
    pub generated_at: String,
    /// Grows with every signing (see [`Index::refresh`]); readers refuse an index whose
    /// serial is below one they already accepted. Absent from indexes signed before serials
    /// existed, which count as serial 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<u64>,
    /// When this signed index stops being current (RFC 3339); past it, readers report the
    /// repository stale. Present exactly when `serial` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Every release, in the order they were added: per kernel build (release and build
    /// id) versions strictly increase down the list.
    pub releases: Vec<Release>,
}

/// One cumulative livepatch module for one kernel build.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Release {
    /// Kernel release (`uname -r`) the module was built for.
    pub kernel_release: String,
    /// GNU build id of that kernel, lowercase hex.
    pub build_id: String,
    /// Cumulative version, strictly increasing per kernel build.
    pub version: u64,
    /// Path of the `.ko` file relative to the repository root, e.g. `modules/<sha256>.ko`.
    pub module: String,
    /// Lowercase hex SHA-256 of the `.ko` file.
    pub sha256: String,
    /// Size of the `.ko` file in bytes.
    pub size: u64,
    /// Kernel module name from the module's `.modinfo`.
    pub module_name: String,
    /// Every CVE this release fixes (cumulative).
    pub cves: Vec<String>,
    /// Channels the release is in, e.g. `stable`, `edge`.
    pub channels: Vec<String>,
    /// When the release was published (RFC 3339).
    pub published: String,
    /// Why the publisher withdrew the release, when it did (`kpersist-repo yank`). A
    /// yanked release is never offered, and the policies that gave it to nodes send those
    /// nodes back to the release each ran before. Absent from releases never yanked, so
    /// an index without a yanked release reads as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yanked: Option<String>,
}

/// Just the schema version, read before the rest so that an index of a newer schema is
/// refused as such rather than for its unknown fields.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaProbe {
    schema_version: Option<u64>,
}

impl Index {
    /// An index with no releases, generated at `generated_at`.
    pub fn empty(generated_at: jiff::Timestamp) -> Index {
        Index {
            schema_version: SCHEMA_VERSION,
            generated_at: generated_at.to_string(),
            serial: None,
            expires: None,
            releases: Vec::new(),
        }
    }

    /// Parses and validates an index's bytes. Refuses more than [`MAX_INDEX_SIZE`] bytes,
    /// anything but JSON of this shape (unknown fields included), schema versions other than
    /// [`SCHEMA_VERSION`], and every malformed release (see [`Index::validate`]).
    ///
    /// This does not check the signature; use [`super::verify_index`] for a fetched index.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Index, RepositoryError> {
        Self::parse_named(bytes, INDEX_FILE)
    }

    /// [`Index::from_json_bytes`] with errors naming the index `file`.
    pub(super) fn parse_named(bytes: &[u8], file: &str) -> Result<Index, RepositoryError> {
        if bytes.len() as u64 > MAX_INDEX_SIZE {
            return Err(RepositoryError::IndexTooLarge {
                file: file.to_string(),
                size: bytes.len() as u64,
                max: MAX_INDEX_SIZE,
            });
        }
        let bad_json = |reason: String| RepositoryError::BadJson {
            file: file.to_string(),
            reason,
        };
        let probe: SchemaProbe =
            serde_json::from_slice(bytes).map_err(|e| bad_json(e.to_string()))?;
        match probe.schema_version {
            Some(v) if v == u64::from(SCHEMA_VERSION) => {}
            Some(found) => {
                return Err(RepositoryError::UnknownSchemaVersion {
                    file: file.to_string(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            None => return Err(bad_json("no schemaVersion field".to_string())),
        }
        let index: Index = serde_json::from_slice(bytes).map_err(|e| bad_json(e.to_string()))?;
        index
            .validate()
            .map_err(|e| RepositoryError::in_file(file, e))?;
        Ok(index)
    }

    /// The index as written to `index.json`: pretty JSON with fields in a fixed order and a
    /// final newline, so the same index always gives the same bytes.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        #[allow(
            clippy::expect_used,
            reason = "serializing plain strings, numbers and lists cannot fail"
        )]
        let mut bytes =
            serde_json::to_vec_pretty(self).expect("an index of strings and numbers serializes");
        bytes.push(b'\n');
        bytes
    }
}

impl Release {
    /// When the release was published; `None` if `published` is not RFC 3339 (a validated
    /// index never has such a release).
    pub fn published_at(&self) -> Option<jiff::Timestamp> {
        self.published.parse().ok()
    }

    /// The module's URL in a repository served at `base_url` (the directory holding
    /// `index.json`, with or without a trailing `/`).
    pub fn module_url(&self, base_url: &str) -> String {
        format!("{}/{}", base_url.trim_end_matches('/'), self.module)
    }

    /// The release id used across the API: `<kernelRelease>/v<version>`.
    pub fn id(&self) -> String {
        format!("{}/v{}", self.kernel_release, self.version)
    }
}
