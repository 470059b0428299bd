//! The objects a 10,000-node cluster holds, shaped like the real ones: Node objects as a
//! kubelet registers them on a cloud VM (labels, annotations, five conditions, addresses,
//! capacity, node info, a few long image names), and LivePatchNodes as an agent and the
//! operator leave them once a release is applied. Pure: no client.

use kpersist_crds::PatchRelease;
use serde_json::{Value, json};

/// Label the benchmark's policies select on: `a` for even nodes, `b` for odd ones.
pub const POOL_LABEL: &str = "kpersist.io/bench-pool";

/// The two node pools, each with its own kernel and policy.
pub const POOLS: [Pool; 2] = [
    Pool {
        name: "a",
        kernel_release: "6.1.0-41-amd64",
        build_id: "8a1d3c0f5b2e47d1a9c6e3f0b7d2a5c8e1f4b7a0",
    },
    Pool {
        name: "b",
        kernel_release: "6.1.0-42-amd64",
        build_id: "3e7b9d1f2a4c6e8b0d2f4a6c8e0b2d4f6a8c0e2b",
    },
];

/// A group of nodes running one kernel build, selected by one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Value of [`POOL_LABEL`].
    pub name: &'static str,
    /// `uname -r` of its nodes.
    pub kernel_release: &'static str,
    /// GNU build id of that kernel.
    pub build_id: &'static str,
}

impl Pool {
    /// Name of the policy selecting this pool.
    pub fn policy(&self) -> String {
        format!("bench-pool-{}", self.name)
    }
}

/// The pool node `index` belongs to.
pub fn pool_of(index: usize) -> Pool {
    POOLS[index % POOLS.len()]
}

/// Node name in the EC2 private DNS style, e.g. `ip-10-0-1-17.eu-west-1.compute.internal`.
pub fn node_name(index: usize) -> String {
    let [_, a, b, c] = ip_octets(index);
    format!("ip-10-{a}-{b}-{c}.eu-west-1.compute.internal")
}

fn ip_octets(index: usize) -> [usize; 4] {
    // Starts at 10.0.1.0 so no address ends up as a network address of a /16.
    let n = index + 256;
    [10, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]
}

/// A hex string of `len` characters derived from `seed`, for ids and digests that must
/// differ between nodes (as machine ids do) without a random source.
fn hex(seed: u64, len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xdead_beef;
    while out.len() < len {
        // xorshift64*: cheap and spreads every bit of the seed.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.push_str(&format!("{:016x}", x.wrapping_mul(0x2545_f491_4f6c_dd1d)));
    }
    out.truncate(len);
    out
}

/// The images a worker node of a typical cluster has pulled: names with their digests,
/// as the kubelet lists them, and their sizes.
const IMAGES: [(&str, &str, u64); 8] = [
    (
        "602401143452.dkr.ecr.eu-west-1.amazonaws.com/amazon-k8s-cni",
        "v1.12.6-eksbuild.2",
        86_214_572,
    ),
    (
        "602401143452.dkr.ecr.eu-west-1.amazonaws.com/eks/kube-proxy",
        "v1.26.4-minimal-eksbuild.1",
        35_121_489,
    ),
    (
        "602401143452.dkr.ecr.eu-west-1.amazonaws.com/eks/aws-ebs-csi-driver",
        "v1.19.0",
        112_418_007,
    ),
    (
        "registry.k8s.io/sig-storage/csi-node-driver-registrar",
        "v2.8.0",
        10_844_551,
    ),
    ("quay.io/prometheus/node-exporter", "v1.6.0", 11_727_011),
    ("docker.io/grafana/promtail", "2.8.2", 77_012_356),
    ("ghcr.io/kpersist/kpersist-agent", "v0.1.0", 9_812_004),
    ("registry.k8s.io/pause", "3.6", 301_773),
];

