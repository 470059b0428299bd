//! Helpers shared by the fleet suite's tests: sample objects, one-at-a-time turns, and
//! assertions on the API server's refusals.

use kpersist_crds::{LivePatchPolicy, LivePatchPolicySpec, RepositorySpec, RolloutSpec};

/// Turns: one test at a time owns the machine's cores.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for this test's turn; the turn ends when the guard is dropped.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    TURN.lock().await
}

/// A policy that passes the schema, with every optional part at its default.
pub fn sample_policy(name: &str) -> LivePatchPolicy {
    let spec = LivePatchPolicySpec {
        node_selector: Default::default(),
        repository: serde_json::from_value::<RepositorySpec>(serde_json::json!({
            "url": "http://127.0.0.1:9/repo",
        }))
        .expect("repository spec with defaults"),
        rollout: RolloutSpec::default(),
        health: Default::default(),
    };
    LivePatchPolicy::new(name, spec)
}

/// The status code and message of an API refusal; panics when `result` is not one.
fn refusal<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message.clone()),
        other => panic!("{what}: expected the API server to refuse, got {other:?}"),
    }
}

/// Asserts `result` is a 403 Forbidden from RBAC.
pub fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    let (code, message) = refusal(what, result);
    assert_eq!(
        code, 403,
        "{what}: expected 403 Forbidden, got {code}: {message}"
    );
}

/// Asserts `result` is a 422 Invalid from schema validation and returns its message.
pub fn invalid<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> String {
    let (code, message) = refusal("invalid object", result);
    assert_eq!(code, 422, "expected 422 Invalid, got {code}: {message}");
    message
}
