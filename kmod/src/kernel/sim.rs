//! An in-memory kernel for unit and fleet tests: it reads the real `.modinfo` of what it is
//! asked to load, keeps livepatches with the kernel's atomic-replace semantics (a livepatch
//! here is `.replace = true`, like kpersist's, unless a fault says otherwise), can hold
//! livepatches of other tools, and fails on request.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use super::kmsg::{KmsgLine, KmsgMark, is_kernel_warning};
use super::{
    BlockingTask, Kernel, KernelError, KernelIdentity, ModuleImage, PatchState, SyscallFailure,
    TAINT_LIVEPATCH, TAINT_OOT_MODULE, TAINT_UNSIGNED_MODULE, TAINT_WARN,
};
use crate::modinfo::ModInfo;

/// How the transition of a livepatch loaded into the simulated kernel goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimTransition {
    /// It finishes on the given poll of `loaded_patches` (0: already done at load).
    FinishAfter(u32),
    /// It never finishes until [`SimKernel::release_transition`]; these tasks block it.
    Stall(Vec<BlockingTask>),
    /// `klp_enable_patch` fails in the module's init, so the load itself fails (`EINVAL`).
    FailToEnable,
}

/// Faults injected for one module name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimFault {
    /// The load fails with this errno class and the module is not loaded.
    pub load_error: Option<SyscallFailure>,
    /// How its transition goes; `None`: finish on the first poll.
    pub transition: Option<SimTransition>,
    /// Kernel log lines written by its code when it is loaded. A warning among them is
    /// followed by a call trace through the module, as the kernel prints one.
    pub kmsg_on_load: Vec<String>,
    /// Kernel log lines written by other code at the same time, not about the module.
    pub unrelated_kmsg_on_load: Vec<String>,
    /// Lines user space writes to `/dev/kmsg` at the same time (facility user).
    pub user_kmsg_on_load: Vec<String>,
    /// Taint bits set when it is loaded, besides the usual `O`, `E`, `K`. With `W` and no
    /// warning in `kmsg_on_load`, the module's warning report is logged too, as the kernel
    /// sets `W` only when it prints one.
    pub taint_on_load: u64,
    /// The module was built without `.replace = true`: it stacks on the patches enabled
    /// before it instead of replacing them.
    pub not_cumulative: bool,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct SimPatch {
    name: String,
    enabled: bool,
    transition: bool,
    polls_left: u32,
    stalled: Option<Vec<BlockingTask>>,
    #[serde(default = "atomic_replace")]
    replace: bool,
}

fn atomic_replace() -> bool {
    true
}

#[derive(Debug)]
pub(super) struct SimState {
    identity: KernelIdentity,
    pub(super) boot_id: String,
    pub(super) boots: u32,
    supported: bool,
    pub(super) taint: u64,
    pub(super) kmsg: Vec<KmsgLine>,
    pub(super) modules: BTreeSet<String>,
    pub(super) patches: Vec<SimPatch>,
    faults: HashMap<String, SimFault>,
    load_log: Vec<String>,
    unload_log: Vec<String>,
    /// Whether sysfs shows each livepatch's `replace` attribute (kernels 6.11 and later).
    replace_attribute: bool,
    /// Where the kernel's state is saved after every change, if anywhere.
    pub(super) store: Option<std::path::PathBuf>,
    /// Reading `/sys/kernel/livepatch` fails (a fault; not saved with the state).
    unreadable: bool,
}

/// A simulated kernel. Clones share one state, so a test keeps a handle to look inside
/// while the code under test drives it.
#[derive(Clone, Debug)]
pub struct SimKernel {
    state: Arc<Mutex<SimState>>,
}

