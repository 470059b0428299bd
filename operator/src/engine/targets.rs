//! The release each kernel build, and each node, is moved to: the newest release for the
//! build in the policy's channel (published at least `delay` ago, or exactly the pinned
//! version), never one marked bad or one the node refuses. While a rollout runs, its own
//! releases are kept (see "A newer release mid-rollout" in the module above).

use std::collections::{HashMap, HashSet};
use std::ops::Deref;

use jiff::Timestamp;
use kpersist_crds::{KernelTarget, PatchRelease, RolloutProgress};
use kpersist_kmod::repository::{Release, ReleaseQuery};

use super::RepositoryView;
use super::settings::Settings;

/// The release a node or kernel build is moved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub id: String,
    pub version: u64,
    pub cves: u32,
    /// Everything an agent needs to fetch the module; absent while no verified index is at
    /// hand and the target is only known from the previous status.
    pub release: Option<PatchRelease>,
}

/// A node's target: its kernel build's, shared, or one of its own (an older release,
/// when the node refuses its build's). Two words, not a whole [`Target`]: the engine keeps
/// one per node, and at fleet scale their size decides how much of the fleet fits in cache.
#[derive(Clone, Debug)]
pub(crate) enum NodeTarget<'a> {
    Build(&'a Target),
    Own(Box<Target>),
}

impl Deref for NodeTarget<'_> {
    type Target = Target;

    fn deref(&self) -> &Target {
        match self {
            NodeTarget::Build(target) => target,
            NodeTarget::Own(target) => target,
        }
    }
}

/// One kernel build seen in the fleet, its target, and how many selected nodes run it.
#[derive(Clone, Debug)]
struct Build {
    build_id: String,
    target: Option<Target>,
    nodes: u32,
}

/// Targets for every kernel build of the fleet, computed once per decision.
pub(crate) struct Targets<'a> {
    repository: Option<&'a RepositoryView>,
    settings: &'a Settings,
    bad: &'a HashSet<String>,
    published_before: Option<Timestamp>,
    by_kernel: HashMap<String, Vec<Build>>,
    by_id: HashMap<String, &'a Release>,
    /// A release of the rollout in progress is no longer offered (pin changed, withdrawn
    /// from the index), so the rollout starts over with the current targets.
    pub superseded: bool,
    /// When a release newer than a target clears `delay`, so the engine looks again then.
    pub next_eligible: Option<Timestamp>,
}

