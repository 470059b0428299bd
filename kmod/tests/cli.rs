//! Runs the built `kpersist-repo` binary end to end on the real livepatch modules in
//! tests/fixtures: keygen, init, add, sign, verify, list, and verify's refusal of any
//! changed byte in the index or a module.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kpersist_kmod::modinfo::ModInfo;

const BUILD_ID: &str = "4f1f5bd3e0b2a6c4d8e9f0a1b2c3d4e5f6a7b8c9";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The kernel release the fixtures were built for, from their own vermagic.
fn fixture_kernel() -> String {
    let info = ModInfo::from_file(&fixture("kpersist_v1.ko")).unwrap();
    info.vermagic_release().unwrap().to_string()
}

fn repo_tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kpersist-repo"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn succeed(args: &[&str]) -> String {
    let out = repo_tool(args);
    assert!(out.status.success(), "{args:?} failed: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `args`, expects exit code `code`, and returns stderr.
fn fail(args: &[&str], code: i32) -> String {
    let out = repo_tool(args);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
    stderr(&out)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A signed repository with kpersist_v1 and kpersist_v2 as versions 1 and 2.
struct Published {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    keys: PathBuf,
}

impl Published {
    fn new() -> Published {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let keys = dir.path().join("keys");
        let kernel = fixture_kernel();
        succeed(&["keygen", "--out-dir", s(&keys)]);
        succeed(&["init", "--repo", s(&repo)]);
        for (version, module) in [("1", "kpersist_v1.ko"), ("2", "kpersist_v2.ko")] {
            let ko = fixture(module);
            let out = succeed(&[
                "add",
                s(&ko),
                "--repo",
                s(&repo),
                "--kernel-release",
                &kernel,
                "--build-id",
                BUILD_ID,
                "--version",
                version,
                "--cve",
                "CVE-2024-1086",
                "--channel",
                "stable",
                "--channel",
                "edge",
            ]);
            assert!(out.contains(&format!("{kernel}/v{version}")), "{out}");
        }
        let key = keys.join("kpersist.key");
        succeed(&["sign", "--repo", s(&repo), "--key", s(&key)]);
        Published {
            _dir: dir,
            repo,
            keys,
        }
    }

    fn verify_args(&self) -> [String; 5] {
        let pubkey = self.keys.join("kpersist.pub");
        ["verify", "--repo", s(&self.repo), "--pubkey", s(&pubkey)].map(str::to_string)
    }

    fn verify(&self) -> Output {
        let args = self.verify_args();
        repo_tool(&args.each_ref().map(String::as_str))
    }
}

/// Flips one bit at `at` in `path`, runs `check`, then restores the file.
fn with_flipped_byte(path: &Path, at: usize, check: impl FnOnce()) {
    let original = std::fs::read(path).unwrap();
    let mut changed = original.clone();
    changed[at] ^= 0x01;
    std::fs::write(path, &changed).unwrap();
    check();
    std::fs::write(path, &original).unwrap();
}

#[test]
fn a_published_repository_verifies_and_lists() {
    let published = Published::new();
    let out = published.verify();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 release(s)"));

    let bytes = std::fs::read(published.repo.join("index.json")).unwrap();
    let index = kpersist_kmod::repository::Index::from_json_bytes(&bytes).unwrap();
    // Times are written to the second.
    assert!(!index.generated_at.contains('.'), "{}", index.generated_at);
    assert!(index.releases.iter().all(|r| !r.published.contains('.')));

    let table = succeed(&["list", "--repo", s(&published.repo)]);
    let kernel = fixture_kernel();
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table.contains(&format!("{kernel}/v2  kpersist_v2  stable,edge  1     ")),
        "{table}"
    );
}

#[test]
fn sign_stamps_a_growing_serial_and_an_expiry_that_verify_checks() {
    let published = Published::new();
    let repo = s(&published.repo);
    let key = published.keys.join("kpersist.key");
    let read_index = || {
        let bytes = std::fs::read(published.repo.join("index.json")).unwrap();
        kpersist_kmod::repository::Index::from_json_bytes(&bytes).unwrap()
    };
    let first = read_index();
    let expires: jiff::Timestamp = first.expires.as_deref().unwrap().parse().unwrap();
    let generated: jiff::Timestamp = first.generated_at.parse().unwrap();
    assert_eq!(
        expires.duration_since(generated),
        jiff::SignedDuration::from_hours(7 * 24),
        "7 days by default"
    );
    let out = published.verify();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&format!("serial {}", first.serial())),
        "{stdout}"
    );

    let out = succeed(&[
        "sign",
        "--repo",
        repo,
        "--key",
        s(&key),
        "--valid-for",
        "1s",
    ]);
    let second = read_index();
    assert!(second.serial() > first.serial(), "{out}");
    assert!(
        out.contains(&format!("serial {}", second.serial())),
        "{out}"
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = published.verify();
    assert_eq!(out.status.code(), Some(1), "an expired index fails verify");
    assert!(stderr(&out).contains("expired at"), "{}", stderr(&out));

    let err = fail(
        &[
            "sign",
            "--repo",
            repo,
            "--key",
            s(&key),
            "--valid-for",
            "0s",
        ],
        2,
    );
    assert!(err.contains("positive duration"), "{err}");
}

