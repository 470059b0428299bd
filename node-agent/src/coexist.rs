//! Living with what else the kernel runs: livepatches of other tools (a distribution's
//! kpatch, a vendor's livepatch service), which an atomic replace would silently disable; a
//! module built without atomic replace, which would stack; and a module of the same name
//! already loaded, which the kernel would refuse with `EEXIST`. Pure checks.

use kpersist_crds::{NodeErrorReason, PatchRelease};
use kpersist_kmod::kernel::PatchState;

use crate::checks::Failure;

/// The enabled livepatches that are not kpersist's: not named in `kpersist` (every module
/// name kpersist loaded on this host, and those of the releases the spec and index name).
pub fn foreign_patches<'a>(patches: &'a [PatchState], kpersist: &[String]) -> Vec<&'a str> {
    patches
        .iter()
        .filter(|p| p.enabled && !kpersist.contains(&p.name))
        .map(|p| p.name.as_str())
        .collect()
}

/// Refuses to load `release` over other tools' livepatches unless `replace_foreign` allows it.
pub fn check_foreign(
    patches: &[PatchState],
    kpersist: &[String],
    release: &PatchRelease,
    replace_foreign: bool,
) -> Result<(), Failure> {
    let foreign = foreign_patches(patches, kpersist);
    if foreign.is_empty() || replace_foreign {
        return Ok(());
    }
    Err(Failure::new(
        NodeErrorReason::ForeignLivepatch,
        format!(
            "livepatches of another tool are enabled on this node: {}; loading release {} \
             (atomic replace) would disable them and reopen what they fix. Remove them and \
             stop the tool that loads them (kpatch, a vendor livepatch service), or set the \
             policy's health.replaceForeignLivepatches to let kpersist replace them",
            foreign.join(", "),
            release.id
        ),
    ))
}

/// What a module of the release's name, already loaded, is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameInUse {
    /// No module of that name is loaded.
    Free,
    /// A module kpersist loaded earlier whose livepatch was replaced or disabled: unloading
    /// it changes nothing the kernel runs.
    KpersistLeftover,
}

/// Whether the module name of `release` is free to load: `loaded` says whether a module of
/// that name is loaded, `known` lists the module names kpersist loaded on this host.
pub fn check_name_in_use(
    loaded: bool,
    patches: &[PatchState],
    known: &[String],
    release: &PatchRelease,
) -> Result<NameInUse, Failure> {
    let name = &release.module_name;
    if !loaded {
        return Ok(NameInUse::Free);
    }
    let live = patches.iter().any(|p| &p.name == name);
    if !live && known.contains(name) {
        return Ok(NameInUse::KpersistLeftover);
    }
    let what = if live {
        "its livepatch is registered, but it is not the release asked for"
    } else if known.contains(name) {
        "it is an earlier kpersist module"
    } else {
        "kpersist did not load it"
    };
    Err(Failure::new(
        NodeErrorReason::ModuleNameInUse,
        format!(
            "a module named {name} is already loaded ({what}), so the kernel would refuse \
             release {} (EEXIST); a module name must be used by one release of a kernel \
             build only. Unload the leftover ({name}) on this node, or publish the release \
             under a new module name",
            release.id
        ),
    ))
}

/// After the transition of `name`, the livepatches still enabled besides it. A module built
/// with atomic replace leaves none: its transition retires every other patch.
pub fn stacked_under<'a>(patches: &'a [PatchState], name: &str) -> Vec<&'a str> {
    patches
        .iter()
        .filter(|p| p.enabled && p.name != name)
        .map(|p| p.name.as_str())
        .collect()
}

/// The failure for a module of `release` that was not built with atomic replace; `evidence`
/// says how that was seen, `outcome` what undoing it gave.
pub fn not_cumulative(release: &PatchRelease, evidence: &str, outcome: &str) -> Failure {
    Failure::new(
        NodeErrorReason::NotCumulative,
        format!(
            "module {} of release {} was not built with atomic replace (.replace = true): \
             {evidence}; {outcome}. Rebuild the release as a cumulative patch",
            release.module_name, release.id
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(name: &str, enabled: bool) -> PatchState {
        PatchState {
            name: name.into(),
            enabled,
            transition: false,
        }
    }

    fn release() -> PatchRelease {
        PatchRelease {
            id: "k/v2".into(),
            version: 2,
            kernel_release: "k".into(),
            build_id: "ab".into(),
            module_name: "kpersist_v2".into(),
            module_url: "https://repo/m.ko".into(),
            sha256: "a".repeat(64),
            size: 1,
            cves: vec![],
        }
    }

    #[test]
    fn other_tools_patches_are_named_and_refused_unless_allowed() {
        let known = vec!["kpersist_v1".to_string(), "kpersist_v2".to_string()];
        let patches = [
            patch("kpersist_v1", true),
            patch("kpatch_cve_2024_1", true),
            patch("livepatch_old", false),
        ];
        assert_eq!(foreign_patches(&patches, &known), vec!["kpatch_cve_2024_1"]);
        let failure = check_foreign(&patches, &known, &release(), false).unwrap_err();
        assert_eq!(failure.reason, NodeErrorReason::ForeignLivepatch);
        assert!(
            failure.message.contains("kpatch_cve_2024_1")
                && failure.message.contains("replaceForeignLivepatches"),
            "{}",
            failure.message
        );
        assert_eq!(check_foreign(&patches, &known, &release(), true), Ok(()));
        assert_eq!(
            check_foreign(&patches[..1], &known, &release(), false),
            Ok(())
        );
    }

    #[test]
    fn a_loaded_module_of_the_same_name_is_a_leftover_or_in_use() {
        let r = release();
        let known = vec!["kpersist_v2".to_string()];
        assert_eq!(
            check_name_in_use(false, &[], &known, &r),
            Ok(NameInUse::Free)
        );
        assert_eq!(
            check_name_in_use(true, &[], &known, &r),
            Ok(NameInUse::KpersistLeftover)
        );
        let live = [patch("kpersist_v2", true)];
        let failure = check_name_in_use(true, &live, &known, &r).unwrap_err();
        assert_eq!(failure.reason, NodeErrorReason::ModuleNameInUse);
        assert!(
            failure.message.contains("registered"),
            "{}",
            failure.message
        );
        let failure = check_name_in_use(true, &[], &[], &r).unwrap_err();
        assert!(
            failure.message.contains("kpersist did not load it"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn only_a_cumulative_patch_is_left_enabled_alone() {
        let patches = [
            patch("kpersist_v1", true),
            patch("kpersist_v2", true),
            patch("gone", false),
        ];
        assert_eq!(stacked_under(&patches, "kpersist_v2"), vec!["kpersist_v1"]);
        assert!(stacked_under(&patches[1..], "kpersist_v2").is_empty());
        let failure = not_cumulative(&release(), "it stacked on kpersist_v1", "it was undone");
        assert_eq!(failure.reason, NodeErrorReason::NotCumulative);
    }
}
