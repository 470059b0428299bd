//! Bad releases outlive their policy. Deleting a policy (a GitOps tool replacing it deletes
//! and creates it again) would forget which releases it marked bad, and a known-bad release
//! would roll out again. So the finalizer keeps them in the ConfigMap
//! `kpersist-bad-releases` of the operator's namespace, under the policy's name with its
//! repository URL, and a policy created with the same name and repository takes them back
//! before its first decision.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kpersist_crds::{BadRelease, LivePatchPolicy, LivePatchPolicyStatus, RetriedRelease};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde::{Deserialize, Serialize};

use super::Context;

/// The ConfigMap, in the operator's namespace.
pub const CONFIG_MAP: &str = "kpersist-bad-releases";

/// What is kept of one deleted policy.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Kept {
    repository: String,
    deleted_at: String,
    bad_releases: Vec<BadRelease>,
    /// The clearings of `retryReleases`, so that an entry still in the recreated policy's
    /// spec does not clear a release marked bad again since.
    #[serde(default)]
    retried_releases: Vec<RetriedRelease>,
}

/// Records the bad releases of `policy`, which is being deleted (or forgets an earlier
/// record of its name when it has none). A policy deleted before its first status write
/// leaves an earlier record as it is. A ConfigMap the operator may not write (a chart from
/// before this record) is reported and skipped: deletion must not hang on it.
pub async fn keep(
    ctx: &Context,
    policy: &LivePatchPolicy,
    now: jiff::Timestamp,
) -> kube::Result<()> {
    let name = policy.name_any();
    let Some(status) = policy.status.as_ref() else {
        return Ok(());
    };
    let value = if status.bad_releases.is_empty() {
        serde_json::Value::Null
    } else {
        let kept = Kept {
            repository: policy.spec.repository.url.clone(),
            deleted_at: now.to_string(),
            bad_releases: status.bad_releases.clone(),
            retried_releases: status.retried_releases.clone(),
        };
        serde_json::Value::String(serde_json::to_string(&kept).map_err(kube::Error::SerdeError)?)
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let mut data = serde_json::Map::new();
    data.insert(name.clone(), value.clone());
    let patch = serde_json::json!({ "data": data });
    let written = match api
        .patch(CONFIG_MAP, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 404 && !value.is_null() => {
            let map = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(CONFIG_MAP.to_string()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    name.clone(),
                    value.as_str().unwrap_or_default().to_string(),
                )])),
                ..Default::default()
            };
            api.create(&PostParams::default(), &map).await.map(drop)
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other.map(drop),
    };
    match written {
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::error!(policy = %name, namespace = %ctx.namespace, error = %e.message,
                "cannot keep the deleted policy's bad releases in ConfigMap {CONFIG_MAP} \
                 (upgrade the chart for its RBAC); a policy recreated with this name will not know them");
            Ok(())
        }
        other => other,
    }
}

/// `policy` as its first decision should see it: a policy with no status yet (new) takes
/// back the bad releases kept for a deleted policy of the same name and repository.
pub async fn recalled(
    ctx: &Context,
    policy: Arc<LivePatchPolicy>,
) -> kube::Result<Arc<LivePatchPolicy>> {
    if policy.status.is_some() {
        return Ok(policy);
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let map = match api.get_opt(CONFIG_MAP).await {
        Ok(map) => map,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::warn!(namespace = %ctx.namespace, error = %e.message,
                "cannot read ConfigMap {CONFIG_MAP} (upgrade the chart for its RBAC)");
            None
        }
        Err(e) => return Err(e),
    };
    let entry = map
        .and_then(|m| m.data)
        .and_then(|mut d| d.remove(&policy.name_any()));
    let Some(kept) = recall(entry.as_deref(), &policy) else {
        return Ok(policy);
    };
    tracing::info!(
        releases = kept.bad_releases.len(),
        "took back the bad releases of a deleted policy of this name"
    );
    let mut policy = (*policy).clone();
    policy.status = Some(LivePatchPolicyStatus {
        bad_releases: kept.bad_releases,
        retried_releases: kept.retried_releases,
        ..Default::default()
    });
    Ok(Arc::new(policy))
}

/// What a kept `entry` gives `policy`: nothing unless it was kept for the same repository
/// (another repository's release ids may name other modules). Each bad release says where
/// it came from.
fn recall(entry: Option<&str>, policy: &LivePatchPolicy) -> Option<Kept> {
    let kept = serde_json::from_str::<Kept>(entry?).ok()?;
    if kept.repository != policy.spec.repository.url || kept.bad_releases.is_empty() {
        return None;
    }
    let bad_releases = kept
        .bad_releases
        .into_iter()
        .map(|b| BadRelease {
            reason: format!(
                "kept from policy {} deleted at {}: {}",
                policy.name_any(),
                kept.deleted_at,
                b.reason
            ),
            ..b
        })
        .collect();
    Some(Kept {
        bad_releases,
        ..kept
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(url: &str) -> LivePatchPolicy {
        let spec = serde_json::from_value(serde_json::json!({
            "repository": {"url": url, "channel": "stable"},
        }));
        LivePatchPolicy::new("web", spec.unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn kept_bad_releases_come_back_only_for_the_same_repository() {
        let kept = Kept {
            repository: "https://repo.example/".into(),
            deleted_at: "2026-12-01T00:00:00Z".into(),
            bad_releases: vec![BadRelease {
                release: "k/v3".into(),
                reason: "wave 1 failed: node-1 (TransitionStalled)".into(),
                marked_at: "2026-11-30T00:00:00Z".into(),
            }],
            retried_releases: vec![RetriedRelease {
                release: "k/v3".into(),
                at: "2026-11-29T00:00:00Z".into(),
                listed: true,
            }],
        };
        let text = serde_json::to_string(&kept).unwrap_or_default();
        let back = recall(Some(&text), &policy("https://repo.example/"))
            .unwrap_or_else(|| panic!("nothing recalled from {text}"));
        assert_eq!(back.retried_releases, kept.retried_releases);
        let back = back.bad_releases;
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].release, "k/v3");
        assert!(
            back[0]
                .reason
                .starts_with("kept from policy web deleted at 2026-12-01T00:00:00Z: wave 1"),
            "{}",
            back[0].reason
        );
        assert!(recall(Some(&text), &policy("https://other.example/")).is_none());
        assert!(recall(Some("not json"), &policy("https://repo.example/")).is_none());
        assert!(recall(None, &policy("https://repo.example/")).is_none());
    }
}
