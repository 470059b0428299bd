//! Whether a `spec.desired` may be acted on: the release it names must be in the signed index
//! of the policy it names, verified with that policy's trusted keys, and its module must come
//! from that policy's repository. A LivePatchNode written by anyone but the operator (another
//! node's agent, a stolen token) can then only name releases the publisher signed. Pure: the
//! caller reads the policy and fetches the index.

use kpersist_crds::{
    DesiredPatch, LivePatchPolicy, NodeErrorReason, PatchAction, PatchRelease, RepositoryAccess,
};
use kpersist_kmod::repository::{Index, Release, verify_index};
use kpersist_kmod::signing::PublicKey;
use reqwest::Url;

use crate::checks::Failure;

/// What a policy says about whom to trust, as far as the agent can read it.
#[derive(Clone, Debug)]
pub struct PolicyTrust {
    /// The policy's name.
    pub policy: String,
    /// `repository.url`: the directory holding `index.json`.
    pub repository_url: Url,
    /// The policy's CA bundle and redirect hosts, used instead of the node record's copy.
    pub access: RepositoryAccess,
    /// The inline `repository.trustedKeys` that parse.
    pub keys: Vec<PublicKey>,
    /// `status.repositorySerial`: the operator refused indexes below it, so does the agent.
    pub accepted_serial: u64,
}

/// The end of every message about a spec the policy does not vouch for.
const NOT_THE_OPERATOR: &str = "spec.desired was not written by the operator for this \
     policy; find out who wrote it (kubectl get lpn NODE --show-managed-fields)";

fn untrusted(message: String) -> Failure {
    Failure::new(NodeErrorReason::UntrustedRelease, message)
}

impl PolicyTrust {
    /// The trust a policy gives. Only inline keys count: the agent may not read Secrets, so
    /// a policy whose keys are only in `trustedKeysSecret` cannot vouch for a release here.
    pub fn of_policy(policy: &LivePatchPolicy) -> Result<PolicyTrust, Failure> {
        let name = policy.metadata.name.clone().unwrap_or_default();
        let spec = &policy.spec.repository;
        let repository_url = Url::parse(&spec.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                untrusted(format!(
                    "policy {name}: repository.url {:?} is not an http(s) URL, so no release \
                     can be verified against it; fix the policy",
                    spec.url
                ))
            })?;
        let keys: Vec<PublicKey> = spec
            .trusted_keys
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                PublicKey::from_base64(text, &format!("repository.trustedKeys[{i}]")).ok()
            })
            .collect();
        if keys.is_empty() {
            let secret = spec
                .trusted_keys_secret
                .as_ref()
                .map(|s| {
                    format!(
                        " (its Secret {}/{} is not readable by node agents, by design)",
                        s.namespace, s.name
                    )
                })
                .unwrap_or_default();
            return Err(untrusted(format!(
                "policy {name} has no usable inline repository.trustedKeys{secret}, so this \
                 node cannot verify what it is asked to load; add the publisher's public key \
                 (kpersist.pub, not secret) to repository.trustedKeys"
            )));
        }
        Ok(PolicyTrust {
            repository_url,
            access: RepositoryAccess {
                ca_bundle: spec.ca_bundle.clone(),
                allowed_redirect_hosts: spec.allowed_redirect_hosts.clone(),
            },
            keys,
            accepted_serial: policy
                .status
                .as_ref()
                .and_then(|s| s.repository_serial)
                .unwrap_or(0),
            policy: name,
        })
    }

    /// The URL of a file of the repository, e.g. `index.json`.
    pub fn file_url(&self, file: &str) -> String {
        format!(
            "{}/{file}",
            self.repository_url.as_str().trim_end_matches('/')
        )
    }

    /// Refuses a module URL that is not http(s) on the repository's origin or an allowed
    /// redirect host (a forged spec pointing at a file on the node or another server), or
    /// plain http when the repository is https.
    pub fn check_module_url(&self, release: &PatchRelease) -> Result<(), Failure> {
        let refuse = |problem: String| {
            untrusted(format!(
                "release {}: module URL {:?} {problem}; this node loads only modules from \
                 policy {}'s repository {}, so {NOT_THE_OPERATOR}",
                release.id, release.module_url, self.policy, self.repository_url
            ))
        };
        let url = Url::parse(&release.module_url)
            .map_err(|e| refuse(format!("is not an absolute URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse(format!(
                "uses {}:, not http(s)",
                url.scheme().trim_end_matches(':')
            )));
        }
        if self.repository_url.scheme() == "https" && url.scheme() != "https" {
            return Err(refuse("is plain http for an https repository".into()));
        }
        let host = url.host_str().unwrap_or_default();
        let listed = self
            .access
            .allowed_redirect_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host));
        if url.origin() != self.repository_url.origin() && !listed {
            return Err(refuse(format!(
                "is outside the repository's origin {} and its allowedRedirectHosts",
                self.repository_url.origin().ascii_serialization()
            )));
        }
        Ok(())
    }
}

/// The fetched `index.json` and `index.json.sig` of a policy's repository.
#[derive(Clone, Debug)]
pub struct SignedIndex {
    /// The index's exact bytes.
    pub index: Vec<u8>,
    /// The detached signature's bytes.
    pub signature: Vec<u8>,
}

