//! Bad input for everything kmod reads from outside: repository indexes and their signatures
//! as a client verifies them, and module files as the publisher adds them and a client checks
//! them. Each case must be refused with a message naming the thing and the problem.
//!
//! Every case prints one row of the bad-input catalogue (`input | component | outcome`);
//! `e2e/tools/bad-input-catalogue.sh` collects the rows into the table in RELIABILITY.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use kpersist_kmod::modinfo::ModInfo;
use kpersist_kmod::repository::{
    Index, LocalRepository, MAX_INDEX_SIZE, MAX_MODULE_SIZE, NewRelease, Release, sha256_hex,
    verify_index, verify_module,
};
use kpersist_kmod::signing::{PrivateKey, PublicKey};
use serde_json::{Value, json};

const KERNEL: &str = "6.1.0-56-amd64";
const BUILD: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// Asserts that `result` is a refusal whose message holds every one of `words`, and prints
/// the case as a row of the catalogue.
fn refused<T: std::fmt::Debug, E: std::fmt::Display>(
    input: &str,
    component: &str,
    result: Result<T, E>,
    words: &[&str],
) {
    let message = match result {
        Ok(value) => panic!("{input}: accepted by {component}: {value:?}"),
        Err(e) => e.to_string(),
    };
    for word in words {
        assert!(
            message.contains(word),
            "{input}: the refusal should name {word:?}: {message}"
        );
    }
    println!(
        "| {} | {component} | refused: {} |",
        input.replace('|', "\\|"),
        message.replace('|', "\\|")
    );
}

/// A valid index of one release as JSON, to be broken by each case.
fn index_json() -> Value {
    let sha = sha256_hex(b"module");
    json!({
        "schemaVersion": 1,
        "generatedAt": "2026-02-01T00:00:00Z",
        "releases": [release_json(1, &sha)],
    })
}

fn release_json(version: u64, sha: &str) -> Value {
    json!({
        "kernelRelease": KERNEL,
        "buildId": BUILD,
        "version": version,
        "module": format!("modules/{sha}.ko"),
        "sha256": sha,
        "size": 6,
        "moduleName": "kpersist_v1",
        "cves": ["CVE-2024-1086"],
        "channels": ["stable"],
        "published": "2026-01-01T00:00:00Z",
    })
}

/// Signs `bytes` and runs them through `verify_index`, so that every refusal below comes
/// from parsing and validation, not from the signature.
fn verify_signed(bytes: &[u8]) -> Result<Index, kpersist_kmod::repository::RepositoryError> {
    let key = PrivateKey::generate();
    let sig = key.sign_to_base64_line(bytes);
    verify_index(bytes, sig.as_bytes(), &[key.public_key()])
}

fn with_release(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut index = index_json();
    edit(&mut index["releases"][0]);
    serde_json::to_vec(&index).unwrap()
}

const INDEX: &str = "index (verify_index)";

#[test]
fn the_valid_index_these_cases_break_verifies() {
    let bytes = serde_json::to_vec(&index_json()).unwrap();
    assert_eq!(verify_signed(&bytes).unwrap().releases.len(), 1);
}

#[test]
fn malformed_indexes_are_refused() {
    let good = serde_json::to_vec(&index_json()).unwrap();
    let cut = &good[..good.len() / 2];
    refused(
        "index truncated mid-JSON",
        INDEX,
        verify_signed(cut),
        &["index.json", "EOF"],
    );
    refused(
        "index empty",
        INDEX,
        verify_signed(b""),
        &["index.json", "not a valid index"],
    );
    let huge = vec![b' '; MAX_INDEX_SIZE as usize + 1];
    refused(
        "index of 16 MiB + 1 byte",
        INDEX,
        verify_signed(&huge),
        &["index.json", "limit"],
    );
    for (input, version, words) in [
        (
            "index schemaVersion 2",
            json!(2),
            &["schema version 2", "upgrade"][..],
        ),
        ("index schemaVersion 0", json!(0), &["schema version 0"][..]),
        (
            "index schemaVersion -1",
            json!(-1),
            &["index.json", "invalid value"][..],
        ),
        (
            "index schemaVersion \"1\" (a string)",
            json!("1"),
            &["index.json", "invalid type"][..],
        ),
        (
            "index without schemaVersion",
            Value::Null,
            &["no schemaVersion"][..],
        ),
    ] {
        let mut index = index_json();
        index["schemaVersion"] = version;
        let bytes = serde_json::to_vec(&index).unwrap();
        refused(input, INDEX, verify_signed(&bytes), words);
    }
    let mut index = index_json();
    index["mirror"] = json!("http://elsewhere");
    let bytes = serde_json::to_vec(&index).unwrap();
    refused(
        "index with an unknown field",
        INDEX,
        verify_signed(&bytes),
        &["unknown field `mirror`"],
    );
}

