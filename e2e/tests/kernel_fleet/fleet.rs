//! The fleet of VMs and what the scenarios check on it: the control plane, repository and
//! operator of a [`SimFleet`] without simulated nodes, and one [`Vm`] per node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kpersist_crds::{LivePatchNode, NodePatchState};
use kpersist_e2e::sim_fleet::{SimFleet, canary_then_all};
use kpersist_e2e::vm::{Kernel, Vm};
use kpersist_e2e::wait::Check;

/// How long a rollout over the VMs may take (TCG is slow).
pub(crate) const ROLLOUT: Duration = Duration::from_secs(600);
/// How long the VMs may take to boot and their agents to report.
const BOOT: Duration = Duration::from_secs(180);

/// The VMs: two on the 6.1 line, so that line's second node follows its canary, and one
/// on the 6.12 line.
const VMS: [(&str, Line); 3] = [
    ("vm-61-a", Line::Old),
    ("vm-61-b", Line::Old),
    ("vm-612-a", Line::New),
];

/// A kernel line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// Debian 12's 6.1.
    Old,
    /// The 6.12 kernels Debian 12 carries.
    New,
}

impl Line {
    fn env(self) -> &'static str {
        match self {
            Line::Old => "61",
            Line::New => "612",
        }
    }
}

/// Prints the verdict of a step; a failure ends the run.
pub fn report(step: &str, result: Result<String, String>) {
    kpersist_e2e::steps::print_verdict("KERNEL-FLEET-E2E", step, &result);
    if let Err(why) = result {
        panic!("step {step} failed: {why}");
    }
}

/// The running fleet.
pub struct KernelFleet {
    pub(crate) sim: SimFleet,
    pub(crate) vms: Vec<Vm>,
    pub(crate) kernels: BTreeMap<&'static str, Kernel>,
    pub(crate) figures: BTreeMap<String, Duration>,
    _scratch: tempfile::TempDir,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run e2e/kernel-fleet/run.sh, which prepares the VMs")
    })
}

fn kernel(line: Line) -> Kernel {
    let var = |what: &str| env(&format!("KPERSIST_KERNEL_FLEET_{}_{what}", line.env()));
    Kernel {
        release: var("RELEASE"),
        build_id: var("BUILD_ID"),
        vmlinuz: PathBuf::from(var("VMLINUZ")),
        modules: PathBuf::from(var("MODULES")),
    }
}

/// The port of a `scheme://host:port[/...]` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

impl KernelFleet {
    /// Starts the control plane, repository and VMs, and waits until every VM's agent has
    /// reported its kernel. The operator is not started yet.
    pub async fn start() -> KernelFleet {
        let sim = SimFleet::start(Vec::new()).await.expect("control plane");
        let ports = vec![
            port_of(sim.cluster.plane.server()),
            port_of(&sim.repo.url()),
        ];
        let initramfs = PathBuf::from(env("KPERSIST_KERNEL_FLEET_INITRAMFS"));
        let scratch = tempfile::Builder::new()
            .prefix("kpersist-kernel-fleet-")
            .tempdir()
            .expect("scratch");
        let kernels = BTreeMap::from([("61", kernel(Line::Old)), ("612", kernel(Line::New))]);
        let mut vms = Vec::new();
        for (name, line) in VMS {
            sim.create_node_object(name).await.expect("Node object");
            let dir = scratch.path().join(name);
            let kubeconfig = sim.cluster.agent_kubeconfig().await.expect("agent token");
            let vm = Vm::create(
                &dir,
                name,
                kernels[line.env()].clone(),
                &initramfs,
                ports.clone(),
                &kubeconfig,
            );
            vms.push(vm.expect("VM"));
        }
        let mut fleet = KernelFleet {
            sim,
            vms,
            kernels,
            figures: BTreeMap::new(),
            _scratch: scratch,
        };
        let started = Instant::now();
        let booted = join_all(fleet.vms.iter_mut().map(|vm| vm.boot())).await;
        for (vm, result) in fleet.vms.iter().zip(booted) {
            if let Err(e) = result {
                report("boot", Err(format!("{}: {e}", vm.name())));
            }
        }
        fleet.wait_kernels_reported(started).await;
        fleet.sim.start_operator().expect("operator");
        fleet
    }

