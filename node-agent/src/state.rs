//! The agent's host state directory (default `/var/lib/kpersist`), which outlives pods and
//! agent upgrades. Every file is written to a temporary name and renamed, so a crash leaves
//! either the old or the new contents.
//!
//! Layout:
//! - `modules/<sha256>.ko`: verified module cache, keyed by the module's SHA-256;
//!   `modules/<sha256>.ko.part` is a download in progress (never loaded).
//! - `apply-in-progress.json`: the crash marker, see [`CrashMarker`].
//! - `refused-releases.json`: releases this node refuses for good, see [`RefusedRelease`].
//! - `applied.json`: the release the agent last loaded and every kpersist module name it
//!   ever loaded, see [`AppliedRecord`].
//! - `probation.json`, `clean-stop.json`, `unclean-ends.json`: probation after an apply, see
//!   [`crate::probation`].

use std::path::{Path, PathBuf};

use kpersist_crds::PatchRelease;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::AgentError;

/// File name of the crash marker inside the state directory.
pub const CRASH_MARKER_FILE: &str = "apply-in-progress.json";
/// File name of the list of refused releases inside the state directory.
pub const REFUSED_FILE: &str = "refused-releases.json";
/// File name of the applied-release record inside the state directory.
pub const APPLIED_FILE: &str = "applied.json";
/// Directory of the module cache inside the state directory.
pub const MODULES_DIR: &str = "modules";

/// The crash marker, `<state-dir>/apply-in-progress.json`: written (and fsynced) right before
/// a module is loaded, removed once the load has ended and been checked. Found at start with
/// a `bootId` other than the running kernel's, it means the node went down while the module
/// was going in: the release is then refused on this node for good (`CrashSuspected`).
/// Found with the same boot id, the agent itself was restarted mid-apply and resumes.
///
/// JSON, camelCase:
/// `{"bootId": "<boot id>", "release": {<PatchRelease as in spec.desired.release>},
///   "action": "Apply"|"Revert", "policy": "<name>"|null, "startedAt": "<RFC 3339>",
///   "taintBefore": <u64>, "kmsgMark": <u64>, "transitionTimeoutMs": <u64>, "kmsgChecks": bool,
///   "generation": <i64>|null, "probationMs": <u64>|null}`.
/// Only `bootId` and `release.id` are needed to detect a crash; a test may write a marker
/// holding just `{"bootId": "...", "release": {"id": "..."}}`, with the rest filled by defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CrashMarker {
    /// Boot id of the kernel the load was attempted on.
    pub boot_id: String,
    /// The release being loaded.
    pub release: MarkerRelease,
    /// Why it was being loaded.
    #[serde(default = "default_action")]
    pub action: String,
    /// The policy that asked for it.
    #[serde(default)]
    pub policy: Option<String>,
    /// When the load started.
    #[serde(default)]
    pub started_at: String,
    /// Taint mask before the load, to tell new bits from old.
    #[serde(default)]
    pub taint_before: u64,
    /// Kernel log sequence number before the load.
    #[serde(default)]
    pub kmsg_mark: u64,
    /// The transition timeout in force, to resume waiting after an agent restart.
    #[serde(default = "default_timeout_ms")]
    pub transition_timeout_ms: u64,
    /// Whether kernel log and taint findings count as failures.
    #[serde(default = "default_true")]
    pub kmsg_checks: bool,
    /// The spec generation that asked for the load, if any.
    #[serde(default)]
    pub generation: Option<i64>,
    /// The probation to begin once the transition has finished, if any.
    #[serde(default)]
    pub probation_ms: Option<u64>,
}

/// The release inside a crash marker; everything but `id` may be missing in a hand-written one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum MarkerRelease {
    /// The whole release, as the agent writes it.
    Full(PatchRelease),
    /// Only an id.
    IdOnly {
        /// Release id.
        id: String,
    },
}

impl MarkerRelease {
    /// The release id.
    pub fn id(&self) -> &str {
        match self {
            MarkerRelease::Full(r) => &r.id,
            MarkerRelease::IdOnly { id } => id,
        }
    }
}

fn default_action() -> String {
    "Apply".to_string()
}
fn default_timeout_ms() -> u64 {
    60_000
}
fn default_true() -> bool {
    true
}

/// A release refused on this node for good: it went down while loading it, or twice while
/// it was on probation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RefusedRelease {
    /// Release id.
    pub id: String,
    /// Boot id of the boot that went down (the last one).
    pub crashed_boot_id: String,
    /// When the agent found out (RFC 3339).
    pub detected_at: String,
    /// When the node went down: while loading (the default in older files) or on probation.
    #[serde(default)]
    pub cause: RefusalCause,
}

/// When the node went down with a release.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RefusalCause {
    /// Between the load and the end of its checks (the crash marker).
    #[default]
    Load,
    /// Twice while it was on probation after its transition.
    Probation,
}

