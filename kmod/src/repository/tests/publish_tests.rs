use super::*;
use crate::signing::PrivateKey;
use crate::test_elf::{elf_with_modinfo, livepatch_module, modinfo_entries};
use std::path::Path;

fn now() -> jiff::Timestamp {
    "2026-03-01T00:00:00Z".parse().unwrap()
}

fn new_release(version: u64) -> NewRelease {
    NewRelease {
        kernel_release: KERNEL.to_string(),
        build_id: BUILD.to_uppercase(),
        version,
        cves: vec!["CVE-2024-1086".to_string()],
        channels: vec!["stable".to_string()],
        published: now(),
    }
}

fn write_module(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn init_add_sign_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let repo = LocalRepository::init(&root, now()).unwrap();
    let ko = write_module(
        dir.path(),
        "kpersist_v1.ko",
        &livepatch_module("kpersist_v1", KERNEL),
    );
    let added = repo.add(&ko, new_release(1), now()).unwrap();
    assert_eq!(added.module_name, "kpersist_v1");
    assert_eq!(added.build_id, BUILD, "build ids are stored lowercase");
    assert_eq!(added.module, format!("modules/{}.ko", added.sha256));
    assert!(root.join(&added.module).is_file());

    let key = PrivateKey::generate();
    repo.sign(&key).unwrap();
    let idx = repo.verify(&[key.public_key()]).unwrap();
    assert_eq!(idx.releases, [added]);

    // Adding again makes the old signature stale, so it is removed.
    let v2 = write_module(
        dir.path(),
        "kpersist_v2.ko",
        &livepatch_module("kpersist_v2", KERNEL),
    );
    repo.add(&v2, new_release(2), now()).unwrap();
    assert!(!root.join(SIGNATURE_FILE).exists());
    let err = repo.verify(&[key.public_key()]).unwrap_err();
    assert!(
        matches!(err, RepositoryError::MissingSignature { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("index.json.sig"), "{err}");
}

#[test]
fn init_refuses_an_existing_repository() {
    let dir = tempfile::tempdir().unwrap();
    LocalRepository::init(dir.path(), now()).unwrap();
    let err = LocalRepository::init(dir.path(), now()).unwrap_err();
    assert!(
        matches!(err, RepositoryError::AlreadyExists { .. }),
        "{err}"
    );
}

#[test]
fn add_refuses_modules_that_are_not_livepatches_for_this_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let repo = LocalRepository::init(&dir.path().join("repo"), now()).unwrap();
    let plain = modinfo_entries(&["name=plain", &format!("vermagic={KERNEL} SMP")]);
    let ko = write_module(dir.path(), "plain.ko", &elf_with_modinfo(Some(&plain)));
    let err = repo.add(&ko, new_release(1), now()).unwrap_err();
    assert!(matches!(err, RepositoryError::NotLivepatch { .. }), "{err}");
    assert!(err.to_string().contains("plain.ko"), "{err}");

    let other = write_module(
        dir.path(),
        "other.ko",
        &livepatch_module("m", "6.1.0-99-amd64"),
    );
    let err = repo.add(&other, new_release(1), now()).unwrap_err();
    assert!(
        matches!(err, RepositoryError::VermagicMismatch { .. }),
        "{err}"
    );

    let junk = write_module(dir.path(), "junk.ko", b"\x7fELF\x02");
    let err = repo.add(&junk, new_release(1), now()).unwrap_err();
    assert!(err.to_string().contains("junk.ko"), "{err}");
    assert!(repo.load_index().unwrap().releases.is_empty());
}

#[test]
fn add_refuses_duplicate_and_lower_versions() {
    let dir = tempfile::tempdir().unwrap();
    let repo = LocalRepository::init(&dir.path().join("repo"), now()).unwrap();
    let ko = write_module(dir.path(), "m.ko", &livepatch_module("m", KERNEL));
    repo.add(&ko, new_release(5), now()).unwrap();
    let err = repo.add(&ko, new_release(5), now()).unwrap_err();
    assert!(
        matches!(err, RepositoryError::DuplicateRelease { .. }),
        "{err}"
    );
    let err = repo.add(&ko, new_release(4), now()).unwrap_err();
    assert!(
        matches!(err, RepositoryError::NonMonotonicVersion { next: 6, .. }),
        "{err}"
    );
    assert_eq!(repo.load_index().unwrap().releases.len(), 1);
}

#[test]
fn add_refuses_a_module_name_the_kernel_build_already_has() {
    let dir = tempfile::tempdir().unwrap();
    let repo = LocalRepository::init(&dir.path().join("repo"), now()).unwrap();
    let v1 = write_module(
        dir.path(),
        "v1.ko",
        &livepatch_module("kpersist_lp", KERNEL),
    );
    repo.add(&v1, new_release(1), now()).unwrap();
    // A rebuilt module with new content but the same name.
    let mut rebuilt = livepatch_module("kpersist_lp", KERNEL);
    rebuilt.extend_from_slice(b"rebuilt");
    let v2 = write_module(dir.path(), "v2.ko", &rebuilt);
    let err = repo.add(&v2, new_release(2), now()).unwrap_err();
    assert!(
        matches!(&err, RepositoryError::ModuleNameReused { earlier, .. } if earlier.ends_with("/v1")),
        "{err}"
    );
    let text = err.to_string();
    for word in ["kpersist_lp", "already used", "kpersist_v2"] {
        assert!(text.contains(word), "{word}: {text}");
    }
    assert_eq!(repo.load_index().unwrap().releases.len(), 1);
    let stored = std::fs::read_dir(dir.path().join("repo").join(MODULES_DIR)).unwrap();
    assert_eq!(stored.count(), 1, "the refused module is not stored");
}

#[test]
fn add_release_leaves_the_index_unchanged_on_refusal() {
    let mut idx = index(vec![release(2)]);
    let before = idx.clone();
    assert!(idx.add_release(release(1)).is_err());
    assert_eq!(idx, before);
}

#[test]
fn verify_names_a_changed_or_missing_module() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let repo = LocalRepository::init(&root, now()).unwrap();
    let ko = write_module(dir.path(), "m.ko", &livepatch_module("m", KERNEL));
    let added = repo.add(&ko, new_release(1), now()).unwrap();
    let key = PrivateKey::generate();
    repo.sign(&key).unwrap();

    let stored = root.join(&added.module);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let err = repo.verify(&[key.public_key()]).unwrap_err();
    assert!(
        err.to_string().contains(&stored.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("sha256"), "{err}");

    std::fs::remove_file(&stored).unwrap();
    let err = repo.verify(&[key.public_key()]).unwrap_err();
    assert!(
        err.to_string().contains(&stored.display().to_string()),
        "{err}"
    );
}

#[test]
fn sign_refuses_an_invalid_index() {
    let dir = tempfile::tempdir().unwrap();
    let repo = LocalRepository::init(dir.path(), now()).unwrap();
    std::fs::write(dir.path().join(INDEX_FILE), b"{\"schemaVersion\": 1}").unwrap();
    let err = repo.sign(&PrivateKey::generate()).unwrap_err();
    assert!(err.to_string().contains("index.json"), "{err}");
    assert!(!dir.path().join(SIGNATURE_FILE).exists());
}

#[test]
fn refresh_stamps_the_index_for_signing_and_drops_the_old_signature() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let repo = LocalRepository::init(&root, now()).unwrap();
    let ko = write_module(dir.path(), "m.ko", &livepatch_module("m", KERNEL));
    repo.add(&ko, new_release(1), now()).unwrap();
    let key = PrivateKey::generate();
    let first = repo.refresh(now(), DEFAULT_VALIDITY).unwrap();
    repo.sign(&key).unwrap();
    let verified = repo.verify(&[key.public_key()]).unwrap();
    assert_eq!(verified.serial, first.serial);
    assert_eq!(verified.expires.as_deref(), Some("2026-03-08T00:00:00Z"));

    let second = repo.refresh(now(), DEFAULT_VALIDITY).unwrap();
    assert!(second.serial() > first.serial());
    assert!(
        !root.join(SIGNATURE_FILE).exists(),
        "the old signature no longer matches"
    );
    let err = repo.refresh(now(), jiff::SignedDuration::ZERO).unwrap_err();
    assert!(
        err.to_string().contains("expire the index at once"),
        "{err}"
    );
    assert_eq!(
        repo.load_index().unwrap(),
        second,
        "a refused refresh writes nothing"
    );
}

