use super::*;

#[test]
fn keys_round_trip_through_their_file_format() {
    let key = PrivateKey::generate();
    let line = key.to_base64_line();
    assert!(line.ends_with('\n') && line.lines().count() == 1);
    let again = PrivateKey::from_base64(&line, "kpersist.key").unwrap();
    assert_eq!(again.public_key(), key.public_key());
    let public =
        PublicKey::from_base64(&key.public_key().to_base64_line(), "kpersist.pub").unwrap();
    assert_eq!(public, key.public_key());
}

#[test]
fn a_signature_verifies_over_the_exact_bytes_only() {
    let key = PrivateKey::generate();
    let other = PrivateKey::generate();
    let sig = key.sign_to_base64_line(b"index bytes");
    let trusted = [other.public_key(), key.public_key()];
    verify(b"index bytes", sig.as_bytes(), "index.json.sig", &trusted).unwrap();

    let err = verify(b"index bytes ", sig.as_bytes(), "index.json.sig", &trusted).unwrap_err();
    assert!(
        matches!(err, SigningError::Mismatch { keys: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("index.json.sig"));

    let err = verify(b"index bytes", sig.as_bytes(), "sig", &[other.public_key()]).unwrap_err();
    assert!(matches!(err, SigningError::Mismatch { .. }));
    let err = verify(b"index bytes", sig.as_bytes(), "sig", &[]).unwrap_err();
    assert!(matches!(err, SigningError::NoTrustedKeys));
}

#[test]
fn malformed_signatures_are_refused() {
    let key = PrivateKey::generate().public_key();
    for (text, want_length) in [
        (&b"not base64!"[..], false),
        (b"\xff\xfe", false),
        (b"AAAA", true),
        (b"", true),
    ] {
        let err = verify(b"m", text, "index.json.sig", &[key]).unwrap_err();
        assert_eq!(
            matches!(err, SigningError::WrongLength { .. }),
            want_length,
            "{err}"
        );
        assert!(err.to_string().starts_with("index.json.sig: "), "{err}");
    }
}

#[test]
fn bad_key_encodings_name_the_origin() {
    let err = PublicKey::from_base64("%%%", "keys/a.pub").unwrap_err();
    assert!(matches!(err, SigningError::BadEncoding { .. }));
    assert!(err.to_string().contains("keys/a.pub"));

    let err = PrivateKey::from_base64("AAAA", "keys/a.key").unwrap_err();
    assert!(
        matches!(
            err,
            SigningError::WrongLength {
                actual: 3,
                expected: 32,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("keys/a.key"));
}

#[test]
fn key_files_are_read_and_errors_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kpersist.pub");
    let key = PrivateKey::generate();
    std::fs::write(&path, key.public_key().to_base64_line()).unwrap();
    assert_eq!(PublicKey::read(&path).unwrap(), key.public_key());

    std::fs::write(&path, "c2hvcnQ=\n").unwrap();
    let err = PublicKey::read(&path).unwrap_err();
    assert!(err.to_string().contains("kpersist.pub"), "{err}");
    let err = PrivateKey::read(&dir.path().join("absent.key")).unwrap_err();
    assert!(matches!(err, SigningError::Read { .. }));
    assert!(err.to_string().contains("absent.key"));
}

#[test]
fn private_key_debug_hides_the_secret() {
    let key = PrivateKey::generate();
    let seed = key.to_base64_line();
    let debug = format!("{key:?}");
    assert!(!debug.contains(seed.trim()), "{debug}");
}
