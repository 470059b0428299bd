//! The real-kernel fleet: the operator rolls real livepatch modules out through a real
//! API server to kpersist-agent in node mode on qemu VMs running Debian's 6.1 and 6.12
//! kernels. Run by `e2e/kernel-fleet/run.sh`, which prepares the kernels, modules and
//! initramfs and passes them in `KPERSIST_KERNEL_FLEET_*` variables.
//!
//! Each step prints `KERNEL-FLEET-E2E: <step>: ok|FAIL <why>`; checks read API objects
//! and each guest's own /sys/kernel/livepatch and /proc/cmdline.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod bad_releases;
mod fleet;
mod metrics;
mod scenarios;

use std::time::Instant;

use fleet::{KernelFleet, report};

/// A one-node canary per release, then everyone, two at a time.
const MAX_IN_FLIGHT: u32 = 2;
/// The VM whose agent is killed during the v2 rollout.
const KILLED: &str = "vm-61-b";
/// The VM rebooted cleanly.
const REBOOTED: &str = "vm-612-a";
/// The VM rebooted into the other kernel line.
const MOVED: &str = "vm-61-b";
/// The VM that runs a foreign livepatch when v5 comes.
const FOREIGN: &str = "vm-612-a";

#[tokio::test]
async fn the_operator_drives_real_livepatches_on_vms_of_two_kernel_lines() {
    let started = Instant::now();
    let mut fleet = KernelFleet::start().await;
    report("boot", Ok(fleet.boot_note()));

    // 1. v1 to every VM: each kernel build's release has its own canary.
    fleet.publish(1);
    fleet.create_policy(MAX_IN_FLIGHT).await;
    fleet.wait_all_applied(1).await;
    report("v1-rollout", fleet.canary_per_release(1));
    report("v1-kernels", fleet.kernels_run(1).await);

    // 2. v2: an atomic replace everywhere, v1 gone from every kernel. One agent is killed
    //    as v2 is published: its kernel keeps v1, and once it is back it takes v2.
    fleet.publish(2);
    report(
        "agent-killed",
        fleet.kill_agent_until_asked(KILLED, 2).await,
    );
    fleet.wait_all_applied(2).await;
    report("v2-rollout", fleet.canary_per_release(2));
    report("v2-atomic-replace", fleet.kernels_run(2).await);

    // 3. A clean reboot: the agent applies the release again on its own.
    report("clean-reboot", fleet.reboot_reapplies(REBOOTED, 2).await);

    // 4. A reboot into the other kernel line: the node follows its new build.
    report("other-kernel", fleet.reboot_into_other_line(MOVED, 2).await);

    // 5. A release whose transition stalls on its canary: reversed, marked bad, loaded by
    //    no other VM.
    report("stall", fleet.stalled_release_is_contained(3).await);

    // 6. A release that panics the kernel some time after its transition, on the 6.12
    //    build's canary: a real crash and reboot, CrashSuspected, marked bad, back to v2.
    report("crash-on-probation", fleet.crash_on_probation(4).await);

    // 7. A foreign livepatch on one VM before v5 reaches it: refused there, not blamed.
    report(
        "foreign-livepatch",
        fleet.foreign_livepatch_is_left_alone(FOREIGN, 5).await,
    );

    // 8. The operator's and the agents' metrics agree with the kernels.
    report("metrics", fleet.metrics_agree(5, &[FOREIGN]).await);

    for (what, took) in fleet.figures() {
        println!("kernel-fleet: figure: {what}: {:.1} s", took.as_secs_f64());
    }
    println!(
        "kernel-fleet: figure: harness wall time: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    fleet.stop().await;
}
