//! Waiting for a livepatch transition by polling sysfs: the kernel offers no notification,
//! and a poll every few hundred milliseconds costs nothing next to a transition.

use std::time::Duration;

use kpersist_kmod::kernel::{Kernel, KernelError, SyscallFailure};
use tokio::time::Instant;

use crate::apply::Patcher;

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
        let patches = patcher.call(|k| k.loaded_patches()).await?;
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
        match patcher.call(move |k| k.delete_module(&owned)).await {
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
