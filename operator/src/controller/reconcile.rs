//! One reconcile of one policy: poll its repository and gate when due (client/network),
//! build the engine's input from the stores and decide (no client), then write node specs,
//! status and Events (client), each write conditional on the version of the object the
//! decision was made from (see [`super::write`]). Deletion goes through a finalizer that clears
//! the policy's `spec.desired` everywhere and unloads nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kpersist_crds::{
    DesiredPatch, LivePatchNode, LivePatchPolicy, LivePatchPolicyStatus, parse_duration,
};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use tokio::time::Instant;

use super::Context;
use super::{kept, select, status, write};
use crate::engine::{self, EngineInput, GateVerdict, RolloutEvent};
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
/// How soon a reconcile whose writes were refused runs again, on fresher objects.
const DECIDE_AGAIN: Duration = Duration::from_secs(1);
/// The `reason` of `kpersist_reconcile_errors_total` for a reconcile that found the objects
/// it decided on changed when it wrote.
const WRITE_CONFLICT: &str = "write_conflict";
/// The `reason` of `kpersist_reconcile_errors_total` for a LivePatchNode label write that
/// failed (the next reconcile tries again; nothing else waits for it).
const LABEL_WRITE: &str = "label_write";

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
        if let Some(at) = repo.verified_at {
            ctx.metrics.repository_verified(&name, at);
        }
    }
    let view = repo.view.clone();
    let condition = repo.condition();
    let verified_at = repo.verified_at;
    let repository_serial = repo.serial_to_keep();
    let next_poll = repo.next_poll_in(now, interval);
    ctx.repositories.put(&name, repo);

    let (verdict, next_gate) = evaluate_gate(&policy, &ctx, now).await;

    let policy = kept::recalled(&ctx, policy)
        .await
        .map_err(|source| kept_error(&ctx, source))?;
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
    let mut writes = spec_writes(decision.desired, &views, &ctx.lpns);
    if !policy.spec.rollout.dry_run && select::selector_of(&policy).is_some() {
        let selected = |node: &str| {
            let node = ctx.nodes.get(&ObjectRef::new(node))?;
            Some(select::selects(&policy, node.labels()))
        };
        let bad = new_status
            .bad_releases
            .iter()
            .map(|b| b.release.as_str())
            .collect();
        let access = engine::repository_access(&policy.spec);
        let departed = select::departed(
            &ctx.lpns.state(),
            &name,
            selected,
            &bad,
            now,
            access.as_ref(),
        );
        writes.extend(departed);
    }
    // Before the writes, which may end this reconcile early: runs seen now are counted now.
    ctx.metrics.record_runs(&name, status::last_runs(&views));
    let status_changed = policy.status.as_ref() != Some(&new_status);
    let status = status_changed.then_some(&new_status);
    if let Some(stop) = write_decision(&ctx, &policy, status, status_first, &writes).await? {
        return Ok(stop);
    }
    // Events are writes too: a replica that stopped leading records none.
    if write::leads(&ctx.leading) {
        ctx.events.publish(&policy, &decision.events).await;
    }
    // The status first: it creates the policy's counters at 0 before any event counts.
    ctx.metrics.record_status(&name, &new_status);
    ctx.metrics
        .record_node_errors(&name, &status::node_errors(&views));
    status::count_events(&ctx.metrics, &name, &decision.events);

    if !policy.spec.rollout.dry_run
        && let Some(stop) = write_labels(&ctx, &views, &writes).await?
    {
        return Ok(stop);
    }

    let wait = status::requeue_after(decision.requeue_after, next_poll, next_gate);
    tracing::debug!(
        nodes = views.len(),
        writes = writes.len(),
        ?wait,
        "reconciled"
    );
    Ok(Action::requeue(wait))
}

/// The node writes of a decision, each conditional on the resourceVersion of the
/// LivePatchNode the engine was shown. A node the engine saw without one is not written
/// (its creation brings a new reconcile); a node it was not shown at all is conditional
/// on the store's copy.
fn spec_writes(
    desired: Vec<(String, Option<DesiredPatch>)>,
    views: &[engine::NodeView],
    lpns: &Store<LivePatchNode>,
) -> Vec<write::SpecWrite> {
    let seen: HashMap<&str, Option<&Arc<LivePatchNode>>> = views
        .iter()
        .map(|view| (view.name.as_str(), view.lpn.as_ref()))
        .collect();
    desired
        .into_iter()
        .filter_map(|(node, desired)| {
            let lpn = match seen.get(node.as_str()) {
                Some(lpn) => Arc::clone((*lpn)?),
                None => lpns.get(&ObjectRef::new(&node))?,
            };
            Some(write::SpecWrite::of(&lpn, desired))
        })
        .collect()
}

