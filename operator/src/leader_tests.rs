use super::*;
use crate::fixtures::{answer, mock_client, status_body};
use http::{Method, StatusCode};
use serde_json::json;

fn config() -> LeaseConfig {
    LeaseConfig::new(
        "kpersist-operator".into(),
        "kpersist".into(),
        "pod-a".into(),
    )
}

fn lease_json(holder: Option<&str>, renew: &str) -> serde_json::Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "kpersist-operator", "namespace": "kpersist", "resourceVersion": "7"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "renewTime": renew,
            "leaseTransitions": 2
        }
    })
}

#[test]
fn claim_follows_the_holder_and_staleness() {
    let held = |who: &str| LeaseSpec {
        holder_identity: Some(who.into()),
        ..LeaseSpec::default()
    };
    assert_eq!(claim(None, "a", false), Claim::Create);
    assert_eq!(claim(Some(&held("a")), "a", false), Claim::Renew);
    assert_eq!(claim(Some(&held("b")), "a", false), Claim::Wait);
    assert_eq!(claim(Some(&held("b")), "a", true), Claim::TakeOver);
    assert_eq!(
        claim(Some(&LeaseSpec::default()), "a", false),
        Claim::TakeOver
    );
}

#[tokio::test]
async fn creates_a_missing_lease_and_leads() {
    let (client, mut handle) = mock_client();
    let mut elector = LeaderElector::new(client, config());
    let server = tokio::spawn(async move {
        let get = answer(
            &mut handle,
            StatusCode::NOT_FOUND,
            status_body(404, "NotFound"),
        )
        .await;
        assert_eq!(get.method, Method::GET);
        assert!(
            get.uri
                .contains("/namespaces/kpersist/leases/kpersist-operator"),
            "{}",
            get.uri
        );
        let post = answer(
            &mut handle,
            StatusCode::CREATED,
            lease_json(Some("pod-a"), "2026-01-01T00:00:00.000000Z"),
        )
        .await;
        assert_eq!(post.method, Method::POST);
        assert_eq!(post.body["spec"]["holderIdentity"], "pod-a");
        assert_eq!(post.body["spec"]["leaseDurationSeconds"], 15);
    });
    assert!(elector.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn waits_while_another_replica_renews() {
    let (client, mut handle) = mock_client();
    let mut elector = LeaderElector::new(client, config());
    let server = tokio::spawn(async move {
        let reply = lease_json(Some("pod-b"), "2026-01-01T00:00:00.000000Z");
        let get = answer(&mut handle, StatusCode::OK, reply).await;
        assert_eq!(get.method, Method::GET);
        // No write follows: the test ends with the handle dropped and nothing pending.
    });
    assert!(!elector.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn takes_over_a_lease_left_unrenewed_for_its_duration() {
    let (client, mut handle) = mock_client();
    let mut elector = LeaderElector::new(client, config());
    let frozen = lease_json(Some("pod-b"), "2026-01-01T00:00:00.000000Z");
    let server = tokio::spawn(async move {
        answer(&mut handle, StatusCode::OK, frozen.clone()).await;
        answer(&mut handle, StatusCode::OK, frozen.clone()).await;
        let put = answer(
            &mut handle,
            StatusCode::OK,
            lease_json(Some("pod-a"), "2026-01-01T00:00:20.000000Z"),
        )
        .await;
        assert_eq!(put.method, Method::PUT);
        assert_eq!(put.body["metadata"]["resourceVersion"], "7");
        assert_eq!(put.body["spec"]["holderIdentity"], "pod-a");
        assert_eq!(put.body["spec"]["leaseTransitions"], 3);
    });
    assert!(!elector.try_acquire_or_renew().await.unwrap());
    tokio::time::advance(Duration::from_secs(16)).await;
    assert!(elector.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn a_conflicting_write_is_a_loss_not_an_error() {
    let (client, mut handle) = mock_client();
    let mut elector = LeaderElector::new(client, config());
    let server = tokio::spawn(async move {
        answer(
            &mut handle,
            StatusCode::OK,
            lease_json(None, "2026-01-01T00:00:00.000000Z"),
        )
        .await;
        let put = answer(
            &mut handle,
            StatusCode::CONFLICT,
            status_body(409, "Conflict"),
        )
        .await;
        assert_eq!(put.method, Method::PUT);
    });
    assert!(!elector.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn release_clears_the_holder_only_when_it_is_us() {
    let (client, mut handle) = mock_client();
    let elector = LeaderElector::new(client, config());
    let releaser = elector.releaser();
    let server = tokio::spawn(async move {
        answer(
            &mut handle,
            StatusCode::OK,
            lease_json(Some("pod-a"), "2026-01-01T00:00:00.000000Z"),
        )
        .await;
        let put = answer(
            &mut handle,
            StatusCode::OK,
            lease_json(None, "2026-01-01T00:00:01.000000Z"),
        )
        .await;
        assert_eq!(put.method, Method::PUT);
        assert!(put.body["spec"]["holderIdentity"].is_null());
        answer(
            &mut handle,
            StatusCode::OK,
            lease_json(Some("pod-b"), "2026-01-01T00:00:00.000000Z"),
        )
        .await;
    });
    releaser.release().await.unwrap();
    // Held by someone else now: nothing is written.
    releaser.release().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_forbidden_lease_is_returned_not_retried() {
    let (client, mut handle) = mock_client();
    let mut elector = LeaderElector::new(client, config());
    let server = tokio::spawn(async move {
        answer(
            &mut handle,
            StatusCode::FORBIDDEN,
            status_body(403, "Forbidden"),
        )
        .await;
    });
    let error = elector.acquire().await.unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.is_forbidden()),
        "{error}"
    );
    server.await.unwrap();
}
