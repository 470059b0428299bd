//! A VM of the real-kernel fleet: qemu (TCG) boots one of Debian's kernels with the shared
//! initramfs of `e2e/kernel-fleet/run.sh`, a persistent ext4 state disk, user networking
//! restricted to the host ports the agent needs, the console in a file and a control
//! channel on the second serial port (the commands are in
//! `e2e/kernel-fleet/guest-init.sh`).
//!
//! Addresses: with `restrict=on` the guest reaches nothing but `10.0.2.100:<port>` for the
//! ports given, which qemu forwards (one `busybox nc` per connection) to the host's
//! `127.0.0.1:<port>`. In the guest a relay listens on `127.0.0.1:<port>` and forwards to
//! `10.0.2.100:<port>`, so the agent uses the URLs the host uses: the API server's
//! certificate (SAN IP:127.0.0.1) matches as it does for every other client, and the
//! repository URL in the policy is the one the operator polls. The other way, qemu
//! forwards a free host port on `127.0.0.1` to the agent's metrics port (9102) in the
//! guest; `restrict=on` leaves forwards the harness sets up working.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::Result;
use crate::error::Error;
use crate::process::Process;
use crate::sim_fleet::{fetch_metrics, free_port};
use crate::wait::{Check, wait_until};

/// How long a command may take to answer.
const ANSWER: Duration = Duration::from_secs(60);
/// How long a VM may take to boot to its init's first answer.
const BOOT: Duration = Duration::from_secs(120);
/// The agent's metrics port in the guest (`--metrics-addr` in guest-init.sh).
const AGENT_METRICS_PORT: u16 = 9102;

/// The kernel a VM boots.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
    /// The GNU build id of its vmlinux.
    pub build_id: String,
    /// The image qemu boots.
    pub vmlinuz: PathBuf,
    /// The livepatch modules built against its headers.
    pub modules: PathBuf,
}

/// What the guest reports of its kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestStatus {
    /// Each livepatch under /sys/kernel/livepatch: name, enabled, transition.
    pub patches: Vec<(String, bool, bool)>,
    /// The kpersist (and foreign test) modules loaded.
    pub modules: Vec<String>,
    /// What /proc/cmdline reads (the test patches replace it).
    pub cmdline: String,
    /// Whether the agent process runs.
    pub agent_up: bool,
}

impl GuestStatus {
    /// The names of the enabled livepatches.
    pub fn enabled(&self) -> Vec<&str> {
        self.patches
            .iter()
            .filter(|p| p.1)
            .map(|p| p.0.as_str())
            .collect()
    }
}

/// One VM.
pub struct Vm {
    name: String,
    dir: PathBuf,
    initramfs: PathBuf,
    ports: Vec<u16>,
    /// The host port forwarded to the agent's metrics port.
    metrics_port: u16,
    qemu: Option<Process>,
    /// The guest's answers, line by line (`next_line` loses nothing when a wait for it
    /// times out), and the way to send commands.
    control: Option<(Lines<BufReader<OwnedReadHalf>>, OwnedWriteHalf)>,
    /// Commands sent so far, to tag the next one.
    sent: u64,
    /// The kernel it runs now.
    pub kernel: Kernel,
}

