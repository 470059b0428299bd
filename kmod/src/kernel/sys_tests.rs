//! `SysKernel` against a fake `/sys` + `/proc` tree. The two syscalls are never called here:
//! the machine running the tests is not a kernel we may load modules into.

use std::fs;
use std::path::Path;

use super::*;
use crate::kernel::{KmsgMark, TAINT_EXPECTED, is_kernel_warning};

struct FakeTree {
    dir: tempfile::TempDir,
}

impl FakeTree {
    fn new() -> FakeTree {
        let tree = FakeTree {
            dir: tempfile::tempdir().unwrap(),
        };
        tree.write("proc/sys/kernel/osrelease", "6.1.0-28-amd64\n");
        tree.write("proc/sys/kernel/tainted", "0\n");
        tree.write(
            "proc/sys/kernel/random/boot_id",
            "0f3c2d1e-aaaa-bbbb-cccc-000000000001\n",
        );
        tree.write("dev/kmsg", "");
        fs::create_dir_all(tree.path("sys/kernel/livepatch")).unwrap();
        let mut notes = Vec::new();
        for word in [4u32, 4, 3] {
            notes.extend_from_slice(&word.to_ne_bytes());
        }
        notes.extend_from_slice(b"GNU\0\xde\xad\xbe\xef");
        fs::write(tree.path("sys/kernel/notes"), notes).unwrap();
        tree
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, contents: &str) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    fn patch(&self, name: &str, enabled: bool, transition: bool) {
        let flag = |b: bool| if b { "1\n" } else { "0\n" };
        self.write(
            &format!("sys/kernel/livepatch/{name}/enabled"),
            flag(enabled),
        );
        self.write(
            &format!("sys/kernel/livepatch/{name}/transition"),
            flag(transition),
        );
    }

    fn task(&self, pid: u32, comm: &str, patch_state: &str) {
        self.write(&format!("proc/{pid}/comm"), &format!("{comm}\n"));
        self.write(
            &format!("proc/{pid}/patch_state"),
            &format!("{patch_state}\n"),
        );
    }

    fn kernel(&self) -> SysKernel {
        SysKernel::new(self.path("sys"), self.path("proc"), self.path("dev/kmsg"))
    }
}

#[test]
fn reads_taint_boot_id_and_support() {
    let tree = FakeTree::new();
    let kernel = tree.kernel();
    let identity = kernel.identity().unwrap();
    assert_eq!(identity.release, "6.1.0-28-amd64");
    assert_eq!(identity.build_id, "deadbeef");
    assert!(kernel.livepatch_supported());
    assert_eq!(
        kernel.boot_id().unwrap(),
        "0f3c2d1e-aaaa-bbbb-cccc-000000000001"
    );
    assert_eq!(kernel.tainted().unwrap(), 0);
    tree.write("proc/sys/kernel/tainted", &format!("{TAINT_EXPECTED}\n"));
    assert_eq!(kernel.tainted().unwrap(), TAINT_EXPECTED);
}

#[test]
fn missing_livepatch_dir_means_unsupported_and_no_patches() {
    let tree = FakeTree::new();
    fs::remove_dir(tree.path("sys/kernel/livepatch")).unwrap();
    let kernel = tree.kernel();
    assert!(!kernel.livepatch_supported());
    assert_eq!(kernel.loaded_patches().unwrap(), vec![]);
}

#[test]
fn garbage_taint_is_a_parse_error_naming_the_file() {
    let tree = FakeTree::new();
    tree.write("proc/sys/kernel/tainted", "lots\n");
    let err = tree.kernel().tainted().unwrap_err();
    assert!(matches!(err, KernelError::Parse { .. }));
    assert!(err.to_string().contains("tainted"), "{err}");
}

#[test]
fn lists_patches_sorted_with_flags() {
    let tree = FakeTree::new();
    tree.patch("kpersist_v2", true, true);
    tree.patch("kpersist_v1", true, false);
    // A stray file in the directory is not a patch.
    tree.write("sys/kernel/livepatch/README", "x");
    let patches = tree.kernel().loaded_patches().unwrap();
    assert_eq!(
        patches,
        vec![
            PatchState {
                name: "kpersist_v1".into(),
                enabled: true,
                transition: false
            },
            PatchState {
                name: "kpersist_v2".into(),
                enabled: true,
                transition: true
            },
        ]
    );
}

#[test]
fn bad_flag_is_reported() {
    let tree = FakeTree::new();
    tree.patch("kpersist_v1", true, false);
    tree.write("sys/kernel/livepatch/kpersist_v1/enabled", "maybe\n");
    assert!(matches!(
        tree.kernel().loaded_patches(),
        Err(KernelError::Parse { .. })
    ));
}

#[test]
fn set_enabled_writes_the_sysfs_file() {
    let tree = FakeTree::new();
    tree.patch("kpersist_v1", true, true);
    let kernel = tree.kernel();
    kernel.set_enabled("kpersist_v1", false).unwrap();
    let written = fs::read_to_string(tree.path("sys/kernel/livepatch/kpersist_v1/enabled"));
    assert_eq!(written.unwrap(), "0");
    assert!(matches!(
        kernel.set_enabled("absent", false),
        Err(KernelError::NoSuchPatch { .. })
    ));
    assert!(matches!(
        kernel.set_enabled("../../etc", false),
        Err(KernelError::NoSuchPatch { .. })
    ));
}