/// A Node as a kubelet on a cloud VM registers it (status included: Nodes may set status
/// on create).
pub fn node(index: usize) -> Value {
    let name = node_name(index);
    let pool = pool_of(index);
    let [_, a, b, c] = ip_octets(index);
    let ip = format!("10.{a}.{b}.{c}");
    let zone = ["eu-west-1a", "eu-west-1b", "eu-west-1c"][index % 3];
    let instance = ["m5.2xlarge", "m6i.2xlarge", "c5.4xlarge"][index % 3];
    let instance_id = format!("i-0{}", hex(index as u64, 16));
    let seed = index as u64;
    let time = "2026-11-20T08:14:05Z";
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": time, "lastTransitionTime": time,
        })
    };
    let images: Vec<Value> = IMAGES
        .iter()
        .enumerate()
        .map(|(i, (repo, tag, size))| {
            let digest = hex(seed.wrapping_mul(31).wrapping_add(i as u64), 64);
            json!({
                "names": [format!("{repo}@sha256:{digest}"), format!("{repo}:{tag}")],
                "sizeBytes": size,
            })
        })
        .collect();
    let resources = |cpu: &str, memory: &str, storage: &str| {
        json!({
            "attachable-volumes-aws-ebs": "25", "cpu": cpu, "ephemeral-storage": storage,
            "hugepages-1Gi": "0", "hugepages-2Mi": "0", "memory": memory, "pods": "58",
        })
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/instance-type": instance,
                "beta.kubernetes.io/os": "linux",
                "failure-domain.beta.kubernetes.io/region": "eu-west-1",
                "failure-domain.beta.kubernetes.io/zone": zone,
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": instance,
                "topology.kubernetes.io/region": "eu-west-1",
                "topology.kubernetes.io/zone": zone,
                "eks.amazonaws.com/nodegroup": format!("workers-{}", pool.name),
                "eks.amazonaws.com/capacityType": "ON_DEMAND",
                POOL_LABEL: pool.name,
            },
            "annotations": {
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "csi.volume.kubernetes.io/nodeid": format!("{{\"ebs.csi.aws.com\":\"{instance_id}\"}}"),
            },
        },
        "spec": {
            "providerID": format!("aws:///{zone}/{instance_id}"),
        },
        "status": {
            "capacity": resources("8", "32408796Ki", "104845292Ki"),
            "allocatable": resources("7910m", "31391964Ki", "95551679088"),
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
                condition("NetworkUnavailable", "False", "RouteCreated", "RouteController created a route"),
            ],
            "addresses": [
                { "type": "InternalIP", "address": ip },
                { "type": "Hostname", "address": name },
                { "type": "InternalDNS", "address": name },
            ],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": 10250 } },
            "nodeInfo": {
                "machineID": hex(seed ^ 1, 32),
                "systemUUID": format!("ec2{}", hex(seed ^ 2, 29)),
                "bootID": uuid(seed ^ 3),
                "kernelVersion": pool.kernel_release,
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.6.20",
                "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "images": images,
        },
    })
}

/// What kube-controller-manager adds to a registered Node (its TTL annotation and the pod
/// CIDR), sent as a merge patch under its own field manager so the object carries the
/// managed fields of two managers, as a real one does.
pub fn controller_manager_patch(index: usize) -> Value {
    let [_, a, b, c] = ip_octets(index);
    let cidr = format!(
        "100.{}.{}.0/24",
        (a * 16 + b / 16) % 256,
        (b * 16 + c / 16) % 256
    );
    json!({
        "metadata": { "annotations": { "node.alpha.kubernetes.io/ttl": "0" } },
        "spec": { "podCIDR": cidr, "podCIDRs": [cidr] },
    })
}

fn uuid(seed: u64) -> String {
    let h = hex(seed, 32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A LivePatchNode as the agent creates it: empty spec, owned by its Node.
pub fn live_patch_node(index: usize, node_uid: &str) -> Value {
    json!({
        "apiVersion": "kpersist.io/v1alpha1",
        "kind": "LivePatchNode",
        "metadata": {
            "name": node_name(index),
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": node_name(index), "uid": node_uid,
            }],
        },
        "spec": {},
    })
}

/// The operator's write handing the node `release` in wave 1 of its pool's policy.
pub fn desired_patch(index: usize, release: &PatchRelease) -> Value {
    json!({
        "spec": { "desired": {
            "policy": pool_of(index).policy(),
            "action": "Apply",
            "release": release,
            "wave": 1,
            "transitionTimeout": "60s",
            "kmsgChecks": true,
        } },
    })
}

