use kpersist_crds::{LivePatchPolicySpec, PatchAction};
use kpersist_kmod::signing::PrivateKey;

use super::*;

const REPO: &str = "https://repo.example/kpersist/";

fn index_release(version: u64) -> Release {
    let sha256 = format!("{version:064x}");
    Release {
        kernel_release: "6.1.0-56-amd64".into(),
        build_id: "ab".repeat(20),
        version,
        module: format!("modules/{sha256}.ko"),
        sha256,
        size: 4096,
        module_name: format!("kpersist_v{version}"),
        cves: vec!["CVE-2024-1086".into()],
        channels: vec!["stable".into()],
        published: "2026-01-01T00:00:00Z".into(),
        yanked: None,
    }
}

/// A repository with releases 1 and 2, signed by `key` with `serial`.
fn signed_index(key: &PrivateKey, serial: u64) -> SignedIndex {
    signed_index_of(key, serial, vec![index_release(1), index_release(2)])
}

/// A repository with `releases`, signed by `key` with `serial`.
fn signed_index_of(key: &PrivateKey, serial: u64, releases: Vec<Release>) -> SignedIndex {
    let mut index = Index::empty("2026-01-01T00:00:00Z".parse().unwrap());
    for release in releases {
        index.add_release(release).unwrap();
    }
    index.refresh(
        "2026-03-01T00:00:00Z".parse().unwrap(),
        jiff::SignedDuration::from_hours(24),
    );
    index.serial = Some(serial);
    let bytes = index.to_json_bytes();
    SignedIndex {
        signature: key.sign_to_base64_line(&bytes).into_bytes(),
        index: bytes,
    }
}

fn policy(keys: Vec<String>) -> LivePatchPolicy {
    let spec: LivePatchPolicySpec = serde_json::from_value(serde_json::json!({
        "repository": {"url": REPO, "channel": "stable", "trustedKeys": keys,
                       "allowedRedirectHosts": ["cdn.example"]},
    }))
    .unwrap();
    let mut policy = LivePatchPolicy::new("web", spec);
    policy.status = Some(kpersist_crds::LivePatchPolicyStatus {
        repository_serial: Some(10),
        ..Default::default()
    });
    policy
}

fn trust(key: &PrivateKey) -> PolicyTrust {
    PolicyTrust::of_policy(&policy(vec![key.public_key().to_base64_line()])).unwrap()
}

/// The release the operator would write for `version`.
fn operator_release(version: u64) -> PatchRelease {
    let entry = index_release(version);
    PatchRelease {
        id: entry.id(),
        version,
        kernel_release: entry.kernel_release.clone(),
        build_id: entry.build_id.clone(),
        module_name: entry.module_name.clone(),
        module_url: entry.module_url(REPO),
        sha256: entry.sha256.clone(),
        size: entry.size,
        cves: entry.cves.clone(),
    }
}

fn desired(release: PatchRelease) -> DesiredPatch {
    let mut desired: DesiredPatch = serde_json::from_value(serde_json::json!({
        "policy": "web", "action": "Apply",
    }))
    .unwrap();
    desired.release = Some(release);
    desired.action = PatchAction::Apply;
    desired
}

fn refusal(result: Result<DesiredPatch, Failure>) -> String {
    let failure = result.unwrap_err();
    assert_eq!(failure.reason, NodeErrorReason::UntrustedRelease);
    failure.message
}

#[test]
fn a_release_the_operator_wrote_is_trusted_and_takes_the_policy_access() {
    let key = PrivateKey::generate();
    let mut spec = desired(operator_release(2));
    spec.repository = Some(RepositoryAccess {
        ca_bundle: Some("forged CA".into()),
        allowed_redirect_hosts: vec!["evil.example".into()],
    });
    let trusted = trusted_desired(&spec, &trust(&key), &signed_index(&key, 10)).unwrap();
    assert_eq!(trusted.release, Some(operator_release(2)));
    let access = trusted.repository.unwrap();
    assert_eq!(access.allowed_redirect_hosts, ["cdn.example"]);
    assert_eq!(access.ca_bundle, None, "the node record's CA is not used");
}

#[test]
fn a_yanked_release_is_not_applied_but_may_be_reverted_to() {
    let key = PrivateKey::generate();
    let mut yanked = index_release(2);
    yanked.yanked = Some("breaks nfsd".into());
    let index = signed_index_of(&key, 10, vec![index_release(1), yanked]);
    let message = refusal(trusted_desired(
        &desired(operator_release(2)),
        &trust(&key),
        &index,
    ));
    for word in ["6.1.0-56-amd64/v2", "yanked", "breaks nfsd"] {
        assert!(message.contains(word), "{word}: {message}");
    }
    let mut back = desired(operator_release(2));
    back.action = PatchAction::Revert;
    assert!(trusted_desired(&back, &trust(&key), &index).is_ok());
}

#[test]
fn a_release_not_in_the_signed_index_is_refused() {
    let key = PrivateKey::generate();
    let mut forged = operator_release(2);
    forged.id = "6.1.0-56-amd64/v9".into();
    forged.version = 9;
    let message = refusal(trusted_desired(
        &desired(forged),
        &trust(&key),
        &signed_index(&key, 10),
    ));
    for word in ["6.1.0-56-amd64/v9", "not in policy web's signed index"] {
        assert!(message.contains(word), "{word}: {message}");
    }
}

