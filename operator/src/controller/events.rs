//! Kubernetes Events on policies (`kubectl describe lpp`), through the `events.k8s.io/v1`
//! API. kube's `Recorder` puts the Events of a cluster-scoped object in `default`, which API
//! servers before 1.22 refuse ("involvedObject.namespace does not match event.namespace");
//! `kube-system` is accepted by every version, so Events are written there. Building an
//! Event needs no client; publishing does.

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kpersist_crds::{LivePatchPolicy, OPERATOR_MANAGER};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, Resource, ResourceExt};

use crate::engine::RolloutEvent;

/// Namespace the Events of cluster-scoped policies are written to.
pub const EVENT_NAMESPACE: &str = "kube-system";
/// Longest note the API accepts.
const NOTE_LIMIT: usize = 1024;

/// Publishes rollout events as Kubernetes Events.
#[derive(Clone)]
pub struct EventPublisher {
    client: Client,
    instance: String,
}

impl EventPublisher {
    /// A publisher reporting as `instance` (this replica's pod name).
    pub fn new(client: Client, instance: String) -> Self {
        Self { client, instance }
    }

    /// Records the events on the policy. Events are best effort: a refused one is logged
    /// and does not fail the reconcile, whose real work is already written.
    pub async fn publish(&self, policy: &LivePatchPolicy, events: &[RolloutEvent]) {
        let api: Api<Event> = Api::namespaced(self.client.clone(), EVENT_NAMESPACE);
        for event in events {
            let object = event_object(event, policy, &self.instance, jiff::Timestamp::now());
            if let Err(error) = api.create(&PostParams::default(), &object).await {
                tracing::warn!(%error, reason = event.reason(), "recording an Event failed");
            }
        }
    }
}

/// The Event for `event` on `policy` at `now`. No client required.
pub fn event_object(
    event: &RolloutEvent,
    policy: &LivePatchPolicy,
    instance: &str,
    now: jiff::Timestamp,
) -> Event {
    Event {
        metadata: ObjectMeta {
            // Unique per policy and instant, as client-go names Events.
            name: Some(format!("{}.{:x}", policy.name_any(), now.as_nanosecond())),
            namespace: Some(EVENT_NAMESPACE.to_string()),
            ..ObjectMeta::default()
        },
        action: Some("Rollout".to_string()),
        reason: Some(event.reason().to_string()),
        note: Some(truncate(event.message(), NOTE_LIMIT)),
        type_: Some(
            if event.is_warning() {
                "Warning"
            } else {
                "Normal"
            }
            .to_string(),
        ),
        event_time: Some(MicroTime(now)),
        regarding: Some(policy.object_ref(&())),
        reporting_controller: Some(OPERATOR_MANAGER.to_string()),
        reporting_instance: Some(instance.to_string()),
        ..Event::default()
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max.saturating_sub(3);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LivePatchPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchPolicy",
            "metadata": {"name": "web", "uid": "u1"},
            "spec": {"repository": {"url": "http://repo"}}
        }))
        .unwrap()
    }

    #[test]
    fn events_regard_the_cluster_scoped_policy_from_kube_system() {
        let now: jiff::Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let event = RolloutEvent::WaveFailed {
            wave: 2,
            reason: "é".repeat(2000),
        };
        let object = event_object(&event, &policy(), "pod-a", now);
        assert_eq!(object.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(object.type_.as_deref(), Some("Warning"));
        assert_eq!(object.reason.as_deref(), Some("WaveFailed"));
        assert!(object.note.as_ref().unwrap().len() <= NOTE_LIMIT);
        let regarding = object.regarding.unwrap();
        assert_eq!(regarding.name.as_deref(), Some("web"));
        assert_eq!(regarding.namespace, None);
        assert_eq!(regarding.kind.as_deref(), Some("LivePatchPolicy"));
        assert_eq!(object.reporting_instance.as_deref(), Some("pod-a"));

        let done = event_object(
            &RolloutEvent::WaveDone { wave: 1, waves: 3 },
            &policy(),
            "a",
            now,
        );
        assert_eq!(done.type_.as_deref(), Some("Normal"));
    }
}