    /// Waits until each VM's LivePatchNode shows the kernel it boots; records the time
    /// from the start of the boots.
    async fn wait_kernels_reported(&mut self, started: Instant) {
        let wanted: BTreeMap<String, String> = self
            .vms
            .iter()
            .map(|vm| (vm.name().to_string(), vm.kernel.release.clone()))
            .collect();
        // Filled by the check, which the wait calls as a `Fn`.
        let seen = std::cell::RefCell::new(BTreeMap::new());
        let waited = self
            .sim
            .wait_nodes("every VM's agent to report its kernel", BOOT, |nodes| {
                for (name, release) in &wanted {
                    let reported = nodes
                        .get(name)
                        .and_then(|n| n.status.as_ref())
                        .and_then(|s| s.kernel_release.as_deref());
                    if reported == Some(release.as_str()) {
                        seen.borrow_mut()
                            .entry(name.clone())
                            .or_insert_with(|| started.elapsed());
                    }
                }
                let seen = seen.borrow();
                if seen.len() == wanted.len() {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("reported: {seen:?}"))
                }
            })
            .await;
        if let Err(e) = waited {
            report("boot", Err(e.to_string()));
        }
        for (name, took) in seen.into_inner() {
            self.figures
                .insert(format!("{name}: boot to agent reporting"), took);
        }
    }

    /// The boot figures, for the step's note.
    pub fn boot_note(&self) -> String {
        self.figures
            .iter()
            .map(|(what, took)| format!("{what} {:.0} s", took.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Publishes the test patch at `version` for each kernel line, built against it.
    pub fn publish(&self, version: u64) {
        self.publish_module(&format!("kpersist_v{version}"), version);
    }

    /// Publishes test module `name` as `version` for each kernel line.
    pub(crate) fn publish_module(&self, name: &str, version: u64) {
        for kernel in self.kernels.values() {
            self.publish_for(kernel, name, version);
        }
    }

    /// Publishes test module `name` as `version` for `kernel`, built against it.
    pub(crate) fn publish_for(&self, kernel: &Kernel, name: &str, version: u64) {
        let module = kernel.modules.join(format!("{name}.ko"));
        let cves: Vec<String> = (1..=version).map(|v| format!("CVE-2026-1000{v}")).collect();
        let cves: Vec<&str> = cves.iter().map(String::as_str).collect();
        self.sim
            .publisher
            .publish_module(
                &module,
                &kernel.release,
                &kernel.build_id,
                version,
                &cves,
                &["stable"],
            )
            .unwrap_or_else(|e| panic!("publish {}: {e}", module.display()));
    }

    /// Creates the policy: a one-node canary baking 5 s, then every other node.
    pub async fn create_policy(&self, max_in_flight: u32) {
        let mut policy = self
            .sim
            .policy("fleet", canary_then_all("5s"), max_in_flight);
        // A transition under TCG takes seconds, not milliseconds.
        policy.spec.health.transition_timeout = "60s".into();
        self.sim.create_policy(&policy).await.expect("policy");
    }

    /// Sets the canary wave's bake and the transition timeout of the policy.
    pub(crate) async fn tune_policy(
        &self,
        canary_bake: &str,
        transition_timeout: &str,
    ) -> Result<(), String> {
        let spec = serde_json::json!({
            "health": {"transitionTimeout": transition_timeout},
            "rollout": {"waves": canary_then_all(canary_bake)},
        });
        let patched = self.sim.patch_policy("fleet", spec).await;
        patched.map_err(|e| e.to_string())
    }

    /// The release id of `version` for a VM's kernel.
    pub(crate) fn release_of(vm: &Vm, version: u64) -> String {
        format!("{}/v{version}", vm.kernel.release)
    }

    /// Waits until every VM's LivePatchNode says it runs `version` of its kernel's
    /// release, and records how long the rollout took and each VM's timings.
    pub async fn wait_all_applied(&mut self, version: u64) {
        let started = Instant::now();
        if let Err(e) = self.wait_all_run(version).await {
            report(&format!("v{version}-rollout"), Err(e));
        }
        self.figures
            .insert(format!("rollout of v{version}"), started.elapsed());
        self.record_timings(version);
    }

    /// Waits until every VM's LivePatchNode says it runs `version` of its kernel's
    /// release.
    pub(crate) async fn wait_all_run(&self, version: u64) -> Result<(), String> {
        let wanted: BTreeMap<String, String> = self
            .vms
            .iter()
            .map(|vm| (vm.name().to_string(), Self::release_of(vm, version)))
            .collect();
        let what = format!("every VM to run v{version}");
        let waited = self
            .sim
            .wait_nodes(&what, ROLLOUT, |nodes| {
                let behind: Vec<String> = wanted
                    .iter()
                    .filter(|(name, release)| !runs(nodes.get(*name), release))
                    .map(|(name, _)| name.clone())
                    .collect();
                if behind.is_empty() {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("not yet on v{version}: {behind:?}"))
                }
            })
            .await;
        waited.map_err(|e| e.to_string())
    }

    /// Records, per VM, the time from the end of the download to Applied (verification,
    /// the load and the transition) that its agent reported for `version`.
    fn record_timings(&mut self, version: u64) {
        let nodes = self.sim.watch.current();
        for vm in &self.vms {
            let timings = nodes
                .get(vm.name())
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.timings.as_ref());
            if let Some(total) = timings.and_then(|t| t.total_ms) {
                let download = timings.and_then(|t| t.download_ms).unwrap_or(0);
                self.figures.insert(
                    format!("{}: v{version} download end to Applied", vm.name()),
                    Duration::from_millis(total.saturating_sub(download)),
                );
            }
        }
    }

    /// Each release's first node applied it before any other node was asked for it.
    pub fn canary_per_release(&self, version: u64) -> Result<String, String> {
        let mut notes = Vec::new();
        for kernel in self.kernels.values() {
            let release = format!("{}/v{version}", kernel.release);
            let order = self.sim.watch.desired_order(&release);
            let Some((canary, _)) = order.first() else {
                return Err(format!("no node was asked for {release}"));
            };
            let applied = self.sim.watch.applied_at(&release, canary);
            for (node, asked) in order.iter().skip(1) {
                if applied.is_none_or(|at| *asked < at) {
                    return Err(format!(
                        "{node} was asked for {release} before its canary {canary} ran it"
                    ));
                }
            }
            notes.push(format!("{release}: canary {canary} of {}", order.len()));
        }
        Ok(notes.join("; "))
    }

    /// Every VM's kernel runs the test patch at `version` as its only enabled livepatch,
    /// the patched function answers as that version, no older kpersist patch is left in
    /// the kernel, and the LivePatchNode says the same.
    pub async fn kernels_run(&mut self, version: u64) -> Result<String, String> {
        let nodes = self.sim.watch.current();
        let patch = format!("kpersist_v{version}");
        for vm in &mut self.vms {
            let status = vm.status().await.map_err(|e| e.to_string())?;
            let name = vm.name().to_string();
            let enabled = status.enabled();
            if enabled != [patch.as_str()] {
                return Err(format!(
                    "{name}: enabled livepatches {enabled:?}, not [{patch}]"
                ));
            }
            let others: Vec<&String> = status
                .patches
                .iter()
                .map(|p| &p.0)
                .filter(|p| **p != patch)
                .collect();
            if !others.is_empty() {
                return Err(format!(
                    "{name}: livepatches left in the kernel: {others:?}"
                ));
            }
            let lingering: Vec<&String> = status.modules.iter().filter(|m| **m != patch).collect();
            if !lingering.is_empty() {
                return Err(format!("{name}: modules left loaded: {lingering:?}"));
            }
            let cmdline = format!("kpersist v{version}");
            if status.cmdline != cmdline {
                return Err(format!(
                    "{name}: /proc/cmdline reads {:?}, not {cmdline:?}",
                    status.cmdline
                ));
            }
            let release = Self::release_of(vm, version);
            if !runs(nodes.get(&name), &release) {
                return Err(format!("{name}: its LivePatchNode does not say {release}"));
            }
        }
        Ok(format!("{} VMs run {patch}", self.vms.len()))
    }

    /// The VM named `name`.
    pub(crate) fn vm(&mut self, name: &str) -> &mut Vm {
        self.vms
            .iter_mut()
            .find(|vm| vm.name() == name)
            .unwrap_or_else(|| panic!("no VM {name}"))
    }

    /// The figures measured so far.
    pub fn figures(&self) -> &BTreeMap<String, Duration> {
        &self.figures
    }

    /// Stops every VM.
    pub async fn stop(&mut self) {
        for vm in &mut self.vms {
            vm.stop().await;
        }
    }
}

/// Whether the node's agent reports running `release`, applied and settled.
pub(crate) fn runs(node: Option<&LivePatchNode>, release: &str) -> bool {
    let Some(node) = node else { return false };
    let Some(status) = &node.status else {
        return false;
    };
    status.state == Some(NodePatchState::Applied)
        && status.applied.as_ref().is_some_and(|a| a.id == release)
}
