use super::*;
use kpersist_crds::ComparisonOperator;
use serde_json::json;
use std::sync::{Arc, Mutex};

fn gate(operator: ComparisonOperator, threshold: f64, fail_on_empty: bool) -> PrometheusGate {
    PrometheusGate {
        url: "http://prometheus:9090".into(),
        query: "sum(rate(errors[5m]))".into(),
        operator,
        threshold,
        fail_on_empty,
        interval: "30s".into(),
        timeout: "10s".into(),
        ca_bundle: None,
        headers: Vec::new(),
    }
}

fn response(value: serde_json::Value) -> QueryResponse {
    serde_json::from_value(value).unwrap()
}

fn vector(values: &[&str]) -> QueryResponse {
    let result: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"metric": {"node": format!("n{i}")}, "value": [1.0, v]}))
        .collect();
    response(json!({"status": "success", "data": {"resultType": "vector", "result": result}}))
}

#[test]
fn every_sample_must_hold() {
    let g = gate(ComparisonOperator::LessThan, 1.0, false);
    assert_eq!(verdict(&g, &vector(&["0.1", "0.5"])), Ok(GateVerdict::Pass));
    let failed = verdict(&g, &vector(&["0.1", "2"])).unwrap();
    match failed {
        GateVerdict::Fail(message) => assert!(message.contains("n1"), "{message}"),
        other => panic!("a sample above the threshold gave {other:?}"),
    }
}

#[test]
fn nan_fails_and_garbage_is_an_error() {
    let g = gate(ComparisonOperator::LessThan, 1.0, false);
    assert!(matches!(
        verdict(&g, &vector(&["NaN"])),
        Ok(GateVerdict::Fail(_))
    ));
    assert!(verdict(&g, &vector(&["abc"])).is_err());
}

#[test]
fn empty_results_are_inconclusive_unless_fail_on_empty() {
    assert!(matches!(
        verdict(&gate(ComparisonOperator::Equal, 0.0, false), &vector(&[])),
        Ok(GateVerdict::Inconclusive(ref why)) if why.contains("or vector(0)")
    ));
    assert!(matches!(
        verdict(&gate(ComparisonOperator::Equal, 0.0, true), &vector(&[])),
        Ok(GateVerdict::Fail(_))
    ));
}

#[test]
fn scalars_and_matrices_compare_too() {
    let g = gate(ComparisonOperator::GreaterThanOrEqual, 0.99, false);
    let scalar = response(
        json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "0.995"]}}),
    );
    assert_eq!(verdict(&g, &scalar), Ok(GateVerdict::Pass));
    let matrix = response(
        json!({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {}, "values": [[1.0, "1"], [2.0, "0.5"]]}
        ]}}),
    );
    assert!(matches!(verdict(&g, &matrix), Ok(GateVerdict::Fail(_))));
}

#[test]
fn prometheus_errors_are_reported() {
    let g = gate(ComparisonOperator::LessThan, 1.0, false);
    let error =
        response(json!({"status": "error", "errorType": "bad_data", "error": "parse error"}));
    let message = verdict(&g, &error).unwrap_err();
    assert!(message.contains("parse error"), "{message}");
}

#[test]
fn errors_take_a_pass_back_and_repeated_make_the_gate_inconclusive() {
    let now = jiff::Timestamp::UNIX_EPOCH;
    let mut state = GateState::default();
    state.record(Ok(GateVerdict::Pass), now);
    state.record(Err("refused".into()), now);
    assert_eq!(
        state.verdict, None,
        "a pass is not kept over a failed query"
    );
    state.record(Err("refused".into()), now);
    assert_eq!(state.verdict, None);
    state.record(Err("refused".into()), now);
    assert!(
        matches!(state.verdict, Some(GateVerdict::Inconclusive(ref why)) if why.contains("refused")),
        "{:?}",
        state.verdict
    );
    state.record(Err("refused again".into()), now);
    assert!(
        matches!(state.verdict, Some(GateVerdict::Inconclusive(_))),
        "an inconclusive gate stays so through further errors"
    );
    state.record(Ok(GateVerdict::Pass), now);
    assert_eq!(state.verdict, Some(GateVerdict::Pass), "an answer ends it");
}

#[test]
fn one_error_leaves_an_empty_result_inconclusive() {
    let now = jiff::Timestamp::UNIX_EPOCH;
    let mut state = GateState::default();
    state.record(Ok(GateVerdict::Inconclusive("no samples".into())), now);
    state.record(Err("refused".into()), now);
    assert_eq!(
        state.verdict,
        Some(GateVerdict::Inconclusive("no samples".into())),
        "the held wave does not flap back to baking"
    );
}

#[test]
fn a_failure_sticks() {
    let now = jiff::Timestamp::UNIX_EPOCH;
    let mut state = GateState::default();
    state.record(Ok(GateVerdict::Fail("up = 0".into())), now);
    state.record(Ok(GateVerdict::Pass), now);
    assert!(
        matches!(state.verdict, Some(GateVerdict::Fail(_))),
        "a failed bake stays failed"
    );
}

