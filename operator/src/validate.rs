//! Checks of a `LivePatchPolicySpec` that the CRD schema cannot express (exactly one of two
//! fields, ordered waves, parseable durations, known time zones, decodable keys, URLs).
//! No client required: the engine runs it on every decision and reports what it finds.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kpersist_crds::{
    GateHeader, HealthSpec, LivePatchPolicySpec, RepositorySpec, RolloutSpec, parse_duration,
};
use kpersist_kmod::repository::is_channel;
use kpersist_kmod::signing::PublicKey;

use crate::engine::window::Window;

/// One problem with one field of a policy, named by its path from `spec`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct FieldError {
    /// Where, e.g. `spec.rollout.waves[1]`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// Every problem found in `spec`, in field order; empty when the policy is valid.
pub fn validate(spec: &LivePatchPolicySpec) -> Vec<FieldError> {
    let mut errors = Errors(Vec::new());
    check_selector(&spec.node_selector, &mut errors);
    check_repository(&spec.repository, &mut errors);
    check_rollout(&spec.rollout, &mut errors);
    check_health(&spec.health, &mut errors);
    errors.0
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, path: impl Into<String>, problem: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            problem: problem.into(),
        });
    }

    /// Parses a duration field, recording why it does not parse; `positive` refuses zero.
    fn duration(&mut self, path: &str, text: &str, positive: bool) -> Option<Duration> {
        match parse_duration(text) {
            Ok(d) if positive && d.is_zero() => {
                self.add(
                    path,
                    format!("{text:?} is zero; give a positive duration such as 30s"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.add(path, e.to_string());
                None
            }
        }
    }

    fn url(&mut self, path: &str, text: &str) {
        match reqwest::Url::parse(text) {
            // Not echoed: the text holds a secret.
            Ok(url) if !url.username().is_empty() || url.password().is_some() => self.add(
                path,
                "carries a user name or password, which would show in the status and logs; \
                 leave it out (the Prometheus gate takes credentials in headers[].valueFrom)",
            ),
            Ok(url) if !matches!(url.scheme(), "http" | "https") => self.add(
                path,
                format!("{text:?} has scheme {:?}; use http or https", url.scheme()),
            ),
            Ok(url) if url.host_str().is_none_or(str::is_empty) => {
                self.add(path, format!("{text:?} names no host"))
            }
            Ok(_) => {}
            Err(e) => self.add(path, format!("{text:?} is not a URL ({e})")),
        }
    }
}

fn check_selector(selector: &LabelSelector, errors: &mut Errors) {
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let path = format!("spec.nodeSelector.matchExpressions[{i}]");
        let values = expr.values.as_deref().unwrap_or_default();
        match expr.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => errors.add(
                path,
                format!("operator {} needs at least one value", expr.operator),
            ),
            "Exists" | "DoesNotExist" if !values.is_empty() => errors.add(
                path,
                format!("operator {} takes no values; remove them", expr.operator),
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errors.add(
                format!("{path}.operator"),
                format!("{other:?} is not an operator; use In, NotIn, Exists or DoesNotExist"),
            ),
        }
    }
}

fn check_repository(repo: &RepositorySpec, errors: &mut Errors) {
    errors.url("spec.repository.url", &repo.url);
    if !is_channel(&repo.channel) {
        errors.add(
            "spec.repository.channel",
            format!(
                "{:?} is not a channel name; use lowercase letters, digits, '.', '_' and '-', \
                 starting with a letter or digit, at most 63 characters",
                repo.channel
            ),
        );
    }
    if repo.trusted_keys.is_empty() && repo.trusted_keys_secret.is_none() {
        errors.add(
            "spec.repository",
            "give trustedKeys or trustedKeysSecret: without a trusted key no index can be \
             verified, and an unverified index is never used",
        );
    }
    for (i, key) in repo.trusted_keys.iter().enumerate() {
        let shown: String = key.chars().take(16).collect();
        if let Err(e) = PublicKey::from_base64(key.trim(), &format!("key {shown:?}")) {
            errors.add(format!("spec.repository.trustedKeys[{i}]"), e.to_string());
        }
    }
    if let Some(secret) = &repo.trusted_keys_secret {
        if secret.namespace.is_empty() {
            errors.add(
                "spec.repository.trustedKeysSecret.namespace",
                "must not be empty",
            );
        }
        if secret.name.is_empty() {
            errors.add(
                "spec.repository.trustedKeysSecret.name",
                "must not be empty",
            );
        }
    }
    errors.duration("spec.repository.checkInterval", &repo.check_interval, true);
    if let Some(delay) = &repo.delay {
        errors.duration("spec.repository.delay", delay, false);
    }
    if repo.pinned_version == Some(0) {
        errors.add("spec.repository.pinnedVersion", "versions start at 1");
    }
}

