//! The modinfo parser on real Kbuild output: the modules in tests/fixtures.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use kpersist_kmod::modinfo::ModInfo;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn livepatch_fixtures_declare_themselves() {
    let v1 = ModInfo::from_file(&fixture("kpersist_v1.ko")).unwrap();
    let v2 = ModInfo::from_file(&fixture("kpersist_v2.ko")).unwrap();
    for (info, name) in [(&v1, "kpersist_v1"), (&v2, "kpersist_v2")] {
        assert_eq!(info.name, name);
        assert!(info.livepatch, "{name} must carry livepatch=Y");
        assert_eq!(info.license.as_deref(), Some("GPL"));
        let vermagic = info.vermagic.as_deref().unwrap();
        assert!(vermagic.contains("mod_unload"), "{vermagic}");
        assert!(info.depends.is_empty(), "{:?}", info.depends);
        assert_eq!(info.get("retpoline"), Some("Y"));
    }
    assert_eq!(v1.vermagic_release(), v2.vermagic_release());
}

#[test]
fn an_ordinary_module_is_not_a_livepatch() {
    let info = ModInfo::from_file(&fixture("not_livepatch.ko")).unwrap();
    assert_eq!(info.name, "not_livepatch");
    assert!(!info.livepatch);
}

#[test]
fn a_rewritten_vermagic_is_read_as_written() {
    let info = ModInfo::from_file(&fixture("kpersist_badvermagic.ko")).unwrap();
    let good = ModInfo::from_file(&fixture("kpersist_v1.ko")).unwrap();
    assert_eq!(info.vermagic_release(), Some("6.1.0-99-amd64"));
    assert_ne!(info.vermagic_release(), good.vermagic_release());
}

#[test]
fn truncated_real_modules_are_refused_not_panicked_on() {
    let bytes = std::fs::read(fixture("kpersist_v1.ko")).unwrap();
    for len in (0..bytes.len()).step_by(97) {
        assert!(
            ModInfo::from_bytes(&bytes[..len]).is_err(),
            "accepted {len} bytes"
        );
    }
}
