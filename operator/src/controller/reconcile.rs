//! One reconcile of one policy: poll its repository and gate when due (client/network),
//! build the engine's input from the stores and decide (no client), then write node specs,
//! status and Events (client). Deletion goes through a finalizer that clears the policy's
//! `spec.desired` everywhere and unloads nothing.

use std::sync::Arc;
use std::time::Duration;

use kpersist_crds::{DesiredPatch, LivePatchNode, LivePatchPolicy, parse_duration};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use tokio::time::Instant;

use super::Context;
use super::{select, status, write};
use crate::engine::{self, EngineInput, GateVerdict};
use crate::error::Error;
use crate::gate;
use crate::repository::{RepositorySource, keys, poll_repository};

/// The finalizer that makes deletion clear the policy's node specs first.
pub const FINALIZER: &str = "kpersist.io/clear-desired";

/// Used when a duration in the spec does not parse (validation reports it in status).
const FALLBACK_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
const FALLBACK_GATE_INTERVAL: Duration = Duration::from_secs(30);
/// Floors under the spec's intervals: a `0s` (refused by validation, but still in the
/// object) must not turn every reconcile into a fetch or a query.
const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(10);
const MIN_GATE_INTERVAL: Duration = Duration::from_secs(5);
/// Longest a reconcile waits for its own node writes to come back through the watch.
const STORE_CATCH_UP: Duration = Duration::from_secs(5);

