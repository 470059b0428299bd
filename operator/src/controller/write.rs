//! The controller's writes. The operator owns a LivePatchNode's `spec` and a policy's
//! `status` outright, so each write replaces the whole value with a JSON patch `add`
//! (which replaces an existing member, or creates it) under the operator's field manager.
//! It also keeps the LivePatchNode's `kpersist.io/` labels (see [`kpersist_crds::labels`]),
//! writing the whole label map with the other labels as it found them.
//!
//! Server-side apply was the first choice and fails on a real API server: on Kubernetes
//! 1.20 (the fleet suite's) a field dropped from an apply configuration is not removed
//! when another manager owns its parent (the agent that created the LivePatchNode owns
//! `spec`), so a cleared `desired` or a dropped `release` stayed; and CRD schema defaults
//! keep a dropped `status.rollout` half-present, which the API then refuses as invalid.
//! Replacing the whole value writes exactly what the engine decided. Client required.
//!
//! Every write is conditional and made only while this replica leads:
//! - **Conditional.** Each patch also sets `metadata.resourceVersion` to the version of
//!   the copy the decision was made from (the reflector store's). The API server compares
//!   the patched object's version with the stored one and answers 409 Conflict when they
//!   differ, so a write decided on a stale copy (a watch that lags, another writer, a
//!   deposed leader) never lands over newer state. This is how the API server has treated
//!   a `resourceVersion` in a patch body since long before Kubernetes 1.20; it works for
//!   the status subresource too. A JSON patch `test` of `/metadata/resourceVersion` would
//!   also refuse the write, but as 422 Invalid, which cannot be told from a schema
//!   rejection without reading the message.
//! - **Conflict means decide again.** The content of a refused write is not sent again:
//!   the engine's decision was made on an old view, so the caller waits for its store to
//!   show the newer object and reconciles again (see [`Outcome::Conflict`]).
//! - **Only while leading.** The leader flag is read right before each request; a replica
//!   that stopped leading sends nothing more (see [`Outcome::NotLeading`]).

use std::collections::BTreeMap;

use futures::{StreamExt, stream};
use kpersist_crds::{
    DesiredPatch, LivePatchNode, LivePatchPolicy, LivePatchPolicyStatus, OPERATOR_MANAGER,
    wanted_labels,
};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

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

/// What became of one write that did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The API server took it.
    Written,
    /// The object changed since the copy the decision was made from: nothing was written,
    /// and the decision must be made again on the newer object.
    Conflict,
    /// This replica no longer leads: nothing was sent.
    NotLeading,
}

/// A LivePatchNode's labels (see [`kpersist_crds::labels`]).
pub type Labels = BTreeMap<String, String>;

/// One LivePatchNode `spec` write, conditional on the version it was decided on.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecWrite {
    /// The node (and LivePatchNode) name.
    pub node: String,
    /// The `spec.desired` to write; `None` clears it.
    pub desired: Option<DesiredPatch>,
    /// The whole label map to write with it, when the new spec changes the labels.
    pub labels: Option<Labels>,
    /// The LivePatchNode's `resourceVersion` in the copy the decision was made from.
    /// Objects read from the API server always have one; `None` (an object built by hand)
    /// makes the write unconditional.
    pub resource_version: Option<String>,
}

impl SpecWrite {
    /// Sets `spec.desired` of `lpn` to `desired`, with the labels that go with it, on
    /// condition that the object is still at the version of `lpn`.
    pub fn of(lpn: &LivePatchNode, desired: Option<DesiredPatch>) -> SpecWrite {
        SpecWrite {
            node: lpn.name_any(),
            labels: wanted_labels(lpn, desired.as_ref()),
            desired,
            resource_version: lpn.resource_version(),
        }
    }
}

/// One LivePatchNode label write (the labels copy its state and kernel, which change
/// without a spec write), conditional on the version the labels were computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelWrite {
    /// The node (and LivePatchNode) name.
    pub node: String,
    /// The whole label map to write.
    pub labels: Labels,
    /// As for [`SpecWrite::resource_version`].
    pub resource_version: Option<String>,
}

