//! Writes the CRD manifests where the project keeps them (`crds/` and the Helm chart's
//! `crds/`), or into one directory given on the command line; `--check` writes nothing and
//! fails when a committed manifest differs from the types.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "crdgen: write the kpersist CRD manifests

Usage: crdgen [--check] [DIR]

  DIR      write only there (default: crds/ and helm/kpersist/crds/ of this checkout)
  --check  write nothing; exit 1 when a manifest differs from the API types";

fn main() -> ExitCode {
    let mut check = false;
    let mut dirs = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other if other.starts_with('-') => {
                eprintln!("crdgen: unknown flag {other:?}; see --help");
                return ExitCode::from(2);
            }
            other => dirs.push(PathBuf::from(other)),
        }
    }
    if dirs.is_empty() {
        let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        dirs.push(crate_dir.join("../helm/kpersist/crds"));
        dirs.push(crate_dir);
    }
    let mut stale = false;
    for dir in &dirs {
        for (name, yaml) in kpersist_crds::yaml::crd_manifests() {
            let path = dir.join(name);
            if check {
                if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                    eprintln!(
                        "crdgen: {} is out of date; run crdgen to regenerate",
                        path.display()
                    );
                    stale = true;
                }
            } else if let Err(e) = std::fs::write(&path, yaml) {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            } else {
                println!("wrote {}", path.display());
            }
        }
    }
    if stale {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
