//! The order in which a policy hands its nodes a release. A hash of the policy, release and
//! node names rather than the names themselves, so canaries spread across racks and pools
//! whose nodes share a name prefix, each policy canaries different nodes, and each release
//! has its own canaries: one node that breaks under every module is not the first to get
//! every release.

/// The position key of `node` in `policy`'s rollout of `release`: FNV-1a, which unlike
/// std's hasher is fixed forever (an upgraded operator keeps the order of a rollout in
/// progress), followed by MurmurHash3's finalizer, without which names differing only in
/// their last characters would stay next to each other.
pub(crate) fn rollout_order(policy: &str, release: &str, node: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let parts = policy
        .bytes()
        .chain([0xff])
        .chain(release.bytes())
        .chain([0xff])
        .chain(node.bytes());
    for byte in parts {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_fixed_and_depends_on_every_name() {
        // A changed value here reorders every rollout in progress after an upgrade.
        assert_eq!(rollout_order("", "", ""), 0x0992_e16d_4af0_4425);
        assert_ne!(
            rollout_order("a", "r", "node-1"),
            rollout_order("b", "r", "node-1")
        );
        assert_ne!(
            rollout_order("a", "r", "node-1"),
            rollout_order("a", "s", "node-1")
        );
        assert_ne!(
            rollout_order("a", "r", "node-1"),
            rollout_order("a", "r", "node-2")
        );
        // The separators keep ("ab", "c") and ("a", "bc") apart.
        assert_ne!(rollout_order("ab", "", "c"), rollout_order("a", "", "bc"));
        assert_ne!(rollout_order("a", "b", "c"), rollout_order("a", "", "bc"));
    }

    #[test]
    fn each_release_has_its_own_canaries() {
        let names: Vec<String> = (0..50).map(|i| format!("node-{i:02}")).collect();
        let first = |release: &str| {
            names
                .iter()
                .min_by_key(|n| rollout_order("web", release, n))
                .cloned()
        };
        let canaries: std::collections::HashSet<_> = (1..=10)
            .map(|v| first(&format!("6.1.0-56-amd64/v{v}")))
            .collect();
        assert!(canaries.len() >= 5, "ten releases, canaries {canaries:?}");
    }

    #[test]
    fn nodes_with_a_common_prefix_spread() {
        let mut names: Vec<String> = (0..100).map(|i| format!("rack1-node-{i:03}")).collect();
        names.sort_by_key(|n| rollout_order("web", "6.1.0-56-amd64/v1", n));
        // The first ten (the canaries of a 10% wave) come from many tens of names.
        let decades: std::collections::HashSet<char> = names
            .iter()
            .take(10)
            .filter_map(|n| n.chars().rev().nth(1))
            .collect();
        assert!(
            decades.len() >= 5,
            "hash order clusters: {:?}",
            &names[..10]
        );
    }
}