impl LabelWrite {
    /// The label write `lpn` needs, if its labels do not match its fields.
    pub fn of(lpn: &LivePatchNode) -> Option<LabelWrite> {
        Some(LabelWrite {
            node: lpn.name_any(),
            labels: wanted_labels(lpn, lpn.spec.desired.as_ref())?,
            resource_version: lpn.resource_version(),
        })
    }
}

/// A write to one LivePatchNode.
#[derive(Clone)]
enum NodeWrite {
    Spec(Box<SpecWrite>),
    Labels(LabelWrite),
}

impl NodeWrite {
    fn node(&self) -> &str {
        match self {
            NodeWrite::Spec(write) => &write.node,
            NodeWrite::Labels(write) => &write.node,
        }
    }

    async fn send(
        &self,
        client: &Client,
        leading: &watch::Receiver<bool>,
    ) -> Result<Outcome, Error> {
        match self {
            NodeWrite::Spec(write) => apply_desired(client, leading, write).await,
            NodeWrite::Labels(write) => apply_labels(client, leading, write).await,
        }
    }
}

/// What became of a batch of node writes, none of which failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeWrites {
    /// How many were written.
    pub written: usize,
    /// The nodes whose LivePatchNode changed since the decision, sorted; not written.
    pub conflicts: Vec<String>,
    /// How many were not sent because this replica stopped leading.
    pub withheld: usize,
}

/// A JSON patch setting each member at its path (`/spec`, `/status`, `/metadata/labels`)
/// to its value whole, on condition that the object is still at `resource_version` when
/// one is given.
pub fn replace_patch(
    members: &[(&str, serde_json::Value)],
    resource_version: Option<&str>,
) -> Patch<()> {
    let mut operations: Vec<serde_json::Value> = members
        .iter()
        .map(|(path, value)| json!({"op": "add", "path": path, "value": value}))
        .collect();
    if let Some(version) = resource_version {
        // The patched object carries this version; the API server refuses the update with
        // 409 Conflict when the stored object's differs.
        operations.push(json!({
            "op": "replace", "path": "/metadata/resourceVersion", "value": version
        }));
    }
    // `add` and `replace` operations at fixed paths always make a valid JSON patch.
    match serde_json::from_value(serde_json::Value::Array(operations)) {
        Ok(patch) => Patch::Json(patch),
        Err(error) => unreachable!("add and replace operations are a JSON patch: {error}"),
    }
}

/// The spec the operator wants a LivePatchNode to have.
pub fn node_spec(desired: Option<&DesiredPatch>) -> serde_json::Value {
    match desired {
        Some(desired) => json!({"desired": desired}),
        None => json!({}),
    }
}

/// Whether the replica may write now: the leader flag, read right before a request.
pub fn leads(leading: &watch::Receiver<bool>) -> bool {
    *leading.borrow()
}

/// Sorts a write's result into an outcome, a conflict being an outcome, not an error.
fn outcome<T>(
    result: Result<T, kube::Error>,
    error: impl FnOnce(kube::Error) -> Error,
) -> Result<Outcome, Error> {
    match result {
        Ok(_) => Ok(Outcome::Written),
        Err(kube::Error::Api(status)) if status.is_conflict() => Ok(Outcome::Conflict),
        Err(source) => Err(error(source)),
    }
}

/// Writes `spec.desired` of one LivePatchNode, if this replica leads and the object is
/// still at the version the write was decided on.
#[tracing::instrument(skip_all, fields(node = %write.node, release = write.desired.as_ref().and_then(|d| d.release.as_ref()).map(|r| r.id.as_str())))]
pub async fn apply_desired(
    client: &Client,
    leading: &watch::Receiver<bool>,
    write: &SpecWrite,
) -> Result<Outcome, Error> {
    let mut members = vec![("/spec", node_spec(write.desired.as_ref()))];
    if let Some(labels) = &write.labels {
        members.push(("/metadata/labels", json!(labels)));
    }
    let version = write.resource_version.as_deref();
    patch_node(client, leading, &write.node, &members, version).await
}

