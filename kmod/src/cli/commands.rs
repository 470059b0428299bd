//! What each `kpersist-repo` subcommand does. Each returns the lines to print on success or
//! a [`Failure`] saying what failed, why, and what to do.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use kpersist_kmod::repository::{INDEX_FILE, LocalRepository, NewRelease, verify_repository_dir};
use kpersist_kmod::signing::{PrivateKey, PublicKey};

use clap::CommandFactory;

use crate::args::{AddArgs, Cli, Command, ListFormat};
use crate::table::release_table;

/// File name of the private key `keygen` writes.
pub const PRIVATE_KEY_FILE: &str = "kpersist.key";
/// File name of the public key `keygen` writes.
pub const PUBLIC_KEY_FILE: &str = "kpersist.pub";
/// The environment variable `sign` takes the private key from when no --key is given.
pub const KEY_ENV: &str = "KPERSIST_REPO_KEY";

/// A command that did not succeed, printed as `kpersist-repo: <what>: <why>; <fix>`.
#[derive(Debug)]
pub struct Failure {
    /// The step that failed, naming its subject.
    pub what: String,
    /// Why, including what to do when the error itself says so.
    pub why: String,
    /// What to do, used when `why` carries no advice of its own.
    pub fix: &'static str,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Library errors that reach users already end with advice after a `;`.
        if self.why.contains("; ") {
            write!(f, "{}: {}", self.what, self.why)
        } else {
            write!(f, "{}: {}; {}", self.what, self.why, self.fix)
        }
    }
}

fn failure(what: String, fix: &'static str) -> impl FnOnce(&dyn std::fmt::Display) -> Failure {
    move |why| Failure {
        what,
        why: why.to_string(),
        fix,
    }
}

/// Now, to the second: index times need no more precision and read better without it.
fn current_time() -> Timestamp {
    let now = Timestamp::now();
    now.round(jiff::Unit::Second).unwrap_or(now)
}

/// Runs `command`, reading the clock only here, and returns what to print.
pub fn run(command: Command) -> Result<String, Failure> {
    match command {
        Command::Keygen { out_dir } => keygen(&out_dir),
        Command::Init { repo } => init(&repo),
        Command::Add(args) => add(args),
        Command::Sign {
            repo,
            key,
            valid_for,
        } => sign(&repo, key.as_deref(), valid_for),
        Command::Verify { repo, pubkeys } => verify(&repo, &pubkeys),
        Command::List { repo, output } => list(&repo, output),
        Command::Promote {
            repo,
            release,
            channel,
        } => promote(&repo, &release, &channel),
        Command::Yank {
            repo,
            release,
            reason,
            undo: _,
        } => yank(&repo, &release, reason.as_deref()),
        Command::Remove { repo, release } => remove(&repo, &release),
        Command::Completions { shell } => Ok(completions(shell)),
        Command::Man => man(),
    }
}

fn promote(repo: &Path, id: &str, channel: &str) -> Result<String, Failure> {
    let fail = failure(
        format!("promote {id} in {}", repo.display()),
        "check --repo and --release",
    );
    let (release, already) = LocalRepository::open(repo)
        .promote(id, channel, current_time())
        .map_err(|e| fail(&e))?;
    let channels = release.channels.join(",");
    Ok(if already {
        format!("{id} is already in {channel} (channels {channels}); nothing changed\n")
    } else {
        format!(
            "{id} is now in {channel} (channels {channels}); run `kpersist-repo sign` before \
             publishing\n"
        )
    })
}

fn yank(repo: &Path, id: &str, reason: Option<&str>) -> Result<String, Failure> {
    let fail = failure(
        format!("yank {id} in {}", repo.display()),
        "check --repo and --release",
    );
    let (_, already) = LocalRepository::open(repo)
        .yank(id, reason, current_time())
        .map_err(|e| fail(&e))?;
    Ok(match (reason, already) {
        (Some(_), true) => format!("{id} is already yanked for that reason; nothing changed\n"),
        (None, true) => format!("{id} is not yanked; nothing changed\n"),
        (Some(_), false) => format!(
            "yanked {id}: policies will not offer it and send its nodes back; run \
             `kpersist-repo sign` before publishing\n"
        ),
        (None, false) => {
            format!("{id} is offered again; run `kpersist-repo sign` before publishing\n")
        }
    })
}

fn remove(repo: &Path, id: &str) -> Result<String, Failure> {
    let fail = failure(
        format!("remove {id} from {}", repo.display()),
        "check --repo and --release",
    );
    let removed = LocalRepository::open(repo)
        .remove(id, current_time())
        .map_err(|e| fail(&e))?;
    Ok(format!(
        "removed {id} (module {}); nodes that run it keep it; run `kpersist-repo sign` \
         before publishing\n",
        removed.module_name
    ))
}

