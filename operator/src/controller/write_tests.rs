use super::*;
use crate::fixtures::{answer, answer_with, mock_client, status_body};
use http::{Method, StatusCode};
use kpersist_crds::{PatchAction, PatchRelease};
use tokio::sync::watch;

fn desired() -> DesiredPatch {
    DesiredPatch {
        policy: "web".into(),
        action: PatchAction::Apply,
        release: Some(PatchRelease {
            id: "6.1.0-56-amd64/v2".into(),
            version: 2,
            kernel_release: "6.1.0-56-amd64".into(),
            build_id: "ab".into(),
            module_name: "lp_v2".into(),
            module_url: "http://repo/modules/x.ko".into(),
            sha256: "0".repeat(64),
            size: 10,
            cves: vec![],
        }),
        previous: None,
        wave: Some(1),
        transition_timeout: "60s".into(),
        kmsg_checks: true,
        probation: "1h".to_string(),
        replace_foreign: false,
        asked_at: None,
        repository: None,
    }
}

fn leading() -> watch::Receiver<bool> {
    watch::channel(true).1
}

fn write(node: &str, desired: Option<DesiredPatch>, version: Option<&str>) -> SpecWrite {
    SpecWrite {
        node: node.to_string(),
        desired,
        labels: None,
        resource_version: version.map(str::to_string),
    }
}

/// Checks that `seen` replaces `path` whole, on condition that the object is still at
/// `version` when one is given.
fn assert_replace(seen: &crate::fixtures::SeenRequest, path: &str, version: Option<&str>) {
    assert!(
        seen.uri.contains("fieldManager=kpersist-operator"),
        "{}",
        seen.uri
    );
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/json-patch+json")
    );
    let operations = usize::from(version.is_some()) + 1;
    assert_eq!(
        seen.body.as_array().map(Vec::len),
        Some(operations),
        "{}",
        seen.body
    );
    assert_eq!(seen.body[0]["op"], "add");
    assert_eq!(seen.body[0]["path"], path);
    if let Some(version) = version {
        assert_eq!(seen.body[1]["op"], "replace", "{}", seen.body);
        assert_eq!(seen.body[1]["path"], "/metadata/resourceVersion");
        assert_eq!(seen.body[1]["value"], version);
    }
}

fn conflict() -> serde_json::Value {
    status_body(409, "Conflict")
}

/// A LivePatchNode as the API answers a write.
fn lpn_reply(node: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchNode",
        "metadata": {"name": node}, "spec": {}
    })
}

#[tokio::test]
async fn desired_replaces_the_spec_on_condition_of_the_version_decided_on() {
    let (client, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        let seen = answer(&mut handle, StatusCode::OK, lpn_reply("n1")).await;
        assert_eq!(seen.method, Method::PATCH);
        assert!(
            seen.uri
                .starts_with("/apis/kpersist.io/v1alpha1/livepatchnodes/n1?"),
            "{}",
            seen.uri
        );
        assert_replace(&seen, "/spec", Some("41"));
        let desired = &seen.body[0]["value"]["desired"];
        assert_eq!(desired["release"]["id"], "6.1.0-56-amd64/v2");
        assert_eq!(desired["action"], "Apply");
    });
    let outcome = apply_desired(
        &client,
        &leading(),
        &write("n1", Some(desired()), Some("41")),
    )
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::Written);
    server.await.unwrap();
}

#[tokio::test]
async fn clearing_desired_applies_a_spec_without_it() {
    let (client, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        let seen = answer(&mut handle, StatusCode::OK, lpn_reply("n1")).await;
        assert_replace(&seen, "/spec", None);
        assert_eq!(seen.body[0]["value"], serde_json::json!({}));
    });
    let outcome = apply_desired(&client, &leading(), &write("n1", None, None))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Written);
    server.await.unwrap();
}

