//! Optional EKS datapath variants a lab can be built with (`--variant a,b,c`); see
//! ../shared/brief/eks-variants.md. Without any, the lab is the classic node of eks-datapath.md.
use serde::{Deserialize, Serialize};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
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
    pub const ALL: [Variant; 3] = [Variant::PrefixDelegation, Variant::CustomNetworking, Variant::Ipv6Egress];
}

impl std::fmt::Display for Variant {
    /// The flag's spelling (`prefix-delegation`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        f.write_str(self.to_possible_value().expect("no skipped variants").get_name())
    }
}