#[test]
fn malformed_freshness_fields_are_refused() {
    for (input, serial, expires, words) in [
        (
            "index with serial 7 and no expires",
            json!(7),
            Value::Null,
            &["serial", "both be present"][..],
        ),
        (
            "index with serial 0",
            json!(0),
            json!("2026-02-08T00:00:00Z"),
            &["serial", "1 or more"][..],
        ),
        (
            "index with serial -1",
            json!(-1),
            json!("2026-02-08T00:00:00Z"),
            &["index.json", "invalid value"][..],
        ),
        (
            "index expiring before it was generated",
            json!(7),
            json!("2026-01-01T00:00:00Z"),
            &["expires", "not after generatedAt"][..],
        ),
        (
            "index with expires \"next week\"",
            json!(7),
            json!("next week"),
            &["expires", "RFC 3339"][..],
        ),
    ] {
        let mut index = index_json();
        index["serial"] = serial;
        index["expires"] = expires;
        let bytes = serde_json::to_vec(&index).unwrap();
        refused(input, INDEX, verify_signed(&bytes), words);
    }
}

#[test]
fn duplicate_and_decreasing_versions_are_refused() {
    let sha = sha256_hex(b"module");
    for (input, versions, words) in [
        (
            "index with version 2 listed twice",
            [2, 2],
            &["6.1.0-56-amd64/v2", "more than once"][..],
        ),
        (
            "index with version 3 after 5",
            [5, 3],
            &["6.1.0-56-amd64/v3", "not greater than version 5"][..],
        ),
        (
            "index with module name kpersist_v1 for versions 1 and 2 of one kernel build",
            [1, 2],
            &[
                "6.1.0-56-amd64/v2",
                "kpersist_v1",
                "already used",
                "distinct module names",
            ][..],
        ),
    ] {
        let mut index = index_json();
        index["releases"] = json!(versions.map(|v| release_json(v, &sha)));
        let bytes = serde_json::to_vec(&index).unwrap();
        refused(input, INDEX, verify_signed(&bytes), words);
    }
}

#[test]
fn module_paths_that_leave_the_repository_are_refused() {
    for path in [
        "../evil.ko",
        "modules/../../etc/evil.ko",
        "/etc/passwd",
        "modules/%2e%2e/%2e%2e/evil.ko",
        "%2E%2E/evil.ko",
        "modules/.%2e/evil.ko",
        "modules\\..\\evil.ko",
        "modules/x.ko?../../evil",
        "file:///etc/passwd",
    ] {
        let bytes = with_release(|r| r["module"] = json!(path));
        refused(
            &format!("module path {path:?}"),
            INDEX,
            verify_signed(&bytes),
            &["field module", &format!("{path:?}")],
        );
    }
}

