//! Whole reconciles whose writes meet newer objects on the API server: nothing decided on
//! the older copy is written after the refusal, and the reconcile comes back soon to
//! decide again.

use std::sync::Arc;

use http::{Method, StatusCode};
use kpersist_crds::{LivePatchNode, LivePatchPolicy};
use kpersist_kmod::signing::PrivateKey;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use kube::runtime::{reflector, watcher};

use super::tests::{FINALIZER_LIST, lpn, policy_json, serve_repository};
use super::*;
use crate::fixtures::{SeenRequest, answer_with, mock_client, node, status_body, store_of};

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

/// The API server's copy of an object after a write: the same name, the next version.
fn next_version<K: kube::Resource + Clone>(object: &K) -> K {
    let mut next = object.clone();
    let version: u64 = object
        .meta()
        .resource_version
        .as_deref()
        .unwrap_or("0")
        .parse()
        .unwrap();
    next.meta_mut().resource_version = Some((version + 1).to_string());
    next
}

/// Runs one reconcile against an API server that refuses with 409 the writes `refuse`
/// picks and takes every other. Like the real watch, the stores then show the newer
/// version of every object written or found changed. Returns the action, every request
/// seen, and the store of LivePatchNodes.
async fn reconcile_refusing(
    policy: Value,
    lpns: Vec<LivePatchNode>,
    refuse: fn(&SeenRequest) -> bool,
) -> (Action, Vec<SeenRequest>, Store<LivePatchNode>) {
    crate::install_crypto_provider();
    let (client, mut handle) = mock_client();
    let object: LivePatchPolicy = serde_json::from_value(policy).unwrap();
    let (policy_store, mut policy_watch) = reflector::store();
    policy_watch.apply_watcher_event(&watcher::Event::Apply(object.clone()));
    let (lpn_store, mut lpn_watch) = reflector::store();
    for lpn in &lpns {
        lpn_watch.apply_watcher_event(&watcher::Event::Apply(lpn.clone()));
    }
    let (server_policies, server_lpns) = (policy_store.clone(), lpn_store.clone());
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(request) = answer_with(&mut handle, |r| {
            let name = r.uri.split('?').next().unwrap_or_default();
            let name = name
                .trim_end_matches("/status")
                .rsplit('/')
                .next()
                .unwrap_or_default();
            let reply = if r.uri.contains("/livepatchpolicies/") {
                let next = next_version(&*server_policies.get(&ObjectRef::new(name)).unwrap());
                policy_watch.apply_watcher_event(&watcher::Event::Apply(next.clone()));
                serde_json::to_value(next).unwrap()
            } else if r.uri.contains("/livepatchnodes/") {
                let next = next_version(&*server_lpns.get(&ObjectRef::new(name)).unwrap());
                lpn_watch.apply_watcher_event(&watcher::Event::Apply(next.clone()));
                serde_json::to_value(next).unwrap()
            } else {
                r.body.clone()
            };
            if r.uri.contains("/configmaps/") {
                // No policy of this name was deleted with bad releases.
                (StatusCode::NOT_FOUND, status_body(404, "NotFound"))
            } else if refuse(r) {
                (StatusCode::CONFLICT, status_body(409, "Conflict"))
            } else {
                (StatusCode::OK, reply)
            }
        })
        .await
        {
            seen.push(request);
        }
        seen
    });
    let (_, leading) = tokio::sync::watch::channel(true);
    let ctx = Arc::new(Context {
        events: super::super::events::EventPublisher::new(client.clone(), "test".into()),
        client,
        policies: policy_store,
        nodes: store_of(vec![node("n1", json!({"pool": "web"}), true)]),
        lpns: lpn_store.clone(),
        repositories: Default::default(),
        gates: Default::default(),
        metrics: crate::metrics::Metrics::new(),
        leading,
        namespace: "kpersist".into(),
    });
    let started = tokio::time::Instant::now();
    let action = reconcile(Arc::new(object), ctx.clone()).await.unwrap();
    assert!(
        started.elapsed() < STORE_CATCH_UP,
        "the reconcile waited for a store that had caught up"
    );
    drop(ctx);
    (action, server.await.unwrap(), lpn_store)
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
    let (action, seen, _) = reconcile_refusing(policy, vec![lpn_at("n1", "41")], |_| false).await;
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
    let (action, seen, lpns) = reconcile_refusing(policy, vec![lpn_at("n1", "41")], |r| {
        r.uri.contains("/livepatchnodes/")
    })
    .await;
    let n1 = lpns.get(&ObjectRef::new("n1")).unwrap();
    assert_eq!(
        n1.resource_version().as_deref(),
        Some("42"),
        "the reconcile ended before its store showed the newer node"
    );
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
    let (action, seen, _) = reconcile_refusing(policy, vec![lpn_at("n1", "41")], |r| {
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

#[tokio::test]
async fn a_deleted_policy_clears_a_changed_node_again_on_its_newer_version() {
    let key = PrivateKey::generate().public_key().to_base64_line();
    let mut policy = policy_json("http://127.0.0.1:9", &key, FINALIZER_LIST, true);
    policy["metadata"]["resourceVersion"] = json!("7");
    let mut n1 = lpn("n1", Some("web"));
    n1.metadata.resource_version = Some("41".into());
    // Only the first clearing is refused: by then the node had changed.
    let (action, seen, _) = reconcile_refusing(policy, vec![n1], |r| {
        r.uri.contains("/livepatchnodes/") && r.body.to_string().contains("\"41\"")
    })
    .await;
    let clears = node_writes(&seen);
    assert_eq!(clears.len(), 2, "{seen:#?}");
    assert_eq!(precondition(clears[0]), "41");
    assert_eq!(
        precondition(clears[1]),
        "42",
        "not decided again on the newer node"
    );
    let last = seen.last().unwrap();
    assert!(
        last.uri.contains("/livepatchpolicies/web") && last.body.to_string().contains("remove"),
        "the finalizer must go last: {seen:#?}"
    );
    assert_eq!(action, Action::await_change());
}
