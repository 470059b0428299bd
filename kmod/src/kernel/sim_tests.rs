//! The simulated kernel behaves like the real one where the agent depends on it: modinfo
//! decides what a livepatch is, atomic replace, reversal, unload refusal, faults.

use std::path::Path;

use super::*;
use crate::kernel::{ModuleImage, TAINT_EXPECTED, is_kernel_warning};

const RELEASE: &str = "6.1.0-56-amd64";

fn fixture(name: &str) -> ModuleImage {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    ModuleImage::read(&path).unwrap()
}

fn sim() -> SimKernel {
    SimKernel::new(RELEASE, "abcd")
}

fn poll_until_settled(kernel: &SimKernel) -> Vec<PatchState> {
    for _ in 0..10 {
        let patches = kernel.loaded_patches().unwrap();
        if patches.iter().all(|p| !p.transition) {
            return patches;
        }
    }
    panic!("transition did not settle: {:?}", kernel.patches());
}

#[test]
fn loads_a_real_livepatch_and_finishes_on_first_poll() {
    let kernel = sim();
    kernel.load_module(&fixture("kpersist_v1.ko")).unwrap();
    assert!(kernel.patches()[0].transition);
    let patches = kernel.loaded_patches().unwrap();
    assert_eq!(
        patches,
        vec![PatchState {
            name: "kpersist_v1".into(),
            enabled: true,
            transition: false
        }]
    );
    assert_eq!(kernel.tainted().unwrap(), TAINT_EXPECTED);
    assert_eq!(kernel.load_log(), vec!["kpersist_v1".to_string()]);
}

#[test]
fn a_plain_module_is_not_a_livepatch() {
    let kernel = sim();
    kernel.load_module(&fixture("not_livepatch.ko")).unwrap();
    assert!(kernel.loaded_patches().unwrap().is_empty());
    assert_eq!(kernel.modules(), vec!["not_livepatch".to_string()]);
}

#[test]
fn garbage_is_refused_with_enoexec() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.ko");
    std::fs::write(&path, b"not an elf").unwrap();
    let err = sim()
        .load_module(&ModuleImage::read(&path).unwrap())
        .unwrap_err();
    assert_eq!(err.syscall_failure(), Some(SyscallFailure::InvalidModule));
}

#[test]
fn atomic_replace_removes_the_older_patch_when_the_new_one_settles() {
    let kernel = sim();
    kernel.load_module(&fixture("kpersist_v1.ko")).unwrap();
    poll_until_settled(&kernel);
    kernel.set_fault(
        "kpersist_v2",
        SimFault {
            transition: Some(SimTransition::FinishAfter(3)),
            ..SimFault::default()
        },
    );
    kernel.load_module(&fixture("kpersist_v2.ko")).unwrap();
    // While v2 transitions, both are listed.
    assert_eq!(kernel.loaded_patches().unwrap().len(), 2);
    let settled = poll_until_settled(&kernel);
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].name, "kpersist_v2");
    // v1's module is still loaded and can now be unloaded; v2's cannot.
    assert_eq!(kernel.modules().len(), 2);
    kernel.delete_module("kpersist_v1").unwrap();
    let busy = kernel.delete_module("kpersist_v2").unwrap_err();
    assert_eq!(busy.syscall_failure(), Some(SyscallFailure::Busy));
}

#[test]
fn loading_the_same_module_twice_is_eexist() {
    let kernel = sim();
    kernel.load_module(&fixture("kpersist_v1.ko")).unwrap();
    poll_until_settled(&kernel);
    let err = kernel.load_module(&fixture("kpersist_v1.ko")).unwrap_err();
    assert_eq!(err.syscall_failure(), Some(SyscallFailure::AlreadyLoaded));
}

#[test]
fn stalled_transition_names_blockers_and_reverses_on_disable() {
    let kernel = sim();
    let sleeper = BlockingTask {
        pid: 4242,
        comm: "sleeper".into(),
    };
    kernel.set_fault(
        "kpersist_v1",
        SimFault {
            transition: Some(SimTransition::Stall(vec![sleeper.clone()])),
            ..SimFault::default()
        },
    );
    kernel.load_module(&fixture("kpersist_v1.ko")).unwrap();
    for _ in 0..5 {
        assert!(kernel.loaded_patches().unwrap()[0].transition);
    }
    assert_eq!(kernel.blocking_tasks("kpersist_v1").unwrap(), vec![sleeper]);
    kernel.set_enabled("kpersist_v1", false).unwrap();
    assert!(poll_until_settled(&kernel).is_empty());
    kernel.delete_module("kpersist_v1").unwrap();
    assert!(kernel.modules().is_empty());
}

#[test]
fn released_stall_finishes() {
    let kernel = sim();
    kernel.set_fault(
        "kpersist_v1",
        SimFault {
            transition: Some(SimTransition::Stall(vec![])),
            ..SimFault::default()
        },
    );
    kernel.load_module(&fixture("kpersist_v1.ko")).unwrap();
    assert!(kernel.loaded_patches().unwrap()[0].transition);
    kernel.release_transition("kpersist_v1");
    assert!(!kernel.loaded_patches().unwrap()[0].transition);
}

