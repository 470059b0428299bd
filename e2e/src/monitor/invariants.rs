//! The rollout engine's invariants, checked on everything a [`super::NodeWatch`] recorded
//! (every version of every LivePatchNode and LivePatchPolicy, ordered by etcd revision)
//! and on the objects at the end of a scenario. Pure: no client, no clock.
//!
//! Wave membership comes from the nodes' own specs (`desired.release`, `desired.wave`) as
//! they changed, never from the policy status, so these checks hold whatever the status
//! carries.
//!
//! Node life (docs/DESIGN.md, "Node life"): a node whose request the engine resolved as a
//! node problem (named so by the policy's Degraded condition right before or right after
//! the event), a node whose last error is its own trouble and a node that rebooted into
//! another kernel build have freed their slot: they count neither in flight nor as an
//! unfinished or failed member of their wave. Only a node failing with a release's fault
//! counts as failed.

use std::collections::{BTreeMap, BTreeSet};

use kpersist_crds::{LivePatchNode, LivePatchPolicy, NodePatchState, PatchAction, PolicyPhase};

use super::{Object, Observed, in_flight};

#[path = "node_life.rs"]
pub mod node_life;
use node_life::{moved_kernel, named_troubled, node_blamed, release_fault};

/// One invariant of the rollout engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// At most `maxInFlight` nodes have an unfinished apply at any time.
    MaxInFlight,
    /// No node of wave n+1 is handed a release before every node of wave n runs its own.
    WaveOrder,
    /// A release marked bad is never handed to a node again.
    BadReleaseHandedOut,
    /// Every release handed out is in the signed index, byte for byte (hash and size).
    UnsignedRelease,
    /// Every node ends on its expected release and the policy in an expected phase.
    FinalState,
    /// No node is left downloading, applying or reverting.
    StuckTransition,
    /// No LivePatchNode is deleted, recreated, duplicated or missing (a node that left
    /// takes its LivePatchNode with it).
    LostOrDuplicated,
    /// A release is marked bad only after a node reported a fault of that release: node
    /// problems (NotReady, a silent agent, a failed download, another kernel) never are.
    BlamelessBadRelease,
}

impl Invariant {
    /// Every invariant, in the order reports list them.
    pub const ALL: [Invariant; 8] = [
        Invariant::MaxInFlight,
        Invariant::WaveOrder,
        Invariant::BadReleaseHandedOut,
        Invariant::UnsignedRelease,
        Invariant::FinalState,
        Invariant::StuckTransition,
        Invariant::LostOrDuplicated,
        Invariant::BlamelessBadRelease,
    ];
}

/// An invariant that did not hold, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub invariant: Invariant,
    /// What was seen: node, release, revision.
    pub detail: String,
}

/// A release of the signed index, as far as a handed-out release must match it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRelease {
    /// `<kernelRelease>/v<version>`.
    pub id: String,
    /// SHA-256 of the module, lowercase hex.
    pub sha256: String,
    /// Size of the module in bytes.
    pub size: u64,
}

/// What a scenario promises about its policy and nodes.
#[derive(Clone, Debug)]
pub struct Expectations {
    /// The policy's name.
    pub policy: String,
    /// The policy's `maxInFlight`.
    pub max_in_flight: u32,
    /// The policy's `maxFailures`.
    pub max_failures: u32,
    /// Every release the repository ever signed.
    pub signed: Vec<SignedRelease>,
    /// Per node of the scenario: the releases it may run at the end (`None`: none).
    pub end_applied: BTreeMap<String, Vec<Option<String>>>,
    /// Nodes that left the cluster during the scenario: their LivePatchNode went with
    /// them, and they are not looked for at the end.
    pub left: BTreeSet<String>,
    /// Phases the policy may end in; empty: the policy must be gone, and no node may still
    /// name it in `spec.desired`.
    pub end_phases: Vec<PolicyPhase>,
}

/// The objects at the end of a scenario, listed from the API server.
#[derive(Clone, Debug, Default)]
pub struct Final {
    /// Every LivePatchNode listed.
    pub nodes: Vec<LivePatchNode>,
    /// The policy, if it still exists.
    pub policy: Option<LivePatchPolicy>,
}

/// `(action, release id, wave)` of a node's `spec.desired`: what a hand-out changes.
type Ask = (PatchAction, Option<String>, Option<u32>);

