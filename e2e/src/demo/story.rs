//! The demo's three acts on a real control plane: a first rollout in waves, a newer
//! cumulative release picked up on its own, and a bad release caught on the canary and
//! reverted. Everything shown is read from the API server, as `kubectl` would see it.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kpersist_crds::{LivePatchPolicy, PolicyPhase};
use kube::Api;

use super::plan::{self, BAD_VERSION, KERNEL_A, KERNEL_B};
use super::screen::Screen;
use super::summary::{self, Report};
use super::view::{PolicyEvent, Snapshot};
use crate::Result;
use crate::controlplane::Identity;
use crate::sim_fleet::SimFleet;

/// What the person asked for on the command line.
#[derive(Clone, Debug)]
pub struct Options {
    /// Simulated nodes.
    pub nodes: usize,
    /// Bake of every wave but the last, replacing the policy file's.
    pub bake: Option<String>,
    /// Keep everything running after the summary until interrupted.
    pub keep_running: bool,
    /// The sample policy file.
    pub policy: PathBuf,
}

/// How long one act may take before the demo gives up on it.
const ACT_LIMIT: Duration = Duration::from_secs(240);
/// How often the live view is refreshed.
const REFRESH: Duration = Duration::from_millis(500);
/// How long the demo keeps watching after the revert, to show the bad release is not
/// offered again (the policy checks the repository every two seconds).
const AFTER_REVERT: Duration = Duration::from_secs(6);