#[tokio::test]
async fn labels_go_with_the_spec_or_alone_and_other_labels_stay() {
    let (client, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        let seen = answer(&mut handle, StatusCode::OK, lpn_reply("n1")).await;
        assert_eq!(seen.body.as_array().map(Vec::len), Some(3), "{}", seen.body);
        assert_eq!(seen.body[0]["path"], "/spec");
        assert_eq!(seen.body[1]["op"], "add");
        assert_eq!(seen.body[1]["path"], "/metadata/labels");
        assert_eq!(seen.body[1]["value"]["kpersist.io/policy"], "web");
        assert_eq!(seen.body[2]["path"], "/metadata/resourceVersion");
        let seen = answer(&mut handle, StatusCode::OK, lpn_reply("n1")).await;
        assert_replace(&seen, "/metadata/labels", Some("42"));
        assert_eq!(seen.body[0]["value"]["kpersist.io/state"], "Failed");
        assert_eq!(seen.body[0]["value"]["team"], "infra");
    });
    let labels = |pairs: &[(&str, &str)]| -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut spec = write("n1", Some(desired()), Some("41"));
    spec.labels = Some(labels(&[("kpersist.io/policy", "web")]));
    let outcome = apply_desired(&client, &leading(), &spec).await.unwrap();
    assert_eq!(outcome, Outcome::Written);
    let alone = LabelWrite {
        node: "n1".into(),
        labels: labels(&[("kpersist.io/state", "Failed"), ("team", "infra")]),
        resource_version: Some("42".into()),
    };
    let outcome = apply_labels(&client, &leading(), &alone).await.unwrap();
    assert_eq!(outcome, Outcome::Written);
    server.await.unwrap();
}

#[tokio::test]
async fn status_goes_to_the_status_subresource() {
    let (client, mut handle) = mock_client();
    let status = LivePatchPolicyStatus {
        observed_generation: Some(3),
        ..LivePatchPolicyStatus::default()
    };
    let server = tokio::spawn(async move {
        let policy = serde_json::json!({
            "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchPolicy",
            "metadata": {"name": "web"},
            "spec": {"repository": {"url": "http://repo"}}
        });
        let seen = answer(&mut handle, StatusCode::OK, policy).await;
        assert_eq!(seen.method, Method::PATCH);
        assert!(
            seen.uri
                .starts_with("/apis/kpersist.io/v1alpha1/livepatchpolicies/web/status?"),
            "{}",
            seen.uri
        );
        assert_replace(&seen, "/status", Some("7"));
        assert_eq!(seen.body[0]["value"]["observedGeneration"], 3);
    });
    let outcome = apply_status(&client, &leading(), "web", Some("7"), &status)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Written);
    server.await.unwrap();
}

#[tokio::test]
async fn every_node_write_is_tried_and_a_failure_is_reported() {
    let (client, mut handle) = mock_client();
    let writes = three_writes();
    let server = tokio::spawn(async move {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let (request, send) = handle.next_request().await.unwrap();
            let node = request.uri().path().rsplit('/').next().unwrap().to_string();
            let response = if node == "n2" {
                http::Response::builder()
                    .status(StatusCode::FORBIDDEN)
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&status_body(403, "Forbidden")).unwrap(),
                    ))
            } else {
                http::Response::builder().body(kube::client::Body::from(
                    serde_json::to_vec(&lpn_reply(&node)).unwrap(),
                ))
            };
            send.send_response(response.unwrap());
            nodes.push(node);
        }
        nodes.sort();
        nodes
    });
    let error = apply_all_desired(&client, &leading(), &writes)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::NodeApply { node, .. } if node == "n2"),
        "{error}"
    );
    assert_eq!(error.metric_label(), "node_apply");
    assert_eq!(server.await.unwrap(), ["n1", "n2", "n3"]);
}

#[tokio::test]
async fn a_conflict_is_an_outcome_and_the_content_is_not_sent_again() {
    let (client, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        let seen = answer(&mut handle, StatusCode::CONFLICT, conflict()).await;
        assert_replace(&seen, "/spec", Some("41"));
        // Nothing follows: a refused write is decided again, not repeated.
        assert!(
            handle.next_request().await.is_none(),
            "the write was sent again"
        );
    });
    let outcome = apply_desired(
        &client,
        &leading(),
        &write("n1", Some(desired()), Some("41")),
    )
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::Conflict);
    drop(client);
    server.await.unwrap();
}

