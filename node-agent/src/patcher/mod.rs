//! The patcher: carries an apply or a revert out on the kernel, step by step, in the order
//! that keeps a node safe, and recovers at start from what an earlier run left.
//!
//! - [`load`]: fetch and verify, check modinfo, check other livepatches and the module name,
//!   write the crash marker, load, wait for the transition (reversing it when it stalls or
//!   the module would stack), record, begin probation, check taint and the kernel log. A
//!   failed step ends the run; nothing is loaded after a failed check.
//! - [`revert`]: back to no livepatch at all.
//! - [`recover`]: start-up recovery from the crash marker and the probation record.
//! - [`transition`]: waiting for a transition, and taking a just-loaded patch back out.
//! - [`probation`]: the probation record and the clean-stop mark on the host.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kpersist_crds::{NodeErrorReason, PatchRelease};
use kpersist_kmod::kernel::{Kernel, KernelError, KmsgMark};

use crate::checks::Failure;
use crate::fetch::Fetcher;
use crate::state::StateDir;

pub mod load;
pub mod probation;
pub mod recover;
pub mod revert;
pub mod transition;

/// A hook run right before a module is loaded, with the release; the simulated kernel uses
/// it to inject per-release faults.
pub type BeforeLoad = Arc<dyn Fn(&PatchRelease) + Send + Sync>;

/// Runs applies and reverts against a kernel, the state directory and a fetcher.
#[derive(Clone)]
pub struct Patcher<K> {
    pub(crate) kernel: K,
    pub(crate) state: StateDir,
    fetcher: Fetcher,
    pub(crate) poll_interval: Duration,
    before_load: Option<BeforeLoad>,
}

/// What the kernel looked like right before a load, to tell what the load changed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Baseline {
    pub(crate) taint: u64,
    pub(crate) kmsg: KmsgMark,
}

impl<K: Kernel + Clone + 'static> Patcher<K> {
    /// A patcher polling transitions every `poll_interval`.
    pub fn new(
        kernel: K,
        state: StateDir,
        fetcher: Fetcher,
        poll_interval: Duration,
    ) -> Patcher<K> {
        Patcher {
            kernel,
            state,
            fetcher,
            poll_interval,
            before_load: None,
        }
    }

    /// Runs `hook` right before every load.
    pub fn with_before_load(mut self, hook: BeforeLoad) -> Patcher<K> {
        self.before_load = Some(hook);
        self
    }

    /// The kernel.
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The state directory.
    pub fn state_dir(&self) -> &StateDir {
        &self.state
    }

    /// Runs a blocking kernel call off the async threads.
    pub(crate) async fn kernel_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&K) -> Result<T, KernelError> + Send + 'static,
    ) -> Result<T, KernelError> {
        let kernel = self.kernel.clone();
        tokio::task::spawn_blocking(move || f(&kernel))
            .await
            .unwrap_or_else(|e| {
                Err(KernelError::Io {
                    path: PathBuf::from("<kernel call>"),
                    source: std::io::Error::other(e),
                })
            })
    }

    pub(crate) fn clear_marker(&self) -> Result<(), Failure> {
        self.state
            .clear_crash_marker()
            .map_err(|e| host_failure(e.to_string()))
    }
}

pub(crate) fn kernel_failure(e: KernelError) -> Failure {
    Failure::new(NodeErrorReason::HostError, e.to_string())
}

pub(crate) fn host_failure(message: String) -> Failure {
    Failure::new(NodeErrorReason::HostError, message)
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
