use super::*;
use proptest::prelude::*;

/// One ELF note laid out as the kernel does, in native byte order.
fn note(kind: u32, name: &[u8], desc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(name.len() as u32).to_ne_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    for part in [name, desc] {
        out.extend_from_slice(part);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

const ID: [u8; 20] = [
    0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xff,
];

#[test]
fn finds_the_build_id_after_other_notes() {
    let mut notes = note(1, b"Xen\0", &[1, 2, 3]);
    notes.extend(note(6, b"Linux\0", b"6.1"));
    notes.extend(note(3, b"GNU\0", &ID));
    notes.extend([0, 0, 0, 0]);
    assert_eq!(
        parse_build_id(&notes).unwrap(),
        "deadbeef000102030405060708090a0b0c0d0eff"
    );
}

#[test]
fn a_type_3_note_of_another_owner_is_not_a_build_id() {
    let notes = note(3, b"Xen\0", &ID);
    assert!(matches!(
        parse_build_id(&notes),
        Err(BuildIdError::NoBuildId)
    ));
    assert!(matches!(parse_build_id(&[]), Err(BuildIdError::NoBuildId)));
}

#[test]
fn truncated_notes_are_refused() {
    let mut notes = note(1, b"Xen\0", &[1, 2, 3, 4]);
    notes.extend(note(3, b"GNU\0", &ID));
    for len in [5, 13, 22, 30, notes.len() - 1] {
        let err = parse_build_id(&notes[..len]).unwrap_err();
        assert!(
            matches!(err, BuildIdError::TruncatedNote { .. }),
            "len {len}: {err}"
        );
    }
}

#[test]
fn huge_sizes_do_not_overflow() {
    let mut notes = Vec::new();
    for word in [u32::MAX, u32::MAX, 3] {
        notes.extend_from_slice(&word.to_ne_bytes());
    }
    assert!(matches!(
        parse_build_id(&notes),
        Err(BuildIdError::TruncatedNote { offset: 0 })
    ));
}

#[test]
fn kernel_release_is_trimmed_and_checked() {
    assert_eq!(
        parse_kernel_release("6.1.0-28-amd64\n").unwrap(),
        "6.1.0-28-amd64"
    );
    assert!(parse_kernel_release(" \n").is_err());
    assert!(parse_kernel_release("6.1 extra").is_err());
}

#[test]
fn readers_use_the_injected_paths_and_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let paths = KernelPaths {
        notes: dir.path().join("notes"),
        osrelease: dir.path().join("osrelease"),
    };
    std::fs::write(&paths.osrelease, "6.1.0-28-amd64\n").unwrap();
    std::fs::write(&paths.notes, note(3, b"GNU\0", &[0xab, 0xcd])).unwrap();
    let identity = KernelIdentity::read(&paths).unwrap();
    assert_eq!(identity.release, "6.1.0-28-amd64");
    assert_eq!(identity.build_id, "abcd");

    std::fs::write(&paths.notes, [1u8, 2, 3]).unwrap();
    let err = read_build_id(&paths.notes).unwrap_err();
    assert!(err.to_string().contains("notes"), "{err}");
    let err = read_kernel_release(&dir.path().join("absent")).unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_build_id(&bytes);
    }
}
