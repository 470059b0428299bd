//! What the demo sets up, decided without a cluster: which kernel each simulated node runs,
//! which releases are published in each act, and the policy read from the sample file.

use std::collections::BTreeMap;
use std::path::Path;

use kpersist_crds::{LivePatchNode, LivePatchPolicy, NodePatchState};

use crate::sim_fleet::SimNode;
use crate::{Error, Result};

/// A simulated kernel build: `uname -r` and GNU build id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// Kernel release.
    pub release: &'static str,
    /// GNU build id.
    pub build_id: &'static str,
}

/// Most of the fleet: every act publishes a release for it, and the bad v3 is for it.
pub const KERNEL_A: Kernel = Kernel {
    release: "6.1.0-56-amd64",
    build_id: "d3a0c4a1d3a0c4a1d3a0c4a1d3a0c4a1d3a0c4a1",
};
/// A third of the fleet: gets v1 and v2.
pub const KERNEL_B: Kernel = Kernel {
    release: "6.1.0-57-amd64",
    build_id: "e4b1d5b2e4b1d5b2e4b1d5b2e4b1d5b2e4b1d5b2",
};
/// One node: the repository never has a release for it, so it stays Unsupported.
pub const KERNEL_NONE: Kernel = Kernel {
    release: "6.1.0-99-amd64",
    build_id: "f5c2e6c3f5c2e6c3f5c2e6c3f5c2e6c3f5c2e6c3",
};

/// The bad release's version: v3 of [`KERNEL_A`].
pub const BAD_VERSION: u64 = 3;

/// CVEs each cumulative version fixes (each includes the previous ones).
pub fn cves(version: u64) -> Vec<&'static str> {
    const ALL: [&str; 4] = [
        "CVE-2026-21001",
        "CVE-2026-21877",
        "CVE-2026-22310",
        "CVE-2026-23999",
    ];
    // v1 fixes one, v2 three, v3 four: the update is worth having.
    let n = match version {
        1 => 1,
        2 => 3,
        _ => ALL.len(),
    };
    ALL[..n].to_vec()
}

/// The id of `version` for `kernel`, e.g. `6.1.0-56-amd64/v2`.
pub fn release_id(kernel: Kernel, version: u64) -> String {
    format!("{}/v{version}", kernel.release)
}

/// `count` nodes named `node-01`...: the last on [`KERNEL_NONE`], every third on
/// [`KERNEL_B`], the rest on [`KERNEL_A`]. Every [`KERNEL_A`] node's simulated kernel taints
/// on the bad release, so whichever node the operator picks as canary fails it.
pub fn fleet_nodes(count: usize) -> Vec<SimNode> {
    let width = count.to_string().len().max(2);
    let bad = format!("{}=taint", release_id(KERNEL_A, BAD_VERSION));
    (1..=count)
        .map(|i| {
            let kernel = if i == count {
                KERNEL_NONE
            } else if i % 3 == 0 {
                KERNEL_B
            } else {
                KERNEL_A
            };
            let mut node = SimNode::new(
                &format!("node-{i:0width$}"),
                kernel.release,
                kernel.build_id,
            );
            if kernel == KERNEL_A {
                node.faults.push(bad.clone());
            }
            node
        })
        .collect()
}

/// The release every node with a release for its kernel should end on when every kernel
/// is at `version`: node name to release id.
pub fn expected(nodes: &[SimNode], version: u64) -> BTreeMap<String, String> {
    nodes
        .iter()
        .filter_map(|node| {
            [KERNEL_A, KERNEL_B]
                .into_iter()
                .find(|k| k.release == node.kernel_release)
                .map(|k| (node.name.clone(), release_id(k, version)))
        })
        .collect()
}

