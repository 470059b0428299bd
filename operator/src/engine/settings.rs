//! A policy spec read once into the values the engine works with (durations parsed, windows
//! resolved), after validation has refused anything that does not read.

use std::time::Duration;

use kpersist_crds::{FailurePolicy, LivePatchPolicySpec, parse_duration};

use super::waves::{WaveRule, WaveSize};
use super::window::{Window, Windows};
use crate::validate::{FieldError, validate};

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
    pub windows: Windows,
    pub paused: bool,
    pub dry_run: bool,
    pub node_ready: bool,
    pub kmsg_checks: bool,
    pub transition_timeout: String,
    /// How often the gate is evaluated, when the policy has one.
    pub gate_interval: Option<Duration>,
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
            channel: spec.repository.channel.clone(),
            delay: spec.repository.delay.as_deref().map(duration),
            pinned_version: spec.repository.pinned_version,
            waves,
            max_in_flight: rollout.max_in_flight.max(1) as usize,
            max_failures: rollout.max_failures as usize,
            failure_policy: rollout.failure_policy,
            windows,
            paused: rollout.paused,
            dry_run: rollout.dry_run,
            node_ready: spec.health.node_ready,
            kmsg_checks: spec.health.kmsg_checks,
            transition_timeout: spec.health.transition_timeout.clone(),
            gate_interval: spec
                .health
                .prometheus
                .as_ref()
                .map(|g| duration(&g.interval)),
        })
    }
}
