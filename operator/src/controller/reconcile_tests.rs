//! Whole reconciles against a mocked API server (every request recorded and answered) and,
//! where a repository is needed, a real one on 127.0.0.1 signed with kmod's functions.

use std::sync::Arc;

use http::{Method, StatusCode};
use kpersist_crds::LivePatchNode;
use kpersist_kmod::repository::{Index, Release};
use kpersist_kmod::signing::PrivateKey;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::*;
use crate::fixtures::{
    ApiHandle, SeenRequest, answer_with, context, context_leading, mock_client, node, status_body,
};

/// The finalizer list of a policy that already has it.
pub(super) const FINALIZER_LIST: &[&str] = &[FINALIZER];

const KERNEL: &str = "6.1.0-56-amd64";

fn build_id() -> String {
    "ab".repeat(20)
}

pub(super) fn policy_json(url: &str, key: &str, finalizers: &[&str], deleting: bool) -> Value {
    let mut metadata =
        json!({"name": "web", "generation": 1, "uid": "u1", "finalizers": finalizers});
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-03-01T00:00:00Z");
    }
    json!({
        "apiVersion": "kpersist.io/v1alpha1",
        "kind": "LivePatchPolicy",
        "metadata": metadata,
        "spec": {
            "nodeSelector": {"matchLabels": {"pool": "web"}},
            "repository": {"url": url, "trustedKeys": [key], "checkInterval": "1h"},
            "rollout": {"waves": [{"nodes": 1, "bake": "0s"}]}
        }
    })
}

pub(super) fn lpn(name: &str, desired_policy: Option<&str>) -> LivePatchNode {
    let desired = desired_policy.map(|p| json!({"policy": p, "action": "Apply"}));
    serde_json::from_value(json!({
        "apiVersion": "kpersist.io/v1alpha1",
        "kind": "LivePatchNode",
        "metadata": {"name": name, "generation": 1},
        "spec": {"desired": desired},
        "status": {
            "state": "Idle", "kernelRelease": KERNEL, "buildId": build_id(),
            "livepatchSupported": true, "observedGeneration": 1
        }
    }))
    .unwrap()
}

/// Answers every request until the client is dropped: policies get the policy back,
/// everything else (node specs, Events) is echoed. Returns what was asked.
fn api_server(mut handle: ApiHandle, policy: Value) -> tokio::task::JoinHandle<Vec<SeenRequest>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(request) = answer_with(&mut handle, |r: &SeenRequest| {
            if r.uri.contains("/livepatchpolicies/") {
                (StatusCode::OK, policy.clone())
            } else if r.uri.contains("/configmaps/") {
                // No policy of this name was deleted with bad releases.
                (StatusCode::NOT_FOUND, status_body(404, "NotFound"))
            } else if let Some(name) = r.uri.split("/livepatchnodes/").nth(1) {
                let name = name.split('?').next().unwrap_or_default();
                let reply = json!({"apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchNode",
                    "metadata": {"name": name}, "spec": {}});
                (StatusCode::OK, reply)
            } else {
                (StatusCode::OK, r.body.clone())
            }
        })
        .await
        {
            seen.push(request);
        }
        seen
    })
}