#[test]
fn every_field_that_decides_what_is_loaded_must_match() {
    let key = PrivateKey::generate();
    type Forge = fn(&mut PatchRelease);
    let cases: [(&str, Forge); 5] = [
        ("sha256", |r| r.sha256 = "ee".repeat(32)),
        ("size", |r| r.size = 1),
        ("moduleName", |r| r.module_name = "rootkit".into()),
        ("buildId", |r| r.build_id = "cd".repeat(20)),
        ("version", |r| r.version = 1),
    ];
    for (field, forge) in cases {
        let mut release = operator_release(2);
        forge(&mut release);
        let message = refusal(trusted_desired(
            &desired(release),
            &trust(&key),
            &signed_index(&key, 10),
        ));
        assert!(message.contains(&format!("{field} ")), "{field}: {message}");
        assert!(message.contains("6.1.0-56-amd64/v2"), "{message}");
    }
}

#[test]
fn a_module_outside_the_repository_is_refused() {
    let key = PrivateKey::generate();
    for (url, problem) in [
        ("file:///tmp/evil.ko", "not http(s)"),
        ("/var/lib/evil.ko", "not an absolute URL"),
        (
            "https://evil.example/kpersist/m.ko",
            "outside the repository",
        ),
        (
            "https://repo.example:8443/kpersist/m.ko",
            "outside the repository",
        ),
        ("http://repo.example/kpersist/m.ko", "plain http"),
    ] {
        let mut release = operator_release(2);
        release.module_url = url.into();
        let message = refusal(trusted_desired(
            &desired(release),
            &trust(&key),
            &signed_index(&key, 10),
        ));
        assert!(message.contains(problem), "{url}: {message}");
        assert!(message.contains(url), "{url}: {message}");
    }
    // An allowed redirect host may serve it; the index's URL is used all the same.
    let mut release = operator_release(2);
    release.module_url = "https://cdn.example/m.ko".into();
    let trusted =
        trusted_desired(&desired(release), &trust(&key), &signed_index(&key, 10)).unwrap();
    assert_eq!(
        trusted.release.unwrap().module_url,
        operator_release(2).module_url
    );
}

#[test]
fn an_index_signed_by_another_key_or_older_than_the_operator_accepted_is_refused() {
    let key = PrivateKey::generate();
    let stranger = PrivateKey::generate();
    let message = refusal(trusted_desired(
        &desired(operator_release(2)),
        &trust(&key),
        &signed_index(&stranger, 10),
    ));
    assert!(message.contains("does not verify"), "{message}");
    let message = refusal(trusted_desired(
        &desired(operator_release(2)),
        &trust(&key),
        &signed_index(&key, 9),
    ));
    assert!(message.contains("serial 9 is below serial 10"), "{message}");
}

#[test]
fn a_policy_without_inline_keys_cannot_vouch_for_a_release() {
    let mut only_secret = policy(Vec::new());
    only_secret.spec.repository.trusted_keys_secret = Some(kpersist_crds::SecretKeysRef {
        namespace: "kpersist".into(),
        name: "keys".into(),
    });
    let failure = PolicyTrust::of_policy(&only_secret).unwrap_err();
    assert_eq!(failure.reason, NodeErrorReason::UntrustedRelease);
    for word in ["policy web", "kpersist/keys", "repository.trustedKeys"] {
        assert!(
            failure.message.contains(word),
            "{word}: {}",
            failure.message
        );
    }
}

#[test]
fn reverting_to_no_release_loads_nothing_and_needs_no_index_entry() {
    let key = PrivateKey::generate();
    let mut none = desired(operator_release(1));
    none.release = None;
    none.action = PatchAction::Revert;
    // Even an index signed by nobody the policy trusts: nothing is loaded, nothing checked.
    let unsigned = signed_index(&PrivateKey::generate(), 1);
    let trusted = trusted_desired(&none, &trust(&key), &unsigned).unwrap();
    assert!(trusted.release.is_none());
    assert_eq!(trusted.action, PatchAction::Revert);
}

#[test]
fn a_revert_to_a_release_the_index_pruned_says_so_while_an_apply_of_it_is_refused() {
    let key = PrivateKey::generate();
    let pruned = operator_release(3);
    let mut revert = desired(pruned.clone());
    revert.action = PatchAction::Revert;
    let failure = trusted_desired(&revert, &trust(&key), &signed_index(&key, 10)).unwrap_err();
    assert_eq!(failure.reason, NodeErrorReason::RevertFailed);
    for word in [
        "6.1.0-56-amd64/v3",
        "no longer in policy web's signed index",
        "no cached module",
        "publish 6.1.0-56-amd64/v3 again",
    ] {
        assert!(
            failure.message.contains(word),
            "{word}: {}",
            failure.message
        );
    }
    let message = refusal(trusted_desired(
        &desired(pruned),
        &trust(&key),
        &signed_index(&key, 10),
    ));
    assert!(
        message.contains("not in policy web's signed index"),
        "{message}"
    );
}
