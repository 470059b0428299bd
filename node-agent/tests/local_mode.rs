//! `kpersist-agent local ...` as a process, on the simulated kernel, against a signed
//! repository built from the fixture modules: exit codes, the JSON status and the summary line.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kpersist_kmod::repository::{LocalRepository, NewRelease};
use kpersist_kmod::signing::PrivateKey;

const RELEASE: &str = "6.1.0-56-amd64";
const BUILD_ID: &str = "00112233445566778899aabbccddeeff00112233";

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let now = jiff::Timestamp::now();
        let repo = LocalRepository::init(&root, now).unwrap();
        for (version, ko) in [(1, "kpersist_v1.ko"), (2, "kpersist_v2.ko")] {
            let new = NewRelease {
                kernel_release: RELEASE.into(),
                build_id: BUILD_ID.into(),
                version,
                cves: vec![format!("CVE-2024-000{version}")],
                channels: vec!["stable".into()],
                published: now,
            };
            repo.add(&fixture(ko), new, now).unwrap();
        }
        let key = PrivateKey::generate();
        repo.sign(&key).unwrap();
        std::fs::write(
            dir.path().join("kpersist.pub"),
            key.public_key().to_base64_line(),
        )
        .unwrap();
        Repo { dir }
    }

    fn agent(&self, extra: &[&str], local: &[&str]) -> (i32, String) {
        let state = self.dir.path().join("state");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kpersist-agent"));
        cmd.args([
            "--simulate",
            "--sim-build-id",
            BUILD_ID,
            "--poll-interval",
            "5ms",
        ]);
        if !extra.contains(&"--sim-kernel-release") {
            cmd.args(["--sim-kernel-release", RELEASE]);
        }
        let out = cmd
            .args(extra)
            .arg("local")
            .args(local)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn repo_args(&self, action: &str) -> Vec<String> {
        vec![
            action.into(),
            "--repo".into(),
            self.dir.path().join("repo").display().to_string(),
            "--pubkey".into(),
            self.dir.path().join("kpersist.pub").display().to_string(),
            "--transition-timeout".into(),
            "200ms".into(),
        ]
    }

    fn run(&self, extra: &[&str], action: &str, more: &[&str]) -> (i32, String) {
        let mut args = self.repo_args(action);
        args.extend(more.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.agent(extra, &args)
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kmod/tests/fixtures")
        .join(name)
}

fn last_line(out: &str) -> &str {
    out.lines().last().unwrap_or("")
}

#[test]
fn apply_picks_the_newest_release_or_the_version_asked() {
    let repo = Repo::new();
    let (code, out) = repo.run(&[], "apply", &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        last_line(&out),
        format!("state=Applied release={RELEASE}/v2")
    );
    let json: serde_json::Value =
        serde_json::from_str(out.trim_end().rsplit_once('\n').unwrap().0).unwrap();
    assert_eq!(json["applied"]["moduleName"], "kpersist_v2");
    assert_eq!(json["kernelRelease"], RELEASE);

    let (code, out) = repo.run(&[], "apply", &["--version", "1"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        last_line(&out),
        format!("state=Applied release={RELEASE}/v1")
    );
}

#[test]
fn a_stalled_transition_exits_1_with_the_reason() {
    let repo = Repo::new();
    let fault = format!("{RELEASE}/v2=stall");
    let (code, out) = repo.run(&["--sim-fail-release", &fault], "apply", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        last_line(&out).starts_with("state=Failed reason=TransitionStalled message="),
        "{out}"
    );
}

#[test]
fn a_crash_marker_from_an_earlier_boot_is_crash_suspected() {
    let repo = Repo::new();
    let state = repo.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let marker = format!(r#"{{"bootId":"an-earlier-boot","release":{{"id":"{RELEASE}/v2"}}}}"#);
    std::fs::write(state.join("apply-in-progress.json"), marker).unwrap();
    let (code, out) = repo.run(&[], "apply", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        last_line(&out).starts_with("state=CrashSuspected reason=CrashSuspected message="),
        "{out}"
    );
    // v1 is still allowed.
    let (code, out) = repo.run(&[], "apply", &["--version", "1"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn revert_without_version_and_status() {
    let repo = Repo::new();
    let (code, out) = repo.run(&[], "revert", &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(last_line(&out), "state=Idle");
    let (code, out) = repo.agent(&[], &["status"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(last_line(&out), "state=Idle");
}

#[test]
fn an_untrusted_key_or_another_kernel_fails() {
    let repo = Repo::new();
    std::fs::write(
        repo.dir.path().join("kpersist.pub"),
        PrivateKey::generate().public_key().to_base64_line(),
    )
    .unwrap();
    let (code, out) = repo.run(&[], "apply", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        last_line(&out).starts_with("state=Failed reason=HostError message=repository:"),
        "{out}"
    );

    let repo = Repo::new();
    let (code, out) = repo.run(&["--sim-kernel-release", "6.1.0-57-amd64"], "apply", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(last_line(&out).starts_with("state=Unsupported"), "{out}");
}

#[test]
fn the_simulated_kernel_outlives_the_process_until_a_new_boot_id() {
    let repo = Repo::new();
    let (code, out) = repo.run(&[], "apply", &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = repo.agent(&[], &["status"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        last_line(&out),
        format!("state=Applied release={RELEASE}/v2")
    );
    // A new boot id is a reboot: the livepatch is gone.
    let (code, out) = repo.agent(&["--sim-boot-id", "second-boot"], &["status"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(last_line(&out), "state=Idle");
}