#[test]
fn remove_prunes_a_release_and_its_module_and_refuses_an_unknown_id() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let repo = LocalRepository::init(&root, now()).unwrap();
    let mut added = Vec::new();
    for version in [1, 2] {
        let name = format!("kpersist_v{version}");
        let ko = write_module(dir.path(), "m.ko", &livepatch_module(&name, KERNEL));
        added.push(repo.add(&ko, new_release(version), now()).unwrap());
    }
    let key = PrivateKey::generate();
    repo.sign(&key).unwrap();

    let removed = repo.remove(&added[0].id(), now()).unwrap();
    assert_eq!(removed, added[0]);
    assert!(!root.join(&removed.module).exists(), "its module is gone");
    assert!(root.join(&added[1].module).is_file());
    assert!(
        !root.join(SIGNATURE_FILE).exists(),
        "the stale signature is removed"
    );
    repo.sign(&key).unwrap();
    let left = repo.verify(&[key.public_key()]).unwrap();
    assert_eq!(left.releases, [added[1].clone()]);

    let err = repo.remove(&added[0].id(), now()).unwrap_err();
    assert!(
        matches!(err, RepositoryError::NoSuchRelease { count: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&added[0].id()), "{err}");
    assert_eq!(
        repo.load_index().unwrap().releases.len(),
        1,
        "nothing changed"
    );
}

#[test]
fn promote_adds_a_channel_once_and_asks_for_a_new_signature() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let repo = LocalRepository::init(&root, now()).unwrap();
    let ko = write_module(dir.path(), "m.ko", &livepatch_module("kpersist_v1", KERNEL));
    let added = repo.add(&ko, new_release(1), now()).unwrap();
    let key = PrivateKey::generate();
    repo.sign(&key).unwrap();

    let (promoted, already) = repo.promote(&added.id(), "lts", now()).unwrap();
    assert!(!already);
    assert_eq!(
        promoted.channels,
        [added.channels.clone(), vec!["lts".into()]].concat()
    );
    assert!(
        !root.join(SIGNATURE_FILE).exists(),
        "the stale signature is removed"
    );
    assert_eq!(
        repo.load_index().unwrap().releases,
        std::slice::from_ref(&promoted)
    );
    repo.sign(&key).unwrap();
    let (again, already) = repo.promote(&added.id(), "lts", now()).unwrap();
    assert!(already && again == promoted);
    assert!(
        root.join(SIGNATURE_FILE).exists(),
        "nothing changed, nothing to sign"
    );

    let err = repo.promote("6.1.0-1-amd64/v9", "lts", now()).unwrap_err();
    assert!(
        matches!(err, RepositoryError::NoSuchRelease { count: 1, .. }),
        "{err}"
    );
}