fn ask(node: &LivePatchNode) -> Option<Ask> {
    let desired = node.spec.desired.as_ref()?;
    Some((
        desired.action,
        desired.release.as_ref().map(|r| r.id.clone()),
        desired.wave,
    ))
}

fn name_of(node: &LivePatchNode) -> String {
    node.metadata.name.clone().unwrap_or_default()
}

/// Whether `node` runs the release its `spec.desired` asks to apply.
fn done(node: &LivePatchNode) -> bool {
    let Some(status) = node.status.as_ref() else {
        return false;
    };
    let asked = node.spec.desired.as_ref().and_then(|d| d.release.as_ref());
    status.state == Some(NodePatchState::Applied)
        && status.applied.as_ref().map(|a| &a.id) == asked.map(|r| &r.id)
}

/// Whether the node failed with a release's fault (a failure that is the node's own
/// trouble does not count against a wave).
fn failed(node: &LivePatchNode) -> bool {
    matches!(
        node.status.as_ref().and_then(|s| s.state),
        Some(NodePatchState::Failed | NodePatchState::CrashSuspected)
    ) && !node_blamed(node)
}

/// Replays the recorded history in etcd order.
#[derive(Default)]
struct Replay {
    nodes: BTreeMap<String, LivePatchNode>,
    uids: BTreeMap<String, String>,
    /// Index of the event that last handed each node a release.
    handed_at: BTreeMap<String, usize>,
    /// A rollout's waves only grow; a smaller wave number starts a new rollout.
    epoch_start: usize,
    epoch_max_wave: u32,
    /// Each release marked bad, with the index of the event that first showed it.
    bad: BTreeMap<String, usize>,
    /// Releases some node reported a fault of.
    faulted: BTreeSet<String>,
    /// Nodes named as node problems by the latest policy status.
    troubled: BTreeSet<String>,
    /// Per event, the nodes named as node problems by the next policy status after it (the
    /// engine writes node specs first, then the status of the same decision).
    troubled_next: Vec<BTreeSet<String>>,
    /// Nodes resolved as node problems since they were last handed a release.
    freed: BTreeSet<String>,
    over_limit: bool,
    violations: Vec<Violation>,
}

impl Replay {
    fn violate(&mut self, invariant: Invariant, detail: String) {
        self.violations.push(Violation { invariant, detail });
    }

    fn policy(&mut self, i: usize, revision: u64, policy: &LivePatchPolicy) {
        for bad in policy.status.iter().flat_map(|s| &s.bad_releases) {
            let new = !self.bad.contains_key(&bad.release);
            if new && !self.faulted.contains(&bad.release) {
                let detail = format!(
                    "{} was marked bad at revision {revision} ({}), but no node had \
                     reported a fault of it",
                    bad.release, bad.reason
                );
                self.violate(Invariant::BlamelessBadRelease, detail);
            }
            self.bad.entry(bad.release.clone()).or_insert(i);
        }
        self.troubled = named_troubled(policy);
    }

    /// Marks the nodes named as node problems around event `i` as having freed their slot.
    fn free_troubled(&mut self, i: usize) {
        let next = self.troubled_next.get(i).cloned().unwrap_or_default();
        for name in self.troubled.iter().chain(&next) {
            if self.handed_at.contains_key(name) {
                self.freed.insert(name.clone());
            }
        }
    }

    /// Whether `node` gave its slot up to a node problem or a reboot into another kernel.
    fn excused(&self, name: &str, node: &LivePatchNode) -> bool {
        self.freed.contains(name) || node_blamed(node) || moved_kernel(node)
    }

    fn node(&mut self, i: usize, revision: u64, node: &LivePatchNode, exp: &Expectations) {
        let name = name_of(node);
        let uid = node.metadata.uid.clone().unwrap_or_default();
        match self.uids.get(&name) {
            Some(known) if *known != uid => self.violate(
                Invariant::LostOrDuplicated,
                format!("{name} was recreated (uid {known} became {uid}) at revision {revision}"),
            ),
            _ => {}
        }
        self.uids.insert(name.clone(), uid);
        if let Some(release) = release_fault(node) {
            self.faulted.insert(release);
        }
        let desired = node.spec.desired.as_ref();
        if let Some(d) = desired.filter(|d| d.action == PatchAction::Revert)
            && let Some(from) = d.previous.as_ref()
        {
            self.bad.entry(from.id.clone()).or_insert(i);
        }
        let before = self.nodes.get(&name).and_then(ask);
        let handed = desired
            .filter(|d| d.action == PatchAction::Apply)
            .and_then(|d| d.release.as_ref().map(|r| (r, d.wave)))
            .filter(|_| before != ask(node));
        if let Some((release, wave)) = handed {
            self.handout(i, revision, &name, release, wave, exp);
        }
        self.nodes.insert(name, node.clone());
        let busy: Vec<&String> = self
            .nodes
            .iter()
            .filter(|(name, n)| in_flight(n) && !self.excused(name, n))
            .map(|(n, _)| n)
            .collect();
        let over = busy.len() as u32 > exp.max_in_flight;
        if over && !self.over_limit {
            let detail = format!(
                "{} nodes in flight at revision {revision} ({busy:?}); maxInFlight is {}",
                busy.len(),
                exp.max_in_flight
            );
            self.violate(Invariant::MaxInFlight, detail);
        }
        self.over_limit = over;
    }

