//! Runs one `kpersist-operator` binary against the populated cluster and reads its memory
//! from `/proc/<pid>/status`: resident set when its caches have synced (`/readyz` answers
//! 200), once its reconciles have settled, and the high-water mark.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kpersist_e2e::sim_fleet::free_port;
use kpersist_e2e::{Error, Result};

/// What one run of one binary measured. Sizes in KiB, as `/proc` gives them.
#[derive(Clone, Debug)]
pub struct Figures {
    /// VmRSS when /readyz first answered 200.
    pub rss_synced: u64,
    /// VmRSS once reconciles settled.
    pub rss_steady: u64,
    /// VmHWM at the end: the peak resident set.
    pub peak: u64,
    /// From start to /readyz.
    pub sync_time: Duration,
    /// Reconciles counted by the operator's metrics when steady.
    pub reconciles: u64,
}

/// How to run a binary.
pub struct Run<'a> {
    /// The operator binary.
    pub binary: &'a Path,
    /// Its kubeconfig (the operator's service account).
    pub kubeconfig: &'a Path,
    /// Extra environment, e.g. `MALLOC_ARENA_MAX=2`.
    pub env: &'a [(String, String)],
    /// Its log file.
    pub log: PathBuf,
    /// The least time to watch it after sync before calling it steady.
    pub settle: Duration,
}

/// Starts the binary, measures it, stops it with SIGTERM (so it releases its Lease for the
/// next run).
pub async fn measure(run: &Run<'_>) -> Result<Figures> {
    let port = free_port()?;
    let log = std::fs::File::create(&run.log).map_err(|e| Error::io(&run.log, e))?;
    let log2 = log.try_clone().map_err(|e| Error::io(&run.log, e))?;
    let mut command = tokio::process::Command::new(run.binary);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent. The operator
    // dies with this benchmark even when the benchmark is killed.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--lease-namespace", kpersist_e2e::fleet::NAMESPACE])
        .env("KUBECONFIG", run.kubeconfig)
        .env("RUST_LOG", "info")
        .envs(run.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Spawn {
            program: run.binary.display().to_string(),
            source,
        })?;
    let pid = child.id().ok_or_else(|| exited(run, "at once"))?;
    let result = watch(run, pid, port, &mut child).await;
    stop(&mut child, pid).await;
    result
}

async fn watch(
    run: &Run<'_>,
    pid: u32,
    port: u16,
    child: &mut tokio::process::Child,
) -> Result<Figures> {
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| http_error("building an HTTP client", e))?;
    let base = format!("http://127.0.0.1:{port}");
    let sync_deadline = Duration::from_secs(600);
    loop {
        if child.try_wait().ok().flatten().is_some() {
            return Err(exited(run, "before its caches synced"));
        }
        let ready = http.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if started.elapsed() > sync_deadline {
            return Err(Error::Timeout {
                what: format!("{} to answer /readyz", run.binary.display()),
                seconds: started.elapsed().as_secs_f64(),
                last: format!("see {}", run.log.display()),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sync_time = started.elapsed();
    let rss_synced = status_kib(pid, "VmRSS")?;
    eprintln!(
        "    caches synced after {:.1}s, RSS {}",
        sync_time.as_secs_f64(),
        mib(rss_synced)
    );

    // Steady: the reconcile count has not moved for 10 s, and `settle` has passed.
    let synced_at = Instant::now();
    let mut last = (reconciles(&http, &base).await, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if child.try_wait().ok().flatten().is_some() {
            return Err(exited(run, "while reconciling"));
        }
        let now = reconciles(&http, &base).await;
        if now != last.0 {
            last = (now, Instant::now());
        }
        let quiet = last.1.elapsed() >= Duration::from_secs(10);
        if (quiet && synced_at.elapsed() >= run.settle)
            || synced_at.elapsed() > Duration::from_secs(600)
        {
            break;
        }
    }
    if last.0 == 0 {
        eprintln!(
            "    warning: no reconcile counted; see {}",
            run.log.display()
        );
    }
    Ok(Figures {
        rss_synced,
        rss_steady: status_kib(pid, "VmRSS")?,
        peak: status_kib(pid, "VmHWM")?,
        sync_time,
        reconciles: last.0,
    })
}

/// Total reconciles from the operator's /metrics; 0 when it cannot be read.
async fn reconciles(http: &reqwest::Client, base: &str) -> u64 {
    let text = match http.get(format!("{base}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => return 0,
    };
    metric_value(&text, "kpersist_reconcile_duration_seconds_count").unwrap_or(0)
}

/// The value of an unlabelled sample `name` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .find_map(|rest| rest.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// A `kB` field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    status_field(&text, field).ok_or_else(|| Error::Malformed {
        path,
        problem: format!("no {field} line; is this Linux with /proc mounted?"),
    })
}

/// Parses `Field:   1234 kB` out of `/proc/<pid>/status` text.
pub fn status_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// SIGTERM, up to 10 s to release the Lease and exit, then SIGKILL.
async fn stop(child: &mut tokio::process::Child, pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a pid this process spawned and has not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        // An error means it exited meanwhile.
        let _ = child.kill().await;
    }
}

fn exited(run: &Run<'_>, when: &str) -> Error {
    Error::Command {
        command: run.binary.display().to_string(),
        status: format!("exited {when}"),
        detail: format!("see its log {}", run.log.display()),
    }
}

fn http_error(what: &str, e: reqwest::Error) -> Error {
    Error::Command {
        command: what.into(),
        status: "failed".into(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_fields_are_read_in_kib() {
        let text = "Name:\tkpersist-operator\nVmHWM:\t  123456 kB\nVmRSS:\t   65432 kB\n";
        assert_eq!(status_field(text, "VmRSS"), Some(65432));
        assert_eq!(status_field(text, "VmHWM"), Some(123456));
        assert_eq!(status_field(text, "VmSwap"), None);
    }

    #[test]
    fn the_reconcile_count_is_read_from_prometheus_text() {
        let text = "# TYPE kpersist_reconcile_duration_seconds histogram\n\
                    kpersist_reconcile_duration_seconds_bucket{le=\"0.005\"} 3\n\
                    kpersist_reconcile_duration_seconds_sum 0.25\n\
                    kpersist_reconcile_duration_seconds_count 7\n";
        assert_eq!(
            metric_value(text, "kpersist_reconcile_duration_seconds_count"),
            Some(7)
        );
        assert_eq!(metric_value(text, "kpersist_missing"), None);
    }

    #[test]
    fn mib_has_one_decimal() {
        assert_eq!(mib(131_072), "128.0 MiB");
        assert_eq!(mib(1_536), "1.5 MiB");
    }
}
