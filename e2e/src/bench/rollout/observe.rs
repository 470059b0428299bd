//! Watching the rollout without adding requests per check: one watch of every
//! LivePatchNode and one of the policy, started before the measurement, feed local state
//! that progress lines and the end condition read as often as they like.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kpersist_crds::{LivePatchNode, LivePatchPolicy, NodePatchState, PolicyPhase};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::task::JoinHandle;

/// What the watches saw, kept current.
#[derive(Debug, Default)]
struct Seen {
    /// Each node's latest object.
    nodes: HashMap<String, LivePatchNode>,
    /// The watched policy's latest object.
    policy: Option<LivePatchPolicy>,
    /// Changes of a node's spec (its generation) seen since counting started.
    spec_changes: u64,
    /// Changes of a node's status seen since counting started.
    status_changes: u64,
    /// Changes of a node's labels alone (the operator's label-only writes).
    label_changes: u64,
    /// Whether changes are being counted.
    counting: bool,
    /// When each wave (1-based) was first seen in the policy status, after counting began.
    wave_seen: BTreeMap<u32, Instant>,
}

/// A snapshot for a progress line or the end condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Nodes whose status reports `release` Applied.
    pub applied: usize,
    /// Nodes downloading or applying.
    pub in_flight: usize,
    /// Nodes with an object.
    pub total: usize,
    /// The policy's current wave and wave count, from its status.
    pub wave: Option<(u32, u32)>,
    /// The policy's phase.
    pub phase: Option<PolicyPhase>,
}

/// The two watches and their state.
pub struct Observer {
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Observer {
    /// Starts watching every LivePatchNode and the policy `policy` as `client`.
    pub fn start(client: Client, policy: &str) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let nodes = watch_into(
            Api::all(client.clone()),
            watcher::Config::default(),
            seen.clone(),
            record_node,
        );
        let config = watcher::Config::default().fields(&format!("metadata.name={policy}"));
        let policies = watch_into(Api::all(client), config, seen.clone(), record_policy);
        Self {
            seen,
            tasks: vec![tokio::spawn(nodes), tokio::spawn(policies)],
        }
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts counting object changes and noting wave starts.
    pub fn start_counting(&self) {
        let mut seen = self.seen();
        seen.counting = true;
        seen.spec_changes = 0;
        seen.status_changes = 0;
        seen.label_changes = 0;
        seen.wave_seen.clear();
    }

    /// Node spec, status and label-only changes seen since [`Observer::start_counting`].
    pub fn changes(&self) -> (u64, u64, u64) {
        let seen = self.seen();
        (seen.spec_changes, seen.status_changes, seen.label_changes)
    }

    /// When each wave was first seen.
    pub fn wave_starts(&self) -> BTreeMap<u32, Instant> {
        self.seen().wave_seen.clone()
    }

    /// Nodes whose object exists and whose status is `state`.
    pub fn nodes_in(&self, state: NodePatchState) -> usize {
        let seen = self.seen();
        let in_state = |n: &&LivePatchNode| n.status.as_ref().and_then(|s| s.state) == Some(state);
        seen.nodes.values().filter(in_state).count()
    }

    /// Where the rollout of `release` is.
    pub fn progress(&self, release: &str) -> Progress {
        let seen = self.seen();
        let mut applied = 0;
        let mut in_flight = 0;
        for node in seen.nodes.values() {
            let Some(status) = node.status.as_ref() else {
                continue;
            };
            match status.state {
                Some(NodePatchState::Applied)
                    if status.applied.as_ref().is_some_and(|a| a.id == release) =>
                {
                    applied += 1
                }
                Some(NodePatchState::Downloading | NodePatchState::Applying) => in_flight += 1,
                _ => {}
            }
        }
        let status = seen.policy.as_ref().and_then(|p| p.status.as_ref());
        Progress {
            applied,
            in_flight,
            total: seen.nodes.len(),
            wave: status
                .and_then(|s| s.rollout.as_ref())
                .map(|r| (r.wave, r.waves)),
            phase: status.and_then(|s| s.phase),
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Feeds every event of a watch of `api` into `seen` through `record`.
async fn watch_into<K>(
    api: Api<K>,
    config: watcher::Config,
    seen: Arc<Mutex<Seen>>,
    record: fn(&mut Seen, Event<K>),
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let events = watcher::watcher(api, config);
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let Ok(event) = event else {
            // The watcher retries by itself; keep reading.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        record(&mut seen.lock().unwrap_or_else(|p| p.into_inner()), event);
    }
}

fn record_node(seen: &mut Seen, event: Event<LivePatchNode>) {
    match event {
        Event::Apply(node) | Event::InitApply(node) => {
            let name = node.name_any();
            if seen.counting
                && let Some(old) = seen.nodes.get(&name)
            {
                let spec = old.metadata.generation != node.metadata.generation;
                let status = old.status != node.status;
                let labels = old.metadata.labels != node.metadata.labels;
                seen.spec_changes += u64::from(spec);
                seen.status_changes += u64::from(status);
                seen.label_changes += u64::from(labels && !spec && !status);
            }
            seen.nodes.insert(name, node);
        }
        Event::Delete(node) => {
            seen.nodes.remove(&node.name_any());
        }
        Event::Init | Event::InitDone => {}
    }
}

fn record_policy(seen: &mut Seen, event: Event<LivePatchPolicy>) {
    match event {
        Event::Apply(policy) | Event::InitApply(policy) => {
            let wave = policy
                .status
                .as_ref()
                .and_then(|s| s.rollout.as_ref())
                .map(|r| r.wave);
            if seen.counting
                && let Some(wave) = wave
            {
                seen.wave_seen.entry(wave).or_insert_with(Instant::now);
            }
            seen.policy = Some(policy);
        }
        Event::Delete(_) => seen.policy = None,
        Event::Init | Event::InitDone => {}
    }
}
