//! The Linux livepatch kernel interface behind one trait: what the running kernel is, which
//! livepatches it has, its taint and log, and the few calls that change it. `SysKernel` talks
//! to a real kernel; `SimKernel` is an in-memory kernel with injectable faults for tests.

mod error;
mod image;
mod kmsg;
mod sim;
mod sim_store;
mod sys;

pub use error::{KernelError, SyscallFailure};
pub use image::{MAX_MODULE_IMAGE, ModuleImage};
pub use kmsg::{KmsgLine, KmsgMark, is_kernel_warning};
pub use sim::{SimFault, SimKernel, SimTransition};
pub use sys::SysKernel;

/// Which kernel build is running (release and GNU build id).
pub use crate::buildid::KernelIdentity;

/// Taint bit `P`: a module with a license other than GPL was loaded.
pub const TAINT_PROPRIETARY_MODULE: u64 = 1;
/// Taint bit `F`: a module was loaded with its version checks forced off.
pub const TAINT_FORCED_MODULE: u64 = 1 << 1;
/// Taint bit `D`: the kernel died (an oops or a BUG).
pub const TAINT_DIE: u64 = 1 << 7;
/// Taint bit `W`: the kernel issued a warning.
pub const TAINT_WARN: u64 = 1 << 9;
/// Taint bit `C`: a staging driver was loaded.
pub const TAINT_CRAP: u64 = 1 << 10;
/// Taint bit `L`: a soft lockup occurred.
pub const TAINT_SOFTLOCKUP: u64 = 1 << 14;
/// Taint bit `X`: an auxiliary taint, which distributions set for unsupported modules.
pub const TAINT_AUX: u64 = 1 << 16;
/// Taint bit `T`: a module was built with another structure randomization seed.
pub const TAINT_RANDSTRUCT: u64 = 1 << 17;
/// Taint bits the module loader sets for the module it is loading (`P`, `F`, `C`, `X`, `T`):
/// new ones right after a livepatch load are the livepatch's.
pub const TAINT_FROM_MODULE_LOAD: u64 =
    TAINT_PROPRIETARY_MODULE | TAINT_FORCED_MODULE | TAINT_CRAP | TAINT_AUX | TAINT_RANDSTRUCT;
/// Taint bits a fault in running code sets (`W`, `D`, `L`): the kernel log report of the
/// fault says whose code it was.
pub const TAINT_FROM_FAULT: u64 = TAINT_WARN | TAINT_DIE | TAINT_SOFTLOCKUP;

/// Taint bit `O`: an out-of-tree module was loaded.
pub const TAINT_OOT_MODULE: u64 = 1 << 12;
/// Taint bit `E`: an unsigned module was loaded.
pub const TAINT_UNSIGNED_MODULE: u64 = 1 << 13;
/// Taint bit `K`: the kernel has been live patched.
pub const TAINT_LIVEPATCH: u64 = 1 << 15;
/// Taint bits loading a kpersist livepatch sets by itself; any other new bit is a finding.
pub const TAINT_EXPECTED: u64 = TAINT_OOT_MODULE | TAINT_UNSIGNED_MODULE | TAINT_LIVEPATCH;

/// A livepatch the kernel has, as `/sys/kernel/livepatch/<name>` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchState {
    /// Module name (the directory name).
    pub name: String,
    /// Whether the patch is enabled (or being enabled).
    pub enabled: bool,
    /// Whether a transition (patching or unpatching) is in progress.
    pub transition: bool,
}

/// A task that keeps a livepatch transition from finishing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockingTask {
    /// Process id.
    pub pid: u32,
    /// Command name (`/proc/<pid>/comm`), empty when it could not be read.
    pub comm: String,
}

impl std::fmt::Display for BlockingTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.pid, self.comm)
    }
}