/// Runs the demo and returns whether the story happened as shown. `verdict` is set as soon
/// as it is known, so an interrupt during `--keep-running` still reports it.
pub async fn run(
    options: &Options,
    screen: &mut Screen,
    verdict: &Cell<Option<bool>>,
) -> Result<()> {
    // up.sh builds kube-apiserver through build.sh on the first run only, printing its
    // progress; later runs find it cached.
    screen.say(&format!(
        "==> building kpersist-operator and kpersist-agent, starting etcd + kube-apiserver \
         (RBAC, token identities),\n    a signed repository and {} simulated nodes. The first \
         run builds kube-apiserver from Debian's source\n    (about 10 minutes, cached after).",
        options.nodes
    ));
    let nodes = plan::fleet_nodes(options.nodes);
    let mut fleet = SimFleet::start(nodes).await?;
    publish_for_both(&fleet, 1)?;
    fleet.start_agents()?;
    fleet.start_operator()?;
    let policy = plan::load_policy(
        &options.policy,
        &fleet.repo.url(),
        &fleet.publisher.public_key(),
        options.bake.as_deref(),
    )?;
    let name = policy.metadata.name.clone().unwrap_or_default();
    fleet.create_policy(&policy).await?;
    screen.say(&format!(
        "==> repository {} signed with a fresh key; v1 published for {} and {}; \
         policy {name} applied from {}",
        fleet.repo.url(),
        KERNEL_A.release,
        KERNEL_B.release,
        options.policy.display()
    ));

    let mut report = Report {
        nodes: options.nodes,
        bad_release: plan::release_id(KERNEL_A, BAD_VERSION),
        kubeconfig: fleet
            .cluster
            .plane
            .kubeconfig(Identity::Admin)
            .display()
            .to_string(),
        metrics_url: format!("http://{}/metrics", fleet.operator_metrics_addr()),
        logs: fleet.cluster.plane.dir().display().to_string(),
        ..Report::default()
    };
    let v1 = plan::expected(fleet.nodes(), 1);
    report.supported = v1.len();
    report.unsupported = fleet
        .nodes()
        .iter()
        .filter(|n| !v1.contains_key(&n.name))
        .map(|n| n.name.clone())
        .collect();

    // Act 1: the first rollout, wave by wave.
    let title = format!("Act 1/3: v1 rolls out in waves to {} nodes", options.nodes);
    let act = live(&fleet, screen, &title, &name, |s| {
        settled(s) && plan::all_applied(&s.nodes, &v1)
    })
    .await?;
    report.v1_seconds = act.finished.then_some(act.seconds);
    report.v1_patched = count_on(&act.snap, &v1);

    // Act 2: a newer cumulative release, picked up at the next repository check.
    publish_for_both(&fleet, 2)?;
    screen.say(&format!(
        "==> published and signed v2 ({} CVEs) for both kernels; nothing else is touched",
        plan::cves(2).len()
    ));
    let v2 = plan::expected(fleet.nodes(), 2);
    let act = live(
        &fleet,
        screen,
        "Act 2/3: persistent update to v2",
        &name,
        |s| settled(s) && plan::all_applied(&s.nodes, &v2),
    )
    .await?;
    report.v2_seconds = act.finished.then_some(act.seconds);
    report.v2_patched = count_on(&act.snap, &v2);

    // Act 3: a bad release. Every KERNEL_A simulated kernel taints on it.
    let bad = report.bad_release.clone();
    fleet.publisher.publish(
        KERNEL_A.release,
        KERNEL_A.build_id,
        BAD_VERSION,
        &plan::cves(BAD_VERSION),
        &["stable"],
    )?;
    screen.say(&format!(
        "==> published and signed {bad}, a BAD release: the canary's kernel taints when it \
         loads.\n    After the revert the demo watches {}s more: {bad} must reach no other node.",
        AFTER_REVERT.as_secs()
    ));
    // The canary's error is cleared once it is back on v2, so it is caught while it shows.
    let canary_error = RefCell::new(None);
    let reverted_at = Cell::new(None);
    let act = live(
        &fleet,
        screen,
        "Act 3/3: bad v3 meets the canary",
        &name,
        |s| {
            if let Some(error) = failure_of(s, &bad) {
                canary_error.replace(Some(error));
            }
            let reverted =
                marked_bad(s, &bad).is_some() && plan::all_applied(&s.nodes, &v2) && !rolling(s);
            if reverted && reverted_at.get().is_none() {
                reverted_at.set(Some(s.elapsed));
            }
            reverted_at
                .get()
                .is_some_and(|at| s.elapsed >= at + AFTER_REVERT.as_secs_f64())
        },
    )
    .await?;
    report.revert_seconds = reverted_at.get().filter(|_| act.finished);
    let after = act.snap;

    report.asked_bad = fleet.watch.ever_desired(&bad);
    report.canary_error = canary_error.into_inner().or_else(|| {
        // Too quick for the refresh: the operator's Event says what the node reported.
        let failed = after
            .events
            .iter()
            .rev()
            .find(|e| e.reason == "WaveFailed")?;
        Some(failed.note.clone())
    });
    report.marked_bad = marked_bad(&after, &bad);
    report.conditions = conditions(&after);
    report.all_on_v2 = plan::all_applied(&after.nodes, &v2);

    let (lines, ok) = summary::render(&report, screen.paint());
    verdict.set(Some(ok));
    for line in lines {
        screen.say(&line);
    }
    if !ok {
        let dead = fleet.process_report();
        if !dead.is_empty() {
            screen.say(&format!("processes that stopped:{dead}"));
        }
    }
    if !options.keep_running {
        screen.say("(all of it is removed when the demo exits; --keep-running keeps it up)");
    }
    if options.keep_running {
        screen.say(&format!(
            "\nEverything keeps running. In another terminal:\n  export KUBECONFIG={}\n  \
             kubectl get lpp,lpn\n  kubectl describe lpp {name}\n  \
             kubectl get events -n kube-system\n  curl -s {}\nPress Ctrl-C to stop it all.",
            report.kubeconfig, report.metrics_url
        ));
        std::future::pending::<()>().await;
    }
    screen.say("==> stopping the operator, agents, API server and etcd");
    Ok(())
}

/// Publishes and signs `version` for both kernels that get releases.
fn publish_for_both(fleet: &SimFleet, version: u64) -> Result<()> {
    for kernel in [KERNEL_A, KERNEL_B] {
        fleet.publisher.publish(
            kernel.release,
            kernel.build_id,
            version,
            &plan::cves(version),
            &["stable"],
        )?;
    }
    Ok(())
}

/// How an act ended.
struct ActEnd {
    finished: bool,
    seconds: f64,
    snap: Snapshot,
}

