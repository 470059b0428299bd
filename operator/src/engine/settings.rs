//! A policy spec read once into the values the engine works with (durations parsed, windows
//! resolved), after validation has refused anything that does not read.

use std::time::Duration;

use kpersist_crds::{FailurePolicy, LivePatchPolicySpec, RepositoryAccess, parse_duration};

use super::waves::{WaveRule, WaveSize};
use super::window::{Window, Windows};
use crate::validate::{FieldError, validate};

/// How long an agent retries a download that fails on the way (its retry budget).
const DOWNLOAD_BUDGET: Duration = Duration::from_secs(120);
/// Room on top of the download and the transition for checks, writes and a watch delay.
const DEADLINE_SLACK: Duration = Duration::from_secs(120);

/// What the engine needs from a valid spec.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub channel: String,
    pub delay: Option<Duration>,
    pub pinned_version: Option<u64>,
    pub waves: Vec<WaveRule>,
    pub max_in_flight: usize,
    pub max_failures: usize,
    pub failure_policy: FailurePolicy,
    /// What a release-attributed failure outside the running rollout does.
    pub late_failure_policy: FailurePolicy,
    pub windows: Windows,
    pub paused: bool,
    pub dry_run: bool,
    pub node_ready: bool,
    pub kmsg_checks: bool,
    pub transition_timeout: String,
    /// How long a node may be NotReady before it is a node problem.
    pub not_ready_grace: Duration,
    /// `health.probation`, copied onto each node's request.
    pub probation: String,
    /// How long a node handed a release may stay unfinished before it is resolved.
    pub node_deadline: Duration,
    /// `health.replaceForeignLivepatches`, copied onto each node's request.
    pub replace_foreign: bool,
    /// How often the gate is evaluated, when the policy has one.
    pub gate_interval: Option<Duration>,
    /// What agents need to download modules (CA bundle, redirect hosts); `None` when the
    /// policy sets neither, so node objects carry nothing for the default.
    pub repository: Option<RepositoryAccess>,
}

/// The repository access the operator copies into each request: the policy's CA bundle
/// and redirect hosts, or none when it sets neither.
pub(crate) fn repository_access(spec: &LivePatchPolicySpec) -> Option<RepositoryAccess> {
    let access = RepositoryAccess {
        ca_bundle: spec
            .repository
            .ca_bundle
            .clone()
            .filter(|pem| !pem.trim().is_empty()),
        allowed_redirect_hosts: spec.repository.allowed_redirect_hosts.clone(),
    };
    (access != RepositoryAccess::default()).then_some(access)
}

impl Settings {
    /// Validates `spec` and reads it, or returns every problem found.
    pub(crate) fn read(spec: &LivePatchPolicySpec) -> Result<Settings, Vec<FieldError>> {
        let errors = validate(spec);
        if !errors.is_empty() {
            return Err(errors);
        }
        // Validation has parsed each of these already; the fallbacks are never taken.
        let duration = |text: &str| parse_duration(text).unwrap_or_default();
        let rollout = &spec.rollout;
        let waves = rollout
            .waves
            .iter()
            .map(|w| WaveRule {
                size: match (w.nodes, w.percent) {
                    (Some(n), _) => WaveSize::Nodes(n),
                    (None, p) => WaveSize::Percent(p.unwrap_or(100)),
                },
                bake: duration(&w.bake),
            })
            .collect();
        let windows = Windows(
            rollout
                .maintenance_windows
                .iter()
                .filter_map(|w| Window::parse(w).ok())
                .collect(),
        );
        Ok(Settings {
            repository: repository_access(spec),
            channel: spec.repository.channel.clone(),
            delay: spec.repository.delay.as_deref().map(duration),
            pinned_version: spec.repository.pinned_version,
            waves,
            max_in_flight: rollout.max_in_flight.max(1) as usize,
            max_failures: rollout.max_failures as usize,
            failure_policy: rollout.failure_policy,
            late_failure_policy: rollout.late_failure_policy,
            windows,
            paused: rollout.paused,
            dry_run: rollout.dry_run,
            node_ready: spec.health.node_ready,
            kmsg_checks: spec.health.kmsg_checks,
            transition_timeout: spec.health.transition_timeout.clone(),
            not_ready_grace: duration(&spec.health.not_ready_grace),
            probation: spec.health.probation.clone(),
            node_deadline: spec.health.node_deadline.as_deref().map_or_else(
                || DOWNLOAD_BUDGET + duration(&spec.health.transition_timeout) + DEADLINE_SLACK,
                duration,
            ),
            replace_foreign: spec.health.replace_foreign_livepatches,
            gate_interval: spec
                .health
                .prometheus
                .as_ref()
                .map(|g| duration(&g.interval)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mut repository: serde_json::Value) -> LivePatchPolicySpec {
        let key = kpersist_kmod::signing::PrivateKey::generate()
            .public_key()
            .to_base64_line();
        repository["trustedKeys"] = serde_json::json!([key]);
        serde_json::from_value(serde_json::json!({ "repository": repository })).unwrap()
    }

    #[test]
    fn repository_access_reaches_the_settings_only_when_the_policy_sets_it() {
        let plain = spec(serde_json::json!({"url": "https://r"}));
        assert_eq!(Settings::read(&plain).unwrap().repository, None);
        let blank_bundle = spec(serde_json::json!({"url": "https://r", "caBundle": " \n"}));
        assert_eq!(Settings::read(&blank_bundle).unwrap().repository, None);

        let set = spec(serde_json::json!({
            "url": "https://r",
            "caBundle": "-----BEGIN CERTIFICATE-----",
            "allowedRedirectHosts": ["cdn.example.com"],
        }));
        let access = Settings::read(&set).unwrap().repository.unwrap();
        assert_eq!(
            access.ca_bundle.as_deref(),
            Some("-----BEGIN CERTIFICATE-----")
        );
        assert_eq!(access.allowed_redirect_hosts, vec!["cdn.example.com"]);
    }
}
