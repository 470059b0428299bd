//! Bad modules and bad releases handed to the agent: each is refused with its reason and a
//! message naming the release and the problem, and the simulated kernel's load log shows
//! that nothing reached `finit_module`. Forged node specs (a release the policy's signed
//! index does not hold, a module outside the policy's repository) are refused by the
//! controller before anything is downloaded.
//!
//! Every case prints one row of the bad-input catalogue (`input | component | outcome`);
//! `e2e/tools/bad-input-catalogue.sh` collects the rows into the table in RELIABILITY.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/trusted_repo.rs"]
mod trusted_repo;

use std::sync::atomic::Ordering::SeqCst;

use common::*;
use kpersist_crds::{NodeErrorReason, NodePatchState, PatchAction, PatchRelease};
use kpersist_kmod::repository::sha256_hex;

/// Fixture `ko` as release 1, with the file the release points at replaced by `bytes` and
/// the release's size and hash made to match them: the module passes download
/// verification, so what refuses it is the check under test.
fn release_of_bytes(h: &Harness, ko: &str, bytes: &[u8]) -> PatchRelease {
    let mut release = h.release(ko, 1);
    let path = release.module_url.trim_start_matches("file://").to_string();
    std::fs::write(path, bytes).unwrap();
    release.sha256 = sha256_hex(bytes);
    release.size = bytes.len() as u64;
    release
}

fn v1_bytes() -> Vec<u8> {
    std::fs::read(fixture("kpersist_v1.ko")).unwrap()
}

/// Applies `release` on a fresh harness, asserts it fails with `reason` before anything is
/// loaded and that the message holds each of `words`, and prints the catalogue row.
async fn refused(
    input: &str,
    h: &Harness,
    release: PatchRelease,
    reason: NodeErrorReason,
    words: &[&str],
) {
    let message = h
        .refused_before_load(release, NodePatchState::Failed, reason)
        .await;
    for word in words {
        assert!(
            message.contains(word),
            "{input}: the refusal should name {word:?}: {message}"
        );
    }
    assert!(h.live().is_empty(), "{input}: a patch is live");
    println!(
        "| {} | agent (apply on the simulated kernel) | refused ({reason:?}), nothing loaded: {} |",
        input.replace('|', "\\|"),
        message.replace('|', "\\|")
    );
}

#[tokio::test]
async fn files_that_are_not_kernel_modules_are_never_loaded() {
    let v1 = v1_bytes();
    let mut renamed = v1.clone();
    let at = renamed.windows(9).position(|w| w == b".modinfo\0").unwrap();
    renamed[at + 7] = b'X';
    let cases: [(&str, Vec<u8>, &[&str]); 4] = [
        (
            "module that is not ELF (a shell script), hash matching",
            b"#!/bin/sh\nreboot\n".to_vec(),
            &["6.1.0-56-amd64/v1", "not an ELF file"],
        ),
        (
            "module truncated to half, hash matching",
            v1[..v1.len() / 2].to_vec(),
            &["6.1.0-56-amd64/v1", "truncated or malformed ELF"],
        ),
        (
            "ELF file without .modinfo, hash matching",
            renamed,
            &["6.1.0-56-amd64/v1", "no .modinfo section"],
        ),
        (
            "empty module file, hash matching",
            Vec::new(),
            &["6.1.0-56-amd64/v1", "not an ELF file"],
        ),
    ];
    for (input, bytes, words) in cases {
        let h = harness();
        let release = release_of_bytes(&h, "kpersist_v1.ko", &bytes);
        refused(input, &h, release, NodeErrorReason::InvalidModule, words).await;
    }
}

