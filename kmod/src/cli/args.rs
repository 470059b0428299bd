//! The command line of `kpersist-repo`: its subcommands, flags and their help text. Flag
//! values are checked here, so a malformed one is a usage error (exit code 2).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kpersist_kmod::repository::{check_yank_reason, is_channel, is_cve_id};

/// Build, sign and verify a kpersist patch repository.
///
/// A repository is a directory served over HTTP(S): `index.json` lists the cumulative
/// livepatch releases, `index.json.sig` is its detached ed25519 signature, and `modules/`
/// holds the `.ko` files by SHA-256. Typical use: `keygen` once, `init` once, then for each
/// release `add` and `sign`, and `verify` before publishing.
#[derive(Parser, Debug)]
#[command(name = "kpersist-repo", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate an ed25519 signing key pair: kpersist.key (private, mode 0600) and
    /// kpersist.pub (the public key to give the cluster's LivePatchPolicy).
    Keygen {
        /// Directory to write kpersist.key and kpersist.pub into (created if missing);
        /// existing key files are never overwritten.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
    /// Create an empty repository: an index with no releases and a modules/ directory.
    Init {
        /// Repository directory (created if missing; must not hold an index yet).
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
    },
    /// Add a livepatch module as a new release. The module must declare `livepatch=Y` and
    /// be built for --kernel-release; the repository must be signed again afterwards.
    Add(AddArgs),
    /// Stamp the index with a new serial (above the last one, at least the Unix time) and
    /// an expiry, then sign its exact bytes, writing index.json.sig. Clients refuse an index
    /// with a lower serial than one they accepted and report a repository whose index has
    /// expired as stale, so sign again on a schedule shorter than --valid-for even when
    /// nothing changed.
    Sign {
        /// Repository directory.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// Private key file written by `kpersist-repo keygen` (kpersist.key); `-` reads
        /// the key from standard input. Without --key the key is taken from the
        /// environment variable KPERSIST_REPO_KEY (the key file's one line), as CI
        /// systems pass secrets.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// How long the signed index stays current, e.g. 7d, 36h, 1d12h.
        #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_validity)]
        valid_for: jiff::SignedDuration,
    },
    /// Check the repository as clients will: the signature over index.json, the index's
    /// contents, and every module's size and SHA-256. Exits 0 only when all check out.
    Verify {
        /// Repository directory.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// Trusted public key file (kpersist.pub); repeat to trust several keys.
        #[arg(long = "pubkey", value_name = "FILE", required = true)]
        pubkeys: Vec<PathBuf>,
    },
    /// List the releases in the index: id, module name, channels, CVEs, publication time.
    List {
        /// Repository directory.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// Output format: a table (one line per release, CVEs counted), or every field of
        /// each release as json or yaml, for scripts.
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
    /// Put a release in one more channel, e.g. promote a release that proved itself in edge
    /// to stable. Policies following that channel see it at their next poll once the
    /// repository is signed again.
    Promote {
        /// Repository directory.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// The release's id, `<kernelRelease>/v<version>` (`kpersist-repo list` shows them).
        #[arg(long, value_name = "ID")]
        release: String,
        /// The channel to add it to.
        #[arg(long, value_name = "NAME", value_parser = parse_channel)]
        channel: String,
    },
    /// Withdraw a release found broken after it shipped: policies never offer it again and
    /// send the nodes they gave it to back to the release each ran before (recorded as a
    /// bad release in their status, with the reason). `--undo` offers it again; policies
    /// that already marked it bad keep it until a person lists it in
    /// `spec.rollout.retryReleases`. Sign the repository again afterwards.
    Yank {
        /// Repository directory.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// The release's id, `<kernelRelease>/v<version>`.
        #[arg(long, value_name = "ID")]
        release: String,
        /// Why, in one line, shown to cluster operators in policy status and Events.
        #[arg(long, value_name = "TEXT", required_unless_present = "undo", conflicts_with = "undo", value_parser = parse_yank_reason)]
        reason: Option<String>,
        /// Offer the release again.
        #[arg(long)]
        undo: bool,
    },
    /// Remove a release from the index and delete its module file, as when pruning a
    /// release a newer cumulative one supersedes. Nodes that run it keep it, and policies
    /// move them on to the newest release of their channel as usual; to take a release back
    /// from nodes, `yank` it instead.
    Remove {
        /// Repository directory.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// The release's id, `<kernelRelease>/v<version>`.
        #[arg(long, value_name = "ID")]
        release: String,
    },
    /// Print a shell completion script, e.g.
    /// `kpersist-repo completions bash > /etc/bash_completion.d/kpersist-repo`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `kpersist-repo man > kpersist-repo.1`.
    Man,
}

/// How `kpersist-repo list` prints the releases.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListFormat {
    /// An aligned table for people.
    Table,
    /// A JSON array of the index's release entries.
    Json,
    /// The same as YAML.
    Yaml,
}