#[test]
fn absurd_sizes_and_bad_hex_are_refused() {
    let over = MAX_MODULE_SIZE + 1;
    for (input, field, value, words) in [
        ("size 0", "size", json!(0), &["field size", "outside"][..]),
        (
            "size over the 64 MiB module cap",
            "size",
            json!(over),
            &["field size", "outside"][..],
        ),
        (
            "size -1",
            "size",
            json!(-1),
            &["index.json", "invalid value: integer `-1`"][..],
        ),
        (
            "size 2^64 (overflows u64)",
            "size",
            json!(18446744073709551616.0_f64),
            &["index.json", "invalid type"][..],
        ),
        (
            "sha256 with a non-hex digit",
            "sha256",
            json!("g".repeat(64)),
            &["field sha256", "64 lowercase hex"][..],
        ),
        (
            "sha256 in uppercase",
            "sha256",
            json!("A".repeat(64)),
            &["field sha256"][..],
        ),
        (
            "sha256 of 63 digits",
            "sha256",
            json!("a".repeat(63)),
            &["field sha256"][..],
        ),
        (
            "buildId of odd length",
            "buildId",
            json!("abc"),
            &["field buildId", "even number"][..],
        ),
        (
            "buildId not hex",
            "buildId",
            json!("zz"),
            &["field buildId"][..],
        ),
        (
            "version 0",
            "version",
            json!(0),
            &["field version", "1 or more"][..],
        ),
        (
            "kernelRelease with a slash",
            "kernelRelease",
            json!("6.1/../x"),
            &["field kernelRelease"][..],
        ),
        (
            "moduleName with a space",
            "moduleName",
            json!("a b"),
            &["field moduleName"][..],
        ),
        (
            "CVE id malformed",
            "cves",
            json!(["CVE-24-1"]),
            &["field cves", "CVE-YYYY-NNNN"][..],
        ),
        (
            "no channels",
            "channels",
            json!([]),
            &["field channels", "at least one"][..],
        ),
        (
            "published not RFC 3339",
            "published",
            json!("yesterday"),
            &["field published", "RFC 3339"][..],
        ),
    ] {
        let bytes = with_release(|r| r[field] = value);
        refused(
            &format!("release {input}"),
            INDEX,
            verify_signed(&bytes),
            words,
        );
    }
}

#[test]
fn bad_signatures_are_refused_before_the_index_is_read() {
    let key = PrivateKey::generate();
    let trusted = [key.public_key()];
    let good = serde_json::to_vec(&index_json()).unwrap();
    let sig = key.sign_to_base64_line(&good);
    let other = PrivateKey::generate().sign_to_base64_line(&good);
    let mut changed = good.clone();
    changed.push(b' ');
    let short = key.sign_to_base64_line(&good)[..40].to_string();
    let sig_check = "signature (verify_index)";
    refused(
        "index changed after signing",
        sig_check,
        verify_index(&changed, sig.as_bytes(), &trusted),
        &["index.json", "does not match its signature"],
    );
    refused(
        "signature by an untrusted key",
        sig_check,
        verify_index(&good, other.as_bytes(), &trusted),
        &["index.json.sig", "trusted key"],
    );
    refused(
        "signature not base64",
        sig_check,
        verify_index(&good, b"not base64!!", &trusted),
        &["index.json.sig", "base64"],
    );
    refused(
        "signature of 30 bytes",
        sig_check,
        verify_index(&good, short.as_bytes(), &trusted),
        &["index.json.sig", "expected 64"],
    );
    refused(
        "signature empty",
        sig_check,
        verify_index(&good, b"", &trusted),
        &["index.json.sig", "expected 64"],
    );
    refused(
        "signature not UTF-8",
        sig_check,
        verify_index(&good, &[0xff, 0xfe], &trusted),
        &["index.json.sig", "UTF-8"],
    );
    refused(
        "signature of 2 KiB",
        sig_check,
        verify_index(&good, &[b'A'; 2048], &trusted),
        &["index.json.sig", "too large"],
    );
    refused(
        "no trusted key",
        sig_check,
        verify_index(&good, sig.as_bytes(), &[] as &[PublicKey]),
        &["no trusted public keys"],
    );
    // Signed over garbage that is not an index at all: the signature verifies, parsing refuses.
    let garbage = b"\x00\x01garbage";
    refused(
        "signed garbage",
        INDEX,
        verify_index(
            garbage,
            key.sign_to_base64_line(garbage).as_bytes(),
            &trusted,
        ),
        &["index.json", "not a valid index"],
    );
}

fn new_release() -> NewRelease {
    NewRelease {
        kernel_release: KERNEL.to_string(),
        build_id: BUILD.to_string(),
        version: 1,
        cves: vec!["CVE-2024-1086".to_string()],
        channels: vec!["stable".to_string()],
        published: "2026-01-01T00:00:00Z".parse().unwrap(),
    }
}

