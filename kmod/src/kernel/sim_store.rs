//! Keeping the simulated kernel's state in a file, so that it outlives the agent process the
//! way a real kernel outlives its agent pod: a restarted agent finds its patches loaded.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::KernelError;
use super::kmsg::KmsgLine;
use super::sim::{SimKernel, SimPatch, SimState};

/// What a simulated kernel keeps across agent restarts (faults and call logs are per process).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    boot_id: String,
    boots: u32,
    taint: u64,
    kmsg: Vec<KmsgLine>,
    modules: Vec<String>,
    patches: Vec<SimPatch>,
}

impl SimKernel {
    /// A simulated kernel whose state lives in the JSON file at `path`: restored from it
    /// when it exists, saved to it after every change. With `boot_id` other than the saved
    /// one, the kernel comes up rebooted (nothing loaded) with that boot id.
    pub fn persistent(
        path: impl Into<PathBuf>,
        release: impl Into<String>,
        build_id: impl Into<String>,
        boot_id: Option<String>,
    ) -> Result<SimKernel, KernelError> {
        let path = path.into();
        let kernel = SimKernel::new(release, build_id);
        {
            let mut s = kernel.lock();
            if let Some(snapshot) = read_snapshot(&path)? {
                s.boot_id = snapshot.boot_id;
                s.boots = snapshot.boots;
                s.taint = snapshot.taint;
                s.kmsg = snapshot.kmsg;
                s.modules = snapshot.modules.into_iter().collect();
                s.patches = snapshot.patches;
            }
            if let Some(boot_id) = boot_id.filter(|id| *id != s.boot_id) {
                s.boots += 1;
                s.reboot(boot_id);
            }
            s.store = Some(path);
            s.save()?;
        }
        Ok(kernel)
    }
}

fn read_snapshot(path: &Path) -> Result<Option<Snapshot>, KernelError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(KernelError::io(path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| KernelError::Parse {
            path: path.to_path_buf(),
            value: e.to_string(),
        })
}

impl SimState {
    /// Saves the state to its file, if it has one.
    pub(super) fn save(&self) -> Result<(), KernelError> {
        let Some(path) = &self.store else {
            return Ok(());
        };
        let snapshot = Snapshot {
            boot_id: self.boot_id.clone(),
            boots: self.boots,
            taint: self.taint,
            kmsg: self.kmsg.clone(),
            modules: self.modules.iter().cloned().collect(),
            patches: self.patches.clone(),
        };
        let bytes = serde_json::to_vec(&snapshot).map_err(|e| KernelError::Parse {
            path: path.clone(),
            value: e.to_string(),
        })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(|e| KernelError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| KernelError::io(path, e))
    }

    /// Saves from test helpers that cannot report errors; a failed save only loses the
    /// state for a later process.
    pub(super) fn save_quietly(&self) {
        let _ = self.save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{Kernel, ModuleImage};

    fn fixture(name: &str) -> ModuleImage {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        ModuleImage::read(&path).unwrap()
    }

    #[test]
    fn state_survives_a_new_process_and_a_new_boot_id_reboots() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sim.json");
        let first = SimKernel::persistent(&file, "6.1.0-56-amd64", "ab", None).unwrap();
        first.load_module(&fixture("kpersist_v1.ko")).unwrap();
        first.loaded_patches().unwrap();
        let boot = first.boot_id().unwrap();

        let again =
            SimKernel::persistent(&file, "6.1.0-56-amd64", "ab", Some(boot.clone())).unwrap();
        assert_eq!(again.patches().len(), 1);
        assert_eq!(again.modules(), vec!["kpersist_v1"]);
        assert_ne!(again.tainted().unwrap(), 0);

        let rebooted =
            SimKernel::persistent(&file, "6.1.0-56-amd64", "ab", Some("boot-2".into())).unwrap();
        assert_eq!(rebooted.boot_id().unwrap(), "boot-2");
        assert!(rebooted.patches().is_empty() && rebooted.modules().is_empty());
    }

    #[test]
    fn a_corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sim.json");
        std::fs::write(&file, "{").unwrap();
        let err = SimKernel::persistent(&file, "r", "b", None).unwrap_err();
        assert!(err.to_string().contains("sim.json"), "{err}");
    }
}