impl Vm {
    /// A VM named `name` (its Node's name) in `dir`, with a new state disk holding its
    /// node name and `kubeconfig`. Not started.
    pub fn create(
        dir: &Path,
        name: &str,
        kernel: Kernel,
        initramfs: &Path,
        ports: Vec<u16>,
        kubeconfig: &str,
    ) -> Result<Vm> {
        let config = dir.join("disk").join("config");
        std::fs::create_dir_all(&config).map_err(|e| Error::io(&config, e))?;
        write(&config.join("node"), name)?;
        write(&config.join("kubeconfig"), kubeconfig)?;
        let image = dir.join("state.img");
        let made = std::process::Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-d"])
            .arg(dir.join("disk"))
            .arg(&image)
            .arg("64M")
            .status()
            .map_err(|e| Error::io("mke2fs", e))?;
        if !made.success() {
            return Err(Error::Malformed {
                path: image,
                problem: format!("mke2fs failed ({made})"),
            });
        }
        Ok(Vm {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            initramfs: initramfs.to_path_buf(),
            ports,
            metrics_port: free_port()?,
            qemu: None,
            control: None,
            sent: 0,
            kernel,
        })
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The console log (kernel messages, the init's notes).
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Boots the VM on its kernel and connects the control channel. Returns once the init
    /// answers.
    pub async fn boot(&mut self) -> Result<()> {
        let socket = self.dir.join("ctl.sock");
        let _ = std::fs::remove_file(&socket);
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let forwards: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("guestfwd=tcp:10.0.2.100:{p}-cmd:busybox nc 127.0.0.1 {p}"))
            .chain([format!(
                "hostfwd=tcp:127.0.0.1:{}-:{AGENT_METRICS_PORT}",
                self.metrics_port
            )])
            .collect();
        let args: Vec<String> = vec![
            "-accel".into(),
            "tcg".into(),
            "-cpu".into(),
            "max".into(),
            "-m".into(),
            "512".into(),
            "-nographic".into(),
            "-monitor".into(),
            "none".into(),
            "-kernel".into(),
            self.kernel.vmlinuz.display().to_string(),
            "-initrd".into(),
            self.initramfs.display().to_string(),
            "-append".into(),
            format!(
                "console=ttyS0 panic=5 quiet kpersist.ports={}",
                ports.join(",")
            ),
            "-drive".into(),
            format!(
                "file={},format=raw,if=virtio",
                self.dir.join("state.img").display()
            ),
            "-netdev".into(),
            format!("user,id=n0,restrict=on,{}", forwards.join(",")),
            "-device".into(),
            "virtio-net-pci,netdev=n0".into(),
            "-serial".into(),
            format!("file:{}", self.console().display()),
            "-chardev".into(),
            format!("socket,id=ctl,path={},server=on,wait=off", socket.display()),
            "-serial".into(),
            "chardev:ctl".into(),
        ];
        let qemu = Process::spawn(
            &format!("vm {}", self.name),
            Path::new("qemu-system-x86_64"),
            &args,
            &[],
            &self.dir.join("qemu.log"),
        )?;
        self.qemu = Some(qemu);
        let stream = connect(&socket).await?;
        let (read, write) = stream.into_split();
        self.control = Some((BufReader::new(read).lines(), write));
        self.wait_answering().await
    }

    /// Reboots the guest cleanly (the agent stopped first, the disk unmounted) and returns
    /// once its init answers again.
    pub async fn reboot(&mut self) -> Result<()> {
        self.command("reboot").await?;
        self.wait_answering().await
    }

    /// Shuts the guest down cleanly (the agent stopped first, the disk unmounted) and boots
    /// it on `kernel`.
    pub async fn boot_into(&mut self, kernel: Kernel) -> Result<()> {
        self.command("poweroff").await?;
        // The guest powers off once its answer is out; qemu then exits.
        tokio::time::sleep(Duration::from_secs(3)).await;
        self.stop().await;
        self.kernel = kernel;
        self.boot().await
    }

    /// Returns once the init answers, after a boot: it does once it serves commands (the
    /// agent has started by then). What is sent before the guest opens its serial port
    /// is lost, so ask until it answers.
    async fn wait_answering(&mut self) -> Result<()> {
        let mut last = None;
        for _ in 0..BOOT.as_secs() / 5 {
            match self.command_within("status", Duration::from_secs(5)).await {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| self.failed("status", "no answer")))
    }

    /// Sends `command` and returns the guest's answer lines (without `CTL: `), up to the
    /// line that ends it.
    pub async fn command(&mut self, command: &str) -> Result<Vec<String>> {
        self.command_within(command, ANSWER).await
    }

    async fn command_within(&mut self, command: &str, within: Duration) -> Result<Vec<String>> {
        let name = self.name.clone();
        let console = self.console();
        let (read, write) = self.control.as_mut().ok_or_else(|| Error::Malformed {
            path: console.clone(),
            problem: format!("VM {name} is not running"),
        })?;
        self.sent += 1;
        // The tag tells this command's answer from a late answer to an earlier one.
        let line = format!("{command} #{}", self.sent);
        write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| Error::io(&console, e))?;
        let done = format!("CTL: done {line}");
        let mut lines = Vec::new();
        let answered = tokio::time::timeout(within, async {
            loop {
                let Some(line) = read.next_line().await? else {
                    return Ok::<bool, std::io::Error>(false);
                };
                let text = line.trim_end_matches('\r');
                if text == done {
                    return Ok(true);
                }
                if text.starts_with("CTL: done ") {
                    // The end of an earlier command's answer: what came before was its.
                    lines.clear();
                    continue;
                }
                if let Some(answer) = text.strip_prefix("CTL: ") {
                    lines.push(answer.to_string());
                }
            }
        })
        .await;
        match answered {
            Ok(Ok(true)) => Ok(lines),
            Ok(Ok(false)) => Err(self.failed(command, "the control channel closed")),
            Ok(Err(e)) => Err(Error::io(console, e)),
            Err(_) => Err(self.failed(command, &format!("no answer within {within:?}"))),
        }
    }

