//! Tests of the repository format, split along the module's ideas.

use super::*;

mod freshness_tests;
mod publish_tests;
mod select_tests;
mod validate_tests;
mod verify_tests;

const BUILD: &str = "0123456789abcdef0123456789abcdef01234567";
const KERNEL: &str = "6.1.0-56-amd64";

/// A valid release of `version` for `KERNEL`/`BUILD` in the `stable` channel.
fn release(version: u64) -> Release {
    let sha256 = format!("{version:064x}");
    Release {
        kernel_release: KERNEL.to_string(),
        build_id: BUILD.to_string(),
        version,
        module: format!("modules/{sha256}.ko"),
        sha256,
        size: 6768,
        module_name: format!("kpersist_v{version}"),
        cves: vec!["CVE-2024-1086".to_string()],
        channels: vec!["stable".to_string()],
        published: format!("2026-01-{:02}T00:00:00Z", version.min(28)),
        yanked: None,
    }
}

fn index(releases: Vec<Release>) -> Index {
    Index {
        schema_version: SCHEMA_VERSION,
        generated_at: "2026-02-01T00:00:00Z".to_string(),
        serial: None,
        expires: None,
        releases,
    }
}
