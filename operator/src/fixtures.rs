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
    let (request, send) = handle
        .next_request()
        .await
        .unwrap_or_else(|| panic!("the code under test sent no request"));
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
    let response = Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&reply).unwrap_or_default()))
        .unwrap_or_else(|e| panic!("response: {e}"));
    send.send_response(response);
    seen
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