/// Makes a decision's writes: node specs, then the status (or the status first, when
/// `status_first`); `status` is `None` when it did not change. Returns the action to take
/// instead of finishing the reconcile when a write was refused: on a conflict the store is
/// given time to show the newer object and the engine decides again on it; after the
/// Lease was lost nothing more is written.
async fn write_decision(
    ctx: &Context,
    policy: &LivePatchPolicy,
    status: Option<&LivePatchPolicyStatus>,
    status_first: bool,
    writes: &[write::SpecWrite],
) -> Result<Option<Action>, Error> {
    if status_first
        && let Some(status) = status
        && let Some(stop) = write_status(ctx, policy, status).await?
    {
        return Ok(Some(stop));
    }
    let nodes = write::apply_all_desired(&ctx.client, &ctx.leading, writes).await?;
    if nodes.withheld > 0 {
        return Ok(Some(stepped_down(nodes.withheld)));
    }
    let written_over: Vec<(String, String)> = writes
        .iter()
        .filter_map(|w| Some((w.node.clone(), w.resource_version.clone()?)))
        .collect();
    wait_for_store(&written_over, |node| {
        ctx.lpns.get(&ObjectRef::new(node))?.resource_version()
    })
    .await;
    if !nodes.conflicts.is_empty() {
        return Ok(Some(decide_again(
            ctx,
            &policy.name_any(),
            &nodes.conflicts,
        )));
    }
    if !status_first
        && let Some(status) = status
        && let Some(stop) = write_status(ctx, policy, status).await?
    {
        return Ok(Some(stop));
    }
    Ok(None)
}

/// Brings the labels of the policy's nodes up to date with their fields: the state and the
/// kernel change without a spec write (a node written just now got its labels with its
/// spec). Last, so that a refused label write delays nothing else: a conflict is left to
/// the reconcile that the newer object brings, any other failure is logged and counted.
async fn write_labels(
    ctx: &Context,
    views: &[engine::NodeView],
    written: &[write::SpecWrite],
) -> Result<Option<Action>, Error> {
    let written: HashSet<&str> = written.iter().map(|w| w.node.as_str()).collect();
    let labels: Vec<write::LabelWrite> = views
        .iter()
        .filter(|view| !written.contains(view.name.as_str()))
        .filter_map(|view| write::LabelWrite::of(view.lpn.as_deref()?))
        .collect();
    match write::apply_all_labels(&ctx.client, &ctx.leading, &labels).await {
        Ok(outcome) => Ok((outcome.withheld > 0).then(|| stepped_down(outcome.withheld))),
        Err(error) => {
            tracing::warn!(%error, "a LivePatchNode label write failed; the next reconcile tries again");
            ctx.metrics.reconcile_failed(LABEL_WRITE);
            Ok(None)
        }
    }
}

/// Writes the policy's status on condition that the policy is still the copy it was
/// computed from, then waits for the store to show the result (the next reconcile must not
/// decide on the status this one replaced). See [`write_decision`] for the action returned.
async fn write_status(
    ctx: &Context,
    policy: &LivePatchPolicy,
    status: &LivePatchPolicyStatus,
) -> Result<Option<Action>, Error> {
    let name = policy.name_any();
    let version = policy.resource_version();
    let outcome =
        write::apply_status(&ctx.client, &ctx.leading, &name, version.as_deref(), status).await?;
    if outcome == write::Outcome::NotLeading {
        return Ok(Some(stepped_down(1)));
    }
    let written_over: Vec<(String, String)> =
        version.map(|v| (name.clone(), v)).into_iter().collect();
    wait_for_store(&written_over, |policy| {
        ctx.policies
            .get(&ObjectRef::new(policy))?
            .resource_version()
    })
    .await;
    Ok((outcome == write::Outcome::Conflict)
        .then(|| decide_again(ctx, &name, std::slice::from_ref(&name))))
}

/// A write found its object changed since the decision: count it and decide again soon,
/// on the newer object. The refused content is not sent again.
fn decide_again(ctx: &Context, policy: &str, changed: &[String]) -> Action {
    count_conflict(ctx, policy, changed);
    Action::requeue(DECIDE_AGAIN)
}

