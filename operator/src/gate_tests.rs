use super::*;
use kpersist_crds::ComparisonOperator;
use serde_json::json;

fn gate(operator: ComparisonOperator, threshold: f64, fail_on_empty: bool) -> PrometheusGate {
    PrometheusGate {
        url: "http://prometheus:9090".into(),
        query: "sum(rate(errors[5m]))".into(),
        operator,
        threshold,
        fail_on_empty,
        interval: "30s".into(),
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
        GateVerdict::Pass => panic!("a sample above the threshold passed"),
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
fn empty_results_pass_unless_fail_on_empty() {
    assert_eq!(
        verdict(&gate(ComparisonOperator::Equal, 0.0, false), &vector(&[])),
        Ok(GateVerdict::Pass)
    );
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
fn state_fails_after_repeated_errors_and_a_failure_sticks() {
    let now = jiff::Timestamp::UNIX_EPOCH;
    let mut state = GateState::default();
    state.record(Err("refused".into()), now);
    state.record(Err("refused".into()), now);
    assert_eq!(state.verdict, None);
    state.record(Err("refused".into()), now);
    assert!(matches!(state.verdict, Some(GateVerdict::Fail(_))));
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
