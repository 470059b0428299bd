//! Writes the CRD manifests into a directory (default: `crds/` of this checkout), or checks
//! that the committed ones are up to date with `--check`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!(
                    "crdgen: write the kpersist CRD manifests\n\nUsage: crdgen [--check] [DIR]\n\n  DIR      where to write (default: the crds/ directory of this checkout)\n  --check  write nothing; exit 1 when a committed manifest differs"
                );
                return ExitCode::SUCCESS;
            }
            other if other.starts_with('-') => {
                eprintln!("crdgen: unknown flag {other:?}; see --help");
                return ExitCode::from(2);
            }
            other => dir = PathBuf::from(other),
        }
    }
    let mut stale = false;
    for (name, yaml) in kpersist_crds::yaml::crd_manifests() {
        let path = dir.join(name);
        if check {
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != yaml {
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
    if stale {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
