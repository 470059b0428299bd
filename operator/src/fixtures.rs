//! Test helpers: a `kube::Client` backed by a `tower_test` mock, so the steps that need a
//! client are tested by checking each request they send and scripting each answer.

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::Value;

/// The test's end of the mocked API server.
pub type ApiHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client whose every request arrives at the returned handle.
pub fn mock_client() -> (Client, ApiHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// One request as the mocked server saw it.
#[derive(Debug)]
pub struct SeenRequest {
    /// HTTP method.
    pub method: http::Method,
    /// Path and query.
    pub uri: String,
    /// `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body parsed as JSON (Null when empty).
    pub body: Value,
}

/// Waits for the next request, answers it with `status` and `reply`, and returns it.
pub async fn answer(handle: &mut ApiHandle, status: StatusCode, reply: Value) -> SeenRequest {
    answer_with(handle, move |_| (status, reply))
        .await
        .unwrap_or_else(|| panic!("the code under test sent no request"))
}

/// Waits for the next request and answers what `respond` makes of it; `None` once the
/// client is gone.
pub async fn answer_with(
    handle: &mut ApiHandle,
    respond: impl FnOnce(&SeenRequest) -> (StatusCode, Value),
) -> Option<SeenRequest> {
    let (request, send) = handle.next_request().await?;
    let (parts, body) = request.into_parts();
    let bytes = body
        .collect_bytes()
        .await
        .unwrap_or_else(|e| panic!("request body unreadable: {e}"));
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("request body not JSON: {e}"))
    };
    let seen = SeenRequest {
        method: parts.method,
        uri: parts.uri.to_string(),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body,
    };
    let (status, reply) = respond(&seen);
    let response = Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&reply).unwrap_or_default()))
        .unwrap_or_else(|e| panic!("response: {e}"));
    send.send_response(response);
    Some(seen)
}

/// A `Status` body as the API server sends with an error code.
pub fn status_body(code: u16, reason: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": format!("{reason} (mocked)"),
        "reason": reason,
        "code": code,
    })
}

/// A reconcile context over `client` whose stores hold exactly the given objects, leading.
pub fn context(
    client: Client,
    policies: Vec<kpersist_crds::LivePatchPolicy>,
    nodes: Vec<k8s_openapi::api::core::v1::Node>,
    lpns: Vec<kpersist_crds::LivePatchNode>,
) -> std::sync::Arc<crate::controller::Context> {
    let (_, leading) = tokio::sync::watch::channel(true);
    context_leading(client, policies, nodes, lpns, leading)
}

/// Like [`context`], leading only while `leading` says so.
pub fn context_leading(
    client: Client,
    policies: Vec<kpersist_crds::LivePatchPolicy>,
    nodes: Vec<k8s_openapi::api::core::v1::Node>,
    lpns: Vec<kpersist_crds::LivePatchNode>,
    leading: tokio::sync::watch::Receiver<bool>,
) -> std::sync::Arc<crate::controller::Context> {
    std::sync::Arc::new(crate::controller::Context {
        events: crate::controller::events::EventPublisher::new(client.clone(), "test".into()),
        client,
        policies: store_of(policies),
        nodes: store_of(nodes),
        lpns: store_of(lpns),
        repositories: Default::default(),
        gates: Default::default(),
        metrics: crate::metrics::Metrics::new(),
        leading,
        namespace: "kpersist".into(),
    })
}

/// A reflector store holding `objects`.
pub fn store_of<K>(objects: Vec<K>) -> kube::runtime::reflector::Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, mut writer) = kube::runtime::reflector::store();
    for object in objects {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(object));
    }
    reader
}

/// A Node as the API serves it, with the fields trimming must drop.
pub fn node(
    name: &str,
    labels: serde_json::Value,
    ready: bool,
) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"big": "x"},
            "managedFields": [{"manager": "kubelet", "operation": "Update"}]
        },
        "spec": {"podCIDR": "10.0.0.0/24"},
        "status": {
            "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" },
                 "lastHeartbeatTime": "2026-01-01T00:00:00Z"},
                {"type": "MemoryPressure", "status": "False"}
            ],
            "images": [{"names": ["registry/app:1"], "sizeBytes": 123}],
            "nodeInfo": {
                "kernelVersion": "6.1.0-56-amd64", "architecture": "amd64", "bootID": "b",
                "containerRuntimeVersion": "c", "kubeProxyVersion": "", "kubeletVersion": "v1",
                "machineID": "m", "operatingSystem": "linux", "osImage": "Debian", "systemUUID": "u"
            }
        }
    }))
    .unwrap()
}