impl<'a> Targets<'a> {
    /// Computes the target of every `(kernel release, build id)` in `builds`.
    pub(crate) fn new<'b>(
        repository: Option<&'a RepositoryView>,
        settings: &'a Settings,
        bad: &'a HashSet<String>,
        rollout: Option<&RolloutProgress>,
        previous_targets: &[KernelTarget],
        now: Timestamp,
        builds: impl Iterator<Item = (&'b str, &'b str)>,
    ) -> Targets<'a> {
        // A release published in the future (`kpersist-repo add --published`) waits for
        // that time, on top of the policy's delay.
        let published_before = jiff::SignedDuration::try_from(settings.delay.unwrap_or_default())
            .ok()
            .and_then(|d| now.checked_sub(d).ok());
        let by_id = repository
            .map(|r| r.index.releases.iter().map(|rel| (rel.id(), rel)).collect())
            .unwrap_or_default();
        let mut targets = Targets {
            repository,
            settings,
            bad,
            published_before,
            by_kernel: HashMap::new(),
            by_id,
            superseded: false,
            next_eligible: None,
        };
        for (kernel, build_id) in builds {
            if let Some(seen) = targets.find_mut(kernel, build_id) {
                seen.nodes += 1;
                continue;
            }
            let target = match repository {
                Some(repo) => targets.choose(repo, kernel, build_id, rollout),
                None => previous_targets
                    .iter()
                    .find(|t| {
                        t.kernel_release == kernel && t.build_id.eq_ignore_ascii_case(build_id)
                    })
                    .map(|t| Target {
                        id: t.release.clone(),
                        version: t.version,
                        cves: t.cves,
                        release: None,
                    }),
            };
            targets
                .by_kernel
                .entry(kernel.to_string())
                .or_default()
                .push(Build {
                    build_id: build_id.to_string(),
                    target,
                    nodes: 1,
                });
        }
        targets
    }

    fn find(&self, kernel: &str, build_id: &str) -> Option<&Build> {
        self.by_kernel
            .get(kernel)?
            .iter()
            .find(|b| b.build_id.eq_ignore_ascii_case(build_id))
    }

    fn find_mut(&mut self, kernel: &str, build_id: &str) -> Option<&mut Build> {
        self.by_kernel
            .get_mut(kernel)?
            .iter_mut()
            .find(|b| b.build_id.eq_ignore_ascii_case(build_id))
    }

    fn query<'q>(&'q self, kernel: &'q str, build_id: &'q str) -> ReleaseQuery<'q> {
        ReleaseQuery {
            kernel_release: kernel,
            build_id,
            channel: &self.settings.channel,
            published_before: self.published_before,
            pinned_version: self.settings.pinned_version,
        }
    }

    fn choose(
        &mut self,
        repo: &RepositoryView,
        kernel: &str,
        build_id: &str,
        rollout: Option<&RolloutProgress>,
    ) -> Option<Target> {
        let bad = self.bad;
        let fresh = repo
            .index
            .newest_for(&self.query(kernel, build_id), &|r| bad.contains(&r.id()));
        self.note_delayed(repo, kernel, build_id, fresh.map(|r| r.version));
        let Some(rollout) = rollout else {
            return fresh.map(|r| self.target(r));
        };
        let kept = rollout
            .releases
            .iter()
            .filter_map(|id| self.by_id.get(id.as_str()).copied())
            .find(|r| r.is_for(kernel, build_id));
        match kept {
            Some(r) if self.still_offered(r) => Some(self.target(r)),
            Some(_) => {
                self.superseded = true;
                fresh.map(|r| self.target(r))
            }
            None => {
                // A release of this rollout for this kernel that the index no longer has.
                let withdrawn = rollout.releases.iter().any(|id| {
                    !self.by_id.contains_key(id.as_str())
                        && id.rsplit_once("/v").is_some_and(|(k, _)| k == kernel)
                });
                self.superseded |= withdrawn;
                fresh.map(|r| self.target(r))
            }
        }
    }

    /// Whether a release chosen earlier may still be rolled out: in the channel, not bad,
    /// and the pinned version when there is a pin. `delay` is not looked at again: it held
    /// when the rollout chose the release.
    fn still_offered(&self, release: &Release) -> bool {
        release.channels.contains(&self.settings.channel)
            && !self.bad.contains(&release.id())
            && self
                .settings
                .pinned_version
                .is_none_or(|v| v == release.version)
    }

    /// Remembers when a release newer than `current` for this build clears the delay.
    fn note_delayed(
        &mut self,
        repo: &RepositoryView,
        kernel: &str,
        build_id: &str,
        current: Option<u64>,
    ) {
        let Some(bound) = self.published_before else {
            return;
        };
        let delay = self.settings.delay.unwrap_or_default();
        for release in repo.index.releases_for(kernel, build_id) {
            let newer = current.is_none_or(|v| release.version > v);
            let in_channel = release.channels.contains(&self.settings.channel);
            let pinned_ok = self
                .settings
                .pinned_version
                .is_none_or(|v| v == release.version);
            if !(newer && in_channel && pinned_ok) || self.bad.contains(&release.id()) {
                continue;
            }
            if let Some(published) = release.published_at().filter(|p| *p > bound)
                && let Ok(eligible) = published.checked_add(delay)
            {
                self.next_eligible = Some(self.next_eligible.map_or(eligible, |n| n.min(eligible)));
            }
        }
    }

    fn target(&self, release: &Release) -> Target {
        Target {
            id: release.id(),
            version: release.version,
            cves: u32::try_from(release.cves.len()).unwrap_or(u32::MAX),
            release: self
                .repository
                .map(|repo| patch_release(release, &repo.base_url)),
        }
    }

    /// The target of a kernel build.
    pub(crate) fn for_build(&self, kernel: &str, build_id: &str) -> Option<&Target> {
        self.find(kernel, build_id)?.target.as_ref()
    }

    /// The target of a node: its build's, or when the node refuses that release (it went
    /// down applying it), the newest older one it does not refuse.
    pub(crate) fn for_node(
        &self,
        kernel: &str,
        build_id: &str,
        refused: &[String],
    ) -> Option<NodeTarget<'_>> {
        let target = self.for_build(kernel, build_id)?;
        if !refused.contains(&target.id) {
            return Some(NodeTarget::Build(target));
        }
        let repo = self.repository?;
        let bad = self.bad;
        let older = repo.index.newest_for(&self.query(kernel, build_id), &|r| {
            r.version >= target.version || bad.contains(&r.id()) || refused.contains(&r.id())
        })?;
        Some(NodeTarget::Own(Box::new(self.target(older))))
    }

    /// Whether the index has a release with this id.
    pub(crate) fn has_release(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// The release with this id as the API carries it, when the index has it.
    pub(crate) fn release_by_id(&self, id: &str) -> Option<PatchRelease> {
        let repo = self.repository?;
        self.by_id
            .get(id)
            .map(|release| patch_release(release, &repo.base_url))
    }

    /// Every kernel build with a target, with the number of selected nodes running it, for
    /// the status.
    pub(crate) fn kernel_targets(&self) -> Vec<KernelTarget> {
        let mut out: Vec<KernelTarget> = self
            .by_kernel
            .iter()
            .flat_map(|(kernel, builds)| builds.iter().map(move |b| (kernel, b)))
            .filter_map(|(kernel, build)| {
                let target = build.target.as_ref()?;
                Some(KernelTarget {
                    kernel_release: kernel.clone(),
                    build_id: build.build_id.clone(),
                    release: target.id.clone(),
                    version: target.version,
                    cves: target.cves,
                    nodes: build.nodes,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.kernel_release, &a.build_id).cmp(&(&b.kernel_release, &b.build_id)));
        out
    }
}

/// A release of the index as the API carries it.
pub(crate) fn patch_release(release: &Release, base_url: &str) -> PatchRelease {
    PatchRelease {
        id: release.id(),
        version: release.version,
        kernel_release: release.kernel_release.clone(),
        build_id: release.build_id.clone(),
        module_name: release.module_name.clone(),
        module_url: release.module_url(base_url),
        sha256: release.sha256.clone(),
        size: release.size,
        cves: release.cves.clone(),
    }
}
