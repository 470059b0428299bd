//! A local Kubernetes control plane for a test: `controlplane/up.sh` starts etcd and
//! kube-apiserver (building the API server once if it is not cached), and dropping the
//! handle runs `controlplane/down.sh`. The scripts hold the logic, so people and tests
//! start the same thing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{Error, Result};

/// Directory of the control-plane scripts.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane")
}

/// Who a client or kubectl call acts as. Each has its own token and kubeconfig.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// `admin`, in group `system:masters`: sets the cluster up.
    Admin,
    /// `system:serviceaccount:kpersist:kpersist-operator`.
    Operator,
    /// `system:serviceaccount:kpersist:kpersist-agent`, shared by every agent as in the
    /// chart's DaemonSet.
    Agent,
}

impl Identity {
    fn env_key(self) -> &'static str {
        match self {
            Identity::Admin => "ADMIN_KUBECONFIG",
            Identity::Operator => "OPERATOR_KUBECONFIG",
            Identity::Agent => "AGENT_KUBECONFIG",
        }
    }
}

/// A process of the control plane that can be stopped and started again on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// etcd, with its data directory.
    Etcd,
    /// kube-apiserver.
    ApiServer,
}

impl Part {
    fn process_name(self) -> &'static str {
        match self {
            Part::Etcd => "etcd",
            Part::ApiServer => "kube-apiserver",
        }
    }
}

/// How [`ControlPlane::stop_part`] stops a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, SIGKILL after 10 s.
    Term,
    /// SIGKILL at once, as a crash would.
    Kill,
}

/// A running etcd + kube-apiserver, stopped when dropped.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    // Held so the scratch directory lives as long as the processes using it.
    scratch: Option<tempfile::TempDir>,
    env: HashMap<String, String>,
    stopped: bool,
}

impl ControlPlane {
    /// Starts a control plane in a fresh scratch directory. Its logs are kept (and their
    /// place printed) when the test panics, and with `KPERSIST_KEEP=1`.
    pub async fn start() -> Result<Self> {
        let scratch = tempfile::Builder::new()
            .prefix("kpersist-cp-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let dir = scratch.path().to_path_buf();
        let mut plane = Self::start_in(&dir).await?;
        plane.scratch = Some(scratch);
        Ok(plane)
    }

    /// Starts a control plane whose files go to `dir`.
    pub async fn start_in(dir: &Path) -> Result<Self> {
        let up = scripts_dir().join("up.sh");
        // The script's progress goes straight to the terminal; its stdout names the env
        // file. `--owner` stops everything even if this process is killed.
        let output = tokio::process::Command::new(&up)
            .arg(dir)
            .arg("--owner")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .await
            .map_err(|source| Error::Spawn {
                program: up.display().to_string(),
                source,
            })?;
        if !output.status.success() {
            return Err(Error::Command {
                command: format!("{} {}", up.display(), dir.display()),
                status: output.status.to_string(),
                detail: format!("see its messages above and the logs in {}", dir.display()),
            });
        }
        let env_path = dir.join("controlplane.env");
        let text = std::fs::read_to_string(&env_path).map_err(|e| Error::io(&env_path, e))?;
        let env = parse_env(&text);
        for key in [
            "SERVER",
            "ADMIN_KUBECONFIG",
            "OPERATOR_KUBECONFIG",
            "AGENT_KUBECONFIG",
        ] {
            if !env.contains_key(key) {
                return Err(Error::Malformed {
                    path: env_path,
                    problem: format!("no {key}= line; up.sh and this module disagree"),
                });
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            scratch: None,
            env,
            stopped: false,
        })
    }

    /// The scratch directory: kubeconfigs, logs, pid files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        self.env
            .get("SERVER")
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The kubeconfig file of an identity.
    pub fn kubeconfig(&self, identity: Identity) -> PathBuf {
        PathBuf::from(
            self.env
                .get(identity.env_key())
                .cloned()
                .unwrap_or_default(),
        )
    }

    /// A client acting as `identity`.
    pub async fn client(&self, identity: Identity) -> Result<kube::Client> {
        crate::install_crypto_provider();
        let path = self.kubeconfig(identity);
        let kubeconfig = Kubeconfig::read_from(&path).map_err(|e| Error::Kubeconfig {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Kubeconfig {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Runs `kubectl` as `identity` and returns its standard output; a non-zero exit is an
    /// error carrying its standard error.
    pub async fn kubectl(&self, identity: Identity, args: &[&str]) -> Result<String> {
        let kubeconfig = self.kubeconfig(identity);
        let mut command = tokio::process::Command::new("kubectl");
        command.arg("--kubeconfig").arg(&kubeconfig).args(args);
        let display = format!("kubectl ({identity:?}) {}", args.join(" "));
        crate::process::output_of(&mut command, &display).await
    }

    /// Stops (`Stop::Term`) or kills (`Stop::Kill`) one process of the control plane and
    /// waits until it is gone; its data, ports and certificates stay for
    /// [`ControlPlane::start_part`].
    pub async fn stop_part(&self, part: Part, how: Stop) -> Result<()> {
        let action = match how {
            Stop::Term => "stop",
            Stop::Kill => "kill",
        };
        self.ctl(action, part).await
    }

    /// Starts a process stopped by [`ControlPlane::stop_part`] again, on the same port and
    /// data, and waits until it answers.
    pub async fn start_part(&self, part: Part) -> Result<()> {
        self.ctl("start", part).await
    }

    async fn ctl(&self, action: &str, part: Part) -> Result<()> {
        let ctl = scripts_dir().join("ctl.sh");
        let mut command = tokio::process::Command::new(&ctl);
        command.arg(&self.dir).arg(action).arg(part.process_name());
        let display = format!(
            "{} {} {action} {}",
            ctl.display(),
            self.dir.display(),
            part.process_name()
        );
        crate::process::output_of(&mut command, &display).await?;
        Ok(())
    }

    /// Stops etcd and the API server now (also done on drop).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let down = scripts_dir().join("down.sh");
        if let Err(e) = std::process::Command::new(&down)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status()
        {
            eprintln!("could not run {}: {e}", down.display());
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        let keep = std::thread::panicking() || std::env::var_os("KPERSIST_KEEP").is_some();
        if keep && let Some(scratch) = self.scratch.take() {
            eprintln!("control plane files kept in {}", scratch.keep().display());
        }
    }
}

/// Parses `KEY=VALUE` lines; anything else is ignored.
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_are_parsed_and_junk_ignored() {
        let env = parse_env("SERVER=https://127.0.0.1:1234\n# note\nADMIN_KUBECONFIG=/d/a=b\n");
        assert_eq!(env["SERVER"], "https://127.0.0.1:1234");
        assert_eq!(env["ADMIN_KUBECONFIG"], "/d/a=b");
        assert_eq!(env.len(), 2);
    }
}
