//! A node agent's controller as it runs in a cluster, minus the cluster: a mocked API server
//! that serves one LivePatchPolicy (`fleet`) and takes status writes, and a loopback HTTP
//! repository whose index is signed by the policy's key and which counts module requests.

#![allow(dead_code)]
// Test support: a failed unwrap is the test's report (clippy.toml exempts #[test]
// functions only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use http::{Request, Response, StatusCode};
use kpersist_agent::controller::NodeController;
use kpersist_agent::engine::Engine;
use kpersist_agent::fetch::Fetcher;
use kpersist_crds::{DesiredPatch, LivePatchNode, LivePatchNodeStatus, PatchAction, PatchRelease};
use kpersist_kmod::kernel::SimKernel;
use kpersist_kmod::repository::{Index, Release, sha256_hex};
use kpersist_kmod::signing::PrivateKey;
use kube::client::Body;
use serde_json::{Value, json};

/// The policy every node spec names.
pub const POLICY: &str = "fleet";

/// What the repository serves and how often its modules were asked for.
pub struct Repository {
    /// `repository.url` of the policy, ending in `/`.
    pub url: String,
    /// Requests for anything under `modules/`.
    pub module_requests: Arc<AtomicUsize>,
    /// Requests for `index.json`.
    pub index_requests: Arc<AtomicUsize>,
    /// The release each module is published as, by version.
    pub releases: Vec<PatchRelease>,
    /// The publisher's key.
    pub key: PrivateKey,
}

#[derive(Clone)]
struct Files {
    index: Vec<u8>,
    signature: Vec<u8>,
    modules: Vec<(String, Vec<u8>)>,
    module_requests: Arc<AtomicUsize>,
    index_requests: Arc<AtomicUsize>,
}

/// Publishes each `(module file bytes, module name)` as versions 1, 2, ... for the kernel
/// `kernel_release`/`build_id`, signs the index with a new key and serves it on 127.0.0.1.
pub async fn serve_repository(
    modules: &[(Vec<u8>, &str)],
    kernel_release: &str,
    build_id: &str,
) -> Repository {
    let mut index = Index::empty("2026-01-01T00:00:00Z".parse().unwrap());
    let mut files = Vec::new();
    for (i, (bytes, name)) in modules.iter().enumerate() {
        let sha256 = sha256_hex(bytes);
        let release = Release {
            kernel_release: kernel_release.into(),
            build_id: build_id.into(),
            version: i as u64 + 1,
            module: format!("modules/{sha256}.ko"),
            sha256: sha256.clone(),
            size: bytes.len() as u64,
            module_name: (*name).into(),
            cves: vec!["CVE-2024-1086".into()],
            channels: vec!["stable".into()],
            published: "2026-01-01T00:00:00Z".into(),
            yanked: None,
        };
        index.add_release(release).unwrap();
        files.push((format!("{sha256}.ko"), bytes.clone()));
    }
    // A fixed signing time keeps the serial, and so the catalogue's messages, the same on
    // every run; the agent does not refuse an expired index (the operator reports it).
    index.refresh(
        "2026-03-01T00:00:00Z".parse().unwrap(),
        kpersist_kmod::repository::DEFAULT_VALIDITY,
    );
    let key = PrivateKey::generate();
    let bytes = index.to_json_bytes();
    let module_requests = Arc::new(AtomicUsize::new(0));
    let index_requests = Arc::new(AtomicUsize::new(0));
    let served = Files {
        signature: key.sign_to_base64_line(&bytes).into_bytes(),
        index: bytes,
        modules: files,
        module_requests: module_requests.clone(),
        index_requests: index_requests.clone(),
    };
    let app = Router::new()
        .route(
            "/repo/index.json",
            get(|State(f): State<Files>| async move {
                f.index_requests.fetch_add(1, Ordering::SeqCst);
                f.index
            }),
        )
        .route(
            "/repo/index.json.sig",
            get(|State(f): State<Files>| async move { f.signature }),
        )
        .route("/repo/modules/{file}", get(module))
        .with_state(served);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/repo/");
    let releases = index
        .releases
        .iter()
        .map(|r| PatchRelease {
            id: r.id(),
            version: r.version,
            kernel_release: r.kernel_release.clone(),
            build_id: r.build_id.clone(),
            module_name: r.module_name.clone(),
            module_url: r.module_url(&url),
            sha256: r.sha256.clone(),
            size: r.size,
            cves: r.cves.clone(),
        })
        .collect();
    Repository {
        url,
        module_requests,
        index_requests,
        releases,
        key,
    }
}

