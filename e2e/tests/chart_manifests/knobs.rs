//! The chart's knobs for sites: image registry and digest, security contexts a stricter
//! platform (OpenShift's restricted SCC) accepts, extra volumes, and an architecture the
//! images exist for.

use super::{DEFAULT, FULL, only_container, pod_template, rendered};

#[test]
fn images_come_from_the_registry_and_digest_given() {
    let Some(m) = rendered(FULL) else { return };
    let c = only_container(&pod_template(&m, "operator"));
    assert_eq!(
        c.image.as_deref(),
        Some(
            "registry.example.com:5000/kpersist/kpersist-operator@sha256:\
             0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        )
    );
    let Some(m) = rendered(DEFAULT) else { return };
    let c = only_container(&pod_template(&m, "agent"));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        c.image,
        Some(format!("ghcr.io/kpersist/kpersist-agent:{version}")),
        "by default the chart's appVersion is the tag"
    );
}

#[test]
fn the_operator_runs_without_a_fixed_user_when_told_and_stays_locked_down() {
    let Some(m) = rendered(FULL) else { return };
    let t = pod_template(&m, "operator");
    let pod = t
        .spec
        .clone()
        .and_then(|s| s.security_context)
        .unwrap_or_default();
    assert_eq!((pod.run_as_user, pod.run_as_group), (None, None));
    assert_eq!(pod.run_as_non_root, Some(true));
    let c = only_container(&t).security_context.unwrap_or_default();
    assert_eq!(c.run_as_user, None);
    assert_eq!(c.read_only_root_filesystem, Some(true));
    assert_eq!(c.allow_privilege_escalation, Some(false));
    let Some(m) = rendered(DEFAULT) else { return };
    let t = pod_template(&m, "operator");
    let pod = t.spec.and_then(|s| s.security_context).unwrap_or_default();
    assert_eq!(pod.run_as_user, Some(65532), "a fixed user by default");
}

#[test]
fn extra_volumes_are_mounted_in_both_components() {
    let Some(m) = rendered(FULL) else { return };
    for (component, volume) in [("operator", "private-ca"), ("agent", "site-config")] {
        let t = pod_template(&m, component);
        let volumes = t.spec.clone().and_then(|s| s.volumes).unwrap_or_default();
        assert!(
            volumes.iter().any(|v| v.name == volume),
            "{component} lacks volume {volume}"
        );
        let mounts = only_container(&t).volume_mounts.unwrap_or_default();
        assert!(
            mounts.iter().any(|v| v.name == volume),
            "{component} does not mount {volume}"
        );
    }
}

#[test]
fn pods_go_only_to_nodes_the_images_are_built_for() {
    let Some(m) = rendered(DEFAULT) else { return };
    for component in ["operator", "agent"] {
        let selector = pod_template(&m, component)
            .spec
            .and_then(|s| s.node_selector)
            .unwrap_or_default();
        assert_eq!(
            selector.get("kubernetes.io/arch").map(String::as_str),
            Some("amd64"),
            "{component} may land on a node its image does not run on"
        );
    }
}