/// Whether every node in `expected` reports Applied with the release given for it.
pub fn all_applied(
    current: &BTreeMap<String, LivePatchNode>,
    expected: &BTreeMap<String, String>,
) -> bool {
    expected.iter().all(|(name, release)| {
        current
            .get(name)
            .and_then(|n| n.status.as_ref())
            .is_some_and(|s| {
                s.state == Some(NodePatchState::Applied)
                    && s.applied.as_ref().map(|a| a.id.as_str()) == Some(release.as_str())
            })
    })
}

/// Reads the sample policy from `path` and points it at the demo's repository: `url`,
/// trusting `key`; `bake`, when given, replaces the bake of every wave but the last.
pub fn load_policy(
    path: &Path,
    url: &str,
    key: &str,
    bake: Option<&str>,
) -> Result<LivePatchPolicy> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    policy_from_yaml(&text, url, key, bake).map_err(|problem| Error::Malformed {
        path: path.to_path_buf(),
        problem,
    })
}

fn policy_from_yaml(
    text: &str,
    url: &str,
    key: &str,
    bake: Option<&str>,
) -> std::result::Result<LivePatchPolicy, String> {
    let mut policy: LivePatchPolicy = serde_yaml::from_str(text)
        .map_err(|e| format!("not a LivePatchPolicy ({e}); fix the file or pass --policy"))?;
    policy.spec.repository.url = url.to_string();
    policy.spec.repository.trusted_keys = vec![key.to_string()];
    let waves = &mut policy.spec.rollout.waves;
    if waves.is_empty() {
        return Err("the policy has no waves; the demo shows a rollout in waves".into());
    }
    if let Some(bake) = bake {
        let last = waves.len() - 1;
        for wave in &mut waves[..last] {
            wave.bake = bake.to_string();
        }
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_mixes_two_kernels_and_one_without_releases() {
        let nodes = fleet_nodes(20);
        assert_eq!(nodes.len(), 20);
        assert_eq!(nodes[0].name, "node-01");
        let on = |k: Kernel| {
            nodes
                .iter()
                .filter(|n| n.kernel_release == k.release)
                .count()
        };
        assert_eq!(on(KERNEL_NONE), 1);
        assert_eq!(on(KERNEL_B), 6);
        assert_eq!(on(KERNEL_A), 13);
        assert!(nodes.iter().all(|n| {
            (n.kernel_release == KERNEL_A.release) == (n.faults == ["6.1.0-56-amd64/v3=taint"])
        }));
        assert_eq!(expected(&nodes, 2).len(), 19);
        assert_eq!(expected(&nodes, 2)["node-03"], "6.1.0-57-amd64/v2");
    }

    #[test]
    fn names_stay_sortable_past_99_nodes() {
        let nodes = fleet_nodes(120);
        assert_eq!(nodes[0].name, "node-001");
        assert_eq!(nodes[119].name, "node-120");
    }

    #[test]
    fn cumulative_versions_fix_more_cves() {
        assert!(cves(1).len() < cves(2).len() && cves(2).len() < cves(3).len());
        assert!(cves(2).starts_with(&cves(1)));
    }

    #[test]
    fn the_sample_policy_is_pointed_at_the_repository_and_bake_replaced() {
        let path = crate::fleet::workspace_root()
            .join("e2e")
            .join("demo")
            .join("livepatchpolicy.yaml");
        let policy = load_policy(&path, "http://127.0.0.1:8080", "KEY=", Some("2s")).unwrap();
        assert_eq!(policy.spec.repository.url, "http://127.0.0.1:8080");
        assert_eq!(policy.spec.repository.trusted_keys, ["KEY="]);
        let bakes: Vec<&str> = policy
            .spec
            .rollout
            .waves
            .iter()
            .map(|w| w.bake.as_str())
            .collect();
        assert_eq!(bakes, ["2s", "2s", "0s"]);
    }

    #[test]
    fn a_file_that_is_not_a_policy_says_so() {
        let err = policy_from_yaml("kind: [", "u", "k", None).unwrap_err();
        assert!(err.contains("not a LivePatchPolicy"), "{err}");
    }
}
