//! The status conditions of both kinds, in the shape of Kubernetes' `metav1.Condition`:
//! `type`, a `status` of True, False or Unknown, a CamelCase `reason`, a `message`, the
//! `lastTransitionTime` and the `observedGeneration` it was computed from, in a list keyed
//! by `type`. `kubectl wait --for=condition=Ready` and kstatus read them as they read any
//! built-in object's.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One status condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The aspect it reports: Ready, Progressing, Degraded or RepositoryReachable on a
    /// policy; Ready, Healthy, LivepatchSupported, KernelFindings or Drift on a node.
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether the condition holds.
    pub status: ConditionStatus,
    /// Machine-readable reason in CamelCase.
    pub reason: String,
    /// What happened, for people.
    // No schema default: kube-apiserver 1.20 reads an empty-string default as null and
    // refuses the whole CRD; skipping the empty value keeps schemars from emitting one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// The `lastTransitionTime` for a condition of `type_` now at `status`: that of the
    /// same type in `previous` when its status was the same, else `now`.
    pub fn since(
        previous: &[Condition],
        type_: &str,
        status: ConditionStatus,
        now: &str,
    ) -> String {
        previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.to_string())
    }
}

/// Whether a condition holds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ConditionStatus {
    /// It holds.
    True,
    /// It does not hold.
    False,
    /// It cannot be told now.
    Unknown,
}

impl ConditionStatus {
    /// `True` when `holds`, else `False`.
    pub fn of(holds: bool) -> ConditionStatus {
        if holds {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }

    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl std::fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_spelled_as_the_api_does() {
        for status in [
            ConditionStatus::True,
            ConditionStatus::False,
            ConditionStatus::Unknown,
        ] {
            assert_eq!(
                serde_json::to_value(status).ok(),
                Some(status.as_str().into())
            );
        }
        assert_eq!(ConditionStatus::of(true), ConditionStatus::True);
        assert_eq!(ConditionStatus::of(false), ConditionStatus::False);
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_changes() {
        let before = Condition {
            type_: "Ready".into(),
            status: ConditionStatus::True,
            reason: "UpToDate".into(),
            message: String::new(),
            last_transition_time: Some("2026-01-01T00:00:00Z".into()),
            observed_generation: None,
        };
        let previous = [before];
        let now = "2026-02-01T00:00:00Z";
        let since = |type_, status| Condition::since(&previous, type_, status, now);
        assert_eq!(
            since("Ready", ConditionStatus::True),
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(since("Ready", ConditionStatus::False), now);
        assert_eq!(since("Degraded", ConditionStatus::True), now);
    }
}
