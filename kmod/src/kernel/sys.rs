//! The real kernel: sysfs and procfs files plus `finit_module`/`delete_module`. The roots of
//! `/sys` and `/proc` and the kmsg path are injectable so everything but the two syscalls
//! can be tested against a fake tree.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::kmsg::{self, KmsgLine, KmsgMark};
use super::{BlockingTask, Kernel, KernelError, KernelIdentity, ModuleImage, PatchState};

/// The running Linux kernel, read through `sysfs_root` and `procfs_root`.
#[derive(Clone, Debug)]
pub struct SysKernel {
    sysfs_root: PathBuf,
    procfs_root: PathBuf,
    kmsg_path: PathBuf,
}

impl Default for SysKernel {
    fn default() -> Self {
        SysKernel::new("/sys", "/proc", "/dev/kmsg")
    }
}

impl SysKernel {
    /// A kernel seen through the given roots (normally `/sys`, `/proc`, `/dev/kmsg`).
    pub fn new(
        sysfs_root: impl Into<PathBuf>,
        procfs_root: impl Into<PathBuf>,
        kmsg_path: impl Into<PathBuf>,
    ) -> SysKernel {
        SysKernel {
            sysfs_root: sysfs_root.into(),
            procfs_root: procfs_root.into(),
            kmsg_path: kmsg_path.into(),
        }
    }

    fn livepatch_dir(&self) -> PathBuf {
        self.sysfs_root.join("kernel/livepatch")
    }

    fn read_trimmed(path: &Path) -> Result<String, KernelError> {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| KernelError::io(path, e))
    }

    fn read_flag(path: &Path) -> Result<bool, KernelError> {
        match Self::read_trimmed(path)?.as_str() {
            "0" => Ok(false),
            "1" => Ok(true),
            other => Err(KernelError::Parse {
                path: path.to_path_buf(),
                value: other.to_string(),
            }),
        }
    }

    fn read_flag_if_present(path: &Path) -> Result<Option<bool>, KernelError> {
        match Self::read_flag(path) {
            Ok(flag) => Ok(Some(flag)),
            Err(KernelError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn patch_dir(&self, name: &str) -> Result<PathBuf, KernelError> {
        // A name with a slash or dots could escape the livepatch directory.
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(KernelError::NoSuchPatch {
                name: name.to_string(),
            });
        }
        let dir = self.livepatch_dir().join(name);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(KernelError::NoSuchPatch {
                name: name.to_string(),
            })
        }
    }
}

impl Kernel for SysKernel {
    fn identity(&self) -> Result<KernelIdentity, KernelError> {
        let paths = crate::buildid::KernelPaths {
            notes: self.sysfs_root.join("kernel/notes"),
            osrelease: self.procfs_root.join("sys/kernel/osrelease"),
        };
        Ok(KernelIdentity::read(&paths)?)
    }

    fn livepatch_supported(&self) -> bool {
        self.livepatch_dir().is_dir()
    }

