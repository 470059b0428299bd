use super::*;
use crate::fixtures::{answer, answer_with, mock_client, status_body};
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

/// Answers an acquisition of a missing Lease: the GET finds none, the create succeeds.
async fn grant(handle: &mut crate::fixtures::ApiHandle) {
    answer(handle, StatusCode::NOT_FOUND, status_body(404, "NotFound")).await;
    answer(
        handle,
        StatusCode::CREATED,
        lease_json(Some("pod-a"), "2026-01-01T00:00:00.000000Z"),
    )
    .await;
}

/// Answers renewals for as long as the client sends them: the GET shows this replica's
/// Lease, the replace succeeds. Returns how many renewals were written.
async fn renew_forever(mut handle: crate::fixtures::ApiHandle) -> usize {
    let mut written = 0;
    while let Some(seen) = answer_with(&mut handle, |_| {
        (
            StatusCode::OK,
            lease_json(Some("pod-a"), "2026-01-01T00:00:00.000000Z"),
        )
    })
    .await
    {
        if seen.method == Method::PUT {
            written += 1;
        }
    }
    written
}

#[test]
fn the_default_timings_step_down_before_a_takeover() {
    let config = config();
    assert!(config.retry_period < config.renew_deadline);
    assert!(config.renew_deadline < config.lease_duration);
}

#[tokio::test(start_paused = true)]
async fn renewals_that_succeed_keep_the_lead() {
    let (client, mut handle) = mock_client();
    let mut elector = LeaderElector::new(client, config());
    let server = tokio::spawn(async move {
        grant(&mut handle).await;
        renew_forever(handle).await
    });
    assert!(elector.try_acquire_or_renew().await.unwrap());
    let held = tokio::time::timeout(Duration::from_secs(60), elector.hold()).await;
    assert!(held.is_err(), "stepped down: {held:?}");
    drop(elector);
    let renewals = server.await.unwrap();
    assert!(renewals >= 25, "{renewals} renewals in a minute");
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_hangs_steps_down_at_the_deadline() {
    let (client, mut handle) = mock_client();
    let mut elector = LeaderElector::new(client, config());
    let server = tokio::spawn(async move {
        grant(&mut handle).await;
        // The first renewal's read is never answered.
        let pending = handle.next_request().await;
        std::future::pending::<()>().await;
        drop(pending);
    });
    let config = config();
    let acquiring = Instant::now();
    assert!(elector.try_acquire_or_renew().await.unwrap());
    let step = tokio::time::timeout(config.lease_duration, elector.hold()).await;
    assert_eq!(step, Ok(StepDown::DeadlinePassed), "still leading");
    let led = acquiring.elapsed();
    assert!(led <= config.renew_deadline, "led for {led:?}");
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_step_down_before_the_lease_could_be_taken_over() {
    let (client, mut handle) = mock_client();
    let mut elector = LeaderElector::new(client, config());
    let server = tokio::spawn(async move {
        grant(&mut handle).await;
        let mut tries = 0;
        while answer_with(&mut handle, |_| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                status_body(500, "InternalError"),
            )
        })
        .await
        .is_some()
        {
            tries += 1;
        }
        tries
    });
    let acquiring = Instant::now();
    assert!(elector.try_acquire_or_renew().await.unwrap());
    assert_eq!(elector.hold().await, StepDown::DeadlinePassed);
    let led = acquiring.elapsed();
    assert!(led <= config().renew_deadline, "led for {led:?}");
    drop(elector);
    let tries = server.await.unwrap();
    assert!(tries >= 3, "gave up after {tries} renewals");
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_by_another_replica_is_lost_at_once() {
    let (client, mut handle) = mock_client();
    let mut elector = LeaderElector::new(client, config());
    let server = tokio::spawn(async move {
        grant(&mut handle).await;
        answer(
            &mut handle,
            StatusCode::OK,
            lease_json(Some("pod-b"), "2026-01-01T00:00:30.000000Z"),
        )
        .await;
    });
    assert!(elector.try_acquire_or_renew().await.unwrap());
    assert_eq!(elector.hold().await, StepDown::Lost);
    server.await.unwrap();
}

#[tokio::test]
async fn holding_a_lease_never_acquired_returns_at_once() {
    let (client, _handle) = mock_client();
    let mut elector = LeaderElector::new(client, config());
    assert_eq!(elector.hold().await, StepDown::DeadlinePassed);
}

#[tokio::test(start_paused = true)]
async fn a_slow_acquisition_counts_from_its_start_and_renews_at_once() {
    let (client, mut handle) = mock_client();
    let mut elector = LeaderElector::new(client, config());
    let server = tokio::spawn(async move {
        answer(
            &mut handle,
            StatusCode::NOT_FOUND,
            status_body(404, "NotFound"),
        )
        .await;
        // The create takes 9 of the 10 seconds of the renew deadline.
        tokio::time::sleep(Duration::from_secs(9)).await;
        answer(
            &mut handle,
            StatusCode::CREATED,
            lease_json(Some("pod-a"), "2026-01-01T00:00:00.000000Z"),
        )
        .await;
        let renewal = tokio::time::Instant::now();
        answer(
            &mut handle,
            StatusCode::OK,
            lease_json(Some("pod-a"), "2026-01-01T00:00:00.000000Z"),
        )
        .await;
        (renewal, renew_forever(handle).await)
    });
    let acquiring = Instant::now();
    elector.acquire().await.unwrap();
    let held = tokio::time::timeout(Duration::from_secs(30), elector.hold()).await;
    assert!(held.is_err(), "stepped down: {held:?}");
    drop(elector);
    let (renewal, renewals) = server.await.unwrap();
    assert!(
        renewal.duration_since(acquiring) < config().renew_deadline,
        "first renewal {:?} after the acquisition started",
        renewal.duration_since(acquiring)
    );
    assert!(renewals >= 10, "{renewals} renewals");
}

#[tokio::test(start_paused = true)]
async fn an_acquisition_that_hangs_is_abandoned_and_tried_again() {
    let (client, mut handle) = mock_client();
    let mut elector = LeaderElector::new(client, config());
    let server = tokio::spawn(async move {
        let hung = handle.next_request().await;
        grant(&mut handle).await;
        drop(hung);
    });
    let acquiring = Instant::now();
    elector.acquire().await.unwrap();
    assert!(acquiring.elapsed() >= config().renew_deadline);
    server.await.unwrap();
}
