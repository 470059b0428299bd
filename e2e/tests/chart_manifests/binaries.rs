//! The arguments the chart passes are ones the binaries accept: each container's args,
//! with `$(VAR)` references filled in as the kubelet would, are handed to the real binary
//! followed by `--help`, and clap refuses an unknown flag or a bad value before it gets to
//! the help. e2e/chart/run.sh points `KPERSIST_CHART_BINARIES` at a directory holding
//! `kpersist-operator` and `kpersist-agent`.

use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::core::v1::Container;

use super::{DEFAULT, FULL, only_container, pod_template, rendered};

fn binaries_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KPERSIST_CHART_BINARIES").map(PathBuf::from);
    if dir.is_none() {
        eprintln!("KPERSIST_CHART_BINARIES is not set: skipped; e2e/chart/run.sh runs this");
    }
    dir
}

/// Replaces `$(NAME)` the way the kubelet does, from the container's env and fieldRefs.
fn expand(arg: &str, container: &Container) -> String {
    let mut out = arg.to_string();
    for env in container.env.iter().flatten() {
        let value = match (
            &env.value,
            env.value_from.as_ref().and_then(|v| v.field_ref.as_ref()),
        ) {
            (Some(v), _) => v.clone(),
            (None, Some(f)) if f.field_path == "spec.nodeName" => "node-1".to_string(),
            (None, Some(f)) if f.field_path == "metadata.namespace" => "kpersist".to_string(),
            (None, Some(_)) => "downward-value".to_string(),
            (None, None) => continue,
        };
        out = out.replace(&format!("$({})", env.name), &value);
    }
    out
}

#[test]
fn binaries_accept_the_rendered_arguments() {
    let Some(dir) = binaries_dir() else { return };
    for file in [DEFAULT, FULL] {
        let Some(m) = rendered(file) else { return };
        for (component, binary) in [
            ("operator", "kpersist-operator"),
            ("agent", "kpersist-agent"),
        ] {
            let container = only_container(&pod_template(&m, component));
            let args: Vec<String> = container
                .args
                .iter()
                .flatten()
                .map(|a| expand(a, &container))
                .collect();
            assert!(
                args.iter().all(|a| !a.contains("$(")),
                "{file}: unexpanded reference in {args:?}"
            );
            let path = dir.join(binary);
            let output = Command::new(&path)
                .args(&args)
                .arg("--help")
                .env_clear()
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
            assert!(
                output.status.success(),
                "{file}: {binary} refuses the chart's arguments {args:?}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

#[test]
fn a_wrong_flag_is_refused() {
    let Some(dir) = binaries_dir() else { return };
    for binary in ["kpersist-operator", "kpersist-agent"] {
        let status = Command::new(dir.join(binary))
            .args(["--no-such-flag", "--help"])
            .env_clear()
            .output()
            .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"))
            .status;
        assert!(
            !status.success(),
            "{binary} accepted --no-such-flag, so the check above proves nothing"
        );
    }
}