/// Writes the labels of one LivePatchNode, if this replica leads and the object is still
/// at the version they were computed from.
#[tracing::instrument(skip_all, fields(node = %write.node))]
pub async fn apply_labels(
    client: &Client,
    leading: &watch::Receiver<bool>,
    write: &LabelWrite,
) -> Result<Outcome, Error> {
    let members = [("/metadata/labels", json!(write.labels))];
    let version = write.resource_version.as_deref();
    patch_node(client, leading, &write.node, &members, version).await
}

/// Replaces `members` of one LivePatchNode, if this replica leads and the object is still
/// at `resource_version`.
async fn patch_node(
    client: &Client,
    leading: &watch::Receiver<bool>,
    node: &str,
    members: &[(&str, serde_json::Value)],
    resource_version: Option<&str>,
) -> Result<Outcome, Error> {
    if !leads(leading) {
        return Ok(Outcome::NotLeading);
    }
    let api: Api<LivePatchNode> = Api::all(client.clone());
    let patch = replace_patch(members, resource_version);
    let result = api.patch(node, &params(), &patch).await;
    outcome(result, |source| Error::NodeApply {
        node: node.to_string(),
        source,
    })
}

/// Writes many nodes' `spec.desired`, a few at a time. Every write is tried; the first
/// error is returned so the reconcile retries (the engine decides again). Conflicts and
/// writes withheld after the replica stopped leading are reported, not errors.
pub async fn apply_all_desired(
    client: &Client,
    leading: &watch::Receiver<bool>,
    writes: &[SpecWrite],
) -> Result<NodeWrites, Error> {
    let writes = writes
        .iter()
        .map(|write| NodeWrite::Spec(Box::new(write.clone())))
        .collect();
    apply_all(client, leading, writes).await
}

/// Writes many nodes' labels, as [`apply_all_desired`] writes specs.
pub async fn apply_all_labels(
    client: &Client,
    leading: &watch::Receiver<bool>,
    writes: &[LabelWrite],
) -> Result<NodeWrites, Error> {
    let writes = writes.iter().cloned().map(NodeWrite::Labels).collect();
    apply_all(client, leading, writes).await
}

async fn apply_all(
    client: &Client,
    leading: &watch::Receiver<bool>,
    writes: Vec<NodeWrite>,
) -> Result<NodeWrites, Error> {
    // Each future owns its inputs: borrowing them from the closure's argument makes the
    // stream's futures not `Send` for every lifetime, which the controller requires.
    let results: Vec<(String, Result<Outcome, Error>)> = stream::iter(writes)
        .map(|write| {
            let (client, leading) = (client.clone(), leading.clone());
            async move {
                let result = write.send(&client, &leading).await;
                (write.node().to_string(), result)
            }
        })
        .buffer_unordered(NODE_WRITE_CONCURRENCY)
        .collect()
        .await;
    let mut summary = NodeWrites::default();
    let mut first_error = None;
    for (node, result) in results {
        match result {
            Ok(Outcome::Written) => summary.written += 1,
            Ok(Outcome::Conflict) => summary.conflicts.push(node),
            Ok(Outcome::NotLeading) => summary.withheld += 1,
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    summary.conflicts.sort();
    match first_error {
        Some(error) => Err(error),
        None => Ok(summary),
    }
}

/// Writes the policy's status, if this replica leads and the policy is still at
/// `resource_version`, the version of the copy the status was computed from.
#[tracing::instrument(skip(client, leading, status))]
pub async fn apply_status(
    client: &Client,
    leading: &watch::Receiver<bool>,
    policy: &str,
    resource_version: Option<&str>,
    status: &LivePatchPolicyStatus,
) -> Result<Outcome, Error> {
    if !leads(leading) {
        return Ok(Outcome::NotLeading);
    }
    let api: Api<LivePatchPolicy> = Api::all(client.clone());
    let patch = replace_patch(&[("/status", json!(status))], resource_version);
    let result = api.patch_status(policy, &params(), &patch).await;
    outcome(result, |source| Error::StatusApply {
        policy: policy.to_string(),
        source,
    })
}

#[cfg(test)]
#[path = "write_tests.rs"]
mod tests;