#[test]
fn keygen_writes_a_private_key_only_the_owner_can_read_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = succeed(&["keygen", "--out-dir", s(dir.path())]);
    let key = dir.path().join("kpersist.key");
    let public = std::fs::read_to_string(dir.path().join("kpersist.pub")).unwrap();
    assert!(out.contains(public.trim()), "{out}");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = std::fs::read(&key).unwrap();
    let err = fail(&["keygen", "--out-dir", s(dir.path())], 1);
    assert!(err.starts_with("kpersist-repo: keygen "), "{err}");
    assert!(err.contains("kpersist.key already exists"), "{err}");
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn verify_fails_when_any_byte_of_the_index_changes() {
    let published = Published::new();
    let index = published.repo.join("index.json");
    let len = std::fs::metadata(&index).unwrap().len() as usize;
    for at in [0, 1, len / 3, len / 2, len - 2, len - 1] {
        with_flipped_byte(&index, at, || {
            let out = published.verify();
            assert_eq!(
                out.status.code(),
                Some(1),
                "byte {at} changed but verify passed"
            );
            let err = stderr(&out);
            assert!(err.starts_with("kpersist-repo: verify "), "{err}");
            assert!(
                err.contains(&format!("{} does not match", index.display())),
                "{err}"
            );
        });
    }
    assert!(
        published.verify().status.success(),
        "restored index must verify again"
    );
}