    fn loaded_patches(&self) -> Result<Vec<PatchState>, KernelError> {
        let dir = self.livepatch_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(KernelError::io(&dir, e)),
        };
        let mut patches = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| KernelError::io(&dir, e))?;
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            // A patch freed between readdir and these reads is simply gone.
            let (Some(enabled), Some(transition)) = (
                Self::read_flag_if_present(&path.join("enabled"))?,
                Self::read_flag_if_present(&path.join("transition"))?,
            ) else {
                continue;
            };
            patches.push(PatchState {
                name,
                enabled,
                transition,
            });
        }
        patches.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(patches)
    }

    fn tainted(&self) -> Result<u64, KernelError> {
        let path = self.procfs_root.join("sys/kernel/tainted");
        let text = Self::read_trimmed(&path)?;
        text.parse()
            .map_err(|_| KernelError::Parse { path, value: text })
    }

    fn boot_id(&self) -> Result<String, KernelError> {
        Self::read_trimmed(&self.procfs_root.join("sys/kernel/random/boot_id"))
    }

    fn kmsg_mark(&self) -> Result<KmsgMark, KernelError> {
        let records = kmsg::read_all(&self.kmsg_path)?;
        Ok(KmsgMark(records.iter().map(|r| r.seq).max().unwrap_or(0)))
    }

    fn kmsg_since(&self, mark: KmsgMark) -> Result<Vec<KmsgLine>, KernelError> {
        let mut records = kmsg::read_all(&self.kmsg_path)?;
        records.retain(|r| r.seq > mark.0);
        Ok(records)
    }

    fn load_module(&self, module: &ModuleImage) -> Result<(), KernelError> {
        let fd = sealed_memfd(module)?;
        let params = c"";
        // SAFETY: the fd stays open for the call; params is a valid NUL-terminated string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                fd.as_raw_fd(),
                params.as_ptr(),
                0 as libc::c_int,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            Err(KernelError::syscall("load", module.source(), errno))
        }
    }

    fn delete_module(&self, name: &str) -> Result<(), KernelError> {
        let cname =
            CString::new(name).map_err(|_| KernelError::syscall("unload", name, libc::EINVAL))?;
        // SAFETY: cname is a valid NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_delete_module,
                cname.as_ptr(),
                libc::O_NONBLOCK as libc::c_long,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            Err(KernelError::syscall("unload", name, errno))
        }
    }

    fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), KernelError> {
        let path = self.patch_dir(name)?.join("enabled");
        std::fs::write(&path, if enabled { "1" } else { "0" }).map_err(|e| KernelError::io(path, e))
    }

    fn blocking_tasks(&self, name: &str) -> Result<Vec<BlockingTask>, KernelError> {
        let dir = self.patch_dir(name)?;
        if !Self::read_flag(&dir.join("transition"))? {
            return Ok(Vec::new());
        }
        // patch_state is 1 (patched) or 0 (unpatched) during a transition, -1 otherwise;
        // a task blocks when it is not yet in the state the patch heads for.
        let target = if Self::read_flag(&dir.join("enabled"))? {
            "1"
        } else {
            "0"
        };
        let entries = std::fs::read_dir(&self.procfs_root)
            .map_err(|e| KernelError::io(&self.procfs_root, e))?;
        let mut tasks = Vec::new();
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            // Tasks exit while we scan; a missing file means the task is gone.
            let Ok(state) = std::fs::read_to_string(entry.path().join("patch_state")) else {
                continue;
            };
            let state = state.trim();
            if state == "-1" || state == target {
                continue;
            }
            let comm = std::fs::read_to_string(entry.path().join("comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            tasks.push(BlockingTask { pid, comm });
        }
        tasks.sort_by_key(|t| t.pid);
        Ok(tasks)
    }

    fn patch_replaces(&self, name: &str) -> Result<Option<bool>, KernelError> {
        Self::read_flag_if_present(&self.patch_dir(name)?.join("replace"))
    }

    fn module_loaded(&self, name: &str) -> Result<bool, KernelError> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Ok(false);
        }
        // `initstate` exists for loaded modules only; a built-in module with parameters
        // also has a /sys/module directory.
        let path = self.sysfs_root.join("module").join(name).join("initstate");
        match std::fs::metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(KernelError::io(path, e)),
        }
    }
}

/// Puts `module` into a sealed memfd and returns a read-only descriptor of it, for
/// `finit_module`.
///
/// Why a memfd and `finit_module` rather than `init_module` with the buffer: the kernel
/// reads the module through the same file path as for any `finit_module` (the LSM
/// `kernel_read_file` hook, module signature enforcement and lockdown apply unchanged), and
/// the seals make the content immutable, so the kernel reads exactly the bytes the agent
/// verified. The read-only reopen is needed because the kernel refuses to read a module
/// from a file that anyone holds open for writing (`ETXTBSY`).
fn sealed_memfd(module: &ModuleImage) -> Result<std::fs::File, KernelError> {
    let memfd_path = || PathBuf::from(format!("memfd of {}", module.source()));
    // SAFETY: the name is a valid NUL-terminated string; the flags are memfd_create flags.
    let raw = unsafe {
        libc::memfd_create(
            c"kpersist-module".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(KernelError::io(
            memfd_path(),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let mut writable = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    writable
        .write_all(module.bytes())
        .map_err(|e| KernelError::io(memfd_path(), e))?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: plain fcntl on a descriptor we own.
    if unsafe { libc::fcntl(writable.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(KernelError::io(
            memfd_path(),
            std::io::Error::last_os_error(),
        ));
    }
    let reopen = PathBuf::from(format!("/proc/self/fd/{}", writable.as_raw_fd()));
    let readonly = std::fs::File::open(&reopen).map_err(|e| KernelError::io(&reopen, e))?;
    drop(writable);
    Ok(readonly)
}

#[cfg(test)]
#[path = "sys_tests.rs"]
mod tests;
