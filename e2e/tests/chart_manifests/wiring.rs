//! The pieces refer to each other correctly: bindings to roles and service accounts,
//! Services and ServiceMonitors to pods and ports, the admission policy to the agent.

use std::collections::BTreeSet;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Service;

use super::{BY_POD, DEFAULT, FULL, pod_template, rendered};
use crate::chart_support::{Manifest, PodMonitor, Relabeling, ServiceMonitor, all, find};

fn names(m: &[Manifest], kind: &str) -> BTreeSet<(Option<String>, String)> {
    all(m, kind)
        .map(|x| (x.namespace().map(str::to_string), x.name().to_string()))
        .collect()
}

#[test]
fn bindings_and_workloads_name_what_the_chart_renders() {
    for file in [DEFAULT, FULL] {
        let Some(m) = rendered(file) else { return };
        let accounts = names(&m, "ServiceAccount");
        for b in all(&m, "RoleBinding").chain(all(&m, "ClusterRoleBinding")) {
            let role_kind = b.value["roleRef"]["kind"].as_str().unwrap_or_default();
            let role = b.value["roleRef"]["name"].as_str().unwrap_or_default();
            let ns = if role_kind == "Role" {
                b.namespace().map(str::to_string)
            } else {
                None
            };
            assert!(
                names(&m, role_kind).contains(&(ns, role.to_string())),
                "{file}: {} binds missing {role_kind} {role}",
                b.name()
            );
            for s in b.value["subjects"].as_array().into_iter().flatten() {
                let key = (
                    s["namespace"].as_str().map(str::to_string),
                    s["name"].as_str().unwrap_or_default().to_string(),
                );
                assert!(
                    accounts.contains(&key),
                    "{file}: {} binds unknown account {key:?}",
                    b.name()
                );
            }
        }
        for component in ["operator", "agent"] {
            let sa = pod_template(&m, component)
                .spec
                .and_then(|s| s.service_account_name)
                .unwrap_or_default();
            assert!(
                accounts.iter().any(|(_, n)| *n == sa),
                "{file}: {component} runs as unrendered account {sa:?}"
            );
        }
    }
}

#[test]
fn services_select_the_pods_and_name_their_ports() {
    let Some(m) = rendered(DEFAULT) else { return };
    for component in ["operator", "agent"] {
        let svc: Service = find(&m, "Service", &format!("-{component}-metrics"))
            .typed()
            .unwrap_or_else(|e| panic!("{e}"));
        let spec = svc.spec.unwrap_or_default();
        let template = pod_template(&m, component);
        let labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
        let selector = spec.selector.unwrap_or_default();
        assert!(!selector.is_empty(), "{component} Service selects nothing");
        for (k, v) in &selector {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{component} Service selector {k}={v} misses its pods"
            );
        }
        let ports: Vec<String> = template
            .spec
            .into_iter()
            .flat_map(|s| s.containers)
            .flat_map(|c| c.ports.unwrap_or_default())
            .filter_map(|p| p.name)
            .collect();
        for p in spec.ports.unwrap_or_default() {
            let target = serde_json::to_value(&p.target_port).unwrap_or_default();
            assert!(
                target
                    .as_str()
                    .is_some_and(|t| ports.iter().any(|n| n == t)),
                "{component} Service targets {target}, pods name {ports:?}"
            );
        }
    }
}

#[test]
fn optional_parts_are_off_by_default() {
    let Some(m) = rendered(DEFAULT) else { return };
    for kind in [
        "ValidatingAdmissionPolicy",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
    ] {
        assert_eq!(all(&m, kind).count(), 0, "{kind} rendered by default");
    }
}

#[test]
fn admission_policy_holds_the_agent_to_its_own_node() {
    let Some(m) = rendered(FULL) else { return };
    let policy: ValidatingAdmissionPolicy =
        find(&m, "ValidatingAdmissionPolicy", "-agent-own-node")
            .typed()
            .unwrap_or_else(|e| panic!("{e}"));
    let binding: ValidatingAdmissionPolicyBinding =
        find(&m, "ValidatingAdmissionPolicyBinding", "-agent-own-node")
            .typed()
            .unwrap_or_else(|e| panic!("{e}"));
    let bspec = binding.spec.unwrap_or_default();
    assert_eq!(bspec.policy_name, policy.metadata.name);
    assert_eq!(bspec.validation_actions, Some(vec!["Deny".to_string()]));
    let spec = policy.spec.unwrap_or_default();
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    let agent_sa = pod_template(&m, "agent")
        .spec
        .and_then(|s| s.service_account_name)
        .unwrap_or_default();
    let condition = spec.match_conditions.unwrap_or_default();
    assert!(
        condition.iter().any(|c| c
            .expression
            .contains(&format!("system:serviceaccount:kpersist:{agent_sa}'"))),
        "the policy does not match the agent's account: {condition:?}"
    );
    let text = serde_json::to_string(&spec.variables).unwrap_or_default();
    assert!(
        text.contains("authentication.kubernetes.io/node-name"),
        "no node-name claim in {text}"
    );
    let validations = spec.validations.unwrap_or_default();
    assert!(
        validations
            .iter()
            .any(|v| v.expression == "object.metadata.name == variables.nodeName")
    );
    let rules = spec
        .match_constraints
        .and_then(|c| c.resource_rules)
        .unwrap_or_default();
    let resources: BTreeSet<String> = rules
        .into_iter()
        .flat_map(|r| r.resources.unwrap_or_default())
        .collect();
    assert_eq!(
        resources,
        BTreeSet::from([
            "livepatchnodes".to_string(),
            "livepatchnodes/status".to_string()
        ])
    );
}

