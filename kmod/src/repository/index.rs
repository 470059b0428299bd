//! `index.json`: the list of cumulative releases a repository offers, one module per kernel
//! build and version. The exact bytes of this file are what `index.json.sig` signs.

use serde::{Deserialize, Serialize};

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
    /// Every release, in no particular order.
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
}

impl Release {
    /// The release id used across the API: `<kernelRelease>/v<version>`.
    pub fn id(&self) -> String {
        format!("{}/v{}", self.kernel_release, self.version)
    }
}
