use super::*;
use crate::fixtures::{answer, mock_client, status_body};
use http::{Method, StatusCode};
use kpersist_crds::{PatchAction, PatchRelease};

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

fn assert_replace(seen: &crate::fixtures::SeenRequest, path: &str) {
    assert!(
        seen.uri.contains("fieldManager=kpersist-operator"),
        "{}",
        seen.uri
    );
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert_eq!(seen.body.as_array().map(Vec::len), Some(1), "{}", seen.body);
    assert_eq!(seen.body[0]["op"], "add");
    assert_eq!(seen.body[0]["path"], path);
}

/// A LivePatchNode as the API answers a write.
fn lpn_reply(node: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchNode",
        "metadata": {"name": node}, "spec": {}
    })
}

#[tokio::test]
async fn desired_is_written_with_a_forced_server_side_apply() {
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
        assert_replace(&seen, "/spec");
        let desired = &seen.body[0]["value"]["desired"];
        assert_eq!(desired["release"]["id"], "6.1.0-56-amd64/v2");
        assert_eq!(desired["action"], "Apply");
    });
    apply_desired(&client, "n1", Some(&desired()))
        .await
        .unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn clearing_desired_applies_a_spec_without_it() {
    let (client, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        let seen = answer(&mut handle, StatusCode::OK, lpn_reply("n1")).await;
        assert_replace(&seen, "/spec");
        assert_eq!(seen.body[0]["value"], serde_json::json!({}));
    });
    apply_desired(&client, "n1", None).await.unwrap();
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
        assert_replace(&seen, "/status");
        assert_eq!(seen.body[0]["value"]["observedGeneration"], 3);
    });
    apply_status(&client, "web", &status).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn every_node_write_is_tried_and_a_failure_is_reported() {
    let (client, mut handle) = mock_client();
    let writes = vec![
        ("n1".to_string(), Some(desired())),
        ("n2".to_string(), Some(desired())),
        ("n3".to_string(), None),
    ];
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
    let error = apply_all_desired(&client, &writes).await.unwrap_err();
    assert!(
        matches!(&error, Error::NodeApply { node, .. } if node == "n2"),
        "{error}"
    );
    assert_eq!(error.metric_label(), "node_apply");
    assert_eq!(server.await.unwrap(), ["n1", "n2", "n3"]);
}