#[test]
fn blocking_tasks_are_those_not_in_the_target_state() {
    let tree = FakeTree::new();
    tree.patch("kpersist_v1", true, true);
    tree.task(1, "init", "1");
    tree.task(77, "sleeper", "0");
    tree.task(99, "idle", "-1");
    tree.task(12, "worker", "0");
    // Entries that are not tasks are ignored.
    tree.write("proc/self/patch_state", "0\n");
    let kernel = tree.kernel();
    let tasks = kernel.blocking_tasks("kpersist_v1").unwrap();
    let pids: Vec<u32> = tasks.iter().map(|t| t.pid).collect();
    assert_eq!(pids, vec![12, 77]);
    assert_eq!(tasks[1].comm, "sleeper");

    // Reversed (enabled=0): now the patched tasks are the ones holding it up.
    tree.write("sys/kernel/livepatch/kpersist_v1/enabled", "0\n");
    let pids: Vec<u32> = kernel
        .blocking_tasks("kpersist_v1")
        .unwrap()
        .iter()
        .map(|t| t.pid)
        .collect();
    assert_eq!(pids, vec![1]);

    // No transition: nothing blocks.
    tree.write("sys/kernel/livepatch/kpersist_v1/transition", "0\n");
    assert!(kernel.blocking_tasks("kpersist_v1").unwrap().is_empty());
}

#[test]
fn kmsg_mark_then_new_lines() {
    let tree = FakeTree::new();
    tree.write("dev/kmsg", "6,10,0,-;boot\n6,11,0,-;more\n");
    let kernel = tree.kernel();
    let mark = kernel.kmsg_mark().unwrap();
    assert_eq!(mark, KmsgMark(11));
    append(
        &tree.path("dev/kmsg"),
        "6,12,0,-;livepatch: enabling patch 'kpersist_v1'\n4,13,0,-;WARNING: CPU: 1 PID: 5 at x\n",
    );
    let new = kernel.kmsg_since(mark).unwrap();
    assert_eq!(new.len(), 2);
    assert!(is_kernel_warning(&new[1].text));
    assert!(!is_kernel_warning(&new[0].text));
}

#[test]
fn missing_kmsg_is_an_io_error_naming_it() {
    let tree = FakeTree::new();
    fs::remove_file(tree.path("dev/kmsg")).unwrap();
    let err = tree.kernel().kmsg_mark().unwrap_err();
    assert!(err.to_string().contains("kmsg"), "{err}");
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

#[test]
fn the_module_memfd_holds_the_bytes_sealed_and_read_only() {
    use std::io::{Read, Seek, Write};

    let image = ModuleImage::new("cache/m.ko", b"verified module bytes".to_vec()).unwrap();
    let mut fd = sealed_memfd(&image).unwrap();
    let mut read = Vec::new();
    fd.read_to_end(&mut read).unwrap();
    assert_eq!(read, image.bytes());
    // SAFETY: plain fcntl on a descriptor the test owns.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    let wanted = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    assert_eq!(seals & wanted, wanted, "seals {seals:#x}");
    // The descriptor is read-only (the kernel refuses a file anyone holds open for writing
    // with ETXTBSY), and a writer opened anew cannot change the content: the write seal.
    assert!(fd.write_all(b"x").is_err());
    let again = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mut writer = fs::OpenOptions::new().write(true).open(&again).unwrap();
    let err = writer.write_all(b"forged").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    fd.rewind().unwrap();
    read.clear();
    fd.read_to_end(&mut read).unwrap();
    assert_eq!(read, image.bytes());
}

#[test]
fn the_replace_attribute_is_read_where_the_kernel_has_it() {
    let tree = FakeTree::new();
    let kernel = tree.kernel();
    tree.patch("old_kernel", true, false);
    assert_eq!(kernel.patch_replaces("old_kernel").unwrap(), None);
    tree.patch("cumulative", true, false);
    tree.write("sys/kernel/livepatch/cumulative/replace", "1\n");
    assert_eq!(kernel.patch_replaces("cumulative").unwrap(), Some(true));
    tree.patch("stacking", true, false);
    tree.write("sys/kernel/livepatch/stacking/replace", "0\n");
    assert_eq!(kernel.patch_replaces("stacking").unwrap(), Some(false));
    assert!(matches!(
        kernel.patch_replaces("absent"),
        Err(KernelError::NoSuchPatch { .. })
    ));
}

#[test]
fn a_module_is_loaded_when_sysfs_shows_its_initstate() {
    let tree = FakeTree::new();
    let kernel = tree.kernel();
    tree.write("sys/module/kpersist_v1/initstate", "live\n");
    // Built in, with parameters: a directory but no initstate.
    tree.write("sys/module/printk/parameters/time", "Y\n");
    assert!(kernel.module_loaded("kpersist_v1").unwrap());
    assert!(!kernel.module_loaded("printk").unwrap());
    assert!(!kernel.module_loaded("absent").unwrap());
    assert!(!kernel.module_loaded("../kpersist_v1").unwrap());
}