/// Shows the rollout live until `done` holds (or [`ACT_LIMIT`] passes), then leaves the
/// last frame on screen.
async fn live(
    fleet: &SimFleet,
    screen: &mut Screen,
    title: &str,
    policy: &str,
    done: impl Fn(&Snapshot) -> bool,
) -> Result<ActEnd> {
    let start = Instant::now();
    loop {
        let snap = snapshot(fleet, title, policy, start).await?;
        screen.draw(&snap);
        let finished = done(&snap);
        if finished || start.elapsed() >= ACT_LIMIT {
            screen.keep(&snap);
            if !finished {
                screen.say(&format!("==> gave up after {}s", ACT_LIMIT.as_secs()));
            }
            return Ok(ActEnd {
                finished,
                seconds: start.elapsed().as_secs_f64(),
                snap,
            });
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// Reads the policy and its Events from the API server; the nodes come from the watch.
async fn snapshot(fleet: &SimFleet, title: &str, name: &str, start: Instant) -> Result<Snapshot> {
    let client = fleet.cluster.admin.clone();
    let policy = Api::<LivePatchPolicy>::all(client.clone())
        .get_opt(name)
        .await?;
    let events = Api::<Event>::namespaced(client, "kube-system")
        .list(&Default::default())
        .await?;
    let mut events: Vec<(jiff::Timestamp, PolicyEvent)> = events
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| {
            let at = e.event_time.as_ref()?.0;
            let event = PolicyEvent {
                time: at.strftime("%H:%M:%S").to_string(),
                kind: e.type_.unwrap_or_default(),
                reason: e.reason.unwrap_or_default(),
                note: e.note.unwrap_or_default(),
            };
            Some((at, event))
        })
        .collect();
    events.sort_by_key(|(at, _)| *at);
    Ok(Snapshot {
        title: title.to_string(),
        elapsed: start.elapsed().as_secs_f64(),
        policy,
        names: fleet.nodes().iter().map(|n| n.name.clone()).collect(),
        nodes: fleet.watch.current(),
        events: events.into_iter().map(|(_, e)| e).collect(),
    })
}

fn phase(snap: &Snapshot) -> Option<PolicyPhase> {
    snap.policy.as_ref()?.status.as_ref()?.phase
}

/// The rollout has ended: nothing in progress, baking or reverting.
fn settled(snap: &Snapshot) -> bool {
    matches!(phase(snap), Some(PolicyPhase::Complete | PolicyPhase::Idle))
}

fn rolling(snap: &Snapshot) -> bool {
    matches!(
        phase(snap),
        Some(PolicyPhase::Progressing | PolicyPhase::Baking | PolicyPhase::RollingBack)
    )
}

/// The policy's reason for marking `release` bad, once it has.
fn marked_bad(snap: &Snapshot, release: &str) -> Option<String> {
    let status = snap.policy.as_ref()?.status.as_ref()?;
    let bad = status.bad_releases.iter().find(|b| b.release == release)?;
    Some(bad.reason.clone())
}

/// `Reason: message` of a node that reported a failure of `release`.
fn failure_of(snap: &Snapshot, release: &str) -> Option<String> {
    snap.nodes.values().find_map(|node| {
        let error = node.status.as_ref()?.last_error.as_ref()?;
        (error.release.as_deref() == Some(release))
            .then(|| format!("{:?}: {}", error.reason, error.message))
    })
}

fn conditions(snap: &Snapshot) -> Vec<String> {
    let Some(status) = snap.policy.as_ref().and_then(|p| p.status.as_ref()) else {
        return Vec::new();
    };
    status
        .conditions
        .iter()
        .map(|c| match c.message.as_str() {
            "" => format!("{}={} {}", c.type_, c.status, c.reason),
            message => format!("{}={} {}: {message}", c.type_, c.status, c.reason),
        })
        .collect()
}

/// How many nodes of `expected` run the release given for them.
fn count_on(snap: &Snapshot, expected: &std::collections::BTreeMap<String, String>) -> usize {
    expected
        .iter()
        .filter(|(name, release)| {
            snap.nodes
                .get(*name)
                .and_then(|n| n.status.as_ref()?.applied.as_ref())
                .is_some_and(|a| &a.id == *release)
        })
        .count()
}
