//! The controller's API calls against a scripted API server (a `tower_test` mock): creating
//! and adopting the object, and server-side apply of status after a reconcile.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kpersist_crds::{ConditionStatus, NodeError, NodeErrorReason};
use kpersist_kmod::kernel::SimKernel;
use kube::client::Body;
use serde_json::Value;

use super::*;
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::patcher::Patcher;
use crate::state::StateDir;

/// One request the mocked API server received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    body: Value,
}

/// A controller whose API server answers with `respond`, recording every request.
fn controller(
    dir: &std::path::Path,
    respond: impl Fn(&Seen) -> (StatusCode, Value) + Send + 'static,
) -> (NodeController<SimKernel>, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((request, reply)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let request = Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (status, answer) = respond(&request);
            log.lock().unwrap().push(request);
            let body = Body::from(serde_json::to_vec(&answer).unwrap_or_default());
            reply.send_response(Response::builder().status(status).body(body).unwrap());
        }
    });
    let sim = SimKernel::new("6.1.0-56-amd64", "abcd");
    let state = StateDir::open(dir).unwrap();
    let patcher = Patcher::new(sim, state, Fetcher::new(), Duration::from_millis(1));
    let engine = Engine::new(patcher, Metrics::new().unwrap());
    let client = kube::Client::new(service, "default");
    (NodeController::new(client, "node-a".into(), engine), seen)
}

fn node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "uid": "uid-1"}})
}

fn lpn(owners: Value) -> Value {
    json!({
        "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchNode",
        "metadata": {"name": "node-a", "generation": 7, "ownerReferences": owners},
        "spec": {},
    })
}

fn not_found() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

#[tokio::test]
async fn creates_the_object_owned_by_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let (c, seen) = controller(dir.path(), |req| {
        match (req.method.as_str(), req.uri.as_str()) {
            ("GET", uri) if uri.starts_with("/api/v1/nodes/node-a") => (StatusCode::OK, node()),
            ("GET", _) => (StatusCode::NOT_FOUND, not_found()),
            ("POST", _) => (StatusCode::CREATED, req.body.clone()),
            _ => (StatusCode::BAD_REQUEST, Value::Null),
        }
    });
    c.ensure_object().await.unwrap();
    let seen = seen.lock().unwrap();
    let create = seen.iter().find(|r| r.method == "POST").expect("a create");
    assert!(
        create
            .uri
            .starts_with("/apis/kpersist.io/v1alpha1/livepatchnodes?"),
        "{}",
        create.uri
    );
    assert!(
        create.uri.contains("fieldManager=kpersist-agent"),
        "{}",
        create.uri
    );
    let owner = &create.body["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["uid"].as_str()),
        (Some("Node"), Some("uid-1"))
    );
}

#[tokio::test]
async fn adopts_an_existing_object_keeping_other_owners() {
    let dir = tempfile::tempdir().unwrap();
    let other = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "uid-x"}]);
    let existing = lpn(other);
    let (c, seen) = controller(dir.path(), move |req| match req.method.as_str() {
        "GET" if req.uri.starts_with("/api/v1/nodes") => (StatusCode::OK, node()),
        "GET" | "PATCH" => (StatusCode::OK, existing.clone()),
        _ => (StatusCode::BAD_REQUEST, Value::Null),
    });
    c.ensure_object().await.unwrap();
    let seen = seen.lock().unwrap();
    let patch = seen
        .iter()
        .find(|r| r.method == "PATCH")
        .expect("an adopting patch");
    let owners = patch.body["metadata"]["ownerReferences"]
        .as_array()
        .unwrap();
    let kinds: Vec<&str> = owners.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds, vec!["ConfigMap", "Node"]);
    assert!(!seen.iter().any(|r| r.method == "POST"));
}