async fn module(
    State(files): State<Files>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Result<Vec<u8>, StatusCode> {
    files.module_requests.fetch_add(1, Ordering::SeqCst);
    files
        .modules
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, bytes)| bytes.clone())
        .ok_or(StatusCode::NOT_FOUND)
}

/// The policy `fleet` trusting `repo`'s key inline, at `repo.url`.
pub fn policy_json(repo: &Repository) -> Value {
    json!({
        "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchPolicy",
        "metadata": {"name": POLICY},
        "spec": {"repository": {
            "url": repo.url, "channel": "stable",
            "trustedKeys": [repo.key.public_key().to_base64_line()],
        }},
    })
}

/// A controller of node `node-a` over `engine`, whose API server serves `policy` (or 404
/// without one) and accepts status writes, which it records.
pub fn controller(
    engine: Engine<SimKernel>,
    policy: Option<Value>,
) -> (NodeController<SimKernel>, Arc<Mutex<Vec<Value>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let writes = Arc::new(Mutex::new(Vec::new()));
    let log = writes.clone();
    tokio::spawn(async move {
        while let Some((request, reply)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let uri = parts.uri.to_string();
            let (status, answer) = if uri.contains("/livepatchpolicies/") {
                match &policy {
                    Some(p) => (StatusCode::OK, p.clone()),
                    None => (StatusCode::NOT_FOUND, not_found()),
                }
            } else {
                log.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
                (StatusCode::OK, node_object(None))
            };
            let body = Body::from(serde_json::to_vec(&answer).unwrap());
            reply.send_response(Response::builder().status(status).body(body).unwrap());
        }
    });
    let client = kube::Client::new(service, "default");
    // Two quick retries of a failed index fetch, where the agent waits up to two minutes.
    let quick = backon::ExponentialBuilder::new()
        .with_min_delay(std::time::Duration::from_millis(10))
        .with_max_times(2);
    let controller = NodeController::new(client, "node-a".into(), engine)
        .with_fetcher(Fetcher::with_retry(quick));
    (controller, writes)
}

fn not_found() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound",
           "code": 404, "message": "not found"})
}

fn node_object(desired: Option<&DesiredPatch>) -> Value {
    json!({
        "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchNode",
        "metadata": {"name": "node-a", "generation": 3},
        "spec": {"desired": desired},
    })
}

/// The node's object with `spec.desired` asking to apply `release` for policy `fleet`.
pub fn node_asking_for(release: PatchRelease) -> LivePatchNode {
    node_asking_to(PatchAction::Apply, release, 3)
}

/// The node's object of `generation` with `spec.desired` asking to `action` `release`.
pub fn node_asking_to(
    action: PatchAction,
    release: PatchRelease,
    generation: i64,
) -> LivePatchNode {
    let desired = DesiredPatch {
        policy: POLICY.into(),
        action,
        release: Some(release),
        previous: None,
        wave: Some(1),
        transition_timeout: "300ms".into(),
        kmsg_checks: true,
        probation: "1h".into(),
        replace_foreign: false,
        asked_at: None,
        repository: None,
    };
    let mut object = node_object(Some(&desired));
    object["metadata"]["generation"] = json!(generation);
    serde_json::from_value(object).unwrap()
}

/// Runs one reconcile of `node` and returns the status it ended with.
pub async fn reconcile(
    controller: &NodeController<SimKernel>,
    node: &LivePatchNode,
) -> LivePatchNodeStatus {
    controller.reconcile(node, None).await.unwrap()
}
