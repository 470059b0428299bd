//! Each release's own first exposure. The first nodes to load a given release (one module
//! binary, for one kernel build) are that release's canary: at most the canary wave's size
//! hold it until one of them has run it for the canary wave's bake, whatever wave the
//! rollout is in. So a kernel build whose release appears mid-rollout, or that the canary
//! wave did not reach, does not run a new module for the first time on `maxInFlight` nodes
//! at once. A release some node has run for that long is proven here and spreads with the
//! waves. Read from the nodes alone (`status.applied.appliedAt`), nothing is remembered.

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use kpersist_crds::{NodePatchState, PatchAction};

use super::nodes::{NodeFacts, Standing};

/// Where each release stands in its first exposure.
pub(crate) struct Exposure<'a> {
    cap: usize,
    releases: HashMap<&'a str, Release>,
    /// Some node was held back for its release's canary.
    held: bool,
}

#[derive(Default)]
struct Release {
    /// Some node has run it for the canary bake.
    baked: bool,
    /// Nodes applying it or running it.
    holders: usize,
    /// When the earliest of them will have run it for the canary bake.
    baked_at: Option<Timestamp>,
}

impl<'a> Exposure<'a> {
    /// Reads the nodes: `cap` is the canary wave's size and `bake` its bake.
    pub(crate) fn new(
        facts: &'a [NodeFacts<'_>],
        cap: usize,
        bake: Duration,
        now: Timestamp,
    ) -> Exposure<'a> {
        let mut releases: HashMap<&'a str, Release> = HashMap::new();
        for f in facts {
            if matches!(f.standing, Standing::RevertNeeded | Standing::Reverting) {
                continue;
            }
            // What the node runs, also while it applies the next release.
            let running = f
                .status
                .filter(|s| {
                    matches!(
                        s.state,
                        Some(
                            NodePatchState::Applied
                                | NodePatchState::Downloading
                                | NodePatchState::Applying
                        )
                    )
                })
                .and_then(|s| s.applied.as_ref());
            if let Some(applied) = running {
                let entry = releases.entry(applied.id.as_str()).or_default();
                entry.holders += 1;
                // An agent that did not say when it applied ran it before this rule. Once
                // one holder has run it for the bake, the others' times do not matter.
                if !entry.baked {
                    match applied
                        .applied_at
                        .as_deref()
                        .and_then(|t| t.parse::<Timestamp>().ok())
                    {
                        None => entry.baked = true,
                        Some(at) => {
                            let end = at.checked_add(bake).unwrap_or(at);
                            if end <= now {
                                entry.baked = true;
                            } else {
                                entry.baked_at = Some(entry.baked_at.map_or(end, |e| e.min(end)));
                            }
                        }
                    }
                }
            }
            // A node whose apply failed or that has a node problem frees its place: the
            // next node in order becomes the release's canary.
            let asked = f
                .ours
                .filter(|_| f.in_flight())
                .filter(|d| d.action == PatchAction::Apply)
                .and_then(|d| d.release.as_ref())
                .map(|r| r.id.as_str())
                .filter(|id| running.is_none_or(|a| a.id != *id));
            if let Some(id) = asked {
                releases.entry(id).or_default().holders += 1;
            }
        }
        Exposure {
            cap,
            releases,
            held: false,
        }
    }

    /// Whether one more node may be handed `release` now; counts it when so.
    pub(crate) fn admit(&mut self, release: &'a str) -> bool {
        let entry = self.releases.entry(release).or_default();
        if entry.baked {
            return true;
        }
        if entry.holders < self.cap.max(1) {
            entry.holders += 1;
            return true;
        }
        self.held = true;
        false
    }

    /// When a release whose canary is baking will be proven, while nodes wait for that: a
    /// decision then may hand it to them.
    pub(crate) fn wake_at(&self) -> Option<Timestamp> {
        if !self.held {
            return None;
        }
        self.releases
            .values()
            .filter(|r| !r.baked)
            .filter_map(|r| r.baked_at)
            .min()
    }
}
