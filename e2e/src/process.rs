//! Real operator and agent processes for the suites: started from the workspace's build
//! output, their output written to a log file, killed when the handle is dropped, and
//! killable with SIGKILL on purpose to test crash recovery.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::{Error, Result};

/// Runs a command to completion and returns its standard output; a failure to start or a
/// non-zero exit is an error carrying `display` and the command's standard error.
pub async fn output_of(command: &mut tokio::process::Command, display: &str) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| Error::Spawn {
            program: display.to_string(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: display.to_string(),
            status: output.status.to_string(),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Builds the workspace binaries the suites run (`cargo build -p ...`), so a test run never
/// uses a stale one. Cargo's output goes to the terminal.
pub fn build_binaries(packages: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = std::process::Command::new(&cargo);
    command.arg("build").arg("-q");
    // `cargo test` gives the test the variables it gives a crate's build (its manifest
    // dir, package name and version...). Some build scripts (ring's) rerun when those
    // change, so a build inherited from a test rebuilds ring, rustls and kube, and the
    // next `cargo test` rebuilds them back: minutes on every run.
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("CARGO_PKG_")
            || key_text.starts_with("CARGO_MANIFEST_")
            || matches!(
                key_text.as_ref(),
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
            )
        {
            command.env_remove(&key);
        }
    }
    for package in packages {
        command.arg("-p").arg(package);
    }
    let status = command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .status()
        .map_err(|source| Error::Spawn {
            program: cargo.clone(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: format!("cargo build -p {}", packages.join(" -p ")),
            status: status.to_string(),
            detail: "see cargo's messages above".into(),
        })
    }
}

/// Where a workspace binary built in the same profile as the running test lives: the test
/// binary is `<target>/<profile>/deps/<test>-<hash>`, the binaries `<target>/<profile>/<name>`
/// (where a running binary such as the demo sits itself).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::io("/proc/self/exe", e))?;
    let profile_dir = exe
        .parent()
        .and_then(|dir| {
            if dir.ends_with("deps") {
                dir.parent()
            } else {
                Some(dir)
            }
        })
        .ok_or_else(|| Error::Malformed {
            path: exe.clone(),
            problem: "the test binary is not inside <target>/<profile>/deps".into(),
        })?;
    let path = profile_dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Malformed {
            path,
            problem: format!("{name} is not built; build it with cargo build -p <its package>"),
        })
    }
}

/// A child process that is killed when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Process {
    /// Starts `program args` with extra environment `envs`; standard output and error are
    /// appended to `log` (kept across restarts, so one file tells a process's whole story).
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        log: &Path,
    ) -> Result<Self> {
        let mut process = Self {
            name: name.to_string(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            envs: envs.to_vec(),
            log: log.to_path_buf(),
            child: None,
        };
        process.start()?;
        Ok(process)
    }

    fn start(&mut self) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| Error::io(&self.log, e))?;
        let file2 = file.try_clone().map_err(|e| Error::io(&self.log, e))?;
        let mut command = tokio::process::Command::new(&self.program);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        // The child dies with the thread that started it, even if that thread is killed
        // before it can kill the child.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(file2))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// The name given at spawn, e.g. `agent node-3`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file of this process.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Kills the process with SIGKILL, as a crash or an OOM kill would, and reaps it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error means it had exited already.
            let _ = child.kill().await;
        }
    }

    /// Starts the process again with the same arguments.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        self.start()
    }

    /// `None` while running, else how it exited (or that it was killed).
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            None => Some("killed".into()),
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Err(e)) => Some(format!("unknown: {e}")),
        }
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