/// The fixture module with its `.modinfo` section renamed: still a valid ELF file, but no
/// longer a kernel module.
fn without_modinfo() -> Vec<u8> {
    let mut bytes = fixture_bytes("kpersist_v1.ko");
    let needle = b".modinfo\0";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[at + 7] = b'X';
    bytes
}

#[test]
fn modules_that_are_not_livepatches_for_this_kernel_are_not_added() {
    let dir = tempfile::tempdir().unwrap();
    let repo = LocalRepository::init(
        &dir.path().join("repo"),
        "2026-02-01T00:00:00Z".parse().unwrap(),
    )
    .unwrap();
    let v1 = fixture_bytes("kpersist_v1.ko");
    let oversized = dir.path().join("huge.ko");
    // Sparse: the cap must refuse it from its size, without reading 64 MiB.
    std::fs::File::create(&oversized)
        .unwrap()
        .set_len(MAX_MODULE_SIZE + 1)
        .unwrap();
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "module that is not ELF (a shell script)",
            b"#!/bin/sh\nreboot\n".to_vec(),
            &["not an ELF file"],
        ),
        (
            "module truncated to half",
            v1[..v1.len() / 2].to_vec(),
            &["truncated or malformed ELF"],
        ),
        (
            "module of the 64-byte ELF header only",
            v1[..64].to_vec(),
            &["truncated or malformed ELF"],
        ),
        (
            "ELF file without .modinfo",
            without_modinfo(),
            &["no .modinfo section"],
        ),
        (
            "ordinary module (not_livepatch.ko)",
            fixture_bytes("not_livepatch.ko"),
            &["not_livepatch", "livepatch=Y"],
        ),
        (
            "livepatch for kernel 6.1.0-99-amd64",
            fixture_bytes("kpersist_badvermagic.ko"),
            &["6.1.0-99-amd64", "6.1.0-56-amd64"],
        ),
    ];
    for (input, bytes, words) in cases {
        let path = dir.path().join("candidate.ko");
        std::fs::write(&path, &bytes).unwrap();
        let result = repo.add(
            &path,
            new_release(),
            "2026-02-01T00:00:00Z".parse().unwrap(),
        );
        refused(
            input,
            "publisher (kpersist-repo add)",
            result,
            &[&["candidate.ko"][..], words].concat(),
        );
    }
    let result = repo.add(
        &oversized,
        new_release(),
        "2026-02-01T00:00:00Z".parse().unwrap(),
    );
    refused(
        "module of 64 MiB + 1 byte",
        "publisher (kpersist-repo add)",
        result,
        &["huge.ko", "limit for a module"],
    );
    assert!(
        repo.load_index().unwrap().releases.is_empty(),
        "nothing was added"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("repo/modules"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn downloaded_modules_that_differ_from_the_index_are_refused() {
    let v1 = fixture_bytes("kpersist_v1.ko");
    let info = ModInfo::from_bytes(&v1).unwrap();
    let release = Release::for_module(&v1, &info, "kpersist_v1.ko", new_release()).unwrap();
    assert_eq!(verify_module(&v1, &release).ok(), Some(()));
    let mut flipped = v1.clone();
    flipped[v1.len() / 2] ^= 1;
    let check = "client (verify_module)";
    refused(
        "module with one bit flipped (wrong hash)",
        check,
        verify_module(&flipped, &release),
        &[&release.module, "sha256 is"],
    );
    refused(
        "module truncated by one byte",
        check,
        verify_module(&v1[1..], &release),
        &[&release.module, "size is"],
    );
    let mut longer = v1.clone();
    longer.push(0);
    refused(
        "module one byte longer",
        check,
        verify_module(&longer, &release),
        &[&release.module, "size is"],
    );
    let parse = "client (ModInfo::from_bytes)";
    refused(
        "module that is not ELF",
        parse,
        ModInfo::from_bytes(b"MZ\x90\x00"),
        &["not an ELF file"],
    );
    refused(
        "module truncated inside its section headers",
        parse,
        ModInfo::from_bytes(&v1[..v1.len() - 100]),
        &["truncated or malformed ELF"],
    );
    refused(
        "ELF without .modinfo",
        parse,
        ModInfo::from_bytes(&without_modinfo()),
        &["no .modinfo section"],
    );
}
