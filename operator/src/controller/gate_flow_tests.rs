//! The Prometheus gate wired through whole reconciles: a rollout is driven to its bake by
//! feeding each reconcile's writes back as the next one's objects, then a failing query
//! must fail the wave.

use std::sync::{Arc, Mutex};

use http::Method;
use kpersist_crds::LivePatchNode;
use kpersist_kmod::signing::PrivateKey;
use serde_json::{Value, json};

use super::tests::{FINALIZER_LIST, lpn, policy_json, run, serve_repository, status_patch};

/// A Prometheus answering every query with one sample of `value`; counts the queries.
async fn prometheus(value: &'static str) -> (String, Arc<Mutex<u32>>) {
    let count = Arc::new(Mutex::new(0));
    let counter = count.clone();
    let body = json!({"status": "success", "data": {"resultType": "vector",
        "result": [{"metric": {"job": "web"}, "value": [1.0, value]}]}})
    .to_string();
    let app = axum::Router::new().route(
        "/api/v1/query",
        axum::routing::get(move || {
            *counter.lock().unwrap() += 1;
            let body = body.clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), count)
}

/// n1 after the agent applied what `desired` asks.
fn applied(desired: &Value) -> LivePatchNode {
    let mut node = lpn("n1", None);
    node.spec.desired = Some(serde_json::from_value(desired.clone()).unwrap());
    let status = node.status.as_mut().unwrap();
    status.state = Some(kpersist_crds::NodePatchState::Applied);
    status.applied = Some(kpersist_crds::AppliedRelease {
        id: desired["release"]["id"].as_str().unwrap().to_string(),
        version: desired["release"]["version"].as_u64().unwrap(),
        module_name: desired["release"]["moduleName"]
            .as_str()
            .unwrap()
            .to_string(),
        cves: vec![],
        policy: Some("web".into()),
        applied_at: None,
    });
    node
}

#[tokio::test]
async fn a_failing_prometheus_gate_fails_the_bake() {
    let key = PrivateKey::generate();
    let url = serve_repository(&key).await;
    let (prom, queries) = prometheus("5").await;
    let mut policy = policy_json(
        &url,
        &key.public_key().to_base64_line(),
        FINALIZER_LIST,
        false,
    );
    policy["spec"]["rollout"]["waves"] = json!([{"nodes": 1, "bake": "1h"}]);
    policy["spec"]["health"] = json!({"prometheus": {
        "url": prom, "query": "errors", "operator": "LessThan", "threshold": 1.0, "interval": "5s"
    }});

    // 1: the canary gets the release.
    let (_, seen) = run(policy.clone(), vec![lpn("n1", None)]).await;
    let desired = seen
        .iter()
        .find(|r| r.uri.contains("/livepatchnodes/n1"))
        .map(|r| r.body[0]["value"]["desired"].clone())
        .unwrap_or_else(|| panic!("n1 was not assigned: {seen:#?}"));
    policy["status"] = status_patch(&seen).clone();

    // 2: it applied; the bake starts. No gate yet: the status did not say Baking.
    let (_, seen) = run(policy.clone(), vec![applied(&desired)]).await;
    policy["status"] = status_patch(&seen).clone();
    assert_eq!(
        policy["status"]["phase"], "Baking",
        "{:#}",
        policy["status"]
    );
    assert_eq!(*queries.lock().unwrap(), 0);

    // 3: during the bake the gate runs, 5 < 1 does not hold, the wave fails.
    let (_, seen) = run(policy.clone(), vec![applied(&desired)]).await;
    assert_eq!(*queries.lock().unwrap(), 1);
    let failed = seen.iter().any(|r| {
        r.method == Method::POST && r.uri.contains("/events") && r.body["reason"] == "WaveFailed"
    });
    assert!(failed, "no WaveFailed event: {seen:#?}");
    let status = status_patch(&seen);
    assert_ne!(status["phase"], "Baking", "{status:#}");
}
