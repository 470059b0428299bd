//! The controller's writes, all server-side apply under the operator's field manager with
//! `force` (the operator owns `spec.desired` and the policy status outright). Applying a
//! LivePatchNode without `desired` removes the field, because the operator's manager owns
//! it and no one else does. Client required.

use futures::{StreamExt, stream};
use kpersist_crds::{
    DesiredPatch, LivePatchNode, LivePatchPolicy, LivePatchPolicyStatus, OPERATOR_MANAGER,
};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde_json::json;

use crate::error::Error;

/// Node writes in flight at once: enough to start a large wave quickly, few enough not to
/// trip API priority and fairness.
const NODE_WRITE_CONCURRENCY: usize = 8;

fn apply_params() -> PatchParams {
    PatchParams::apply(OPERATOR_MANAGER).force()
}

/// The apply body for a LivePatchNode's spec.
pub fn node_spec_patch(node: &str, desired: Option<&DesiredPatch>) -> serde_json::Value {
    let mut spec = serde_json::Map::new();
    if let Some(desired) = desired {
        spec.insert("desired".into(), json!(desired));
    }
    json!({
        "apiVersion": LivePatchNode::api_version(&()),
        "kind": LivePatchNode::kind(&()),
        "metadata": {"name": node},
        "spec": spec,
    })
}

/// Writes `spec.desired` of one LivePatchNode.
#[tracing::instrument(skip(client, desired), fields(release = desired.and_then(|d| d.release.as_ref()).map(|r| r.id.as_str())))]
pub async fn apply_desired(
    client: &Client,
    node: &str,
    desired: Option<&DesiredPatch>,
) -> Result<(), Error> {
    let api: Api<LivePatchNode> = Api::all(client.clone());
    api.patch(
        node,
        &apply_params(),
        &Patch::Apply(node_spec_patch(node, desired)),
    )
    .await
    .map_err(|source| Error::NodeApply {
        node: node.to_string(),
        source,
    })?;
    Ok(())
}

/// Writes many nodes' `spec.desired`, a few at a time. Every write is tried; the first
/// error is returned so the reconcile retries (the engine repeats the same writes).
pub async fn apply_all_desired(
    client: &Client,
    writes: &[(String, Option<DesiredPatch>)],
) -> Result<usize, Error> {
    // Each future owns its inputs: borrowing them from the closure's argument makes the
    // stream's futures not `Send` for every lifetime, which the controller requires.
    let results: Vec<Result<(), Error>> = stream::iter(writes.iter().cloned())
        .map(|(node, desired)| {
            let client = client.clone();
            async move { apply_desired(&client, &node, desired.as_ref()).await }
        })
        .buffer_unordered(NODE_WRITE_CONCURRENCY)
        .collect()
        .await;
    let written = results.iter().filter(|r| r.is_ok()).count();
    match results.into_iter().find_map(Result::err) {
        Some(error) => Err(error),
        None => Ok(written),
    }
}

/// Writes the policy's status.
#[tracing::instrument(skip(client, status))]
pub async fn apply_status(
    client: &Client,
    policy: &str,
    status: &LivePatchPolicyStatus,
) -> Result<(), Error> {
    let api: Api<LivePatchPolicy> = Api::all(client.clone());
    let body = json!({
        "apiVersion": LivePatchPolicy::api_version(&()),
        "kind": LivePatchPolicy::kind(&()),
        "metadata": {"name": policy},
        "status": status,
    });
    api.patch_status(policy, &apply_params(), &Patch::Apply(body))
        .await
        .map_err(|source| Error::StatusApply {
            policy: policy.to_string(),
            source,
        })?;
    Ok(())
}

#[cfg(test)]
#[path = "write_tests.rs"]
mod tests;