#[tokio::test]
async fn a_status_written_over_a_changed_policy_is_a_conflict() {
    let (client, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        let seen = answer(&mut handle, StatusCode::CONFLICT, conflict()).await;
        assert_replace(&seen, "/status", Some("7"));
    });
    let status = LivePatchPolicyStatus::default();
    let outcome = apply_status(&client, &leading(), "web", Some("7"), &status)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Conflict);
    server.await.unwrap();
}

#[tokio::test]
async fn conflicting_nodes_are_listed_and_the_others_written() {
    let (client, mut handle) = mock_client();
    let writes = three_writes();
    let server = tokio::spawn(async move {
        for _ in 0..3 {
            answer_with(&mut handle, |seen| {
                let node = seen
                    .uri
                    .split('?')
                    .next()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap();
                if node == "n1" || node == "n3" {
                    (StatusCode::CONFLICT, conflict())
                } else {
                    (StatusCode::OK, lpn_reply(node))
                }
            })
            .await
            .unwrap();
        }
    });
    let outcome = apply_all_desired(&client, &leading(), &writes)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        NodeWrites {
            written: 1,
            conflicts: vec!["n1".to_string(), "n3".to_string()],
            withheld: 0,
        }
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_replica_that_stopped_leading_sends_nothing() {
    let (client, mut handle) = mock_client();
    let (_lead, leading) = watch::channel(false);
    let writes = vec![
        write("n1", Some(desired()), Some("1")),
        write("n2", None, Some("2")),
    ];
    let nodes = apply_all_desired(&client, &leading, &writes).await.unwrap();
    let status = apply_status(
        &client,
        &leading,
        "web",
        Some("7"),
        &LivePatchPolicyStatus::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        nodes,
        NodeWrites {
            written: 0,
            conflicts: vec![],
            withheld: 2,
        }
    );
    assert_eq!(status, Outcome::NotLeading);
    drop(client);
    assert!(handle.next_request().await.is_none(), "a request was sent");
}

#[tokio::test]
async fn losing_the_lease_mid_batch_withholds_the_writes_not_yet_sent() {
    let (client, mut handle) = mock_client();
    let (lead, leading) = watch::channel(true);
    // More writes than run at once, so some start only after the lease is gone.
    let writes: Vec<_> = (0..20)
        .map(|i| write(&format!("n{i:02}"), None, Some("1")))
        .collect();
    let server = tokio::spawn(async move {
        // The first write to arrive is answered only once the lease is lost.
        let (request, send) = handle.next_request().await.unwrap();
        lead.send(false).unwrap();
        let node = request.uri().path().rsplit('/').next().unwrap().to_string();
        send.send_response(
            http::Response::builder()
                .body(kube::client::Body::from(
                    serde_json::to_vec(&lpn_reply(&node)).unwrap(),
                ))
                .unwrap(),
        );
        let mut answered = 1;
        while answer_with(&mut handle, |seen| {
            let node = seen
                .uri
                .split('?')
                .next()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap();
            (StatusCode::OK, lpn_reply(node))
        })
        .await
        .is_some()
        {
            answered += 1;
        }
        answered
    });
    let outcome = apply_all_desired(&client, &leading, &writes).await.unwrap();
    drop(client);
    let answered = server.await.unwrap();
    assert_eq!(outcome.written, answered);
    assert!(
        answered <= NODE_WRITE_CONCURRENCY,
        "{answered} writes were sent, at most the {NODE_WRITE_CONCURRENCY} already under way may be"
    );
    assert_eq!(outcome.withheld, 20 - answered);
}

/// Two nodes handed a request and one cleared, each at its own resourceVersion.
fn three_writes() -> Vec<SpecWrite> {
    vec![
        write("n1", Some(desired()), Some("1")),
        write("n2", Some(desired()), Some("2")),
        write("n3", None, Some("3")),
    ]
}