/// What the agent last loaded.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppliedRecord {
    /// The release the agent last loaded successfully, if any.
    #[serde(default)]
    pub current: Option<PatchRelease>,
    /// The policy that asked for it.
    #[serde(default)]
    pub policy: Option<String>,
    /// When it was applied (RFC 3339).
    #[serde(default)]
    pub applied_at: Option<String>,
    /// Every kpersist module name the agent ever loaded on this host, so that a revert to
    /// no patch knows which livepatches are kpersist's.
    #[serde(default)]
    pub known_modules: Vec<String>,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating) the state directory at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<StateDir, AgentError> {
        let root = root.into();
        let modules = root.join(MODULES_DIR);
        std::fs::create_dir_all(&modules).map_err(AgentError::state("create", &modules))?;
        Ok(StateDir { root })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the verified module with this SHA-256 is cached.
    pub fn module_path(&self, sha256: &str) -> PathBuf {
        self.root.join(MODULES_DIR).join(format!("{sha256}.ko"))
    }

    /// Where a download of the module with this SHA-256 goes until it is verified.
    pub fn partial_path(&self, sha256: &str) -> PathBuf {
        self.root
            .join(MODULES_DIR)
            .join(format!("{sha256}.ko.part"))
    }

    /// The crash marker, if one is there.
    pub fn crash_marker(&self) -> Result<Option<CrashMarker>, AgentError> {
        self.read_json(CRASH_MARKER_FILE)
    }

    /// Writes the crash marker and makes it durable before returning.
    pub fn write_crash_marker(&self, marker: &CrashMarker) -> Result<(), AgentError> {
        self.write_json(CRASH_MARKER_FILE, marker)
    }

    /// Removes the crash marker (no error when it is not there).
    pub fn clear_crash_marker(&self) -> Result<(), AgentError> {
        self.remove(CRASH_MARKER_FILE)
    }

    /// Releases refused on this node.
    pub fn refused(&self) -> Result<Vec<RefusedRelease>, AgentError> {
        Ok(self.read_json(REFUSED_FILE)?.unwrap_or_default())
    }

    /// Adds a release to the refused list (once).
    pub fn refuse(&self, refused: RefusedRelease) -> Result<(), AgentError> {
        let mut list = self.refused()?;
        if !list.iter().any(|r| r.id == refused.id) {
            list.push(refused);
        }
        self.write_json(REFUSED_FILE, &list)
    }

    /// The applied-release record.
    pub fn applied(&self) -> Result<AppliedRecord, AgentError> {
        Ok(self.read_json(APPLIED_FILE)?.unwrap_or_default())
    }

    /// Replaces the applied-release record.
    pub fn write_applied(&self, record: &AppliedRecord) -> Result<(), AgentError> {
        self.write_json(APPLIED_FILE, record)
    }

    /// Removes the file `name` (no error when it is not there).
    pub(crate) fn remove(&self, name: &str) -> Result<(), AgentError> {
        let path = self.root.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(AgentError::state("remove", path)(e))
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn read_json<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, AgentError> {
        let path = self.root.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(AgentError::state("read", path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AgentError::CorruptState {
                path,
                reason: e.to_string(),
            })
    }

    pub(crate) fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), AgentError> {
        let path = self.root.join(name);
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| AgentError::CorruptState {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_durably(&path, &bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file, fsynced and renamed into place.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(AgentError::state("create", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(AgentError::state("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(AgentError::state("rename into place", path))?;
    if let Some(dir) = path.parent() {
        // The rename is durable only once the directory is.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_marker_with_only_boot_and_id_reads() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        std::fs::write(
            dir.path().join(CRASH_MARKER_FILE),
            r#"{"bootId":"b-1","release":{"id":"6.1.0-56-amd64/v2"}}"#,
        )
        .unwrap();
        let marker = state.crash_marker().unwrap().unwrap();
        assert_eq!(marker.boot_id, "b-1");
        assert_eq!(marker.release.id(), "6.1.0-56-amd64/v2");
        assert_eq!(marker.transition_timeout_ms, 60_000);
        state.clear_crash_marker().unwrap();
        assert_eq!(state.crash_marker().unwrap(), None);
        state.clear_crash_marker().unwrap();
    }

    #[test]
    fn refused_list_is_kept_once_per_release() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let r = RefusedRelease {
            id: "k/v1".into(),
            crashed_boot_id: "b".into(),
            detected_at: "now".into(),
            cause: RefusalCause::Load,
        };
        state.refuse(r.clone()).unwrap();
        state.refuse(r.clone()).unwrap();
        assert_eq!(
            StateDir::open(dir.path()).unwrap().refused().unwrap(),
            vec![r]
        );
    }

    #[test]
    fn corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        std::fs::write(dir.path().join(APPLIED_FILE), "{not json").unwrap();
        let err = state.applied().unwrap_err();
        assert!(err.to_string().contains(APPLIED_FILE), "{err}");
    }
}
