//! One-shot local mode, for hosts without Kubernetes and for the real-kernel suite:
//! `kpersist-agent local apply|revert|status`. It verifies the signed repository, picks the
//! release for the running kernel, runs the same engine as the DaemonSet agent, prints the
//! node status as JSON and a one-line summary, and tells by its exit code whether the wanted
//! state was reached.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kpersist_crds::{DesiredPatch, LivePatchNodeStatus, NodePatchState, PatchAction, PatchRelease};
use kpersist_kmod::kernel::Kernel;
use kpersist_kmod::repository::{INDEX_FILE, Index, Release, SIGNATURE_FILE, verify_index};
use kpersist_kmod::signing::PublicKey;

use crate::cli::{LocalAction, parse_flag_duration};
use crate::engine::Engine;
use crate::error::AgentError;

/// The policy name local mode records.
const LOCAL_POLICY: &str = "local";

/// What one local action did.
#[derive(Debug)]
pub struct LocalRun {
    /// The node status afterwards.
    pub status: LivePatchNodeStatus,
    /// Whether the wanted state was reached.
    pub reached: bool,
    /// From the end of the download (module fetched into the host cache and its digest
    /// checked) to the end of the run: load, transition and health checks. `None` when no
    /// module was fetched.
    pub after_download: Option<Duration>,
}

/// Runs one local action; returns the status, whether the wanted state was reached, and
/// how long the part after the download took.
pub async fn run_local<K: Kernel + Clone + 'static>(
    engine: Engine<K>,
    action: &LocalAction,
) -> Result<LocalRun, AgentError> {
    let args = match action {
        LocalAction::Status => {
            let report = engine.reconcile(None, None, None, &|_| {}).await?;
            let status = engine.status(&report, None, None).await?;
            return Ok(LocalRun {
                status,
                reached: true,
                after_download: None,
            });
        }
        LocalAction::Apply(args) | LocalAction::Revert(args) => args,
    };
    let index = read_index(&args.repo, &args.pubkey)?;
    let timeout = parse_flag_duration("--transition-timeout", &args.transition_timeout)?;
    let identity = engine.patcher().kernel_call(|k| k.identity()).await?;
    let revert = matches!(action, LocalAction::Revert(_));
    let wanted = match (revert, args.version) {
        (true, None) => None,
        (_, version) => {
            let candidates = index.releases_for(&identity.release, &identity.build_id);
            // A release its publisher yanked is never loaded, even when asked for by version.
            let chosen = candidates
                .filter(|r| r.yanked.is_none())
                .filter(|r| version.is_none_or(|v| r.version == v))
                .max_by_key(|r| r.version)
                .ok_or_else(|| AgentError::NoRelease {
                    release: identity.release.clone(),
                    build_id: identity.build_id.clone(),
                    version: version
                        .map(|v| format!(" at version {v} (or it was yanked)"))
                        .unwrap_or_default(),
                })?;
            Some(patch_release(&args.repo, chosen))
        }
    };
    let names = index
        .releases
        .iter()
        .map(|r| r.module_name.clone())
        .collect();
    let engine = engine.with_kpersist_modules(names);

    // A crash marker from an earlier boot is found before anything is loaded.
    let prior = match engine.recover().await {
        Some(report) => Some(engine.status(&report, None, None).await?),
        None => None,
    };
    let desired = desired(revert, wanted.clone(), timeout);
    // The engine reports Applying (or Reverting) once the module is in the host cache and
    // verified, which is where the time the real kernel takes starts.
    let download_end = OnceLock::new();
    let progress = |state| {
        if matches!(state, NodePatchState::Applying | NodePatchState::Reverting) {
            let _ = download_end.set(Instant::now());
        }
        tracing::info!(?state, "progress");
    };
    let report = engine
        .reconcile(Some(&desired), prior.as_ref(), None, &progress)
        .await?;
    let after_download = download_end.get().map(Instant::elapsed);
    let status = engine.status(&report, None, prior.as_ref()).await?;
    let reached = match &wanted {
        Some(release) => {
            status.state == Some(NodePatchState::Applied)
                && status.applied.as_ref().is_some_and(|a| a.id == release.id)
        }
        None => status.state == Some(NodePatchState::Idle),
    };
    Ok(LocalRun {
        status,
        reached,
        after_download,
    })
}

fn desired(revert: bool, release: Option<PatchRelease>, timeout: Duration) -> DesiredPatch {
    DesiredPatch {
        policy: LOCAL_POLICY.to_string(),
        action: if revert {
            PatchAction::Revert
        } else {
            PatchAction::Apply
        },
        release,
        previous: None,
        wave: None,
        transition_timeout: format!("{}ms", timeout.as_millis()),
        kmsg_checks: true,
        // No resident agent marks a clean stop between local runs, so every reboot would
        // look like a crash: local mode keeps no probation.
        probation: "0s".to_string(),
        replace_foreign: false,
        asked_at: None,
        repository: None,
    }
}

/// Reads and verifies `index.json` in `repo` with the key in `pubkey`.
pub fn read_index(repo: &Path, pubkey: &Path) -> Result<Index, AgentError> {
    let key = PublicKey::read(pubkey)?;
    let read = |name: &str| {
        let path = repo.join(name);
        std::fs::read(&path).map_err(AgentError::state("read", path))
    };
    Ok(verify_index(
        &read(INDEX_FILE)?,
        &read(SIGNATURE_FILE)?,
        &[key],
    )?)
}

/// The API form of an index entry, with the module as a `file://` URL inside `repo`.
pub fn patch_release(repo: &Path, release: &Release) -> PatchRelease {
    let repo = std::fs::canonicalize(repo).unwrap_or_else(|_| repo.to_path_buf());
    PatchRelease {
        id: release.id(),
        version: release.version,
        kernel_release: release.kernel_release.clone(),
        build_id: release.build_id.clone(),
        module_name: release.module_name.clone(),
        module_url: format!("file://{}", repo.join(&release.module).display()),
        sha256: release.sha256.clone(),
        size: release.size,
        cves: release.cves.clone(),
    }
}

/// The one-line summary: `state=Applied release=<id>`, `state=Idle`, or
/// `state=<state> reason=<NodeErrorReason> message=<text>`.
pub fn summary(status: &LivePatchNodeStatus) -> String {
    let state = status.state.unwrap_or(NodePatchState::Idle);
    match (&status.last_error, &status.applied) {
        (Some(e), _)
            if matches!(
                state,
                NodePatchState::Failed
                    | NodePatchState::CrashSuspected
                    | NodePatchState::Unsupported
            ) =>
        {
            format!(
                "state={state:?} reason={:?} message={}",
                e.reason, e.message
            )
        }
        (_, Some(applied)) => format!("state={state:?} release={}", applied.id),
        _ => format!("state={state:?}"),
    }
}
