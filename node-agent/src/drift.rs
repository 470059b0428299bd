//! Drift: the kernel no longer runs what the agent last reported, through something done
//! behind its back (a patch disabled by hand, replaced by another tool, another tool's patch
//! loaded on top). Found by comparing a fresh read of sysfs with the status written last in
//! this boot. Pure.

use kpersist_crds::{LivePatchNodeStatus, NodeError, NodeErrorReason, NodePatchState};
use kpersist_kmod::kernel::PatchState;

/// What changed behind the agent's back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DriftKind {
    /// kpersist's live patch was disabled (and removed) without kpersist.
    PatchDisabled,
    /// Another livepatch replaced kpersist's live patch (an atomic replace by another tool).
    PatchReplaced,
    /// Another tool's livepatch was enabled while kpersist's stays live (stacked on it).
    ForeignPatchAppeared,
}

impl DriftKind {
    /// Every kind, for metrics.
    pub const ALL: [DriftKind; 3] = [
        DriftKind::PatchDisabled,
        DriftKind::PatchReplaced,
        DriftKind::ForeignPatchAppeared,
    ];

    /// The name used as condition reason and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::PatchDisabled => "PatchDisabled",
            DriftKind::PatchReplaced => "PatchReplaced",
            DriftKind::ForeignPatchAppeared => "ForeignPatchAppeared",
        }
    }

    fn parse(name: &str) -> Option<DriftKind> {
        DriftKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether kpersist's patch is gone, so the node no longer runs the release.
    pub fn loses_the_release(self) -> bool {
        !matches!(self, DriftKind::ForeignPatchAppeared)
    }
}

/// One drift found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// What changed.
    pub kind: DriftKind,
    /// What, naming the patches and the release, and what to do.
    pub message: String,
}

impl Drift {
    /// The line of the `Drift` condition's message that carries this drift.
    pub fn line(&self) -> String {
        format!("{}: {}", self.kind.as_str(), self.message)
    }

    /// The drift a condition message line carries, if it is one.
    pub fn from_line(line: &str) -> Option<Drift> {
        let (kind, message) = line.split_once(": ")?;
        Some(Drift {
            kind: DriftKind::parse(kind)?,
            message: message.to_string(),
        })
    }

    /// The failure to report when this drift took the release away: with another tool's
    /// patch enabled now (`foreign_enabled`), a node problem named as such; otherwise one of
    /// the host.
    pub fn failure(&self, release: &str, foreign_enabled: bool, now: &str) -> NodeError {
        let reason = match self.kind {
            DriftKind::PatchReplaced if foreign_enabled => NodeErrorReason::ForeignLivepatch,
            _ => NodeErrorReason::HostError,
        };
        NodeError {
            reason,
            message: self.message.clone(),
            release: Some(release.to_string()),
            at: Some(now.to_string()),
        }
    }
}

/// The drift between `prior` (the status this agent wrote last) and the livepatches sysfs
/// shows now (`loaded`, in boot `boot_id`). `kpersist` names kpersist's module names. Only a
/// settled `Applied` status of the same boot is compared: a reboot empties the kernel, and
/// work in progress changes it on purpose.
pub fn find_drift(
    prior: &LivePatchNodeStatus,
    boot_id: &str,
    loaded: &[PatchState],
    kpersist: &[String],
) -> Vec<Drift> {
    if prior.boot_id.as_deref() != Some(boot_id) || prior.state != Some(NodePatchState::Applied) {
        return Vec::new();
    }
    let Some(applied) = prior.applied.as_ref() else {
        return Vec::new();
    };
    let module = applied.module_name.as_str();
    let was_enabled = |name: &str| prior.loaded.iter().any(|p| p.name == name && p.enabled);
    let newly_enabled: Vec<&str> = loaded
        .iter()
        .filter(|p| p.enabled && p.name != module && !was_enabled(&p.name))
        .map(|p| p.name.as_str())
        .collect();
    let live = loaded.iter().any(|p| p.name == module && p.enabled);
    if !live && !newly_enabled.is_empty() {
        return vec![Drift {
            kind: DriftKind::PatchReplaced,
            message: format!(
                "livepatch {module} of release {} was replaced by {} (loaded outside \
                 kpersist); the node no longer runs the release. Stop the tool that loaded \
                 it; kpersist applies the release again on the next spec or after a reboot",
                applied.id,
                newly_enabled.join(", ")
            ),
        }];
    }
    if !live {
        return vec![Drift {
            kind: DriftKind::PatchDisabled,
            message: format!(
                "livepatch {module} of release {} was disabled outside kpersist (echo 0 > \
                 /sys/kernel/livepatch/{module}/enabled, kpatch unload); the node no longer \
                 runs the release. kpersist does not enable it again by itself: it applies \
                 the release again on the next spec or after a reboot",
                applied.id
            ),
        }];
    }
    let foreign: Vec<&str> = newly_enabled
        .into_iter()
        .filter(|name| !kpersist.iter().any(|k| k == name))
        .collect();
    if foreign.is_empty() {
        return Vec::new();
    }
    vec![Drift {
        kind: DriftKind::ForeignPatchAppeared,
        message: format!(
            "livepatches of another tool were enabled after release {} was applied: {}; \
             they stack on {module} and kpersist's next release would replace them. Run one \
             livepatch tool per node: stop the one that loaded them",
            applied.id,
            foreign.join(", ")
        ),
    }]
}