/// The controller's reconcile function.
#[tracing::instrument(skip_all, fields(policy = %policy.name_any()))]
pub async fn reconcile(policy: Arc<LivePatchPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.wait_until_leading().await;
    let started = Instant::now();
    let name = policy.metadata.name.clone().ok_or(Error::UnnamedPolicy)?;
    // A standby replica may have waited long for the lease: act on the newest object.
    let Some(policy) = ctx.policies.get(&ObjectRef::new(&name)) else {
        return Ok(Action::await_change());
    };
    let api: Api<LivePatchPolicy> = Api::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            Finalizer::Apply(policy) => apply(policy, ctx.clone()).await,
            Finalizer::Cleanup(policy) => cleanup(policy, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe_reconcile(started.elapsed());
    result
}

/// What the controller does after a failed reconcile: count it and retry soon.
pub fn error_policy(policy: Arc<LivePatchPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(policy = %policy.name_any(), %error, "reconcile failed");
    ctx.metrics.reconcile_failed(error.metric_label());
    Action::requeue(Duration::from_secs(15))
}

async fn apply(policy: Arc<LivePatchPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = policy.name_any();
    let now = jiff::Timestamp::now();

    let repo_spec = &policy.spec.repository;
    let interval = parse_duration(&repo_spec.check_interval)
        .unwrap_or(FALLBACK_CHECK_INTERVAL)
        .max(MIN_CHECK_INTERVAL);
    let mut repo = ctx
        .repositories
        .take(&name, RepositorySource::of(repo_spec));
    repo.remember_accepted_serial(policy.status.as_ref().and_then(|s| s.repository_serial));
    if repo.due(now, interval) {
        let trusted = keys::trusted_keys(&ctx.client, repo_spec).await;
        poll_repository(&mut repo, trusted, now).await;
        if let Some(outcome) = &repo.outcome {
            ctx.metrics.repository_polled(&name, outcome.metric_label());
        }
    }
    let view = repo.view.clone();
    let condition = repo.condition();
    let verified_at = repo.verified_at;
    let repository_serial = repo.serial_to_keep();
    let next_poll = repo.next_poll_in(now, interval);
    ctx.repositories.put(&name, repo);

    let (verdict, next_gate) = evaluate_gate(&policy, &ctx, now).await;

    let nodes = ctx.nodes.state();
    let policies = ctx.policies.state();
    let views = select::node_views(&policy, &nodes, &ctx.lpns, &policies);
    let decision = engine::decide(&EngineInput {
        policy: &policy,
        nodes: &views,
        repository: view.as_deref(),
        gate: verdict,
        now,
    });

    // Node writes normally go first: a status lost after them is recomputed from the
    // nodes. A newly marked bad release is the exception, recorded first, because the
    // nodes holding it may leave before a retry (see `Decision::marks_releases_bad`).
    let status_first = decision.marks_releases_bad(policy.status.as_ref());
    let mut new_status = decision.status;
    status::merge_repository(
        &mut new_status,
        policy.status.as_ref(),
        condition,
        verified_at,
        policy.metadata.generation,
        now,
    );
    new_status.repository_serial = repository_serial.or(new_status.repository_serial);

    // Only nodes with a LivePatchNode are written: the agent creates it (owned by the
    // Node, so it goes with the Node); a spec written before that would orphan it.
    let writes: Vec<_> = decision
        .desired
        .into_iter()
        .filter(|(node, _)| ctx.lpns.get(&ObjectRef::new(node)).is_some())
        .collect();
    let status_changed = policy.status.as_ref() != Some(&new_status);
    if status_first && status_changed {
        write::apply_status(&ctx.client, &name, &new_status).await?;
    }
    let written_over = resource_versions(&ctx.lpns, &writes);
    write::apply_all_desired(&ctx.client, &writes).await?;
    wait_for_store(&ctx.lpns, &written_over).await;
    if !status_first && status_changed {
        write::apply_status(&ctx.client, &name, &new_status).await?;
    }
    ctx.events.publish(&policy, &decision.events).await;
    status::count_events(&ctx.metrics, &name, &decision.events);
    ctx.metrics.record_status(&name, &new_status);

    let wait = status::requeue_after(decision.requeue_after, next_poll, next_gate);
    tracing::debug!(
        nodes = views.len(),
        writes = writes.len(),
        ?wait,
        "reconciled"
    );
    Ok(Action::requeue(wait))
}

/// The resourceVersion each node to be written has in the store now, for the nodes whose
/// version is known.
fn resource_versions(
    lpns: &Store<LivePatchNode>,
    writes: &[(String, Option<DesiredPatch>)],
) -> Vec<(String, String)> {
    writes
        .iter()
        .filter_map(|(node, _)| {
            let version = lpns.get(&ObjectRef::new(node))?.resource_version()?;
            Some((node.clone(), version))
        })
        .collect()
}

/// How many of the nodes written over `written_over` (name, resourceVersion before the
/// write) the store still shows at that version, given each node's version in it now.
pub fn still_stale(
    written_over: &[(String, String)],
    current: impl Fn(&str) -> Option<String>,
) -> usize {
    written_over
        .iter()
        .filter(|(node, before)| current(node).as_ref() == Some(before))
        .count()
}

/// Waits (up to [`STORE_CATCH_UP`]) until the store shows every written node past the
/// version it was written over. A reconcile that started on a store still without its
/// predecessor's writes would decide them again and patch the same specs a second time;
/// under load the watch can lag the writes by seconds.
async fn wait_for_store(lpns: &Store<LivePatchNode>, written_over: &[(String, String)]) {
    let started = Instant::now();
    let current = |node: &str| lpns.get(&ObjectRef::new(node))?.resource_version();
    while still_stale(written_over, current) > 0 && started.elapsed() < STORE_CATCH_UP {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the Prometheus gate when the policy has one and a bake is on; returns the verdict
/// for this bake and when to evaluate next.
async fn evaluate_gate(
    policy: &LivePatchPolicy,
    ctx: &Context,
    now: jiff::Timestamp,
) -> (Option<GateVerdict>, Option<Duration>) {
    let name = policy.name_any();
    let (Some(spec), Some(bake)) = (
        policy.spec.health.prometheus.as_ref(),
        status::baking(policy.status.as_ref()),
    ) else {
        ctx.gates.forget(&name);
        return (None, None);
    };
    let interval = parse_duration(&spec.interval)
        .unwrap_or(FALLBACK_GATE_INTERVAL)
        .max(MIN_GATE_INTERVAL);
    let mut state = ctx.gates.take(&name, Some(&bake));
    if state.due(now, interval) {
        let result = gate::query(&ctx.http, spec).await;
        state.record(result, now);
    }
    let verdict = state.verdict.clone();
    ctx.gates.put(&name, state);
    (verdict, Some(interval))
}

/// Deleting a policy clears `spec.desired` on every LivePatchNode it set, and never unloads
/// a patch: a loaded livepatch is what closes the CVEs on a running kernel, and taking it
/// away because a Kubernetes object went (or was recreated, or moved to another policy)
/// would silently re-expose every node. Unloading is an explicit action, a `Revert`
/// another policy or a person asks for.
async fn cleanup(policy: Arc<LivePatchPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = policy.name_any();
    let writes: Vec<_> = ctx
        .lpns
        .state()
        .iter()
        .filter(|lpn| lpn.spec.desired.as_ref().is_some_and(|d| d.policy == name))
        .map(|lpn| (lpn.name_any(), None))
        .collect();
    let cleared = write::apply_all_desired(&ctx.client, &writes).await?;
    tracing::info!(
        cleared,
        "policy deleted: cleared its desired specs, loaded patches stay"
    );
    ctx.repositories.forget(&name);
    ctx.gates.forget(&name);
    ctx.metrics.forget_policy(&name);
    Ok(Action::await_change())
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "gate_flow_tests.rs"]
mod gate_flow_tests;