#[tokio::test]
async fn status_is_applied_once_with_the_generation_acted_on() {
    let dir = tempfile::tempdir().unwrap();
    let (c, seen) = controller(dir.path(), |_| (StatusCode::OK, lpn(json!([]))));
    let object: LivePatchNode = serde_json::from_value(lpn(json!([]))).unwrap();
    let status = c.reconcile(&object, None).await.unwrap();
    assert_eq!(status.state, Some(NodePatchState::Idle));
    assert_eq!(status.observed_generation, Some(7));
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        let write = &seen[0];
        assert_eq!(write.method, "PATCH");
        assert!(
            write.uri.contains("/livepatchnodes/node-a/status?"),
            "{}",
            write.uri
        );
        assert!(
            write.uri.contains("fieldManager=kpersist-agent") && write.uri.contains("force=true"),
            "{}",
            write.uri
        );
        assert_eq!(write.body["status"]["state"], "Idle");
        assert_eq!(write.body["kind"], "LivePatchNode");
    }
    // The same object again (our own write coming back through the watch): nothing to say.
    let again = c.reconcile(&object, Some(&status)).await.unwrap();
    assert!(same_status(&again, &status));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn timestamps_alone_do_not_make_a_new_status() {
    let a = LivePatchNodeStatus {
        state: Some(NodePatchState::Failed),
        last_error: Some(NodeError {
            reason: NodeErrorReason::ReleaseRefused,
            message: "m".into(),
            release: None,
            at: Some("t1".into()),
        }),
        ..LivePatchNodeStatus::default()
    };
    let mut b = a.clone();
    b.last_error.as_mut().unwrap().at = Some("t2".into());
    assert!(same_status(&a, &b));
    b.state = Some(NodePatchState::Applied);
    assert!(!same_status(&a, &b));
}

#[tokio::test]
async fn kernel_reads_write_status_only_when_something_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (c, seen) = controller(dir.path(), |_| (StatusCode::OK, lpn(json!([]))));
    let object: LivePatchNode = serde_json::from_value(lpn(json!([]))).unwrap();
    let status = c.reconcile(&object, None).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
    // An idle node: the periodic read finds nothing new and writes nothing.
    let same = c.observed_status(Some(&status), true).await.unwrap();
    assert!(same_status(&same, &status));
    assert_eq!(seen.lock().unwrap().len(), 1, "an idle read must not write");

    // The livepatch directory cannot be read: Ready goes False once, with the reason.
    let sim = c.engine.patcher().kernel.clone();
    sim.set_livepatch_unreadable(true);
    let unready = c.observed_status(Some(&same), true).await.unwrap();
    let ready = |s: &LivePatchNodeStatus| {
        let c = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        (c.status, c.reason.clone())
    };
    assert_eq!(
        ready(&unready),
        (ConditionStatus::False, "KernelUnreadable".into())
    );
    assert_eq!(unready.state, status.state, "the rest of the status stays");
    assert_eq!(seen.lock().unwrap().len(), 2);
    c.observed_status(Some(&unready), true).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2, "unchanged: no second write");
    {
        let seen = seen.lock().unwrap();
        let ready = &seen[1].body["status"]["conditions"][0];
        assert_eq!(ready["reason"], "KernelUnreadable");
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("/sys/kernel/livepatch"),
            "{ready}"
        );
    }

    // Readable again: Ready True again, written once.
    sim.set_livepatch_unreadable(false);
    let back = c.observed_status(Some(&unready), true).await.unwrap();
    assert_eq!(ready(&back), (ConditionStatus::True, "AgentRunning".into()));
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[test]
fn reads_that_would_fail_a_request_for_good_outlast_an_api_server_still_syncing_rbac() {
    let api = |code: u16| {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("", "").with_code(code),
        ))
    };
    for code in [403, 409, 429, 500, 503] {
        assert!(is_transient_or_unsynced(&api(code)), "{code}");
    }
    for code in [400, 401, 404, 422] {
        assert!(!is_transient_or_unsynced(&api(code)), "{code}");
    }
    assert!(!is_transient(&api(403)), "other calls take a 403 as final");
}