#[tokio::test]
async fn modules_that_are_not_livepatches_for_this_kernel_are_never_loaded() {
    let h = harness();
    let plain = h.release("not_livepatch.ko", 1);
    let words = ["not_livepatch", "livepatch=Y"];
    refused(
        "ordinary module (not_livepatch.ko)",
        &h,
        plain,
        NodeErrorReason::NotLivepatch,
        &words,
    )
    .await;

    let h = harness();
    let other = h.release("kpersist_badvermagic.ko", 1);
    let words = ["6.1.0-99-amd64", "6.1.0-56-amd64"];
    let input = "livepatch built for kernel 6.1.0-99-amd64 (vermagic)";
    refused(input, &h, other, NodeErrorReason::VermagicMismatch, &words).await;

    let h = harness();
    let mut v1 = h.release("kpersist_v1.ko", 1);
    v1.build_id = "ffffffff".into();
    let words = ["build id ffffffff", BUILD_ID];
    let input = "release for another kernel build id";
    refused(input, &h, v1, NodeErrorReason::KernelMismatch, &words).await;

    let h = harness();
    let mut v1 = h.release("kpersist_v1.ko", 1);
    v1.kernel_release = "6.1.0-57-amd64".into();
    let words = ["6.1.0-57-amd64", RELEASE];
    let input = "release for another kernel release";
    refused(input, &h, v1, NodeErrorReason::KernelMismatch, &words).await;

    let h = harness();
    let mut v1 = h.release("kpersist_v1.ko", 1);
    v1.module_name = "kpersist_other".into();
    let words = ["kpersist_v1", "kpersist_other"];
    let input = "module named otherwise than the index says";
    refused(input, &h, v1, NodeErrorReason::ModuleNameMismatch, &words).await;
}

#[tokio::test]
async fn downloads_that_differ_from_the_signed_index_are_never_loaded_or_cached() {
    let v1 = v1_bytes();
    let mut flipped = v1.clone();
    flipped[v1.len() / 2] ^= 1;
    let mut longer = v1.clone();
    longer.extend_from_slice(&[0; 4096]);
    let cases: [(&str, Vec<u8>, NodeErrorReason, &[&str]); 3] = [
        (
            "module with one bit flipped (wrong hash)",
            flipped,
            NodeErrorReason::HashMismatch,
            &["6.1.0-56-amd64/v1", "sha256 is"],
        ),
        (
            "module truncated by one byte",
            v1[..v1.len() - 1].to_vec(),
            NodeErrorReason::SizeMismatch,
            &["6.1.0-56-amd64/v1", "6767 bytes", "says 6768"],
        ),
        (
            "module 4 KiB larger than the index says (oversized)",
            longer,
            NodeErrorReason::SizeMismatch,
            &["6.1.0-56-amd64/v1", "10864 bytes", "says 6768"],
        ),
    ];
    for (input, bytes, reason, words) in cases {
        let h = harness();
        let release = h.release("kpersist_v1.ko", 1);
        let path = release.module_url.trim_start_matches("file://").to_string();
        std::fs::write(path, &bytes).unwrap();
        let sha256 = release.sha256.clone();
        refused(input, &h, release, reason, words).await;
        let state = h.state_dir();
        let cached = std::fs::read_dir(&state)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with(&sha256));
        assert!(
            !cached,
            "{input}: a refused download stayed in {}",
            state.display()
        );
    }

    // A sparse 1 TiB file: refused from its size alone; copying or reading it would take
    // the disk or the memory with it.
    let h = harness();
    let release = h.release("kpersist_v1.ko", 1);
    let path = release.module_url.trim_start_matches("file://").to_string();
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(1 << 40))
        .unwrap();
    refused(
        "module file of 1 TiB (sparse)",
        &h,
        release,
        NodeErrorReason::SizeMismatch,
        &["6.1.0-56-amd64/v1", "1099511627776 bytes", "says 6768"],
    )
    .await;

    let h = harness();
    let mut gone = h.release("kpersist_v1.ko", 1);
    gone.module_url = format!("file://{}/repo/missing.ko", h.dir.path().display());
    let input = "module URL that serves nothing";
    refused(
        input,
        &h,
        gone,
        NodeErrorReason::DownloadFailed,
        &["missing.ko"],
    )
    .await;
}

/// Why the repository refuses `%` in module paths: the URL a module path becomes reads an
/// escaped dot segment as `..`, so `modules/%2e%2e/%2e%2e/x.ko` would fetch from outside
/// the repository's directory.
#[test]
fn escaped_dot_segments_leave_the_directory_in_a_url() {
    let url = reqwest::Url::parse("https://r.example/repo/modules/%2e%2e/%2e%2e/x.ko").unwrap();
    assert_eq!(url.path(), "/x.ko");
}