/// `desired` as the agent may act on it: its release checked against the policy's signed
/// index and replaced by the index's entry (module URL in the policy's repository), and the
/// repository access taken from the policy. A desired state without a release (revert to
/// none) loads nothing and passes unchanged but for the access.
pub fn trusted_desired(
    desired: &DesiredPatch,
    trust: &PolicyTrust,
    signed: &SignedIndex,
) -> Result<DesiredPatch, Failure> {
    let mut trusted = DesiredPatch {
        repository: Some(trust.access.clone()),
        ..desired.clone()
    };
    let Some(release) = &desired.release else {
        return Ok(trusted);
    };
    if desired.policy != trust.policy {
        return Err(untrusted(format!(
            "release {}: spec.desired names policy {:?} but was checked against policy {}",
            release.id, desired.policy, trust.policy
        )));
    }
    trust.check_module_url(release)?;
    let index_url = trust.file_url(kpersist_kmod::repository::INDEX_FILE);
    let index = verify_index(&signed.index, &signed.signature, &trust.keys).map_err(|e| {
        untrusted(format!(
            "release {}: the signed index {index_url} of policy {} does not verify with the \
             policy's trusted keys, so nothing from it is loaded: {e}",
            release.id, trust.policy
        ))
    })?;
    index
        .check_not_rolled_back(trust.accepted_serial)
        .map_err(|e| {
            untrusted(format!(
                "release {}: {index_url} of policy {}: {e}",
                release.id, trust.policy
            ))
        })?;
    if desired.action == PatchAction::Revert && index.release(&release.id).is_none() {
        return Err(pruned_revert(release, trust));
    }
    // A release its publisher withdrew is not loaded, even when asked for before the
    // operator saw the yank; the operator sends the node back once it does.
    if desired.action == PatchAction::Apply
        && let Some(reason) = index.release(&release.id).and_then(|r| r.yanked.as_deref())
    {
        return Err(untrusted(format!(
            "release {}: yanked from policy {}'s signed index ({reason}), so it is not \
             loaded; the operator sends the node back to its previous release",
            release.id, trust.policy
        )));
    }
    trusted.release = Some(matching_release(release, &index, trust)?);
    Ok(trusted)
}

/// Why a revert to a release the signed index no longer lists (a repository that prunes
/// superseded releases) cannot go on from the repository. The caller loads the module
/// from the host cache instead when it holds it: only verified modules enter the cache,
/// and their bytes are checked against the release's hash before loading.
fn pruned_revert(release: &PatchRelease, trust: &PolicyTrust) -> Failure {
    Failure::new(
        NodeErrorReason::RevertFailed,
        format!(
            "release {}, which this revert goes back to, is no longer in policy {}'s signed \
             index and this node has no cached module of it, so the node cannot go back to \
             it and keeps what it runs; publish {} again to let the revert finish",
            release.id, trust.policy, release.id
        ),
    )
}

/// The index's entry for `release`, as the API carries it, when every field that decides
/// what is loaded agrees with the spec's copy.
pub fn matching_release(
    release: &PatchRelease,
    index: &Index,
    trust: &PolicyTrust,
) -> Result<PatchRelease, Failure> {
    let Some(entry) = index.release(&release.id) else {
        return Err(untrusted(format!(
            "release {} is not in policy {}'s signed index (serial {}, {} release(s)); \
             {NOT_THE_OPERATOR}",
            release.id,
            trust.policy,
            index.serial(),
            index.releases.len()
        )));
    };
    let differences = differences(release, entry);
    if !differences.is_empty() {
        return Err(untrusted(format!(
            "release {} differs from policy {}'s signed index: {}; {NOT_THE_OPERATOR}",
            release.id,
            trust.policy,
            differences.join(", ")
        )));
    }
    Ok(PatchRelease {
        id: entry.id(),
        version: entry.version,
        kernel_release: entry.kernel_release.clone(),
        build_id: entry.build_id.clone(),
        module_name: entry.module_name.clone(),
        module_url: entry.module_url(trust.repository_url.as_str()),
        sha256: entry.sha256.clone(),
        size: entry.size,
        cves: entry.cves.clone(),
    })
}

/// Each field of the spec's release that is not the index's, as `field X (index: Y)`.
fn differences(release: &PatchRelease, entry: &Release) -> Vec<String> {
    let mut out = Vec::new();
    let mut compare = |field: &str, spec: String, index: String, same: bool| {
        if !same {
            out.push(format!("{field} {spec} (signed index: {index})"));
        }
    };
    compare(
        "version",
        release.version.to_string(),
        entry.version.to_string(),
        release.version == entry.version,
    );
    compare(
        "kernelRelease",
        release.kernel_release.clone(),
        entry.kernel_release.clone(),
        release.kernel_release == entry.kernel_release,
    );
    compare(
        "buildId",
        release.build_id.clone(),
        entry.build_id.clone(),
        release.build_id.eq_ignore_ascii_case(&entry.build_id),
    );
    compare(
        "moduleName",
        release.module_name.clone(),
        entry.module_name.clone(),
        release.module_name == entry.module_name,
    );
    compare(
        "sha256",
        release.sha256.clone(),
        entry.sha256.clone(),
        release.sha256.eq_ignore_ascii_case(&entry.sha256),
    );
    compare(
        "size",
        release.size.to_string(),
        entry.size.to_string(),
        release.size == entry.size,
    );
    out
}

#[cfg(test)]
#[path = "trust_tests.rs"]
mod tests;
