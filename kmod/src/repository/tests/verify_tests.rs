use super::*;
use crate::signing::{PrivateKey, SigningError};

fn signed(idx: &Index, key: &PrivateKey) -> (Vec<u8>, Vec<u8>) {
    let bytes = idx.to_json_bytes();
    let sig = key.sign_to_base64_line(&bytes).into_bytes();
    (bytes, sig)
}

#[test]
fn a_signed_index_verifies() {
    let key = PrivateKey::generate();
    let (bytes, sig) = signed(&index(vec![release(1)]), &key);
    let idx = verify_index(&bytes, &sig, &[key.public_key()]).unwrap();
    assert_eq!(idx.releases, [release(1)]);
}

#[test]
fn any_changed_byte_fails_the_signature() {
    let key = PrivateKey::generate();
    let (bytes, sig) = signed(&index(vec![release(1)]), &key);
    for at in (0..bytes.len()).step_by(7) {
        let mut changed = bytes.clone();
        changed[at] ^= 0x01;
        let err = verify_index(&changed, &sig, &[key.public_key()]).unwrap_err();
        assert!(
            matches!(err, RepositoryError::SignatureMismatch { keys: 1, .. }),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("index.json does not match"),
            "{err}"
        );
    }
}

#[test]
fn a_signature_by_another_key_is_refused() {
    let (bytes, sig) = signed(&index(vec![]), &PrivateKey::generate());
    let err = verify_index(&bytes, &sig, &[PrivateKey::generate().public_key()]).unwrap_err();
    assert!(
        matches!(err, RepositoryError::SignatureMismatch { .. }),
        "{err}"
    );
}

#[test]
fn the_signature_is_checked_before_the_json() {
    let key = PrivateKey::generate();
    let garbage = b"{not json".to_vec();
    let sig = key.sign_to_base64_line(&garbage).into_bytes();
    let err = verify_index(&garbage, &sig, &[key.public_key()]).unwrap_err();
    assert!(matches!(err, RepositoryError::BadJson { .. }), "{err}");
    let err = verify_index(&garbage, b"bm90IGEgc2ln", &[key.public_key()]).unwrap_err();
    assert!(
        matches!(
            err,
            RepositoryError::Signature(SigningError::WrongLength { .. })
        ),
        "{err}"
    );
}

#[test]
fn oversized_signatures_are_refused() {
    let key = PrivateKey::generate();
    let err = verify_index(b"{}", &[b'A'; 2000], &[key.public_key()]).unwrap_err();
    assert!(
        matches!(err, RepositoryError::SignatureTooLarge { .. }),
        "{err}"
    );
}

#[test]
fn modules_are_checked_for_size_and_hash() {
    let module = b"module bytes".to_vec();
    let mut r = release(1);
    r.size = module.len() as u64;
    r.sha256 = sha256_hex(&module);
    verify_module(&module, &r).unwrap();

    let err = verify_module(&module[1..], &r).unwrap_err();
    assert!(
        err.to_string()
            .contains("size is 11 bytes, the index says 12"),
        "{err}"
    );
    let mut flipped = module.clone();
    flipped[0] ^= 0x80;
    let err = verify_module(&flipped, &r).unwrap_err();
    assert!(matches!(err, RepositoryError::ModuleMismatch { .. }));
    assert!(err.to_string().contains(&r.module), "{err}");
}

#[test]
fn sha256_hex_is_lowercase() {
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