    /// The guest's livepatches, /proc/cmdline and whether the agent runs.
    pub async fn status(&mut self) -> Result<GuestStatus> {
        let mut status = GuestStatus::default();
        for line in self.command("status").await? {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["lp", name, enabled, transition] => {
                    status
                        .patches
                        .push(((*name).to_string(), *enabled == "1", *transition == "1"))
                }
                ["module", name] => status.modules.push((*name).to_string()),
                ["cmdline", rest @ ..] => status.cmdline = rest.join(" "),
                ["agent", state] => status.agent_up = *state == "up",
                _ => {}
            }
        }
        Ok(status)
    }

    /// The agent's Prometheus metrics, as text.
    pub async fn agent_metrics(&self) -> Result<String> {
        fetch_metrics(&format!("127.0.0.1:{}", self.metrics_port)).await
    }

    /// Has the guest read /proc/version a second after it answers (the crash release's
    /// patched function panics there).
    pub async fn read_version(&mut self) -> Result<()> {
        self.command("read-version").await.map(drop)
    }

    /// Returns once the console shows `panic` (the kernel's panic message) and then the
    /// init answers again: with `panic=5` qemu resets the machine and keeps the control
    /// channel.
    pub async fn wait_rebooted_after(&mut self, panic: &str) -> Result<()> {
        let console = self.console();
        let what = format!("VM {} to panic with {panic:?}", self.name);
        let shown = wait_until(&what, ANSWER, || {
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            async move {
                Ok(if text.contains(panic) {
                    Check::Done(())
                } else {
                    Check::NotYet("no panic on the console yet".into())
                })
            }
        });
        shown.await?;
        self.wait_answering().await
    }

    /// Stops the VM at once (as pulling the plug would).
    pub async fn stop(&mut self) {
        self.control = None;
        if let Some(mut qemu) = self.qemu.take() {
            qemu.kill().await;
        }
    }

    /// An error about `command` with the end of the console log.
    fn failed(&self, command: &str, why: &str) -> Error {
        let console = std::fs::read_to_string(self.console()).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(15).collect();
        Error::Malformed {
            path: self.console(),
            problem: format!(
                "VM {}: {command}: {why}; console ends:\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        }
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Connects to qemu's control socket once qemu has made it.
async fn connect(socket: &Path) -> Result<UnixStream> {
    let mut last = None;
    for _ in 0..100 {
        match UnixStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::io(
        socket,
        last.unwrap_or_else(|| std::io::Error::other("no socket")),
    ))
}