/// The agent's status once `release` is applied and healthy, answering generation 2 (the
/// spec write above).
pub fn applied_status(index: usize, release: &PatchRelease) -> Value {
    let pool = pool_of(index);
    let at = "2026-11-20T09:02:41Z";
    let condition = |type_: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": at,
        })
    };
    json!({
        "apiVersion": "kpersist.io/v1alpha1",
        "kind": "LivePatchNode",
        "status": {
            "state": "Applied",
            "kernelRelease": pool.kernel_release,
            "buildId": pool.build_id,
            "livepatchSupported": true,
            "bootId": uuid(index as u64 ^ 3),
            "loaded": [{ "name": release.module_name, "enabled": true, "transition": false }],
            "applied": {
                "id": release.id,
                "version": release.version,
                "moduleName": release.module_name,
                "cves": release.cves,
                "policy": pool.policy(),
                "appliedAt": at,
            },
            "timings": { "downloadMs": 182, "transitionMs": 1240, "totalMs": 1537 },
            "refusedReleases": [],
            "observedGeneration": 2,
            "conditions": [
                condition("Ready", "AgentRunning", "the agent watches this node's LivePatchNode"),
                condition("Healthy", "NoNewTaint", "no new taint bits or kernel warnings since the last apply"),
                condition("LivepatchSupported", "KernelSupportsLivepatch", "/sys/kernel/livepatch exists"),
            ],
            "agentVersion": "0.1.0",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use kpersist_crds::LivePatchNode;

    fn release() -> PatchRelease {
        PatchRelease {
            id: "6.1.0-41-amd64/v1".into(),
            version: 1,
            kernel_release: "6.1.0-41-amd64".into(),
            build_id: POOLS[0].build_id.into(),
            module_name: "kpersist_v1".into(),
            module_url: "http://127.0.0.1:1/modules/x.ko".into(),
            sha256: "0".repeat(64),
            size: 4096,
            cves: vec!["CVE-2026-0001".into()],
        }
    }

    #[test]
    fn nodes_parse_as_nodes_and_look_like_a_kubelets() {
        let node: Node = serde_json::from_value(node(7)).expect("a valid Node");
        let labels = node.metadata.labels.unwrap_or_default();
        assert!((10..=15).contains(&labels.len()), "{} labels", labels.len());
        assert_eq!(labels[POOL_LABEL], "b");
        let status = node.status.unwrap_or_default();
        assert_eq!(status.conditions.map(|c| c.len()), Some(5));
        assert_eq!(status.images.map(|i| i.len()), Some(IMAGES.len()));
        let info = status.node_info.unwrap_or_default();
        assert_eq!(info.kernel_version, POOLS[1].kernel_release);
    }

    #[test]
    fn names_and_ids_differ_between_nodes() {
        assert_ne!(node_name(0), node_name(1));
        assert_ne!(node_name(255), node_name(256));
        assert_ne!(hex(1, 32), hex(2, 32));
        assert_eq!(hex(5, 64).len(), 64);
        let names: std::collections::BTreeSet<_> = (0..70_000).map(node_name).collect();
        assert_eq!(names.len(), 70_000);
    }

    #[test]
    fn a_realistic_node_is_several_kilobytes() {
        let size = serde_json::to_vec(&node(3)).map(|v| v.len()).unwrap_or(0);
        assert!(size > 4_000, "{size} bytes");
    }

    #[test]
    fn live_patch_nodes_parse_with_spec_and_status() {
        let mut lpn: LivePatchNode =
            serde_json::from_value(live_patch_node(0, "uid-1")).expect("a valid LivePatchNode");
        let desired = desired_patch(0, &release());
        lpn.spec = serde_json::from_value(desired["spec"].clone()).expect("a valid spec");
        let status = applied_status(0, &release());
        lpn.status = serde_json::from_value(status["status"].clone()).expect("a valid status");
        let desired = lpn.spec.desired.expect("desired");
        assert_eq!(desired.policy, "bench-pool-a");
        let status = lpn.status.expect("status");
        assert_eq!(status.applied.map(|a| a.id), Some(release().id));
        assert_eq!(status.observed_generation, Some(2));
    }
}