#[test]
fn injected_faults_refuse_or_warn_or_taint() {
    let kernel = sim();
    kernel.set_fault(
        "kpersist_v1",
        SimFault {
            load_error: Some(SyscallFailure::NotPermitted),
            ..SimFault::default()
        },
    );
    let err = kernel.load_module(&fixture("kpersist_v1.ko")).unwrap_err();
    assert_eq!(err.syscall_failure(), Some(SyscallFailure::NotPermitted));
    assert!(kernel.modules().is_empty());

    kernel.set_fault(
        "kpersist_v2",
        SimFault {
            kmsg_on_load: vec!["WARNING: CPU: 0 PID: 1 at kernel/x.c:1".into()],
            taint_on_load: 1 << 9,
            ..SimFault::default()
        },
    );
    let mark = kernel.kmsg_mark().unwrap();
    kernel.load_module(&fixture("kpersist_v2.ko")).unwrap();
    let lines = kernel.kmsg_since(mark).unwrap();
    assert!(lines.iter().any(|l| is_kernel_warning(&l.text)));
    assert_eq!(kernel.tainted().unwrap(), TAINT_EXPECTED | (1 << 9));
    assert_eq!(kernel.load_log(), vec!["kpersist_v1", "kpersist_v2"]);
}

#[test]
fn fail_to_enable_loads_nothing() {
    let kernel = sim();
    kernel.set_fault(
        "kpersist_v1",
        SimFault {
            transition: Some(SimTransition::FailToEnable),
            ..SimFault::default()
        },
    );
    let err = kernel.load_module(&fixture("kpersist_v1.ko")).unwrap_err();
    assert_eq!(err.syscall_failure(), Some(SyscallFailure::InvalidArgument));
    assert!(kernel.modules().is_empty());
    assert!(kernel.patches().is_empty());
}

#[test]
fn no_livepatch_support_refuses_livepatches_only() {
    let kernel = sim();
    kernel.set_livepatch_supported(false);
    let err = kernel.load_module(&fixture("kpersist_v1.ko")).unwrap_err();
    assert_eq!(err.syscall_failure(), Some(SyscallFailure::NotFound));
    kernel.load_module(&fixture("not_livepatch.ko")).unwrap();
}

#[test]
fn reboot_forgets_everything_and_changes_boot_id() {
    let kernel = sim();
    let before = kernel.boot_id().unwrap();
    kernel.load_module(&fixture("kpersist_v1.ko")).unwrap();
    kernel.reboot();
    assert_ne!(kernel.boot_id().unwrap(), before);
    let named = sim().with_boot_id("boot-b");
    assert_eq!(named.boot_id().unwrap(), "boot-b");
    assert!(kernel.loaded_patches().unwrap().is_empty());
    assert_eq!(kernel.tainted().unwrap(), 0);
}

#[test]
fn in_memory_modules_work_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kpersist_v9.ko");
    std::fs::write(
        &path,
        crate::test_elf::livepatch_module("kpersist_v9", RELEASE),
    )
    .unwrap();
    let kernel = sim();
    kernel
        .load_module(&ModuleImage::read(&path).unwrap())
        .unwrap();
    assert_eq!(poll_until_settled(&kernel)[0].name, "kpersist_v9");
}

#[test]
fn a_module_without_replace_stacks_and_says_so_where_the_kernel_shows_it() {
    let kernel = sim();
    kernel.load_module(&fixture("kpersist_v1.ko")).unwrap();
    poll_until_settled(&kernel);
    kernel.set_fault(
        "kpersist_v2",
        SimFault {
            not_cumulative: true,
            ..SimFault::default()
        },
    );
    kernel.load_module(&fixture("kpersist_v2.ko")).unwrap();
    assert_eq!(kernel.patch_replaces("kpersist_v2").unwrap(), None);
    kernel.set_replace_attribute(true);
    assert_eq!(kernel.patch_replaces("kpersist_v2").unwrap(), Some(false));
    assert_eq!(kernel.patch_replaces("kpersist_v1").unwrap(), Some(true));
    let names: Vec<(String, bool)> = poll_until_settled(&kernel)
        .into_iter()
        .map(|p| (p.name, p.enabled))
        .collect();
    assert_eq!(
        names,
        vec![("kpersist_v1".into(), true), ("kpersist_v2".into(), true)]
    );
    assert!(kernel.module_loaded("kpersist_v2").unwrap());
    assert!(!kernel.module_loaded("kpersist_v3").unwrap());
}

#[test]
fn a_foreign_patch_is_replaced_by_a_cumulative_load_and_stacks_otherwise() {
    let kernel = sim();
    kernel.add_foreign_patch("kpatch_cve_1", false);
    assert!(kernel.load_log().is_empty());
    assert!(kernel.module_loaded("kpatch_cve_1").unwrap());
    kernel.load_module(&fixture("kpersist_v1.ko")).unwrap();
    let names: Vec<String> = poll_until_settled(&kernel)
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["kpersist_v1"]);
    // A foreign cumulative patch appearing later replaces kpersist's in turn.
    kernel.add_foreign_patch("livepatch_vendor", true);
    let names: Vec<String> = kernel.patches().into_iter().map(|p| p.name).collect();
    assert_eq!(names, vec!["livepatch_vendor"]);
}

#[test]
fn user_space_kmsg_lines_are_not_the_kernels() {
    let kernel = sim();
    let mark = kernel.kmsg_mark().unwrap();
    kernel.push_user_kmsg("WARNING: written by a shell");
    kernel.push_kmsg("WARNING: CPU: 0 PID: 1 at kernel/x.c:1");
    let lines = kernel.kmsg_since(mark).unwrap();
    let from_kernel: Vec<bool> = lines.iter().map(|l| l.from_kernel()).collect();
    assert_eq!(from_kernel, vec![false, true]);
}

#[test]
fn an_unreadable_livepatch_directory_fails_reads_until_it_is_back() {
    let kernel = sim();
    kernel.add_foreign_patch("kpatch_x", true);
    kernel.set_livepatch_unreadable(true);
    let err = kernel.loaded_patches().unwrap_err();
    assert!(err.to_string().contains("/sys/kernel/livepatch"), "{err}");
    kernel.set_livepatch_unreadable(false);
    assert_eq!(kernel.loaded_patches().unwrap().len(), 1);
}