/// `known` with each of `found` added unless it is there already.
pub fn merge(known: &[Drift], found: Vec<Drift>) -> Vec<Drift> {
    let mut all = known.to_vec();
    for d in found {
        if !all.contains(&d) {
            all.push(d);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpersist_crds::{AppliedRelease, LoadedPatch};

    fn patch(name: &str, enabled: bool) -> PatchState {
        PatchState {
            name: name.into(),
            enabled,
            transition: false,
        }
    }

    /// An Applied status of boot `b1` with `kpersist_v2` live and `others` loaded too.
    fn applied(others: &[(&str, bool)]) -> LivePatchNodeStatus {
        let mut loaded = vec![LoadedPatch {
            name: "kpersist_v2".into(),
            enabled: true,
            transition: false,
        }];
        loaded.extend(others.iter().map(|(n, e)| LoadedPatch {
            name: (*n).into(),
            enabled: *e,
            transition: false,
        }));
        LivePatchNodeStatus {
            state: Some(NodePatchState::Applied),
            boot_id: Some("b1".into()),
            applied: Some(AppliedRelease {
                id: "k/v2".into(),
                version: 2,
                module_name: "kpersist_v2".into(),
                cves: vec![],
                policy: None,
                applied_at: None,
            }),
            loaded,
            ..LivePatchNodeStatus::default()
        }
    }

    fn known() -> Vec<String> {
        vec!["kpersist_v1".into(), "kpersist_v2".into()]
    }

    #[test]
    fn nothing_changed_is_no_drift() {
        let now = [patch("kpersist_v2", true)];
        assert!(find_drift(&applied(&[]), "b1", &now, &known()).is_empty());
    }

    #[test]
    fn a_patch_disabled_by_hand_is_named() {
        for now in [vec![patch("kpersist_v2", false)], vec![]] {
            let drift = find_drift(&applied(&[]), "b1", &now, &known());
            assert_eq!(drift.len(), 1, "{now:?}");
            assert_eq!(drift[0].kind, DriftKind::PatchDisabled);
            assert!(
                drift[0].message.contains("kpersist_v2") && drift[0].message.contains("k/v2"),
                "{}",
                drift[0].message
            );
            let failure = drift[0].failure("k/v2", true, "t");
            assert_eq!(failure.reason, NodeErrorReason::HostError);
        }
    }

    #[test]
    fn another_tools_replace_names_the_replacer() {
        let now = [patch("livepatch_vendor", true)];
        let drift = find_drift(&applied(&[]), "b1", &now, &known());
        assert_eq!(drift[0].kind, DriftKind::PatchReplaced);
        assert!(
            drift[0].message.contains("livepatch_vendor"),
            "{}",
            drift[0].message
        );
        assert_eq!(
            drift[0].failure("k/v2", true, "t").reason,
            NodeErrorReason::ForeignLivepatch
        );
    }

    #[test]
    fn a_foreign_patch_on_top_is_drift_but_one_seen_before_is_not() {
        let now = [patch("kpatch_cve", true), patch("kpersist_v2", true)];
        let drift = find_drift(&applied(&[]), "b1", &now, &known());
        assert_eq!(drift.len(), 1);
        assert_eq!(drift[0].kind, DriftKind::ForeignPatchAppeared);
        assert!(
            drift[0].message.contains("kpatch_cve"),
            "{}",
            drift[0].message
        );
        assert!(!drift[0].kind.loses_the_release());
        // Already enabled when the status was written: reported then, not again.
        assert!(find_drift(&applied(&[("kpatch_cve", true)]), "b1", &now, &known()).is_empty());
    }

    #[test]
    fn a_reboot_or_work_in_progress_is_not_drift() {
        assert!(find_drift(&applied(&[]), "b2", &[], &known()).is_empty());
        let mut applying = applied(&[]);
        applying.state = Some(NodePatchState::Applying);
        assert!(find_drift(&applying, "b1", &[], &known()).is_empty());
    }

    #[test]
    fn drift_survives_its_condition_line_and_merges_once() {
        let d = Drift {
            kind: DriftKind::PatchReplaced,
            message: "x: y".into(),
        };
        assert_eq!(Drift::from_line(&d.line()), Some(d.clone()));
        assert_eq!(Drift::from_line("nonsense"), None);
        assert_eq!(merge(std::slice::from_ref(&d), vec![d.clone()]), vec![d]);
    }
}