#[test]
fn a_new_bake_starts_a_fresh_state() {
    let states = GateStates::default();
    let mut state = states.take("web", Some("t1"));
    state.record(
        Ok(GateVerdict::Fail("x".into())),
        jiff::Timestamp::UNIX_EPOCH,
    );
    states.put("web", state);
    assert!(states.take("web", Some("t1")).verdict.is_some());
    assert!(states.take("web", Some("t2")).verdict.is_none());
}

#[test]
fn due_after_the_interval() {
    let mut state = GateState::default();
    let t0 = jiff::Timestamp::UNIX_EPOCH;
    assert!(state.due(t0, Duration::from_secs(30)));
    state.record(Ok(GateVerdict::Pass), t0);
    let t1 = t0 + jiff::SignedDuration::from_secs(29);
    let t2 = t0 + jiff::SignedDuration::from_secs(30);
    assert!(!state.due(t1, Duration::from_secs(30)));
    assert!(state.due(t2, Duration::from_secs(30)));
}

/// A Prometheus stand-in on 127.0.0.1 answering every query with `body` after `delay`;
/// returns its URL and, per query, its query string and its `X-Scope-OrgID` header.
async fn fake_prometheus(
    body: serde_json::Value,
    delay: Duration,
) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/api/v1/query",
        axum::routing::get(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap| {
                let body = body.clone();
                let log = log.clone();
                async move {
                    let org = headers
                        .get("x-scope-orgid")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    log.lock()
                        .unwrap()
                        .push((uri.query().unwrap_or_default().to_string(), org));
                    tokio::time::sleep(delay).await;
                    body.to_string()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/"), seen)
}

#[tokio::test]
async fn queries_prometheus_over_http() {
    crate::install_crypto_provider();
    let (url, seen) = fake_prometheus(
        json!({"status": "success", "data": {
            "resultType": "vector",
            "result": [{"metric": {"job": "web"}, "value": [1.0, "3"]}]
        }}),
        Duration::ZERO,
    )
    .await;
    let mut g = gate(ComparisonOperator::LessThan, 1.0, false);
    g.url = url;
    let client = client_for(&g).unwrap();
    let headers = [header_of("X-Scope-OrgID", "tenant-a", false).unwrap()];
    let verdict = query(&client, &g, &headers).await.unwrap();
    assert!(
        matches!(verdict, GateVerdict::Fail(ref m) if m.contains("job")),
        "{verdict:?}"
    );
    let queries = seen.lock().unwrap().clone();
    assert_eq!(queries.len(), 1);
    assert!(
        queries[0].0.starts_with("query=sum%28rate%28errors"),
        "{queries:?}"
    );
    assert_eq!(queries[0].1, "tenant-a", "the header reaches Prometheus");
}

#[tokio::test]
async fn a_slow_prometheus_is_an_error_after_the_timeout() {
    crate::install_crypto_provider();
    let answer = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
    let (url, _) = fake_prometheus(answer, Duration::from_secs(5)).await;
    let mut g = gate(ComparisonOperator::LessThan, 1.0, false);
    g.url = url;
    g.timeout = "200ms".into();
    let started = std::time::Instant::now();
    let error = query(&client_for(&g).unwrap(), &g, &[]).await.unwrap_err();
    assert!(error.contains("did not answer within"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout was not applied"
    );
}

#[test]
fn a_header_value_that_cannot_be_sent_is_refused_without_echoing_it() {
    let error = header_of("Authorization", "Bearer s3cret\r\nX: y", true).unwrap_err();
    assert!(!error.contains("s3cret"), "{error}");
    let (_, value) = header_of("Authorization", "Bearer s3cret", true).unwrap();
    assert!(value.is_sensitive());
    assert!(!format!("{value:?}").contains("s3cret"));
}

#[test]
fn a_ca_bundle_that_is_not_pem_is_named() {
    let mut g = gate(ComparisonOperator::LessThan, 1.0, false);
    g.url = "https://prometheus:9090".into();
    g.ca_bundle = Some("not a certificate".into());
    let error = client_for(&g).unwrap_err();
    assert!(error.contains("health.prometheus.caBundle"), "{error}");
}

#[test]
fn a_secret_value_is_read_by_key_and_trimmed() {
    use k8s_openapi::ByteString;
    let from = SecretKeyRef {
        namespace: "monitoring".into(),
        name: "gate".into(),
        key: "token".into(),
    };
    let secret = Secret {
        data: Some(
            [("token".to_string(), ByteString(b"Bearer abc\n".to_vec()))]
                .into_iter()
                .collect(),
        ),
        ..Secret::default()
    };
    let field = "health.prometheus.headers[0].valueFrom";
    assert_eq!(secret_value(&secret, &from, field).unwrap(), "Bearer abc");
    let other = SecretKeyRef {
        key: "password".into(),
        ..from
    };
    let error = secret_value(&secret, &other, field).unwrap_err();
    assert!(
        error.contains("monitoring/gate") && error.contains("password"),
        "{error}"
    );
}

#[tokio::test]
async fn an_unreachable_prometheus_is_an_error_not_a_verdict() {
    crate::install_crypto_provider();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut g = gate(ComparisonOperator::LessThan, 1.0, false);
    g.url = format!("http://{addr}");
    let error = query(&client_for(&g).unwrap(), &g, &[]).await.unwrap_err();
    assert!(error.contains(&addr.to_string()), "{error}");
}