/// What a forged node spec becomes: `UntrustedRelease` with a message naming each of
/// `words`, no module downloaded, nothing loaded; prints the catalogue row.
async fn refused_by_the_controller(
    input: &str,
    repo: &trusted_repo::Repository,
    policy: Option<serde_json::Value>,
    release: PatchRelease,
    words: &[&str],
) {
    let h = harness();
    let (controller, writes) = trusted_repo::controller(h.engine.clone(), policy);
    let status =
        trusted_repo::reconcile(&controller, &trusted_repo::node_asking_for(release)).await;
    let error = status
        .last_error
        .clone()
        .unwrap_or_else(|| panic!("{input}: {status:?}"));
    assert_eq!(
        (status.state, error.reason),
        (
            Some(NodePatchState::Failed),
            NodeErrorReason::UntrustedRelease
        ),
        "{input}: {error:?}"
    );
    for word in words {
        assert!(
            error.message.contains(word),
            "{input}: the refusal should name {word:?}: {}",
            error.message
        );
    }
    assert!(
        h.sim.load_log().is_empty(),
        "{input}: loaded {:?}",
        h.sim.load_log()
    );
    assert!(h.live().is_empty(), "{input}: a patch is live");
    assert_eq!(
        repo.module_requests.load(SeqCst),
        0,
        "{input}: a module was downloaded"
    );
    assert_eq!(writes.lock().unwrap().len(), 1, "{input}: one status write");
    println!(
        "| {} | agent (controller, before download) | refused (UntrustedRelease), nothing \
         downloaded or loaded: {} |",
        input.replace('|', "\\|"),
        // The loopback port changes from run to run; the catalogue does not.
        error
            .message
            .replace(repo.url.trim_end_matches("/repo/"), "http://<repository>")
            .replace('|', "\\|")
    );
}

#[tokio::test]
async fn forged_node_specs_are_refused_before_anything_is_downloaded() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let v1 = v1_bytes();
    let v2 = std::fs::read(fixture("kpersist_v2.ko")).unwrap();
    let repo =
        trusted_repo::serve_repository(&[(v1.clone(), "kpersist_v1")], RELEASE, BUILD_ID).await;
    let policy = trusted_repo::policy_json(&repo);
    let signed_v1 = repo.releases[0].clone();

    let mut unsigned = signed_v1.clone();
    unsigned.id = format!("{RELEASE}/v7");
    unsigned.version = 7;
    unsigned.module_name = "kpersist_v2".into();
    unsigned.sha256 = sha256_hex(&v2);
    unsigned.size = v2.len() as u64;
    let mut swapped = signed_v1.clone();
    swapped.sha256 = sha256_hex(&v2);
    swapped.size = v2.len() as u64;
    let mut local_file = signed_v1.clone();
    local_file.module_url = "file:///var/lib/kpersist/modules/evil.ko".into();
    let mut bare_path = signed_v1.clone();
    bare_path.module_url = "/var/lib/kpersist/evil.ko".into();
    let mut elsewhere = signed_v1.clone();
    elsewhere.module_url = "http://203.0.113.9/kpersist_v1.ko".into();
    let v1_id = format!("{RELEASE}/v1");
    let cases: [(&str, PatchRelease, Vec<&str>); 5] = [
        (
            "forged LivePatchNode naming an unsigned release (v7, another module's hash)",
            unsigned,
            vec!["6.1.0-56-amd64/v7", "not in policy fleet's signed index"],
        ),
        (
            "forged LivePatchNode: signed release v1 with another module's sha256 and size",
            swapped,
            vec![
                &v1_id,
                "differs from policy fleet's signed index",
                "sha256",
                "size",
            ],
        ),
        (
            "forged LivePatchNode: module URL file:// on the node",
            local_file,
            vec![&v1_id, "file://", "not http(s)"],
        ),
        (
            "forged LivePatchNode: module URL a bare path",
            bare_path,
            vec![&v1_id, "/var/lib/kpersist/evil.ko", "not an absolute URL"],
        ),
        (
            "forged LivePatchNode: module URL outside the policy's repository",
            elsewhere,
            vec![&v1_id, "203.0.113.9", "outside the repository's origin"],
        ),
    ];
    for (input, release, words) in cases {
        refused_by_the_controller(input, &repo, Some(policy.clone()), release, &words).await;
    }

    refused_by_the_controller(
        "LivePatchNode naming a policy that does not exist",
        &repo,
        None,
        signed_v1.clone(),
        &[&v1_id, "policy \"fleet\"", "does not exist"],
    )
    .await;
    let mut secret_only = policy.clone();
    secret_only["spec"]["repository"]["trustedKeys"] = serde_json::json!([]);
    secret_only["spec"]["repository"]["trustedKeysSecret"] =
        serde_json::json!({"namespace": "kpersist", "name": "keys"});
    refused_by_the_controller(
        "policy whose trusted keys are only in a Secret (agents cannot read it)",
        &repo,
        Some(secret_only),
        signed_v1,
        &["policy fleet", "kpersist/keys", "repository.trustedKeys"],
    )
    .await;
}