#[test]
fn verify_fails_when_any_byte_of_a_module_changes() {
    let published = Published::new();
    let modules: Vec<PathBuf> = std::fs::read_dir(published.repo.join("modules"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(modules.len(), 2);
    for module in &modules {
        let len = std::fs::metadata(module).unwrap().len() as usize;
        for at in [0, len / 2, len - 1] {
            with_flipped_byte(module, at, || {
                let out = published.verify();
                assert_eq!(out.status.code(), Some(1), "{} byte {at}", module.display());
                let err = stderr(&out);
                assert!(err.contains(&module.display().to_string()), "{err}");
                assert!(err.contains("sha256 is"), "{err}");
            });
        }
    }
    let first = &modules[0];
    let original = std::fs::read(first).unwrap();
    std::fs::write(first, &original[..original.len() - 1]).unwrap();
    let err = stderr(&published.verify());
    assert!(
        err.contains(&first.display().to_string()) && err.contains("size is"),
        "{err}"
    );
}

#[test]
fn verify_refuses_other_keys_and_names_a_malformed_key_file() {
    let published = Published::new();
    let other = tempfile::tempdir().unwrap();
    succeed(&["keygen", "--out-dir", s(other.path())]);
    let other_pub = other.path().join("kpersist.pub");
    let err = fail(
        &[
            "verify",
            "--repo",
            s(&published.repo),
            "--pubkey",
            s(&other_pub),
        ],
        1,
    );
    assert!(err.contains("does not match its signature"), "{err}");

    std::fs::write(&other_pub, "not-a-key\n").unwrap();
    let err = fail(
        &[
            "verify",
            "--repo",
            s(&published.repo),
            "--pubkey",
            s(&other_pub),
        ],
        1,
    );
    assert!(err.contains(&other_pub.display().to_string()), "{err}");
    assert!(err.contains("base64"), "{err}");
}

#[test]
fn add_refuses_modules_that_are_not_livepatches_for_the_kernel_and_repeated_versions_or_names() {
    let published = Published::new();
    let kernel = fixture_kernel();
    let repo = s(&published.repo);
    let add = |module: &str, version: &str| {
        let ko = fixture(module);
        fail(
            &[
                "add",
                s(&ko),
                "--repo",
                repo,
                "--kernel-release",
                &kernel,
                "--build-id",
                BUILD_ID,
                "--version",
                version,
            ],
            1,
        )
    };
    let err = add("not_livepatch.ko", "3");
    assert!(
        err.contains("not_livepatch.ko") && err.contains("livepatch=Y"),
        "{err}"
    );
    let err = add("kpersist_badvermagic.ko", "3");
    assert!(
        err.contains("kpersist_badvermagic.ko") && err.contains("vermagic"),
        "{err}"
    );
    let err = add("kpersist_v2.ko", "2");
    assert!(err.contains("listed more than once"), "{err}");
    let err = add("kpersist_v2.ko", "1");
    assert!(err.contains("listed more than once"), "{err}");
    // The kernel would refuse kpersist_v1 again next to the loaded v1 (EEXIST).
    let err = add("kpersist_v1.ko", "3");
    for word in [
        "/v3",
        "module name kpersist_v1",
        "already used",
        "kpersist_v2",
    ] {
        assert!(err.contains(word), "{word}: {err}");
    }
    // None of the refused adds touched the signed repository.
    assert!(published.verify().status.success());
}

#[test]
fn usage_errors_exit_with_code_2_and_every_subcommand_has_help() {
    fail(
        &[
            "add",
            "m.ko",
            "--kernel-release",
            "6.1.0",
            "--build-id",
            "ab",
            "--version",
            "1",
        ],
        2,
    );
    fail(
        &[
            "add",
            "m.ko",
            "--repo",
            "r",
            "--kernel-release",
            "6.1.0",
            "--build-id",
            "xyz",
            "--version",
            "1",
        ],
        2,
    );
    fail(
        &[
            "add",
            "m.ko",
            "--repo",
            "r",
            "--kernel-release",
            "6.1.0",
            "--build-id",
            "ab",
            "--version",
            "0",
        ],
        2,
    );
    fail(&["verify", "--repo", "r"], 2);
    fail(&["frobnicate"], 2);
    for (sub, flag) in [
        ("keygen", "--out-dir"),
        ("init", "--repo"),
        ("add", "--kernel-release"),
        ("sign", "--key"),
        ("verify", "--pubkey"),
        ("list", "--repo"),
    ] {
        let help = succeed(&[sub, "--help"]);
        assert!(help.contains(flag), "{sub} --help lacks {flag}: {help}");
    }
}

#[test]
fn list_prints_every_field_as_json_or_yaml() {
    let published = Published::new();
    let repo = s(&published.repo);
    let json = succeed(&["list", "--repo", repo, "-o", "json"]);
    let releases: serde_json::Value = serde_json::from_str(&json).unwrap();
    let newest = &releases.as_array().unwrap()[1];
    assert_eq!(newest["moduleName"], "kpersist_v2", "{json}");
    assert_eq!(
        newest["cves"],
        serde_json::json!(["CVE-2024-1086"]),
        "{json}"
    );
    let yaml = succeed(&["list", "--repo", repo, "--output", "yaml"]);
    let from_yaml: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(from_yaml, releases, "yaml and json list the same releases");
    let out = repo_tool(&["list", "--repo", repo, "-o", "xml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("json"),
        "names the formats: {}",
        stderr(&out)
    );
}

/// Runs `kpersist-repo sign` with `stdin` on its standard input and `env` set (or
/// KPERSIST_REPO_KEY removed).
fn sign_with(repo: &str, key_flag: &[&str], stdin: &[u8], env: Option<&str>) -> Output {
    use std::io::Write;
    let mut command = Command::new(env!("CARGO_BIN_EXE_kpersist-repo"));
    command
        .args(["sign", "--repo", repo])
        .args(key_flag)
        .env_remove("KPERSIST_REPO_KEY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(key) = env {
        command.env("KPERSIST_REPO_KEY", key);
    }
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn sign_takes_the_key_from_stdin_or_the_environment() {
    let published = Published::new();
    let repo = s(&published.repo);
    let key = std::fs::read_to_string(published.keys.join("kpersist.key")).unwrap();
    for out in [
        sign_with(repo, &["--key", "-"], key.as_bytes(), None),
        sign_with(repo, &[], b"", Some(key.trim())),
    ] {
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(published.verify().status.success());
    }
    let out = sign_with(repo, &[], b"", None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no signing key") && stderr(&out).contains("KPERSIST_REPO_KEY"),
        "{}",
        stderr(&out)
    );
    let out = sign_with(repo, &["--key", "-"], b"not a key\n", None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("standard input"), "{}", stderr(&out));
}

#[test]
fn completions_and_the_manual_page_name_every_subcommand() {
    let bash = succeed(&["completions", "bash"]);
    let man = succeed(&["man"]);
    assert!(man.starts_with(".ie") || man.contains(".TH"), "{man}");
    for sub in ["keygen", "init", "add", "sign", "verify", "list"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
        assert!(man.contains(sub), "the manual page lacks {sub}");
    }
    assert!(
        man.contains(r"\fB\-\-build\-id\fR"),
        "the manual page lacks the flags of add"
    );
    assert!(succeed(&["completions", "zsh"]).contains("#compdef kpersist-repo"));
    assert_eq!(repo_tool(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn promote_and_remove_change_the_index_and_ask_for_a_new_signature() {
    let published = Published::new();
    let repo = s(&published.repo);
    let v1 = format!("{}/v1", fixture_kernel());
    let promote = |channel: &str| {
        [
            "promote",
            "--repo",
            repo,
            "--release",
            &v1,
            "--channel",
            channel,
        ]
        .map(str::to_string)
    };
    let out = succeed(&promote("lts").each_ref().map(String::as_str));
    assert!(out.contains("now in lts"), "{out}");
    assert!(
        !published.verify().status.success(),
        "unsigned after a change"
    );
    let key = published.keys.join("kpersist.key");
    succeed(&["sign", "--repo", repo, "--key", s(&key)]);
    let json = succeed(&["list", "--repo", repo, "-o", "json"]);
    assert!(json.contains("\"lts\""), "{json}");
    let again = succeed(&promote("lts").each_ref().map(String::as_str));
    assert!(again.contains("already in lts"), "{again}");
    fail(&promote("LTS!").each_ref().map(String::as_str), 2);

    let out = succeed(&["remove", "--repo", repo, "--release", &v1]);
    assert!(out.contains("nodes that run it keep it"), "{out}");
    let table = succeed(&["list", "--repo", repo]);
    assert!(!table.contains(&v1), "{table}");
    let err = fail(&["remove", "--repo", repo, "--release", &v1], 1);
    assert!(err.contains("no release"), "{err}");
}

#[test]
fn yank_withdraws_a_release_with_its_reason_and_undo_offers_it_again() {
    let published = Published::new();
    let repo = s(&published.repo);
    let v1 = format!("{}/v1", fixture_kernel());
    let yank = ["yank", "--repo", repo, "--release", &v1];
    let out = succeed(&[&yank[..], &["--reason", "breaks nfsd"]].concat());
    assert!(out.contains(&format!("yanked {v1}")), "{out}");
    assert!(
        !published.verify().status.success(),
        "unsigned after a change"
    );
    let json = succeed(&["list", "--repo", repo, "-o", "json"]);
    assert!(json.contains(r#""yanked": "breaks nfsd""#), "{json}");
    let table = succeed(&["list", "--repo", repo]);
    assert!(
        table.lines().nth(1).is_some_and(|l| l.ends_with("yes")),
        "{table}"
    );
    let again = succeed(&[&yank[..], &["--reason", "breaks nfsd"]].concat());
    assert!(again.contains("already yanked"), "{again}");

    // A reason is required, one line, and not with --undo.
    for bad in [
        &[][..],
        &["--reason", ""],
        &["--reason", "two\nlines"],
        &["--reason", "x", "--undo"],
    ] {
        fail(&[&yank[..], bad].concat(), 2);
    }

    let out = succeed(&[&yank[..], &["--undo"]].concat());
    assert!(out.contains("offered again"), "{out}");
    let json = succeed(&["list", "--repo", repo, "-o", "json"]);
    assert!(!json.contains("yanked"), "{json}");
    let err = fail(
        &[
            "yank",
            "--repo",
            repo,
            "--release",
            "6.1.0-1-amd64/v9",
            "--undo",
        ],
        1,
    );
    assert!(err.contains("no release"), "{err}");
}

/// The publishing commands of the project's README, run by bash exactly as printed, on a
/// real livepatch module built for the kernel they name.
#[test]
fn the_readme_publishing_commands_work_as_printed() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(readme).unwrap();
    let block = readme
        .split_once("Publishing patches")
        .and_then(|(_, rest)| rest.split_once("```sh\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("the README shows the publishing commands");
    assert!(block.contains("kpersist-repo verify"), "{block}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("kpersist_v1.ko"), dir.path().join("kpersist_v1.ko")).unwrap();
    let tool = PathBuf::from(env!("CARGO_BIN_EXE_kpersist-repo"));
    let path = format!(
        "{}:{}",
        tool.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("BUILD_ID", BUILD_ID)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{block}\n{stdout}{}", stderr(&out));
    assert!(
        stdout.contains("OK: index.json signature, 1 release(s) and their modules verified"),
        "{stdout}"
    );
}