#[test]
fn service_monitors_scrape_both_metrics_services() {
    let Some(m) = rendered(FULL) else { return };
    for component in ["operator", "agent"] {
        let sm: ServiceMonitor = find(&m, "ServiceMonitor", &format!("-{component}"))
            .typed()
            .unwrap_or_else(|e| panic!("{e}"));
        let svc: Service = find(&m, "Service", &format!("-{component}-metrics"))
            .typed()
            .unwrap_or_else(|e| panic!("{e}"));
        let labels = svc.metadata.labels.unwrap_or_default();
        for (k, v) in sm.spec.selector.match_labels.unwrap_or_default() {
            assert_eq!(
                labels.get(&k),
                Some(&v),
                "{component} ServiceMonitor selector {k}={v} misses its Service"
            );
        }
        let port_names: Vec<String> = svc
            .spec
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.name)
            .collect();
        for e in &sm.spec.endpoints {
            assert!(
                port_names.contains(&e.port),
                "{component} ServiceMonitor scrapes port {} of {port_names:?}",
                e.port
            );
            if component == "agent" {
                keyed_by_node(&e.relabelings);
            }
        }
        assert_eq!(
            sm.metadata
                .labels
                .unwrap_or_default()
                .get("release")
                .map(String::as_str),
            Some("prometheus")
        );
    }
}

#[test]
fn agents_can_be_scraped_pod_by_pod_under_the_same_job() {
    let Some(m) = rendered(BY_POD) else { return };
    assert!(
        all(&m, "ServiceMonitor").all(|s| !s.name().ends_with("-agent")),
        "the agents have a ServiceMonitor besides their PodMonitor"
    );
    let pm: PodMonitor = find(&m, "PodMonitor", "-agent")
        .typed()
        .unwrap_or_else(|e| panic!("{e}"));
    let ds: DaemonSet = find(&m, "DaemonSet", "-agent")
        .typed()
        .unwrap_or_else(|e| panic!("{e}"));
    let template = ds.spec.map(|s| s.template).unwrap_or_default();
    let pod_labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
    for (k, v) in pm.spec.selector.match_labels.unwrap_or_default() {
        assert_eq!(
            pod_labels.get(&k),
            Some(&v),
            "PodMonitor selector {k}={v} misses the agent pods"
        );
    }
    let ports: Vec<String> = template
        .spec
        .map(|s| s.containers)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|c| c.ports.unwrap_or_default())
        .filter_map(|p| p.name)
        .collect();
    let service = find(&m, "Service", "-agent-metrics").name().to_string();
    for e in &pm.spec.pod_metrics_endpoints {
        assert!(
            ports.contains(&e.port),
            "PodMonitor scrapes port {} of {ports:?}",
            e.port
        );
        let job = e
            .relabelings
            .iter()
            .find(|r| r.target_label.as_deref() == Some("job"))
            .and_then(|r| r.replacement.clone());
        assert_eq!(
            job.as_deref(),
            Some(service.as_str()),
            "the alerts and the dashboard know the agents' job as the Service's name"
        );
        keyed_by_node(&e.relabelings);
        assert_eq!(
            e.metric_relabelings.len(),
            1,
            "metricRelabelings not rendered"
        );
    }
}

/// An agent's series are named after its node (labels `node` and `instance`) and carry no
/// `pod` label, so a new agent pod goes on with its node's series.
fn keyed_by_node(relabelings: &[Relabeling]) {
    for label in ["node", "instance"] {
        assert!(
            relabelings
                .iter()
                .any(|r| r.target_label.as_deref() == Some(label)
                    && r.source_labels == ["__meta_kubernetes_pod_node_name"]),
            "agent series do not take {label} from the node name: {relabelings:?}"
        );
    }
    assert!(
        relabelings
            .iter()
            .any(|r| r.action.as_deref() == Some("labeldrop") && r.regex.as_deref() == Some("pod")),
        "agent series keep their pod label: {relabelings:?}"
    );
}
