use super::*;
use crate::test_elf::{elf_with_modinfo, livepatch_modinfo, livepatch_module, modinfo_entries};
use proptest::prelude::*;

#[test]
fn reads_every_field_of_a_livepatch_module() {
    let info = ModInfo::from_bytes(&livepatch_module("kpersist_v1", "6.1.0-28-amd64")).unwrap();
    assert_eq!(info.name, "kpersist_v1");
    assert!(info.livepatch);
    assert_eq!(info.license.as_deref(), Some("GPL"));
    assert_eq!(info.vermagic_release(), Some("6.1.0-28-amd64"));
    assert_eq!(info.get("retpoline"), Some("Y"));
    assert!(info.depends.is_empty());
    assert_eq!(info.srcversion, None);
}

#[test]
fn livepatch_flag_is_set_only_by_capital_y() {
    for value in ["N", "y", "1", ""] {
        let entry = format!("livepatch={value}");
        let data = modinfo_entries(&["name=m", &entry]);
        assert!(!ModInfo::from_section(&data).unwrap().livepatch, "{value}");
    }
}

#[test]
fn depends_and_repeated_keys_are_kept_in_order() {
    let data = modinfo_entries(&[
        "alias=a",
        "name=m",
        "depends=x,y",
        "",
        "alias=b",
        "noequals",
    ]);
    let info = ModInfo::from_section(&data).unwrap();
    assert_eq!(info.depends, ["x", "y"]);
    assert_eq!(info.fields["alias"], ["a", "b"]);
    assert!(!info.fields.contains_key("noequals"));
}

#[test]
fn not_elf_is_refused() {
    assert!(matches!(
        ModInfo::from_bytes(b"hello world"),
        Err(ModInfoError::NotElf)
    ));
    assert!(matches!(
        ModInfo::from_bytes(b""),
        Err(ModInfoError::NotElf)
    ));
}

#[test]
fn truncated_elf_is_refused() {
    let full = livepatch_module("m", "6.1.0");
    for len in [4, 16, 63, full.len() / 2, full.len() - 1] {
        let err = ModInfo::from_bytes(&full[..len]).unwrap_err();
        assert!(
            matches!(err, ModInfoError::Malformed { .. }),
            "len {len}: {err}"
        );
    }
}

#[test]
fn elf_without_modinfo_is_refused() {
    let err = ModInfo::from_bytes(&elf_with_modinfo(None)).unwrap_err();
    assert!(matches!(err, ModInfoError::NoModinfo));
    assert!(err.to_string().contains(".modinfo"));
}

#[test]
fn bad_utf8_names_the_offset() {
    let mut data = modinfo_entries(&["name=m"]);
    data.extend_from_slice(b"description=\xff\xfe\0");
    let err = ModInfo::from_bytes(&elf_with_modinfo(Some(&data))).unwrap_err();
    assert!(matches!(err, ModInfoError::BadUtf8 { offset: 7 }), "{err}");
}

#[test]
fn missing_or_empty_name_is_refused() {
    for data in [
        modinfo_entries(&["license=GPL"]),
        modinfo_entries(&["name="]),
    ] {
        let err = ModInfo::from_bytes(&elf_with_modinfo(Some(&data))).unwrap_err();
        assert!(matches!(err, ModInfoError::MissingName));
    }
}

#[test]
fn from_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.ko");
    std::fs::write(&path, b"\x7fELF").unwrap();
    let err = ModInfo::from_file(&path).unwrap_err();
    assert!(err.to_string().contains("broken.ko"), "{err}");
    let missing = ModInfo::from_file(&dir.path().join("absent.ko")).unwrap_err();
    assert!(matches!(missing, ModInfoError::Read { .. }));
    assert!(missing.to_string().contains("absent.ko"));
}

#[test]
fn vermagic_release_is_none_without_vermagic() {
    let info = ModInfo::from_section(&modinfo_entries(&["name=m", "vermagic=  "])).unwrap();
    assert_eq!(info.vermagic_release(), None);
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = ModInfo::from_bytes(&bytes);
        let _ = ModInfo::from_section(&bytes);
    }

    #[test]
    fn corrupted_modules_never_panic(pos in 0usize..4096, byte in any::<u8>()) {
        let mut module = livepatch_module("m", "6.1.0");
        let at = pos % module.len();
        module[at] = byte;
        let _ = ModInfo::from_bytes(&module);
    }

    #[test]
    fn random_modinfo_sections_round_trip_the_name(name in "[a-z_]{1,20}", extra in "[ -~]{0,40}") {
        let mut data = livepatch_modinfo(&name, "6.1.0");
        data.extend_from_slice(extra.as_bytes());
        let info = ModInfo::from_section(&data).unwrap();
        prop_assert_eq!(info.name, name);
    }
}