    fn handout(
        &mut self,
        i: usize,
        revision: u64,
        name: &str,
        release: &kpersist_crds::PatchRelease,
        wave: Option<u32>,
        exp: &Expectations,
    ) {
        let signed = exp
            .signed
            .iter()
            .any(|s| s.id == release.id && s.sha256 == release.sha256 && s.size == release.size);
        if !signed {
            self.violate(
                Invariant::UnsignedRelease,
                format!(
                    "{name} was handed {} (sha256 {}, {} bytes) at revision {revision}, which \
                     the signed index does not hold",
                    release.id, release.sha256, release.size
                ),
            );
        }
        if self.bad.contains_key(&release.id) {
            self.violate(
                Invariant::BadReleaseHandedOut,
                format!(
                    "{name} was handed {} at revision {revision}, after it was marked bad",
                    release.id
                ),
            );
        }
        if let Some(wave) = wave {
            if wave < self.epoch_max_wave {
                self.epoch_start = i;
                self.epoch_max_wave = wave;
            }
            self.epoch_max_wave = self.epoch_max_wave.max(wave);
            self.wave_order(revision, name, wave, exp);
        }
        self.handed_at.insert(name.to_string(), i);
        self.freed.remove(name);
    }

    /// Every node handed wave `wave - 1` in this rollout must be done (or failed within
    /// `maxFailures`, or excused by node life) before a node is handed wave `wave`.
    fn wave_order(&mut self, revision: u64, name: &str, wave: u32, exp: &Expectations) {
        let earlier: Vec<(&String, &LivePatchNode)> = self
            .nodes
            .iter()
            .filter(|(n, node)| {
                n.as_str() != name
                    && self
                        .handed_at
                        .get(*n)
                        .is_some_and(|&at| at >= self.epoch_start)
                    && node.spec.desired.as_ref().is_some_and(|d| {
                        d.action == PatchAction::Apply && d.wave == Some(wave.saturating_sub(1))
                    })
            })
            .collect();
        let unfinished: Vec<String> = earlier
            .iter()
            .filter(|(n, node)| !done(node) && !failed(node) && !self.excused(n, node))
            .map(|(n, _)| n.to_string())
            .collect();
        let failures = earlier.iter().filter(|(_, node)| failed(node)).count() as u32;
        if !unfinished.is_empty() || failures > exp.max_failures {
            let detail = format!(
                "{name} was handed wave {wave} at revision {revision} while wave {} had \
                 unfinished nodes {unfinished:?} and {failures} failed (maxFailures {})",
                wave.saturating_sub(1),
                exp.max_failures
            );
            self.violate(Invariant::WaveOrder, detail);
        }
    }
}

/// Checks every invariant on `log` (as recorded, in any order) and the final objects.
pub fn check(log: &[Observed], exp: &Expectations, end: &Final) -> Vec<Violation> {
    let mut events: Vec<&Observed> = log
        .iter()
        .filter(|o| match &o.object {
            Object::Node(n) => {
                let name = name_of(n);
                exp.end_applied.contains_key(&name) || exp.left.contains(&name)
            }
            Object::Policy(p) => p.metadata.name.as_deref() == Some(exp.policy.as_str()),
        })
        .collect();
    events.sort_by_key(|o| o.revision);
    let mut replay = Replay {
        troubled_next: troubled_next(&events),
        ..Replay::default()
    };
    for (i, observed) in events.iter().enumerate() {
        replay.free_troubled(i);
        match (&observed.object, observed.deleted) {
            (Object::Policy(policy), false) => replay.policy(i, observed.revision, policy),
            (Object::Policy(_), true) => {}
            (Object::Node(node), false) => replay.node(i, observed.revision, node, exp),
            (Object::Node(node), true) => {
                let name = name_of(node);
                if !exp.left.contains(&name) {
                    replay.violate(
                        Invariant::LostOrDuplicated,
                        format!("{name} was deleted at revision {}", observed.revision),
                    );
                }
                replay.nodes.remove(&name);
            }
        }
    }
    check_end(&mut replay, exp, end);
    replay.violations
}