/// Logs and counts writes refused because their objects changed since the decision.
fn count_conflict(ctx: &Context, policy: &str, changed: &[String]) {
    tracing::info!(
        policy,
        ?changed,
        "objects changed since the decision was made; deciding again"
    );
    ctx.metrics.reconcile_failed(WRITE_CONFLICT);
}

/// The Lease was lost mid-reconcile: nothing more is written. The next reconcile waits
/// until this replica leads again (in practice the process exits first).
fn stepped_down(withheld: usize) -> Action {
    tracing::warn!(
        withheld,
        "no longer leading: the rest of this reconcile's writes were not sent"
    );
    Action::requeue(DECIDE_AGAIN)
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

/// Waits (up to [`STORE_CATCH_UP`]) until the store, read through `current`, shows every
/// written object past the version it was written over. A reconcile that started on a
/// store still without its predecessor's writes would decide them again and patch the
/// same objects a second time (refused now, as a conflict); under load the watch can lag
/// the writes by seconds.
async fn wait_for_store(
    written_over: &[(String, String)],
    current: impl Fn(&str) -> Option<String>,
) {
    let started = Instant::now();
    while still_stale(written_over, &current) > 0 && started.elapsed() < STORE_CATCH_UP {
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
        let result = gate::evaluate(&ctx.client, spec).await;
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
    finish_reverts(&ctx, &policy).await;
    ctx.wait_until_leading().await;
    kept::keep(&ctx, &policy, jiff::Timestamp::now())
        .await
        .map_err(|source| kept_error(&ctx, source))?;
    let cleared = clear_all(&ctx, &name).await?;
    tracing::info!(
        cleared,
        "policy deleted: cleared its desired specs, loaded patches stay"
    );
    ctx.repositories.forget(&name);
    ctx.gates.forget(&name);
    ctx.metrics.forget_policy(&name);
    Ok(Action::await_change())
}

fn kept_error(ctx: &Context, source: kube::Error) -> Error {
    Error::KeptBadReleases {
        namespace: ctx.namespace.clone(),
        source,
    }
}

/// How long deleting a policy waits for the reverts it asked for: past it, a node that has
/// not finished is left to its agent (the request is cleared, the patch stays).
const REVERT_WAIT: Duration = Duration::from_secs(600);

/// Waits until every revert `policy` asked for has finished, so that deleting a policy
/// while it rolls back does not leave nodes on the bad release; says so in an Event.
async fn finish_reverts(ctx: &Context, policy: &LivePatchPolicy) {
    let name = policy.name_any();
    let started = Instant::now();
    let mut announced = false;
    loop {
        let nodes = select::pending_reverts(&ctx.lpns.state(), &name);
        if nodes == 0 || started.elapsed() > REVERT_WAIT {
            return;
        }
        if !announced && write::leads(&ctx.leading) {
            ctx.events
                .publish(policy, &[RolloutEvent::DeletionWaitsForReverts { nodes }])
                .await;
            announced = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Clears `spec.desired` on every LivePatchNode that names `policy`, each on condition
/// that it is still the store's copy. After a conflict the store is given time to show the
/// newer object and the clearing is decided again on it (the node may have gone to another
/// policy meanwhile); after the Lease was lost it waits to lead again. Returns how many
/// specs it cleared.
async fn clear_all(ctx: &Context, policy: &str) -> Result<usize, Error> {
    let mut cleared = 0;
    loop {
        ctx.wait_until_leading().await;
        let writes: Vec<write::SpecWrite> = ctx
            .lpns
            .state()
            .iter()
            .filter(|lpn| {
                lpn.spec
                    .desired
                    .as_ref()
                    .is_some_and(|d| d.policy == policy)
            })
            .map(|lpn| write::SpecWrite::of(lpn, None))
            .collect();
        let outcome = write::apply_all_desired(&ctx.client, &ctx.leading, &writes).await?;
        cleared += outcome.written;
        if outcome.conflicts.is_empty() && outcome.withheld == 0 {
            return Ok(cleared);
        }
        let written_over: Vec<(String, String)> = writes
            .into_iter()
            .filter(|w| outcome.conflicts.contains(&w.node))
            .filter_map(|w| Some((w.node, w.resource_version?)))
            .collect();
        wait_for_store(&written_over, |node| {
            ctx.lpns.get(&ObjectRef::new(node))?.resource_version()
        })
        .await;
        if !outcome.conflicts.is_empty() {
            count_conflict(ctx, policy, &outcome.conflicts);
        }
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "gate_flow_tests.rs"]
mod gate_flow_tests;

#[cfg(test)]
#[path = "conflict_tests.rs"]
mod conflict_tests;
