//! Pure checks between what a release claims, what a module file says and what the kernel
//! runs. Each failure carries the status reason and a message naming the offending values.

use kpersist_crds::{NodeErrorReason, PatchRelease};
use kpersist_kmod::kernel::KernelIdentity;
use kpersist_kmod::modinfo::ModInfo;

/// Why an apply or revert did not succeed: the status reason and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Machine-readable reason.
    pub reason: NodeErrorReason,
    /// What went wrong and what to do.
    pub message: String,
}

impl Failure {
    /// A failure with `reason` and `message`.
    pub fn new(reason: NodeErrorReason, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
        }
    }
}

/// The release must be for the running kernel build.
pub fn check_kernel(release: &PatchRelease, running: &KernelIdentity) -> Result<(), Failure> {
    if release.kernel_release != running.release
        || !release.build_id.eq_ignore_ascii_case(&running.build_id)
    {
        return Err(Failure::new(
            NodeErrorReason::KernelMismatch,
            format!(
                "release {} is for kernel {} (build id {}), but this node runs {} (build id {}); \
                 target a release built for this kernel",
                release.id,
                release.kernel_release,
                release.build_id,
                running.release,
                running.build_id
            ),
        ));
    }
    Ok(())
}

/// The module must be a livepatch, built for the running release, named as the index says.
///
/// The kernel does not check the release in vermagic when modules carry symbol versions, so
/// this check is the only thing keeping a module built for another kernel out.
pub fn check_module(
    info: &ModInfo,
    release: &PatchRelease,
    running_release: &str,
) -> Result<(), Failure> {
    if !info.livepatch {
        return Err(Failure::new(
            NodeErrorReason::NotLivepatch,
            format!(
                "module {} of release {} has no `livepatch=Y` in its modinfo; it is not a \
                 livepatch and will not be loaded",
                info.name, release.id
            ),
        ));
    }
    let vermagic_release = info.vermagic_release().unwrap_or("");
    if vermagic_release != running_release {
        return Err(Failure::new(
            NodeErrorReason::VermagicMismatch,
            format!(
                "module {} of release {} was built for kernel {:?} (vermagic), but this node \
                 runs {running_release}; rebuild the module for this kernel",
                info.name, release.id, vermagic_release
            ),
        ));
    }
    if info.name != release.module_name {
        return Err(Failure::new(
            NodeErrorReason::ModuleNameMismatch,
            format!(
                "module of release {} is named {} in its modinfo, but the index says {}; \
                 fix the index entry",
                release.id, info.name, release.module_name
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, vermagic: &str, livepatch: bool) -> ModInfo {
        ModInfo {
            name: name.into(),
            vermagic: Some(vermagic.into()),
            livepatch,
            license: None,
            srcversion: None,
            depends: vec![],
            fields: Default::default(),
        }
    }

    fn release() -> PatchRelease {
        PatchRelease {
            id: "6.1.0-56-amd64/v1".into(),
            version: 1,
            kernel_release: "6.1.0-56-amd64".into(),
            build_id: "ABCD".into(),
            module_name: "kpersist_v1".into(),
            module_url: "file:///x".into(),
            sha256: "0".repeat(64),
            size: 1,
            cves: vec![],
        }
    }

    #[test]
    fn module_checks_in_order() {
        let r = release();
        let good = info("kpersist_v1", "6.1.0-56-amd64 SMP preempt", true);
        assert_eq!(check_module(&good, &r, "6.1.0-56-amd64"), Ok(()));
        let reason = |i: &ModInfo| check_module(i, &r, "6.1.0-56-amd64").unwrap_err().reason;
        assert_eq!(
            reason(&info("kpersist_v1", "6.1.0-56-amd64", false)),
            NodeErrorReason::NotLivepatch
        );
        assert_eq!(
            reason(&info("kpersist_v1", "6.1.0-99-amd64 SMP", true)),
            NodeErrorReason::VermagicMismatch
        );
        assert_eq!(
            reason(&info("other", "6.1.0-56-amd64", true)),
            NodeErrorReason::ModuleNameMismatch
        );
        let msg = check_module(
            &info("kpersist_v1", "6.1.0-99-amd64 SMP", true),
            &r,
            "6.1.0-56-amd64",
        )
        .unwrap_err()
        .message;
        assert!(
            msg.contains("6.1.0-99-amd64") && msg.contains("6.1.0-56-amd64"),
            "{msg}"
        );
    }

    #[test]
    fn kernel_check_ignores_build_id_case() {
        let r = release();
        let ok = KernelIdentity {
            release: "6.1.0-56-amd64".into(),
            build_id: "abcd".into(),
        };
        assert_eq!(check_kernel(&r, &ok), Ok(()));
        let other = KernelIdentity {
            release: "6.1.0-56-amd64".into(),
            build_id: "ffff".into(),
        };
        assert_eq!(
            check_kernel(&r, &other).unwrap_err().reason,
            NodeErrorReason::KernelMismatch
        );
    }
}
