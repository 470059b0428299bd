//! Whole reconciles whose writes meet newer objects on the API server: nothing decided on
//! the older copy is written after the refusal, and the reconcile comes back soon to
//! decide again.

use std::sync::Arc;

use http::{Method, StatusCode};
use kpersist_crds::{LivePatchNode, LivePatchPolicy};
use kpersist_kmod::signing::PrivateKey;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::tests::{FINALIZER_LIST, lpn, policy_json, serve_repository};
use super::*;
use crate::fixtures::{SeenRequest, answer_with, context, mock_client, node, status_body};

/// A policy at resourceVersion 7 with one release ready for n1.
async fn policy_at_version_7() -> Value {
    let key = PrivateKey::generate();
    let url = serve_repository(&key).await;
    let mut policy = policy_json(
        &url,
        &key.public_key().to_base64_line(),
        FINALIZER_LIST,
        false,
    );
    policy["metadata"]["resourceVersion"] = json!("7");
    policy
}

fn lpn_at(name: &str, version: &str) -> LivePatchNode {
    let mut lpn = lpn(name, None);
    lpn.metadata.resource_version = Some(version.to_string());
    lpn
}

/// Runs one reconcile against an API server that refuses with 409 the writes `refuse`
/// picks and takes every other; returns the action and every request seen.
async fn reconcile_refusing(
    policy: Value,
    lpns: Vec<LivePatchNode>,
    refuse: fn(&SeenRequest) -> bool,
) -> (Action, Vec<SeenRequest>) {
    crate::install_crypto_provider();
    let (client, mut handle) = mock_client();
    let reply = policy.clone();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(request) = answer_with(&mut handle, |r| {
            if refuse(r) {
                (StatusCode::CONFLICT, status_body(409, "Conflict"))
            } else if r.uri.contains("/livepatchpolicies/") {
                (StatusCode::OK, reply.clone())
            } else if r.uri.contains("/livepatchnodes/") {
                let lpn = json!({"apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchNode",
                    "metadata": {"name": "n1"}, "spec": {}});
                (StatusCode::OK, lpn)
            } else {
                (StatusCode::OK, r.body.clone())
            }
        })
        .await
        {
            seen.push(request);
        }
        seen
    });
    let object: LivePatchPolicy = serde_json::from_value(policy).unwrap();
    let nodes = vec![node("n1", json!({"pool": "web"}), true)];
    let ctx = context(client, vec![object.clone()], nodes, lpns);
    let action = reconcile(Arc::new(object), ctx.clone()).await.unwrap();
    drop(ctx);
    (action, server.await.unwrap())
}

fn node_writes(seen: &[SeenRequest]) -> Vec<&SeenRequest> {
    seen.iter()
        .filter(|r| r.method == Method::PATCH && r.uri.contains("/livepatchnodes/"))
        .collect()
}

fn status_writes(seen: &[SeenRequest]) -> Vec<&SeenRequest> {
    seen.iter()
        .filter(|r| r.method == Method::PATCH && r.uri.contains("/status"))
        .collect()
}

fn events(seen: &[SeenRequest]) -> usize {
    seen.iter()
        .filter(|r| r.method == Method::POST && r.uri.contains("/events"))
        .count()
}

/// The resourceVersion a JSON patch makes its write conditional on.
fn precondition(write: &SeenRequest) -> &Value {
    let operations = write.body.as_array().map(Vec::as_slice).unwrap_or_default();
    operations
        .iter()
        .find(|op| op["path"] == "/metadata/resourceVersion")
        .map(|op| &op["value"])
        .unwrap_or_else(|| panic!("unconditional write: {}", write.body))
}

#[tokio::test]
async fn writes_are_conditional_on_the_versions_the_decision_was_made_from() {
    let policy = policy_at_version_7().await;
    let (action, seen) = reconcile_refusing(policy, vec![lpn_at("n1", "41")], |_| false).await;
    let nodes = node_writes(&seen);
    assert_eq!(nodes.len(), 1, "{seen:#?}");
    assert_eq!(precondition(nodes[0]), "41");
    let status = status_writes(&seen);
    assert_eq!(status.len(), 1, "{seen:#?}");
    assert_eq!(precondition(status[0]), "7");
    assert!(events(&seen) > 0, "no Event: {seen:#?}");
    assert_ne!(action, Action::requeue(DECIDE_AGAIN));
}

#[tokio::test]
async fn a_node_changed_since_the_decision_stops_the_reconcile_before_its_status() {
    let policy = policy_at_version_7().await;
    let (action, seen) = reconcile_refusing(policy, vec![lpn_at("n1", "41")], |r| {
        r.uri.contains("/livepatchnodes/")
    })
    .await;
    assert_eq!(
        node_writes(&seen).len(),
        1,
        "written once, not retried: {seen:#?}"
    );
    assert!(
        status_writes(&seen).is_empty(),
        "a status counted a refused write: {seen:#?}"
    );
    assert_eq!(
        events(&seen),
        0,
        "Events of a decision not carried out: {seen:#?}"
    );
    assert_eq!(action, Action::requeue(DECIDE_AGAIN));
}

#[tokio::test]
async fn a_policy_changed_since_the_decision_is_decided_again() {
    let policy = policy_at_version_7().await;
    let (action, seen) = reconcile_refusing(policy, vec![lpn_at("n1", "41")], |r| {
        r.uri.contains("/status")
    })
    .await;
    assert_eq!(
        status_writes(&seen).len(),
        1,
        "written once, not retried: {seen:#?}"
    );
    assert_eq!(
        events(&seen),
        0,
        "Events of a decision not carried out: {seen:#?}"
    );
    assert_eq!(action, Action::requeue(DECIDE_AGAIN));
}