impl SimKernel {
    /// A kernel with livepatch support, no modules, no taint and an empty log.
    pub fn new(release: impl Into<String>, build_id: impl Into<String>) -> SimKernel {
        SimKernel {
            state: Arc::new(Mutex::new(SimState {
                identity: KernelIdentity {
                    release: release.into(),
                    build_id: build_id.into(),
                },
                boot_id: boot_id_for(1),
                boots: 1,
                supported: true,
                taint: 0,
                kmsg: Vec::new(),
                modules: BTreeSet::new(),
                patches: Vec::new(),
                faults: HashMap::new(),
                load_log: Vec::new(),
                unload_log: Vec::new(),
                replace_attribute: false,
                store: None,
                unreadable: false,
            })),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, SimState> {
        // A test that panicked while holding the lock leaves a state still worth reading.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The same kernel with boot id `boot_id` (a process simulating a reboot passes a new one).
    pub fn with_boot_id(self, boot_id: impl Into<String>) -> SimKernel {
        self.lock().boot_id = boot_id.into();
        self
    }

    /// Injects `fault` for the module named `module`, replacing any earlier one.
    pub fn set_fault(&self, module: impl Into<String>, fault: SimFault) {
        self.lock().faults.insert(module.into(), fault);
    }

    /// Shows each livepatch's `replace` attribute in sysfs, as kernels 6.11 and later do.
    pub fn set_replace_attribute(&self, shown: bool) {
        self.lock().replace_attribute = shown;
    }

    /// Another tool (a distribution's kpatch, a vendor's livepatch service) loads and
    /// enables its livepatch `name` right now; `replace` says whether it was built with
    /// atomic replace. It does not show in [`SimKernel::load_log`].
    pub fn add_foreign_patch(&self, name: impl Into<String>, replace: bool) {
        let name = name.into();
        let mut s = self.lock();
        if replace {
            // Its transition (taken as done at once) retires every other patch.
            s.patches.clear();
        }
        s.patches.push(SimPatch {
            name: name.clone(),
            enabled: true,
            transition: false,
            polls_left: 0,
            stalled: None,
            replace,
        });
        s.modules.insert(name);
        s.taint |= TAINT_LIVEPATCH | TAINT_OOT_MODULE;
        s.save_quietly();
    }

    /// Makes reading the livepatches in sysfs fail with `EIO` (`true`) or work again, as a
    /// wedged or unmounted `/sys` would.
    pub fn set_livepatch_unreadable(&self, unreadable: bool) {
        self.lock().unreadable = unreadable;
    }

    /// Turns livepatch support on or off.
    pub fn set_livepatch_supported(&self, supported: bool) {
        self.lock().supported = supported;
    }

    /// Lets a stalled transition of `name` finish on the next poll.
    pub fn release_transition(&self, name: &str) {
        if let Some(p) = self.lock().patches.iter_mut().find(|p| p.name == name) {
            p.stalled = None;
            p.polls_left = 1;
        }
        self.lock().save_quietly();
    }

    /// Writes a line to the kernel log.
    pub fn push_kmsg(&self, text: impl Into<String>) {
        let mut s = self.lock();
        s.log(4, text.into());
        s.save_quietly();
    }

    /// Writes a line to the kernel log from user space (`echo ... > /dev/kmsg`: facility
    /// user), as any root process on the node can.
    pub fn push_user_kmsg(&self, text: impl Into<String>) {
        let mut s = self.lock();
        s.log_as(1, 4, text.into());
        s.save_quietly();
    }

    /// Sets taint bits.
    pub fn add_taint(&self, bits: u64) {
        let mut s = self.lock();
        s.taint |= bits;
        s.save_quietly();
    }

    /// Reboots: a new boot id, and no modules, patches, taint or log.
    pub fn reboot(&self) {
        let mut s = self.lock();
        s.boots += 1;
        let boot_id = boot_id_for(s.boots);
        s.reboot(boot_id);
        s.save_quietly();
    }

    /// Every `load_module` call so far, by the module name in the loaded bytes (the source's
    /// file name when they are not a module), including the calls that failed.
    pub fn load_log(&self) -> Vec<String> {
        self.lock().load_log.clone()
    }

    /// Every module unloaded so far, in order.
    pub fn unload_log(&self) -> Vec<String> {
        self.lock().unload_log.clone()
    }

    /// Modules loaded now (livepatches and others).
    pub fn modules(&self) -> Vec<String> {
        self.lock().modules.iter().cloned().collect()
    }

    /// The livepatches as sysfs shows them, without counting as a poll.
    pub fn patches(&self) -> Vec<PatchState> {
        self.lock().patches.iter().map(SimPatch::state).collect()
    }
}

fn boot_id_for(boot: u32) -> String {
    format!("00000000-0000-4000-8000-{boot:012x}")
}

impl SimPatch {
    fn state(&self) -> PatchState {
        PatchState {
            name: self.name.clone(),
            enabled: self.enabled,
            transition: self.transition,
        }
    }
}

impl SimState {
    /// A new boot: the kernel keeps nothing loaded.
    pub(super) fn reboot(&mut self, boot_id: String) {
        self.boot_id = boot_id;
        self.modules.clear();
        self.patches.clear();
        self.taint = 0;
        self.kmsg.clear();
    }

    fn log(&mut self, level: u8, text: String) {
        self.log_as(0, level, text);
    }

    fn log_as(&mut self, facility: u8, level: u8, text: String) {
        let seq = self.kmsg.last().map_or(1, |l| l.seq + 1);
        self.kmsg.push(KmsgLine {
            seq,
            level,
            facility,
            text,
        });
    }

    /// One poll: transitions advance, finished ones take effect.
    fn poll(&mut self) {
        let mut finished = Vec::new();
        for p in self.patches.iter_mut() {
            if !p.transition || p.stalled.is_some() {
                continue;
            }
            p.polls_left = p.polls_left.saturating_sub(1);
            if p.polls_left == 0 {
                p.transition = false;
                finished.push((p.name.clone(), p.enabled));
            }
        }
        for (name, enabled) in finished {
            self.finish_transition(&name, enabled);
        }
    }

    fn finish_transition(&mut self, name: &str, enabled: bool) {
        let replaces = self.patches.iter().any(|p| p.name == name && p.replace);
        if enabled && replaces {
            // Atomic replace: the new patch supersedes every other one, whose sysfs
            // directories go away while their modules stay loaded until unloaded.
            self.patches.retain(|p| p.name == name);
        } else if enabled {
            // Without replace the new patch stacks on the others, which stay enabled.
        } else {
            // A disabled patch is freed; only its module remains.
            self.patches.retain(|p| p.name != name);
        }
        self.log(6, format!("livepatch: '{name}': patching complete"));
    }

    fn load(&mut self, bytes: &[u8], source: &str) -> Result<(), KernelError> {
        let path = Path::new(source);
        let file_name = path
            .file_name()
            .map_or_else(|| source.to_string(), |n| n.to_string_lossy().into_owned());
        let module = source.to_string();
        let info = match ModInfo::from_bytes(bytes) {
            Ok(info) => info,
            Err(_) => {
                self.load_log.push(file_name);
                return Err(KernelError::syscall("load", module, libc::ENOEXEC));
            }
        };
        self.load_log.push(info.name.clone());
        let fault = self.faults.get(&info.name).cloned().unwrap_or_default();
        let refuse = |failure: SyscallFailure| {
            Err(KernelError::syscall(
                "load",
                module.clone(),
                failure.errno(),
            ))
        };
        if let Some(failure) = fault.load_error {
            return refuse(failure);
        }
        if self.modules.contains(&info.name) {
            return refuse(SyscallFailure::AlreadyLoaded);
        }
        if info.livepatch {
            if !self.supported {
                // Without CONFIG_LIVEPATCH the klp_* symbols do not resolve.
                return refuse(SyscallFailure::NotFound);
            }
            if self.patches.iter().any(|p| p.transition) {
                return refuse(SyscallFailure::Busy);
            }
            let (polls, stalled) = match fault.transition {
                None => (1, None),
                Some(SimTransition::FinishAfter(n)) => (n, None),
                Some(SimTransition::Stall(tasks)) => (1, Some(tasks)),
                Some(SimTransition::FailToEnable) => {
                    self.log(
                        3,
                        format!("livepatch: failed to enable patch '{}'", info.name),
                    );
                    return refuse(SyscallFailure::InvalidArgument);
                }
            };
            self.taint |= TAINT_LIVEPATCH;
            self.log(6, format!("livepatch: enabling patch '{}'", info.name));
            let done_now = polls == 0 && stalled.is_none();
            self.patches.push(SimPatch {
                name: info.name.clone(),
                enabled: true,
                transition: !done_now,
                polls_left: polls,
                stalled,
                replace: !fault.not_cumulative,
            });
            if done_now {
                self.finish_transition(&info.name, true);
            }
        }
        self.modules.insert(info.name.clone());
        self.taint |= TAINT_OOT_MODULE | TAINT_UNSIGNED_MODULE | fault.taint_on_load;
        let name = &info.name;
        let mut own = fault.kmsg_on_load;
        if fault.taint_on_load & TAINT_WARN != 0 && !own.iter().any(|l| is_kernel_warning(l)) {
            own.push(format!(
                "WARNING: CPU: 0 PID: 1 at {name}.c:1 {name}_init+0x10/0x20 [{name}]"
            ));
        }
        for line in own {
            let warning = is_kernel_warning(&line);
            self.log(4, line);
            if warning {
                self.log(4, "Call Trace:".to_string());
                self.log(4, format!(" {name}_init+0x10/0x20 [{name}]"));
                self.log(4, "---[ end trace 0000000000000000 ]---".to_string());
            }
        }
        for line in fault.unrelated_kmsg_on_load {
            self.log(4, line);
        }
        for line in fault.user_kmsg_on_load {
            self.log_as(1, 4, line);
        }
        Ok(())
    }
}

impl Kernel for SimKernel {
    fn identity(&self) -> Result<KernelIdentity, KernelError> {
        Ok(self.lock().identity.clone())
    }

    fn livepatch_supported(&self) -> bool {
        self.lock().supported
    }

    fn loaded_patches(&self) -> Result<Vec<PatchState>, KernelError> {
        let mut s = self.lock();
        if s.unreadable {
            return Err(KernelError::io(
                "/sys/kernel/livepatch",
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        s.poll();
        s.save()?;
        let mut patches: Vec<PatchState> = s.patches.iter().map(SimPatch::state).collect();
        patches.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(patches)
    }

    fn tainted(&self) -> Result<u64, KernelError> {
        Ok(self.lock().taint)
    }

    fn boot_id(&self) -> Result<String, KernelError> {
        Ok(self.lock().boot_id.clone())
    }

    fn kmsg_mark(&self) -> Result<KmsgMark, KernelError> {
        Ok(KmsgMark(self.lock().kmsg.last().map_or(0, |l| l.seq)))
    }

    fn kmsg_since(&self, mark: KmsgMark) -> Result<Vec<KmsgLine>, KernelError> {
        let s = self.lock();
        Ok(s.kmsg.iter().filter(|l| l.seq > mark.0).cloned().collect())
    }

    fn load_module(&self, module: &ModuleImage) -> Result<(), KernelError> {
        let mut s = self.lock();
        let loaded = s.load(module.bytes(), module.source());
        s.save()?;
        loaded
    }

    fn delete_module(&self, name: &str) -> Result<(), KernelError> {
        let mut s = self.lock();
        if !s.modules.contains(name) {
            return Err(KernelError::syscall("unload", name, libc::ENOENT));
        }
        // A livepatch still registered holds a reference on its module.
        if s.patches.iter().any(|p| p.name == name) {
            return Err(KernelError::syscall("unload", name, libc::EBUSY));
        }
        s.modules.remove(name);
        s.unload_log.push(name.to_string());
        s.save()
    }

    fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), KernelError> {
        let mut s = self.lock();
        let Some(p) = s.patches.iter_mut().find(|p| p.name == name) else {
            return Err(KernelError::NoSuchPatch {
                name: name.to_string(),
            });
        };
        if p.enabled == enabled {
            // The kernel refuses a write of the value the patch already has.
            return Err(KernelError::io(
                format!("/sys/kernel/livepatch/{name}/enabled"),
                std::io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        p.enabled = enabled;
        // A reversal goes back to code every blocked task is still running, so it finishes.
        p.stalled = None;
        p.transition = true;
        p.polls_left = 1;
        s.save()
    }

    fn blocking_tasks(&self, name: &str) -> Result<Vec<BlockingTask>, KernelError> {
        let s = self.lock();
        let Some(p) = s.patches.iter().find(|p| p.name == name) else {
            return Err(KernelError::NoSuchPatch {
                name: name.to_string(),
            });
        };
        Ok(p.stalled.clone().unwrap_or_default())
    }

    fn patch_replaces(&self, name: &str) -> Result<Option<bool>, KernelError> {
        let s = self.lock();
        let Some(p) = s.patches.iter().find(|p| p.name == name) else {
            return Err(KernelError::NoSuchPatch {
                name: name.to_string(),
            });
        };
        Ok(s.replace_attribute.then_some(p.replace))
    }

    fn module_loaded(&self, name: &str) -> Result<bool, KernelError> {
        Ok(self.lock().modules.contains(name))
    }
}

#[cfg(test)]
#[path = "sim_tests.rs"]
mod tests;
