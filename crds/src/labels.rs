//! The labels the operator keeps on the LivePatchNodes its policies select, so that a fleet
//! of thousands can be filtered on the server: `kubectl get lpn -l kpersist.io/state=Failed`,
//! `-l kpersist.io/policy=prod`, `-l kpersist.io/kernel=6.1.0-27-amd64`.
//!
//! Each label copies a field: `kpersist.io/policy` the policy in `spec.desired`,
//! `kpersist.io/kernel` the running kernel release in `status.kernelRelease`, and
//! `kpersist.io/state` the node's last *settled* state in `status.state` (Idle, Applied,
//! Failed, Unsupported, CrashSuspected). The in-flight states (Downloading, Applying,
//! Reverting) last seconds; labelling them would add a write per node per step of every
//! rollout, so the label keeps the settled state before them and `status.state` shows the
//! live one. A node no policy selects keeps the labels it had when its request was cleared.
//! A value that cannot be a label value (longer than 63 characters, or with
//! characters labels refuse) leaves its label off.

use std::collections::BTreeMap;

use crate::node::{DesiredPatch, LivePatchNode};

/// The policy whose request the node follows (`spec.desired.policy`).
pub const POLICY_LABEL: &str = "kpersist.io/policy";
/// The node's last settled state (`status.state` when not in flight).
pub const STATE_LABEL: &str = "kpersist.io/state";
/// The running kernel release (`status.kernelRelease`).
pub const KERNEL_LABEL: &str = "kpersist.io/kernel";

/// The labels `lpn` should carry once its `spec.desired` is `desired`: its own labels
/// with the three above set from its fields. `None` when it carries them already.
pub fn wanted_labels(
    lpn: &LivePatchNode,
    desired: Option<&DesiredPatch>,
) -> Option<BTreeMap<String, String>> {
    let current = lpn.metadata.labels.as_ref();
    let status = lpn.status.as_ref();
    let state = match status.and_then(|s| s.state) {
        Some(state) if state.is_in_flight() => current.and_then(|l| l.get(STATE_LABEL)).cloned(),
        Some(state) => Some(state.as_str().to_string()),
        None => None,
    };
    let wanted = [
        (POLICY_LABEL, desired.map(|d| d.policy.clone())),
        (STATE_LABEL, state),
        (KERNEL_LABEL, status.and_then(|s| s.kernel_release.clone())),
    ];
    let mut labels = current.cloned().unwrap_or_default();
    for (key, value) in wanted {
        match value.filter(|v| is_label_value(v)) {
            Some(value) => labels.insert(key.to_string(), value),
            None => labels.remove(key),
        };
    }
    (Some(&labels) != current && !(labels.is_empty() && current.is_none())).then_some(labels)
}

/// Whether `value` is a valid label value: at most 63 characters, alphanumerics with
/// `-`, `_` or `.` inside.
pub fn is_label_value(value: &str) -> bool {
    let inner = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    value.len() <= 63
        && value.chars().all(inner)
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{LivePatchNodeSpec, LivePatchNodeStatus, NodePatchState};

    fn node(state: Option<NodePatchState>, labels: &[(&str, &str)]) -> LivePatchNode {
        let mut lpn = LivePatchNode::new("node-1", LivePatchNodeSpec::default());
        if !labels.is_empty() {
            lpn.metadata.labels = Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        lpn.status = Some(LivePatchNodeStatus {
            state,
            kernel_release: Some("6.1.0-27-amd64".into()),
            ..LivePatchNodeStatus::default()
        });
        lpn
    }

    fn desired(policy: &str) -> DesiredPatch {
        serde_json::from_value(serde_json::json!({"policy": policy, "action": "Apply"}))
            .expect("a desired patch")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn copies_policy_settled_state_and_kernel_and_keeps_other_labels() {
        let lpn = node(Some(NodePatchState::Applied), &[("team", "infra")]);
        let wanted = wanted_labels(&lpn, Some(&desired("prod")));
        assert_eq!(
            wanted,
            Some(labels(&[
                ("team", "infra"),
                (POLICY_LABEL, "prod"),
                (STATE_LABEL, "Applied"),
                (KERNEL_LABEL, "6.1.0-27-amd64"),
            ]))
        );
    }

    #[test]
    fn nothing_to_write_when_the_labels_are_current() {
        let current = [
            (POLICY_LABEL, "prod"),
            (STATE_LABEL, "Failed"),
            (KERNEL_LABEL, "6.1.0-27-amd64"),
        ];
        let lpn = node(Some(NodePatchState::Failed), &current);
        assert_eq!(wanted_labels(&lpn, Some(&desired("prod"))), None);
    }

    #[test]
    fn an_in_flight_state_keeps_the_settled_one() {
        let current = [(STATE_LABEL, "Applied"), (KERNEL_LABEL, "6.1.0-27-amd64")];
        for state in [
            NodePatchState::Downloading,
            NodePatchState::Applying,
            NodePatchState::Reverting,
        ] {
            let lpn = node(Some(state), &current);
            assert_eq!(wanted_labels(&lpn, None), None, "{state:?}");
        }
    }

    #[test]
    fn a_cleared_request_drops_the_policy_label() {
        let current = [
            (POLICY_LABEL, "prod"),
            (STATE_LABEL, "Idle"),
            (KERNEL_LABEL, "6.1.0-27-amd64"),
        ];
        let lpn = node(Some(NodePatchState::Idle), &current);
        assert_eq!(
            wanted_labels(&lpn, None),
            Some(labels(&[
                (STATE_LABEL, "Idle"),
                (KERNEL_LABEL, "6.1.0-27-amd64")
            ]))
        );
    }

    #[test]
    fn state_names_are_the_api_spelling() {
        for state in [
            NodePatchState::Idle,
            NodePatchState::Downloading,
            NodePatchState::Applying,
            NodePatchState::Applied,
            NodePatchState::Reverting,
            NodePatchState::Failed,
            NodePatchState::Unsupported,
            NodePatchState::CrashSuspected,
        ] {
            assert_eq!(
                serde_json::to_value(state).ok(),
                Some(state.as_str().into())
            );
        }
    }

    #[test]
    fn a_value_labels_refuse_leaves_the_label_off() {
        let mut lpn = node(None, &[]);
        if let Some(status) = lpn.status.as_mut() {
            status.kernel_release = Some("6.1.0+".into());
        }
        let long = "p".repeat(64);
        assert_eq!(wanted_labels(&lpn, Some(&desired(&long))), None);
        assert!(is_label_value(
            "6.12.5-1~bpo12+1".replace(['~', '+'], "-").as_str()
        ));
        assert!(!is_label_value("-a") && !is_label_value("a-") && !is_label_value(""));
        assert!(is_label_value("a") && is_label_value(&"a".repeat(63)));
    }
}