/// The running kernel, as far as livepatching goes.
///
/// Calls block (sysfs reads, syscalls); async callers run them on a blocking thread.
pub trait Kernel: Send + Sync {
    /// Release and build id of the running kernel.
    fn identity(&self) -> Result<KernelIdentity, KernelError>;
    /// Whether the kernel supports livepatch (`/sys/kernel/livepatch` exists).
    fn livepatch_supported(&self) -> bool;
    /// Every livepatch the kernel has now, sorted by name.
    fn loaded_patches(&self) -> Result<Vec<PatchState>, KernelError>;
    /// The taint mask (`/proc/sys/kernel/tainted`).
    fn tainted(&self) -> Result<u64, KernelError>;
    /// The boot id, which changes on every boot.
    fn boot_id(&self) -> Result<String, KernelError>;
    /// A mark at the end of the kernel log now, to read later lines from.
    fn kmsg_mark(&self) -> Result<KmsgMark, KernelError>;
    /// Kernel log lines written after `mark`.
    fn kmsg_since(&self, mark: KmsgMark) -> Result<Vec<KmsgLine>, KernelError>;
    /// Loads the module whose bytes are `module` (no parameters). The kernel gets exactly
    /// these bytes, never a file that could change after they were checked.
    fn load_module(&self, module: &ModuleImage) -> Result<(), KernelError>;
    /// Unloads the module `name` (`delete_module`, non-blocking).
    fn delete_module(&self, name: &str) -> Result<(), KernelError>;
    /// Enables or disables the livepatch `name`; disabling during a transition reverses it.
    fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), KernelError>;
    /// Tasks not yet switched to the state the transition of livepatch `name` heads for.
    fn blocking_tasks(&self, name: &str) -> Result<Vec<BlockingTask>, KernelError>;
    /// Whether the livepatch `name` was built with atomic replace, from
    /// `/sys/kernel/livepatch/<name>/replace`; `None` on kernels without that attribute
    /// (before 6.11).
    fn patch_replaces(&self, name: &str) -> Result<Option<bool>, KernelError>;
    /// Whether a module named `name` is loaded (livepatch or not).
    fn module_loaded(&self, name: &str) -> Result<bool, KernelError>;
}

impl<K: Kernel + ?Sized> Kernel for std::sync::Arc<K> {
    fn identity(&self) -> Result<KernelIdentity, KernelError> {
        (**self).identity()
    }
    fn livepatch_supported(&self) -> bool {
        (**self).livepatch_supported()
    }
    fn loaded_patches(&self) -> Result<Vec<PatchState>, KernelError> {
        (**self).loaded_patches()
    }
    fn tainted(&self) -> Result<u64, KernelError> {
        (**self).tainted()
    }
    fn boot_id(&self) -> Result<String, KernelError> {
        (**self).boot_id()
    }
    fn kmsg_mark(&self) -> Result<KmsgMark, KernelError> {
        (**self).kmsg_mark()
    }
    fn kmsg_since(&self, mark: KmsgMark) -> Result<Vec<KmsgLine>, KernelError> {
        (**self).kmsg_since(mark)
    }
    fn load_module(&self, module: &ModuleImage) -> Result<(), KernelError> {
        (**self).load_module(module)
    }
    fn delete_module(&self, name: &str) -> Result<(), KernelError> {
        (**self).delete_module(name)
    }
    fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), KernelError> {
        (**self).set_enabled(name, enabled)
    }
    fn blocking_tasks(&self, name: &str) -> Result<Vec<BlockingTask>, KernelError> {
        (**self).blocking_tasks(name)
    }
    fn patch_replaces(&self, name: &str) -> Result<Option<bool>, KernelError> {
        (**self).patch_replaces(name)
    }
    fn module_loaded(&self, name: &str) -> Result<bool, KernelError> {
        (**self).module_loaded(name)
    }
}

/// Names the taint letters set in `bits`, in the kernel's order (e.g. `"OEK"`).
pub fn taint_letters(bits: u64) -> String {
    // Letters of /proc/sys/kernel/tainted bits 0..=18, as in Documentation/admin-guide/tainted-kernels.rst.
    const LETTERS: &[u8] = b"PFSRMBUDAWCIOELKXTN";
    (0..64)
        .filter(|bit| bits & (1u64 << bit) != 0)
        .map(|bit| {
            LETTERS
                .get(bit)
                .map(|&c| char::from(c).to_string())
                .unwrap_or_else(|| format!("[{bit}]"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taint_letters_names_livepatch_bits() {
        assert_eq!(taint_letters(TAINT_EXPECTED), "OEK");
        assert_eq!(taint_letters(TAINT_FROM_MODULE_LOAD), "PFCXT");
        assert_eq!(taint_letters(TAINT_FROM_FAULT), "DWL");
        assert_eq!(taint_letters(1 << 9), "W");
        assert_eq!(taint_letters(1 << 40), "[40]");
        assert_eq!(taint_letters(0), "");
    }
}
