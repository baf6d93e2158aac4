//! Datapath variants a lab can be built with (`lab up --variant a,b`): each one changes names,
//! tables, rules or tc hooks of the classic node, as a real EKS option would
//! (see ../shared/brief/eks-variants.md).
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Security Groups for Pods, POD_SECURITY_GROUP_ENFORCING_MODE=strict (the VPC CNI default):
    /// a trunk ENI on node-a and pod sgp-1 on a branch ENI (VLAN link, `vlan…` host veth,
    /// iif rules at pref 10, local rule moved to pref 20).
    SgpStrict,
    /// Security Groups for Pods, POD_SECURITY_GROUP_ENFORCING_MODE=standard: the same trunk and
    /// branch, but an `eni…` host veth and rules 512/1536 pointing at the branch table.
    SgpStandard,
    /// A stand-in for aws-network-policy-agent: `handle_ingress`/`handle_egress` cls_bpf filters
    /// (prio 1, handle 0x1, direct-action) on every pod host veth.
    Npa,
    /// ENABLE_PREFIX_DELEGATION on node-a: its ENIs hold /28 prefixes, web-1 and web-2 get
    /// their IPs from them.
    PrefixDelegation,
    /// AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG on node-b: its primary ENI hosts no pods; its
    /// secondary ENI sits in an ENIConfig subnet of a secondary VPC CIDR and carries every pod.
    CustomNetworking,
    /// An IPv6 pod `v6-1` on node-a (address from an IPv6 prefix of the primary ENI, as in an
    /// IPv6 cluster) with the egress-cni plugin's IPv4 path (`v4if0`, CNI-E4 SNAT chain).
    Ipv6Egress,
}

impl Variant {
    /// Every variant (e.g. to find every namespace a lab may have created).
    pub const ALL: [Variant; 6] = [
        Variant::SgpStrict,
        Variant::SgpStandard,
        Variant::Npa,
        Variant::PrefixDelegation,
        Variant::CustomNetworking,
        Variant::Ipv6Egress,
    ];
}

impl std::fmt::Display for Variant {
    /// The flag's spelling (`prefix-delegation`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        f.write_str(self.to_possible_value().expect("no skipped variants").get_name())
    }
}

/// How branch-ENI pods are wired (the VPC CNI's POD_SECURITY_GROUP_ENFORCING_MODE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SgpMode {
    Strict,
    Standard,
}

/// Refuses combinations no real node can have.
pub fn validate(variants: &[Variant]) -> Result<()> {
    if variants.contains(&Variant::SgpStrict) && variants.contains(&Variant::SgpStandard) {
        // amazon-vpc-cni-k8s: the mode comes from the aws-node environment
        // (pkg/sgpp/utils.go LoadEnforcingModeFromEnv) and is written once into the CNI
        // config; ipamd moves the local rule for the whole node in strict mode
        // (pkg/networkutils/network.go SetupHostNetwork). One mode per node, one DaemonSet
        // per cluster in practice.
        bail!(
            "--variant sgp-strict and sgp-standard cannot be combined: \
             POD_SECURITY_GROUP_ENFORCING_MODE is one setting of the aws-node DaemonSet, \
             so every node (and so the lab) runs one mode"
        );
    }
    Ok(())
}

/// The SGP mode the variants ask for, if any.
pub fn sgp_mode(variants: &[Variant]) -> Option<SgpMode> {
    if variants.contains(&Variant::SgpStrict) {
        Some(SgpMode::Strict)
    } else if variants.contains(&Variant::SgpStandard) {
        Some(SgpMode::Standard)
    } else {
        None
    }
}

impl super::plan::Plan {
    /// Whether the lab was built with this variant.
    pub fn has(&self, v: Variant) -> bool {
        self.variants.contains(&v)
    }
}

/// Sorted, without duplicates: `--variant npa,npa` and `npa` are the same lab.
pub fn normalize(variants: &[Variant]) -> Vec<Variant> {
    let mut v = variants.to_vec();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_and_standard_are_refused_together() {
        let err = validate(&[Variant::SgpStrict, Variant::Npa, Variant::SgpStandard]).unwrap_err();
        assert!(err.to_string().contains("cannot be combined"), "{err}");
        validate(&[Variant::SgpStrict, Variant::Npa]).unwrap();
        validate(&[Variant::SgpStandard]).unwrap();
        validate(&[]).unwrap();
    }

    #[test]
    fn names_and_modes() {
        let v: Vec<Variant> = serde_json::from_str(r#"["sgp-strict","npa"]"#).unwrap();
        assert_eq!(v, vec![Variant::SgpStrict, Variant::Npa]);
        assert_eq!(sgp_mode(&v), Some(SgpMode::Strict));
        assert_eq!(sgp_mode(&[Variant::SgpStandard]), Some(SgpMode::Standard));
        assert_eq!(sgp_mode(&[Variant::Npa]), None);
        assert_eq!(
            normalize(&[Variant::Npa, Variant::SgpStrict, Variant::Npa]),
            vec![Variant::SgpStrict, Variant::Npa]
        );
        use clap::ValueEnum;
        assert_eq!(Variant::from_str("sgp-standard", false).unwrap(), Variant::SgpStandard);
    }
}
