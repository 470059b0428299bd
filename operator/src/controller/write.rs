//! The controller's writes. The operator owns a LivePatchNode's `spec` and a policy's
//! `status` outright, so each write replaces the whole value with a JSON patch `add`
//! (which replaces an existing member, or creates it) under the operator's field manager.
//!
//! Server-side apply was the first choice and fails on a real API server: on Kubernetes
//! 1.20 (the fleet suite's) a field dropped from an apply configuration is not removed
//! when another manager owns its parent (the agent that created the LivePatchNode owns
//! `spec`), so a cleared `desired` or a dropped `release` stayed; and CRD schema defaults
//! keep a dropped `status.rollout` half-present, which the API then refuses as invalid.
//! Replacing the whole value writes exactly what the engine decided. Client required.

use futures::{StreamExt, stream};
use kpersist_crds::{
    DesiredPatch, LivePatchNode, LivePatchPolicy, LivePatchPolicyStatus, OPERATOR_MANAGER,
};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;
use serde_json::json;

use crate::error::Error;

/// Node writes in flight at once: enough to start a large wave quickly, few enough not to
/// trip API priority and fairness.
const NODE_WRITE_CONCURRENCY: usize = 8;

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(OPERATOR_MANAGER.to_string()),
        ..PatchParams::default()
    }
}

/// A JSON patch setting the member at `path` (`/spec`, `/status`) to `value` whole.
pub fn replace_patch(path: &str, value: &impl Serialize) -> Patch<()> {
    let operations = json!([{"op": "add", "path": path, "value": value}]);
    // An `add` of a serializable value at a fixed path is always a valid JSON patch.
    match serde_json::from_value(operations) {
        Ok(patch) => Patch::Json(patch),
        Err(error) => unreachable!("a single add operation is a JSON patch: {error}"),
    }
}

/// The spec the operator wants a LivePatchNode to have.
pub fn node_spec(desired: Option<&DesiredPatch>) -> serde_json::Value {
    match desired {
        Some(desired) => json!({"desired": desired}),
        None => json!({}),
    }
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
        &params(),
        &replace_patch("/spec", &node_spec(desired)),
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
    api.patch_status(policy, &params(), &replace_patch("/status", status))
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
