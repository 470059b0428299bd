//! Waiting for a livepatch transition by polling sysfs: the kernel offers no notification,
//! and a poll every few hundred milliseconds costs nothing next to a transition. Also taking
//! a just-loaded patch back out: reversing its transition and unloading its module.

use std::time::Duration;

use kpersist_crds::NodeErrorReason;
use kpersist_kmod::kernel::{Kernel, KernelError, SyscallFailure};
use tokio::time::Instant;

use super::Patcher;
use crate::checks::Failure;
use crate::patch_run::Request;

/// How waiting for a transition ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The patch reached the wanted state with no transition under way.
    Done,
    /// The patch is no longer listed (after a disable: freed, which is also done).
    Gone,
    /// The timeout passed with the transition still under way.
    TimedOut,
}

/// Polls until the livepatch `name` is settled `enabled` (or gone), or `timeout` passes.
pub async fn wait_settled<K: Kernel + Clone + 'static>(
    patcher: &Patcher<K>,
    name: &str,
    enabled: bool,
    timeout: Duration,
) -> Result<Settled, KernelError> {
    let deadline = Instant::now() + timeout;
    loop {
        let patches = patcher.kernel_call(|k| k.loaded_patches()).await?;
        match patches.iter().find(|p| p.name == name) {
            None => return Ok(Settled::Gone),
            Some(p) if !p.transition && p.enabled == enabled => return Ok(Settled::Done),
            Some(_) => {}
        }
        if Instant::now() >= deadline {
            return Ok(Settled::TimedOut);
        }
        tokio::time::sleep(patcher.poll_interval).await;
    }
}

/// How many times an unload refused with `EBUSY` is tried again, one poll interval apart.
const UNLOAD_ATTEMPTS: u32 = 20;

/// Unloads module `name`. A livepatch that was just disabled or replaced is freed by the
/// kernel asynchronously, so its module may stay busy for a moment: `EBUSY` is retried.
pub async fn unload_module<K: Kernel + Clone + 'static>(
    patcher: &Patcher<K>,
    name: &str,
) -> Result<(), KernelError> {
    let mut attempt = 0;
    loop {
        let owned = name.to_string();
        match patcher.kernel_call(move |k| k.delete_module(&owned)).await {
            Err(e)
                if e.syscall_failure() == Some(SyscallFailure::Busy)
                    && attempt + 1 < UNLOAD_ATTEMPTS =>
            {
                attempt += 1;
                tokio::time::sleep(patcher.poll_interval).await;
            }
            other => return other,
        }
    }
}

impl<K: Kernel + Clone + 'static> Patcher<K> {
    /// Reverses a transition that did not finish in time, naming the tasks that held it up.
    pub(crate) async fn reverse_stalled(&self, req: &Request) -> Failure {
        let name = req.release.module_name.clone();
        let blockers = {
            let name = name.clone();
            self.kernel_call(move |k| k.blocking_tasks(&name))
                .await
                .unwrap_or_default()
        };
        let names: Vec<String> = blockers.iter().map(ToString::to_string).collect();
        let mut message = format!(
            "transition of livepatch {name} (release {}) did not finish within {:?}; tasks blocking it: {}",
            req.release.id,
            req.transition_timeout,
            if names.is_empty() {
                "none found".to_string()
            } else {
                names.join(", ")
            }
        );
        message.push_str("; ");
        message.push_str(&self.withdraw(&name, req.transition_timeout).await);
        Failure::new(NodeErrorReason::TransitionStalled, message)
    }

    /// Disables the livepatch `name` (reversing its transition if one is under way), waits
    /// for that, and unloads its module; says how that went.
    pub(crate) async fn withdraw(&self, name: &str, timeout: Duration) -> String {
        let disable = {
            let name = name.to_string();
            self.kernel_call(move |k| k.set_enabled(&name, false)).await
        };
        match disable {
            Err(e) => format!("disabling it failed: {e}"),
            Ok(()) => match wait_settled(self, name, false, timeout).await {
                Ok(Settled::Done | Settled::Gone) => {
                    let mut done =
                        "it was disabled (its transition reversed) and the previous patch state is back".to_string();
                    if let Err(e) = unload_module(self, name).await {
                        done.push_str(&format!(" (unloading {name} failed: {e})"));
                    }
                    done
                }
                Ok(Settled::TimedOut) => {
                    "disabling it has not finished either; the node needs a person".to_string()
                }
                Err(e) => format!("reading the disable back failed: {e}"),
            },
        }
    }
}