fn completions(shell: clap_complete::Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "kpersist-repo", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The manual page: the command, then a section per subcommand with its flags.
fn man() -> Result<String, Failure> {
    let command = Cli::command();
    let mut out = Vec::new();
    let mut rendered = clap_mangen::Man::new(command.clone()).render(&mut out);
    for sub in command.get_subcommands() {
        let man = clap_mangen::Man::new(sub.clone());
        rendered = rendered
            .and_then(|()| man.render_name_section(&mut out))
            .and_then(|()| man.render_synopsis_section(&mut out))
            .and_then(|()| man.render_description_section(&mut out))
            .and_then(|()| man.render_options_section(&mut out));
    }
    rendered.map_err(|e| failure("man".into(), "report this as a bug")(&e))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The signing key from --key (a file, or `-` for standard input) or else from
/// [`KEY_ENV`].
fn signing_key(key: Option<&Path>) -> Result<PrivateKey, String> {
    let from_text =
        |text: &str, origin: &str| PrivateKey::from_base64(text, origin).map_err(|e| e.to_string());
    match key {
        Some(path) if path == Path::new("-") => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| format!("standard input: {e}"))?;
            from_text(&text, "standard input")
        }
        Some(path) => PrivateKey::read(path).map_err(|e| e.to_string()),
        None => match std::env::var(KEY_ENV) {
            Ok(text) => from_text(&text, KEY_ENV),
            Err(_) => Err(format!(
                "no signing key: pass --key FILE, --key - (standard input) or set {KEY_ENV} \
                 to the key file's line"
            )),
        },
    }
}

fn init(repo: &Path) -> Result<String, Failure> {
    let fail = failure(
        format!("init {}", repo.display()),
        "check the directory path and permissions",
    );
    LocalRepository::init(repo, current_time()).map_err(|e| fail(&e))?;
    Ok(format!(
        "initialized an empty repository in {}\n",
        repo.display()
    ))
}

fn add(args: AddArgs) -> Result<String, Failure> {
    let fail = failure(
        format!("add to {}", args.repo.display()),
        "fix the module or the flags and run add again",
    );
    let now = current_time();
    let new = NewRelease {
        kernel_release: args.kernel_release,
        build_id: args.build_id,
        version: args.version,
        cves: args.cves,
        channels: args.channels,
        published: args.published.unwrap_or(now),
    };
    let release = LocalRepository::open(&args.repo)
        .add(&args.module, new, now)
        .map_err(|e| fail(&e))?;
    Ok(format!(
        "added {} (module {}, sha256 {}); run `kpersist-repo sign` before publishing\n",
        release.id(),
        release.module_name,
        release.sha256
    ))
}

fn sign(repo: &Path, key: Option<&Path>, valid_for: SignedDuration) -> Result<String, Failure> {
    let what = format!("sign {}", repo.display());
    let key = signing_key(key).map_err(|e| failure(what.clone(), "check --key")(&e))?;
    let local = LocalRepository::open(repo);
    let fail = failure(what, "check --repo");
    let index = local
        .refresh(current_time(), valid_for)
        .and_then(|index| local.sign(&key).map(|()| index))
        .map_err(|e| fail(&e))?;
    Ok(format!(
        "signed {}: serial {}, valid until {}; sign again before then\n",
        repo.join(INDEX_FILE).display(),
        index.serial(),
        index.expires.unwrap_or_default()
    ))
}

fn list(repo: &Path, format: ListFormat) -> Result<String, Failure> {
    let fail = failure(
        format!("list {}", repo.display()),
        "check that --repo names a repository made by `kpersist-repo init`",
    );
    let index = LocalRepository::open(repo)
        .load_index()
        .map_err(|e| fail(&e))?;
    let releases = &index.releases;
    let encode = |e: &dyn std::fmt::Display| failure("list".into(), "report this as a bug")(e);
    match format {
        ListFormat::Table => Ok(release_table(releases)),
        ListFormat::Json => serde_json::to_string_pretty(releases)
            .map(|json| json + "\n")
            .map_err(|e| encode(&e)),
        ListFormat::Yaml => serde_yaml::to_string(releases).map_err(|e| encode(&e)),
    }
}

fn verify(repo: &Path, pubkeys: &[PathBuf]) -> Result<String, Failure> {
    let what = format!("verify {}", repo.display());
    let fix = "do not publish this repository; re-add or re-sign it from trusted files";
    let keys = pubkeys
        .iter()
        .map(|path| PublicKey::read(path))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failure(what.clone(), "check --pubkey")(&e))?;
    let index = verify_repository_dir(repo, &keys)
        .and_then(|index| index.check_not_expired(current_time()).map(|()| index))
        .map_err(|e| failure(what, fix)(&e))?;
    let freshness = match &index.expires {
        Some(expires) => format!("serial {}, valid until {expires}", index.serial()),
        None => "no serial or expiry: clients cannot tell it from an older index; re-sign \
                 with `kpersist-repo sign`"
            .to_string(),
    };
    Ok(format!(
        "OK: index.json signature, {} release(s) and their modules verified; {freshness}\n",
        index.releases.len()
    ))
}

fn keygen(out_dir: &Path) -> Result<String, Failure> {
    let fix = "choose another --out-dir or move the existing key files away";
    let fail =
        |why: &dyn std::fmt::Display| failure(format!("keygen {}", out_dir.display()), fix)(why);
    let private = out_dir.join(PRIVATE_KEY_FILE);
    let public = out_dir.join(PUBLIC_KEY_FILE);
    // Check both first so that a refusal leaves no half-written pair behind.
    for path in [&private, &public] {
        if path.exists() {
            return Err(fail(&format!("{} already exists", path.display())));
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|e| fail(&e))?;
    let key = PrivateKey::generate();
    write_new(&private, key.to_base64_line().as_bytes(), 0o600).map_err(|e| fail(&e))?;
    let public_line = key.public_key().to_base64_line();
    write_new(&public, public_line.as_bytes(), 0o644).map_err(|e| fail(&e))?;
    Ok(format!(
        "wrote {} (keep it secret) and {}\npublic key: {public_line}",
        private.display(),
        public.display()
    ))
}

/// Writes a file that must not exist yet, created with `mode` so a private key is never
/// readable by others, not even briefly.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}