/// The flags of `kpersist-repo add`.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// The livepatch kernel module (.ko) to publish.
    #[arg(value_name = "MODULE.ko")]
    pub module: PathBuf,
    /// Repository directory made by `kpersist-repo init`.
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// Kernel release the module is for, as `uname -r` prints it on the target nodes;
    /// must equal the first word of the module's vermagic.
    #[arg(long, value_name = "RELEASE", value_parser = parse_kernel_release)]
    pub kernel_release: String,
    /// GNU build id of that kernel, hex (e.g. from `readelf -n vmlinux` or
    /// /sys/kernel/notes on a node).
    #[arg(long, value_name = "HEX", value_parser = parse_build_id)]
    pub build_id: String,
    /// Cumulative version, greater than every version already published for this
    /// kernel build.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub version: u64,
    /// A CVE this release fixes, e.g. CVE-2024-1086; repeat for each (a release fixes
    /// everything earlier ones did, so list them all).
    #[arg(long = "cve", value_name = "CVE-YYYY-NNNN", value_parser = parse_cve)]
    pub cves: Vec<String>,
    /// Channel to publish in, e.g. stable or edge; repeat for several.
    #[arg(
        long = "channel",
        value_name = "NAME",
        default_value = "stable",
        value_parser = parse_channel
    )]
    pub channels: Vec<String>,
    /// Publication time (RFC 3339, e.g. 2026-01-31T12:00:00Z); policies with a delay
    /// wait from this time. Defaults to now.
    #[arg(long, value_name = "RFC3339", value_parser = parse_timestamp)]
    pub published: Option<jiff::Timestamp>,
}

fn parse_kernel_release(text: &str) -> Result<String, String> {
    if text.is_empty()
        || text.len() > 64
        || !text.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
    {
        return Err(
            "expected a kernel release as `uname -r` prints it, e.g. 6.1.0-28-amd64".into(),
        );
    }
    Ok(text.to_string())
}

fn parse_build_id(text: &str) -> Result<String, String> {
    let hex = text.to_ascii_lowercase();
    let valid = (2..=128).contains(&hex.len())
        && hex.len().is_multiple_of(2)
        && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err("expected an even number of hex digits, e.g. a 40-digit GNU build id".into());
    }
    Ok(hex)
}

fn parse_cve(text: &str) -> Result<String, String> {
    if !is_cve_id(text) {
        return Err("expected a CVE id such as CVE-2024-1086".into());
    }
    Ok(text.to_string())
}

fn parse_channel(text: &str) -> Result<String, String> {
    if !is_channel(text) {
        return Err("expected lowercase letters, digits, `.`, `_` or `-`, e.g. stable".into());
    }
    Ok(text.to_string())
}

fn parse_validity(text: &str) -> Result<jiff::SignedDuration, String> {
    let hint = "expected a positive duration such as 7d, 36h or 1d12h";
    let span: jiff::Span = text.parse().map_err(|e| format!("{hint} ({e})"))?;
    let duration = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("{hint} ({e})"))?;
    if !duration.is_positive() {
        return Err(hint.to_string());
    }
    Ok(duration)
}

fn parse_timestamp(text: &str) -> Result<jiff::Timestamp, String> {
    text.parse()
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-01-31T12:00:00Z ({e})"))
}

fn parse_yank_reason(value: &str) -> Result<String, String> {
    check_yank_reason(value).map(|()| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flag_values_are_checked() {
        assert_eq!(parse_build_id("ABcd").unwrap(), "abcd");
        assert!(parse_build_id("abc").is_err());
        assert!(parse_build_id("zz").is_err());
        assert!(parse_cve("CVE-2024-1").is_err());
        assert!(parse_channel("Stable").is_err());
        assert!(parse_kernel_release("6.1 x").is_err());
        assert!(parse_timestamp("2026-01-31").is_err());
        assert!(parse_timestamp("2026-01-31T12:00:00Z").is_ok());
        assert_eq!(
            parse_validity("7d").unwrap(),
            jiff::SignedDuration::from_hours(168)
        );
        assert_eq!(
            parse_validity("1d12h").unwrap(),
            jiff::SignedDuration::from_hours(36)
        );
        for bad in ["0s", "-1d", "soon", "7"] {
            assert!(parse_validity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channel_defaults_to_stable() {
        let cli = Cli::try_parse_from([
            "kpersist-repo",
            "add",
            "m.ko",
            "--repo",
            "r",
            "--kernel-release",
            "6.1.0",
            "--build-id",
            "ab",
            "--version",
            "1",
        ])
        .unwrap();
        match cli.command {
            Command::Add(add) => {
                assert_eq!(add.channels, ["stable"]);
                assert!(add.cves.is_empty());
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