#[tokio::test]
async fn the_release_the_operator_wrote_passes_the_same_path_and_is_applied() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let repo =
        trusted_repo::serve_repository(&[(v1_bytes(), "kpersist_v1")], RELEASE, BUILD_ID).await;
    let h = harness();
    let (controller, _) =
        trusted_repo::controller(h.engine.clone(), Some(trusted_repo::policy_json(&repo)));
    let node = trusted_repo::node_asking_for(repo.releases[0].clone());
    let status = trusted_repo::reconcile(&controller, &node).await;
    assert_eq!(status.state, Some(NodePatchState::Applied), "{status:?}");
    assert_eq!(h.live(), ["kpersist_v1"]);
    assert_eq!(repo.module_requests.load(SeqCst), 1);
    // The same spec again (the agent's own status write coming back through the watch)
    // was verified already: no second index fetch.
    let again = controller.reconcile(&node, Some(&status)).await.unwrap();
    assert_eq!(again.state, Some(NodePatchState::Applied));
    assert_eq!(repo.index_requests.load(SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_index_stops_applies_but_not_reverts_to_a_cached_module() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let v2 = std::fs::read(fixture("kpersist_v2.ko")).unwrap();
    let repo = trusted_repo::serve_repository(
        &[(v1_bytes(), "kpersist_v1"), (v2, "kpersist_v2")],
        RELEASE,
        BUILD_ID,
    )
    .await;
    let h = harness();
    let (online, _) =
        trusted_repo::controller(h.engine.clone(), Some(trusted_repo::policy_json(&repo)));
    let [v1, v2] = [repo.releases[0].clone(), repo.releases[1].clone()];
    for (generation, release) in [(3, v1.clone()), (4, v2.clone())] {
        let node = trusted_repo::node_asking_to(PatchAction::Apply, release, generation);
        let status = trusted_repo::reconcile(&online, &node).await;
        assert_eq!(status.state, Some(NodePatchState::Applied), "{status:?}");
    }
    assert_eq!(h.live(), ["kpersist_v2"]);

    // The repository goes away (nothing listens on port 9 of 127.0.0.1).
    let mut down = trusted_repo::policy_json(&repo);
    down["spec"]["repository"]["url"] = serde_json::json!("http://127.0.0.1:9/repo/");
    let (offline, _) = trusted_repo::controller(h.engine.clone(), Some(down));
    let mut v3 = v2.clone();
    v3.id = format!("{RELEASE}/v3");
    v3.version = 3;
    let node = trusted_repo::node_asking_to(PatchAction::Apply, v3, 5);
    let status = trusted_repo::reconcile(&offline, &node).await;
    let error = status.last_error.clone().unwrap();
    assert_eq!(error.reason, NodeErrorReason::DownloadFailed, "{error:?}");
    for word in [
        "release 6.1.0-56-amd64/v3",
        "index.json",
        "cannot be verified",
        "after 3 attempts",
    ] {
        assert!(error.message.contains(word), "{word}: {}", error.message);
    }
    assert_eq!(
        h.live(),
        ["kpersist_v2"],
        "nothing new is loaded unverified"
    );
    println!(
        "| apply while the policy's signed index is unreachable | agent (controller, before \
         download) | refused (DownloadFailed), nothing downloaded or loaded: {} |",
        error.message.replace('|', "\\|")
    );

    let node = trusted_repo::node_asking_to(PatchAction::Revert, v1, 6);
    let status = trusted_repo::reconcile(&offline, &node).await;
    assert!(status.last_error.is_none(), "{status:?}");
    assert_eq!(
        h.live(),
        ["kpersist_v1"],
        "the revert used the cached module"
    );
}
