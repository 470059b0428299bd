//! A cumulative release as the API carries it: enough for an agent to fetch and verify the
//! module without reading the repository index itself.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One cumulative livepatch release for one kernel build, copied from the signed index.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchRelease {
    /// Release identifier, `<kernelRelease>/v<version>`, unique within a repository.
    pub id: String,
    /// Cumulative version for this kernel build; a higher version fixes everything a lower
    /// one does.
    #[schemars(range(min = 1))]
    pub version: u64,
    /// Kernel release (`uname -r`) the module was built for.
    pub kernel_release: String,
    /// GNU build id (hex) of the kernel the module was built for.
    pub build_id: String,
    /// Name of the kernel module (its `.modinfo` `name`), as it appears under
    /// /sys/kernel/livepatch.
    pub module_name: String,
    /// Absolute URL of the `.ko` file.
    pub module_url: String,
    /// Lowercase hex SHA-256 of the `.ko` file, from the signed index.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: String,
    /// Size of the `.ko` file in bytes, from the signed index.
    #[schemars(range(min = 1))]
    pub size: u64,
    /// CVE identifiers this release fixes (all of them, as releases are cumulative).
    #[serde(default)]
    pub cves: Vec<String>,
}

impl PatchRelease {
    /// The identifier a release with this kernel and version has.
    pub fn id_for(kernel_release: &str, version: u64) -> String {
        format!("{kernel_release}/v{version}")
    }
}
