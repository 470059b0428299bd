//! Errors from the kernel interface. Syscall errnos are mapped to what they mean for a
//! livepatch module, because the agent reports them to people and picks a reason from them.

use std::path::PathBuf;

/// What a failed `finit_module`/`delete_module` call means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyscallFailure {
    /// `EEXIST`: a module of that name is already loaded.
    AlreadyLoaded,
    /// `ENOEXEC`: the file is not a module this kernel can load (bad ELF, wrong arch).
    InvalidModule,
    /// `EPERM`: lockdown / Secure Boot refuses unsigned modules, or the caller lacks
    /// `CAP_SYS_MODULE`.
    NotPermitted,
    /// `EKEYREJECTED`: the module's signature was rejected.
    KeyRejected,
    /// `EINVAL`: the kernel rejected the module's contents (vermagic, symbols, or the
    /// livepatch failed to enable).
    InvalidArgument,
    /// `ENOENT`: no module of that name is loaded, or a symbol the module needs is missing.
    NotFound,
    /// `EBUSY`: the module is in use, or a livepatch transition is in progress.
    Busy,
    /// `ENOSYS`: the kernel has no module support.
    Unsupported,
    /// Any other errno.
    Other,
}

impl SyscallFailure {
    /// Classifies an errno.
    pub fn from_errno(errno: i32) -> SyscallFailure {
        match errno {
            libc::EEXIST => SyscallFailure::AlreadyLoaded,
            libc::ENOEXEC => SyscallFailure::InvalidModule,
            libc::EPERM | libc::EACCES => SyscallFailure::NotPermitted,
            libc::EKEYREJECTED => SyscallFailure::KeyRejected,
            libc::EINVAL => SyscallFailure::InvalidArgument,
            libc::ENOENT => SyscallFailure::NotFound,
            libc::EBUSY | libc::EAGAIN => SyscallFailure::Busy,
            libc::ENOSYS => SyscallFailure::Unsupported,
            _ => SyscallFailure::Other,
        }
    }

    /// The errno a real kernel returns for this failure (for the simulated kernel).
    pub fn errno(self) -> i32 {
        match self {
            SyscallFailure::AlreadyLoaded => libc::EEXIST,
            SyscallFailure::InvalidModule => libc::ENOEXEC,
            SyscallFailure::NotPermitted => libc::EPERM,
            SyscallFailure::KeyRejected => libc::EKEYREJECTED,
            SyscallFailure::InvalidArgument => libc::EINVAL,
            SyscallFailure::NotFound => libc::ENOENT,
            SyscallFailure::Busy => libc::EBUSY,
            SyscallFailure::Unsupported => libc::ENOSYS,
            SyscallFailure::Other => libc::EIO,
        }
    }

    /// What to do about it, for people.
    fn hint(self) -> &'static str {
        match self {
            SyscallFailure::AlreadyLoaded => "unload the module of that name first",
            SyscallFailure::InvalidModule => "the file is not a module for this kernel; rebuild it",
            SyscallFailure::NotPermitted => {
                "lockdown or Secure Boot refuses unsigned modules, or the agent lacks \
                 CAP_SYS_MODULE; sign the module with a key the kernel trusts"
            }
            SyscallFailure::KeyRejected => "sign the module with a key the kernel trusts",
            SyscallFailure::InvalidArgument => {
                "the kernel rejected the module (see the kernel log); rebuild it for this kernel"
            }
            SyscallFailure::NotFound => "the module or a symbol it needs is not there",
            SyscallFailure::Busy => "wait for the livepatch transition or the users to finish",
            SyscallFailure::Unsupported => "the kernel was built without module support",
            SyscallFailure::Other => "see the kernel log",
        }
    }
}

/// Why a kernel call failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A sysfs/procfs/kmsg file could not be read or written.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A kernel file held something unexpected.
    #[error("unexpected contents in {}: {value:?}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held.
        value: String,
    },
    /// `finit_module` or `delete_module` failed.
    #[error("{op} of module {module} failed: {}; {}", std::io::Error::from_raw_os_error(*errno), failure.hint())]
    Syscall {
        /// `load` or `unload`.
        op: &'static str,
        /// The module file or name.
        module: String,
        /// What the errno means here.
        failure: SyscallFailure,
        /// The raw errno.
        errno: i32,
    },
    /// A module is larger than any livepatch the agent loads.
    #[error("module {module} is larger than {max} bytes; it is not a livepatch kpersist loads")]
    ModuleTooLarge {
        /// The module file or URL.
        module: String,
        /// The cap.
        max: u64,
    },
    /// The livepatch named is not loaded.
    #[error("livepatch {name} is not loaded (no /sys/kernel/livepatch/{name})")]
    NoSuchPatch {
        /// The patch name.
        name: String,
    },
    /// The build-id note of the running kernel could not be read.
    #[error("cannot identify the running kernel: {0}")]
    Identity(#[from] crate::buildid::BuildIdError),
}

impl KernelError {
    /// A syscall error from an errno.
    pub fn syscall(op: &'static str, module: impl Into<String>, errno: i32) -> KernelError {
        KernelError::Syscall {
            op,
            module: module.into(),
            failure: SyscallFailure::from_errno(errno),
            errno,
        }
    }

    /// The syscall failure, when this is one.
    pub fn syscall_failure(&self) -> Option<SyscallFailure> {
        match self {
            KernelError::Syscall { failure, .. } => Some(*failure),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> KernelError {
        KernelError::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_map_both_ways() {
        for failure in [
            SyscallFailure::AlreadyLoaded,
            SyscallFailure::InvalidModule,
            SyscallFailure::NotPermitted,
            SyscallFailure::KeyRejected,
            SyscallFailure::InvalidArgument,
            SyscallFailure::NotFound,
            SyscallFailure::Busy,
            SyscallFailure::Unsupported,
        ] {
            assert_eq!(SyscallFailure::from_errno(failure.errno()), failure);
        }
        assert_eq!(SyscallFailure::from_errno(libc::EIO), SyscallFailure::Other);
    }

    #[test]
    fn lockdown_error_says_what_to_do() {
        let err = KernelError::syscall("load", "/cache/x.ko", libc::EPERM);
        assert_eq!(err.syscall_failure(), Some(SyscallFailure::NotPermitted));
        let text = err.to_string();
        assert!(text.contains("/cache/x.ko"), "{text}");
        assert!(text.contains("lockdown"), "{text}");
        assert!(text.contains("os error 1"), "{text}");
    }
}