/// Per event, the nodes the first policy status recorded after it names as node problems.
fn troubled_next(events: &[&Observed]) -> Vec<BTreeSet<String>> {
    let mut next = BTreeSet::new();
    let mut out: Vec<BTreeSet<String>> = events
        .iter()
        .rev()
        .map(|o| {
            let ahead = next.clone();
            if let (Object::Policy(p), false) = (&o.object, o.deleted) {
                next = named_troubled(p);
            }
            ahead
        })
        .collect();
    out.reverse();
    out
}

fn check_end(replay: &mut Replay, exp: &Expectations, end: &Final) {
    let troubled = end.policy.as_ref().map(named_troubled).unwrap_or_default();
    for (name, expected) in &exp.end_applied {
        let found: Vec<&LivePatchNode> = end.nodes.iter().filter(|n| name_of(n) == *name).collect();
        let node = match found.as_slice() {
            [node] => *node,
            [] => {
                replay.violate(
                    Invariant::LostOrDuplicated,
                    format!("{name} has no LivePatchNode"),
                );
                continue;
            }
            more => {
                replay.violate(
                    Invariant::LostOrDuplicated,
                    format!("{name} has {} LivePatchNodes", more.len()),
                );
                continue;
            }
        };
        let uid = node.metadata.uid.clone().unwrap_or_default();
        if replay.uids.get(name).is_some_and(|known| *known != uid) {
            replay.violate(
                Invariant::LostOrDuplicated,
                format!("{name} was recreated (uid {uid} at the end)"),
            );
        }
        let status = node.status.clone().unwrap_or_default();
        let transient = matches!(
            status.state,
            Some(
                NodePatchState::Downloading | NodePatchState::Applying | NodePatchState::Reverting
            )
        );
        // A node resolved as a node problem (an agent gone for good) may stay unfinished.
        if (transient || in_flight(node)) && !troubled.contains(name) {
            replay.violate(
                Invariant::StuckTransition,
                format!("{name} ends {:?} with an unfinished apply", status.state),
            );
        }
        let applied = status.applied.map(|a| a.id);
        if !expected.contains(&applied) {
            replay.violate(
                Invariant::FinalState,
                format!("{name} ends running {applied:?}, expected {expected:?}"),
            );
        }
        let asked = node
            .spec
            .desired
            .as_ref()
            .filter(|d| d.action == PatchAction::Apply)
            .and_then(|d| d.release.as_ref());
        if let Some(release) = asked.filter(|r| replay.bad.contains_key(&r.id)) {
            replay.violate(
                Invariant::BadReleaseHandedOut,
                format!("{name} is still asked to apply {}, marked bad", release.id),
            );
        }
        let still_named = node.spec.desired.as_ref().map(|d| d.policy.as_str());
        if exp.end_phases.is_empty() && still_named == Some(exp.policy.as_str()) {
            replay.violate(
                Invariant::FinalState,
                format!("{name} still names the deleted policy in spec.desired"),
            );
        }
    }
    let phase = end.policy.as_ref().map(|p| {
        p.status
            .as_ref()
            .and_then(|s| s.phase)
            .map(|ph| format!("{ph:?}"))
            .unwrap_or_else(|| "none".into())
    });
    let expected_phase = if exp.end_phases.is_empty() {
        phase.is_none()
    } else {
        end.policy
            .as_ref()
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase)
            .is_some_and(|ph| exp.end_phases.contains(&ph))
    };
    if !expected_phase {
        replay.violate(
            Invariant::FinalState,
            format!(
                "policy {} ends in phase {phase:?}, expected {}",
                exp.policy,
                if exp.end_phases.is_empty() {
                    "it to be gone".to_string()
                } else {
                    format!("one of {:?}", exp.end_phases)
                }
            ),
        );
    }
}

#[cfg(test)]
#[path = "invariants_tests.rs"]
mod tests;