fn check_rollout(rollout: &RolloutSpec, errors: &mut Errors) {
    if rollout.waves.is_empty() {
        errors.add("spec.rollout.waves", "give at least one wave");
    }
    // Waves are cumulative, so a wave smaller than an earlier one of the same kind is a
    // mistake (it would start no node).
    let mut last_percent: Option<(usize, u32)> = None;
    let mut last_nodes: Option<(usize, u32)> = None;
    for (i, wave) in rollout.waves.iter().enumerate() {
        let path = format!("spec.rollout.waves[{i}]");
        match (wave.nodes, wave.percent) {
            (Some(_), Some(_)) | (None, None) => {
                errors.add(&path, "give exactly one of nodes and percent")
            }
            (Some(0), None) => errors.add(format!("{path}.nodes"), "must be at least 1"),
            (None, Some(p)) if !(1..=100).contains(&p) => errors.add(
                format!("{path}.percent"),
                format!("{p} is not within 1 to 100"),
            ),
            (Some(n), None) => {
                if let Some((j, earlier)) = last_nodes.filter(|(_, e)| n < *e) {
                    errors.add(
                        format!("{path}.nodes"),
                        format!(
                            "{n} is less than the {earlier} of waves[{j}]; wave sizes are \
                             cumulative, so each wave gives at least as many nodes as the one before"
                        ),
                    );
                }
                last_nodes = Some((i, n));
            }
            (None, Some(p)) => {
                if let Some((j, earlier)) = last_percent.filter(|(_, e)| p < *e) {
                    errors.add(
                        format!("{path}.percent"),
                        format!(
                            "{p} is less than the {earlier} of waves[{j}]; percentages are \
                             cumulative and must not decrease"
                        ),
                    );
                }
                last_percent = Some((i, p));
            }
        }
        errors.duration(&format!("{path}.bake"), &wave.bake, false);
    }
    if rollout.max_in_flight == 0 {
        errors.add("spec.rollout.maxInFlight", "must be at least 1");
    }
    for (i, window) in rollout.maintenance_windows.iter().enumerate() {
        if let Err(e) = Window::parse(window) {
            errors.add(
                format!("spec.rollout.maintenanceWindows[{i}].{}", e.field),
                e.problem,
            );
        }
    }
}

fn check_health(health: &HealthSpec, errors: &mut Errors) {
    errors.duration(
        "spec.health.transitionTimeout",
        &health.transition_timeout,
        true,
    );
    errors.duration("spec.health.notReadyGrace", &health.not_ready_grace, false);
    errors.duration("spec.health.probation", &health.probation, false);
    if let Some(deadline) = &health.node_deadline {
        errors.duration("spec.health.nodeDeadline", deadline, true);
    }
    if let Some(gate) = &health.prometheus {
        errors.url("spec.health.prometheus.url", &gate.url);
        if gate.query.trim().is_empty() {
            errors.add("spec.health.prometheus.query", "give a PromQL query");
        }
        if !gate.threshold.is_finite() {
            errors.add(
                "spec.health.prometheus.threshold",
                "must be a finite number",
            );
        }
        errors.duration("spec.health.prometheus.interval", &gate.interval, true);
        errors.duration("spec.health.prometheus.timeout", &gate.timeout, true);
        for (i, header) in gate.headers.iter().enumerate() {
            let path = format!("spec.health.prometheus.headers[{i}]");
            check_gate_header(&path, header, &gate.url, errors);
        }
    }
}

fn check_gate_header(path: &str, header: &GateHeader, gate_url: &str, errors: &mut Errors) {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+.^_`|~-".contains(c);
    if header.name.is_empty() || !header.name.chars().all(token) {
        errors.add(
            format!("{path}.name"),
            format!(
                "{:?} is not an HTTP header name, e.g. X-Scope-OrgID",
                header.name
            ),
        );
    }
    match (&header.value, &header.value_from) {
        (Some(value), None) => {
            if !value.chars().all(|c| c == '\t' || (' '..='~').contains(&c)) {
                errors.add(
                    format!("{path}.value"),
                    "holds a character an HTTP header cannot carry (a line break, a control \
                     or non-ASCII character)",
                );
            }
        }
        (None, Some(from)) => {
            if gate_url.starts_with("http://") {
                errors.add(
                    format!("{path}.valueFrom"),
                    "a Secret's value would be sent over plain http; use an https url",
                );
            }
            let parts = [
                ("namespace", &from.namespace),
                ("name", &from.name),
                ("key", &from.key),
            ];
            for (part, value) in parts {
                if value.is_empty() {
                    errors.add(
                        format!("{path}.valueFrom.{part}"),
                        format!("give the Secret's {part}"),
                    );
                }
            }
        }
        _ => errors.add(
            path,
            "give exactly one of value (inline) and valueFrom (a key of a Secret)",
        ),
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