/// Serves a repository signed by `key` with one release for [`KERNEL`]; returns its URL.
pub(super) async fn serve_repository(key: &PrivateKey) -> String {
    let sha256 = "1".repeat(64);
    let mut index = Index::empty("2026-01-01T00:00:00Z".parse().unwrap());
    index
        .add_release(Release {
            kernel_release: KERNEL.into(),
            build_id: build_id(),
            version: 2,
            module: format!("modules/{sha256}.ko"),
            sha256,
            size: 4096,
            module_name: "kpersist_lp_v2".into(),
            cves: vec!["CVE-2026-0001".into()],
            channels: vec!["stable".into()],
            published: "2026-01-01T00:00:00Z".into(),
            yanked: None,
        })
        .unwrap();
    let bytes = index.to_json_bytes();
    let sig = key.sign_to_base64_line(&bytes);
    let app = axum::Router::new()
        .route(
            "/index.json",
            axum::routing::get(move || async move { bytes.clone() }),
        )
        .route(
            "/index.json.sig",
            axum::routing::get(move || async move { sig.clone() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

pub(super) async fn run(policy: Value, lpns: Vec<LivePatchNode>) -> (Action, Vec<SeenRequest>) {
    crate::install_crypto_provider();
    let (client, handle) = mock_client();
    let server = api_server(handle, policy.clone());
    let object: LivePatchPolicy = serde_json::from_value(policy).unwrap();
    let nodes = vec![
        node("n1", json!({"pool": "web"}), true),
        node("n9", json!({"pool": "db"}), true),
    ];
    let ctx = context(client, vec![object.clone()], nodes, lpns);
    let action = reconcile(Arc::new(object), ctx.clone()).await.unwrap();
    drop(ctx);
    (action, server.await.unwrap())
}

pub(super) fn status_patch(seen: &[SeenRequest]) -> &Value {
    let patch = seen
        .iter()
        .find(|r| r.method == Method::PATCH && r.uri.contains("/livepatchpolicies/web/status"))
        .unwrap_or_else(|| panic!("no status write in {seen:#?}"));
    &patch.body[0]["value"]
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status:#}"))
}

#[tokio::test]
async fn an_unreachable_repository_is_reported_and_nothing_is_assigned() {
    let key = PrivateKey::generate().public_key().to_base64_line();
    let policy = policy_json(&closed_port_url(), &key, &[FINALIZER], false);
    let (action, seen) = run(policy, vec![lpn("n1", None)]).await;
    let status = status_patch(&seen);
    let reachable = condition(status, "RepositoryReachable");
    assert_eq!(reachable["status"], "False");
    assert_eq!(reachable["reason"], "Unreachable");
    assert!(reachable["lastTransitionTime"].is_string());
    // Its labels may be brought up to date; its spec is not written.
    assert!(
        !seen
            .iter()
            .filter(|r| r.uri.contains("/livepatchnodes/"))
            .any(|r| r.body[0]["path"] != "/metadata/labels"),
        "{seen:#?}"
    );
    assert_ne!(action, Action::await_change());
}

#[tokio::test]
async fn a_verified_release_goes_to_the_first_wave_only_on_selected_nodes() {
    let key = PrivateKey::generate();
    let url = serve_repository(&key).await;
    let policy = policy_json(
        &url,
        &key.public_key().to_base64_line(),
        &[FINALIZER],
        false,
    );
    let (_, seen) = run(policy, vec![lpn("n1", None), lpn("n9", None)]).await;

    let status = status_patch(&seen);
    assert_eq!(condition(status, "RepositoryReachable")["status"], "True");
    assert!(status["lastRepositoryCheck"].is_string(), "{status:#}");
    assert_eq!(status["observedGeneration"], 1, "{status:#}");

    let node_writes: Vec<_> = seen
        .iter()
        .filter(|r| r.uri.contains("/livepatchnodes/"))
        .collect();
    assert_eq!(node_writes.len(), 1, "{node_writes:#?}");
    assert!(node_writes[0].uri.contains("/livepatchnodes/n1?"));
    let desired = &node_writes[0].body[0]["value"]["desired"];
    assert_eq!(desired["policy"], "web");
    assert_eq!(desired["action"], "Apply");
    assert_eq!(desired["release"]["id"], format!("{KERNEL}/v2"));
    // Node writes come before the status that counts them.
    let node_at = seen
        .iter()
        .position(|r| r.uri.contains("/livepatchnodes/n1"))
        .unwrap();
    let status_at = seen.iter().position(|r| r.uri.contains("/status")).unwrap();
    assert!(node_at < status_at);

    let events: Vec<_> = seen
        .iter()
        .filter(|r| {
            r.method == Method::POST
                && r.uri
                    .starts_with("/apis/events.k8s.io/v1/namespaces/kube-system/events")
        })
        .collect();
    assert!(!events.is_empty(), "no Event recorded: {seen:#?}");
    for event in events {
        assert_eq!(event.body["regarding"]["name"], "web");
        assert_eq!(event.body["reportingController"], "kpersist-operator");
    }
}

#[tokio::test]
async fn a_policy_without_the_finalizer_gets_it_first() {
    let key = PrivateKey::generate().public_key().to_base64_line();
    let policy = policy_json(&closed_port_url(), &key, &[], false);
    let (_, seen) = run(policy, vec![lpn("n1", None)]).await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(
        seen[0].content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert!(
        seen[0].body.to_string().contains(FINALIZER),
        "{}",
        seen[0].body
    );
}

#[tokio::test]
async fn deleting_a_policy_clears_its_desired_specs_and_unloads_nothing() {
    let key = PrivateKey::generate().public_key().to_base64_line();
    let policy = policy_json(&closed_port_url(), &key, &[FINALIZER], true);
    let lpns = vec![
        lpn("n1", Some("web")),
        lpn("n2", Some("db")),
        lpn("n3", None),
    ];
    let (action, seen) = run(policy, lpns).await;
    assert_eq!(action, Action::await_change());
    let node_writes: Vec<_> = seen
        .iter()
        .filter(|r| r.uri.contains("/livepatchnodes/"))
        .collect();
    assert_eq!(node_writes.len(), 1, "{node_writes:#?}");
    assert!(node_writes[0].uri.contains("/livepatchnodes/n1?"));
    // Cleared, not reverted: no desired at all.
    assert_eq!(node_writes[0].body[0]["value"], json!({}));
    // Then the finalizer goes.
    let last = seen.last().unwrap();
    assert_eq!(
        last.content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert!(last.body.to_string().contains("remove"), "{}", last.body);
}

#[tokio::test]
async fn a_standby_replica_reconciles_nothing_until_it_leads() {
    crate::install_crypto_provider();
    let key = PrivateKey::generate().public_key().to_base64_line();
    let policy = policy_json(&closed_port_url(), &key, &[], false);
    let object: LivePatchPolicy = serde_json::from_value(policy.clone()).unwrap();
    let (client, mut handle) = mock_client();
    let (lead, leading) = tokio::sync::watch::channel(false);
    let ctx = context_leading(client, vec![object.clone()], vec![], vec![], leading);
    let running = tokio::spawn(reconcile(Arc::new(object), ctx));

    let waited =
        tokio::time::timeout(std::time::Duration::from_millis(300), handle.next_request()).await;
    assert!(waited.is_err(), "a standby sent a request");

    lead.send(true).unwrap();
    let seen = answer_with(&mut handle, |_| (StatusCode::OK, policy.clone()))
        .await
        .unwrap();
    assert_eq!(
        seen.method,
        Method::PATCH,
        "the leader adds the finalizer first"
    );
    assert_eq!(running.await.unwrap().unwrap(), Action::await_change());
}

#[test]
fn a_node_counts_as_stale_only_while_the_store_shows_the_version_it_was_written_over() {
    let written_over = vec![
        ("n1".to_string(), "10".to_string()),
        ("n2".to_string(), "11".to_string()),
        ("n3".to_string(), "12".to_string()),
    ];
    // n1 still at the version written over; n2 moved on (the write, or anything after it,
    // came back); n3 left the store (deleted): nothing to wait for.
    let store = |node: &str| match node {
        "n1" => Some("10".to_string()),
        "n2" => Some("15".to_string()),
        _ => None,
    };
    assert_eq!(still_stale(&written_over, store), 1);
    assert_eq!(still_stale(&written_over, |_| Some("99".to_string())), 0);
    assert_eq!(still_stale(&[], store), 0);
}
