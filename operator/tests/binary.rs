//! The `kpersist-operator` binary as a user meets it without a cluster: documented flags,
//! a fast and clear failure when no API server answers, and a clean exit on SIGTERM.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_kpersist-operator");

fn kubeconfig(server: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster: {{server: \"{server}\"}}\n  name: c\n\
         contexts:\n- context: {{cluster: c, user: u}}\n  name: x\ncurrent-context: x\n\
         users:\n- name: u\n  user: {{token: t}}\n"
    )
    .unwrap();
    file
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn help_documents_every_flag() {
    let output = Command::new(BINARY).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--metrics-addr",
        "--leader-elect",
        "--lease-name",
        "--lease-namespace",
        "--log-format",
        "--log-filter",
        "POD_NAMESPACE",
        "RUST_LOG",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}

#[test]
fn fails_fast_naming_the_server_when_no_cluster_answers() {
    let server = format!("https://127.0.0.1:{}", closed_port());
    let config = kubeconfig(&server);
    let started = Instant::now();
    let output = Command::new(BINARY)
        .args(["--metrics-addr", "127.0.0.1:0", "--log-filter", "off"])
        .env("KUBECONFIG", config.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(started.elapsed() < Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&server), "{stderr}");
    assert!(stderr.contains("not reachable"), "{stderr}");
    assert!(stderr.contains("KUBECONFIG"), "{stderr}");
}

#[test]
fn sigterm_while_connecting_exits_cleanly() {
    // A server that accepts and never answers keeps the operator in its start-up call.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = kubeconfig(&format!("https://{}", silent.local_addr().unwrap()));
    let mut child = Command::new(BINARY)
        .args(["--metrics-addr", "127.0.0.1:0", "--log-filter", "off"])
        .env("KUBECONFIG", config.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
}
