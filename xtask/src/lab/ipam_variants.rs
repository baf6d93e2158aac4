//! The IPAM variants of the lab (see ../shared/brief/eks-variants.md §6, §7, §8, §9):
//! prefix delegation on node-a, custom networking on node-b, and the host veth name prefix.
//!
//! `apply` rewrites the classic plan (eks-datapath.md) the way ipamd would have allocated it
//! under each variant; the renderers in `render.rs` call the small hooks below for what the
//! VPC router (EC2) and the nodes add on top.
use std::{fmt, net::Ipv4Addr};

use anyhow::{Result, bail};
use serde::{Serialize, Serializer};

use super::plan::{Eni, LabConfig, Plan, Variant};

/// An IPv4 CIDR block (a delegated prefix, a subnet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr4 {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Cidr4 {
    pub fn new(addr: Ipv4Addr, len: u8) -> Cidr4 {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Cidr4 { addr: Ipv4Addr::from(u32::from(addr) & mask), len }
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        Cidr4::new(ip, self.len).addr == self.addr
    }
    /// Number of addresses (16 for a /28).
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.len)
    }
    pub fn nth(&self, i: u64) -> Option<Ipv4Addr> {
        (i < self.size()).then(|| Ipv4Addr::from(u32::from(self.addr) + i as u32))
    }
}

impl fmt::Display for Cidr4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr4 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The next address of `prefix` that is not in `used`, scanning from the prefix's own first
/// address as ipamd's datastore does (amazon-vpc-cni-k8s pkg/ipamd/datastore/data_store.go,
/// getUnusedIP: `for ip := ip.Mask(ipnet.Mask); ipnet.Contains(ip); getNextIPAddr(ip)`), so
/// the first pod of 198.18.1.32/28 gets 198.18.1.32.
pub fn carve4(prefix: Cidr4, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    (0..prefix.size()).filter_map(|i| prefix.nth(i)).find(|ip| !used.contains(ip))
}

/// Custom networking: which node, which ENIConfig subnet and which secondary VPC CIDR.
#[derive(Clone, Debug, Serialize)]
pub struct CustomNetworking {
    pub node: String,
    /// ENIConfig name (ipamd picks it by the node's zone label: ENI_CONFIG_LABEL_DEF).
    pub eniconfig: String,
    /// The secondary VPC CIDR the subnet belongs to.
    pub vpc_cidr: String,
    /// The ENIConfig subnet.
    pub subnet: String,
    /// The ENI (on `node`) placed in that subnet; it carries every pod of the node.
    pub eni: String,
}

/// Host veth prefix check of the aws-node init container (amazon-vpc-cni-k8s
/// cmd/aws-vpc-cni/main.go, validateEnvVars): at most 4 characters, not `eth`, `lo`, `vlan`.
/// The lab also wants 1 or more lowercase letters/digits (an empty prefix would make the
/// CONNMARK rules' `-i +` match every interface).
pub fn check_veth_prefix(p: &str) -> Result<()> {
    if p.len() > 4 {
        bail!("veth prefix {p:?}: AWS_VPC_K8S_CNI_VETHPREFIX cannot be longer than 4 characters");
    }
    if matches!(p, "eth" | "lo" | "vlan") {
        bail!("veth prefix {p:?}: reserved values 'eth', 'vlan' and 'lo' are refused");
    }
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        bail!("veth prefix {p:?}: the lab wants 1 to 4 lowercase letters or digits");
    }
    Ok(())
}

impl Eni {
    pub fn in_ipv4_prefix(&self, ip: Ipv4Addr) -> bool {
        self.ipv4_prefixes.iter().any(|p| p.contains(ip))
    }
}

impl Plan {
    /// Every VPC CIDR: the primary one first, then the secondary ones.
    pub fn vpc_cidrs(&self) -> Vec<String> {
        let mut v = vec![self.vpc_cidr.clone()];
        v.extend(self.secondary_vpc_cidrs.iter().cloned());
        v
    }
}

/// Rewrites the classic plan for the configured variants.
pub fn apply(cfg: &LabConfig, plan: &mut Plan) {
    if cfg.has(Variant::PrefixDelegation) {
        prefix_delegation(plan, "node-a");
    }
    if cfg.has(Variant::CustomNetworking) {
        custom_networking(plan, "node-b", cfg.vpc);
    }
}

/// ENABLE_PREFIX_DELEGATION: every ENI of `node` holds one /28 (amazon-vpc-cni-k8s
/// pkg/ipamd/ipamd.go tryAssignPrefixes, with pkg/ipamd/datastore/data_store.go
/// GetPrefixDelegationDefaults: 1 prefix per step, 16 IPs, /28) and the node's IPv4 pods are
/// re-allocated from the prefix of the ENI they were on (data_store.go AssignPodIPv4Address
/// only takes prefixes in PD mode). EC2 picks any free aligned /28 of the subnet: the lab
/// takes `<subnet>.32/28`.
fn prefix_delegation(plan: &mut Plan, node: &str) {
    let Some(n) = plan.nodes.iter_mut().find(|n| n.name == node) else { return };
    for eni in &mut n.enis {
        let o = eni.ip.octets();
        eni.ipv4_prefixes = vec![Cidr4::new(Ipv4Addr::new(o[0], o[1], o[2], 32), 28)];
    }
    let enis = n.enis.clone();
    let mut used: Vec<Ipv4Addr> = Vec::new();
    for pod in plan.pods.iter_mut().filter(|p| p.node == node) {
        let eni = enis.iter().find(|e| e.name == pod.eni).expect("pod ENI");
        if let Some(ip) = eni.ipv4_prefixes.iter().find_map(|p| carve4(*p, &used)) {
            pod.ip = ip;
            used.push(ip);
        }
    }
}

/// Custom networking (AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true, one ENIConfig per zone): the
/// VPC gets a secondary CIDR `<a>.<b+1>.128.0/17` (198.19.128.0/17 for the default VPC), the
/// ENIConfig subnet is its first /24, `node`'s secondary ENI is attached in that subnet and
/// every pod of the node moves onto it: ipamd never allocates from the primary ENI then
/// (amazon-vpc-cni-k8s pkg/ipamd/datastore/data_store.go GetAllocatableENIs with
/// skipPrimary = useCustomNetworking; pkg/ipamd/ipamd.go nodeInit reads the ENIConfig).
fn custom_networking(plan: &mut Plan, node: &str, vpc: [u8; 2]) {
    let [a, b] = vpc;
    let c = b.wrapping_add(1);
    let vpc_cidr = Cidr4::new(Ipv4Addr::new(a, c, 128, 0), 17);
    let subnet = Cidr4::new(Ipv4Addr::new(a, c, 128, 0), 24);
    let Some(n) = plan.nodes.iter_mut().find(|n| n.name == node) else { return };
    let Some(eni) = n.enis.iter_mut().find(|e| e.device == 1) else { return };
    let host = eni.ip.octets()[3];
    eni.ip = subnet.nth(host as u64).expect("host in /24");
    eni.gateway = subnet.nth(1).expect("gateway");
    eni.prefix_len = subnet.len;
    let eni = eni.clone();
    let mut next = host;
    for pod in plan.pods.iter_mut().filter(|p| p.node == node) {
        next += 1;
        pod.ip = subnet.nth(next as u64).expect("pod in /24");
        pod.eni = eni.name.clone();
    }
    plan.secondary_vpc_cidrs.push(vpc_cidr.to_string());
    plan.custom_networking = Some(CustomNetworking {
        node: node.into(),
        eniconfig: "us-west-2a".into(),
        vpc_cidr: vpc_cidr.to_string(),
        subnet: subnet.to_string(),
        eni: eni.name,
    });
}

/// EC2's side of delegated prefixes on the VPC router: the prefix is routed to its ENI and
/// passes the source/destination check (it is the ENI's, like a secondary IP).
pub fn vpc_prefixes(eni: &Eni, ip: &mut Vec<String>, check: &mut String) {
    let l = &eni.vpc_link;
    for p in &eni.ipv4_prefixes {
        ip.push(format!("route add {p} via {} dev {l}", eni.ip));
        check.push_str(&format!("-A VPC-SRC-DST-CHECK -i {l} -s {p} -j RETURN\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan::LabConfig;

    fn cfg(variants: &[Variant]) -> LabConfig {
        LabConfig { variants: variants.to_vec(), ..LabConfig::default() }
    }

    #[test]
    fn carving_starts_at_the_prefix_address_and_skips_used_ones() {
        let p = Cidr4::new("198.18.1.40".parse().unwrap(), 28);
        assert_eq!(p.to_string(), "198.18.1.32/28");
        assert_eq!(carve4(p, &[]), Some("198.18.1.32".parse().unwrap()));
        let used: Vec<Ipv4Addr> = vec!["198.18.1.32".parse().unwrap(), "198.18.1.33".parse().unwrap()];
        assert_eq!(carve4(p, &used), Some("198.18.1.34".parse().unwrap()));
        let all: Vec<Ipv4Addr> = (0..16).map(|i| p.nth(i).unwrap()).collect();
        assert_eq!(all.last(), Some(&"198.18.1.47".parse().unwrap()));
        assert_eq!(carve4(p, &all), None, "a /28 holds 16 pods");
    }

    #[test]
    fn prefix_delegation_moves_node_a_pods_into_prefixes() {
        let plan = Plan::new(&cfg(&[Variant::PrefixDelegation]));
        let a = plan.node("node-a").unwrap();
        assert_eq!(a.enis[0].ipv4_prefixes, vec![Cidr4::new("198.18.1.32".parse().unwrap(), 28)]);
        assert_eq!(a.enis[1].ipv4_prefixes, vec![Cidr4::new("198.18.2.32".parse().unwrap(), 28)]);
        assert_eq!(plan.pod("web-1").unwrap().ip, "198.18.1.32".parse::<Ipv4Addr>().unwrap());
        assert_eq!(plan.pod("web-2").unwrap().ip, "198.18.2.32".parse::<Ipv4Addr>().unwrap());
        assert_eq!(plan.pod("web-2").unwrap().eni, "eth1");
        // Prefix pods are not individually owned: the VPC routes the whole prefix.
        assert_eq!(plan.owned_by(a, &a.enis[1]), vec![a.enis[1].ip]);
        // node-b keeps secondary IPs.
        let b = plan.node("node-b").unwrap();
        assert!(b.enis.iter().all(|e| e.ipv4_prefixes.is_empty()));
        assert_eq!(plan.pod("web-3").unwrap().ip, "198.18.2.21".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn custom_networking_moves_node_b_pods_to_the_eniconfig_subnet() {
        let plan = Plan::new(&cfg(&[Variant::CustomNetworking]));
        assert_eq!(plan.vpc_cidrs(), vec!["198.18.0.0/16".to_string(), "198.19.128.0/17".into()]);
        let cn = plan.custom_networking.as_ref().unwrap();
        assert_eq!(
            (cn.node.as_str(), cn.subnet.as_str(), cn.eni.as_str()),
            ("node-b", "198.19.128.0/24", "eth1")
        );
        let b = plan.node("node-b").unwrap();
        assert_eq!(b.enis[1].ip, "198.19.128.20".parse::<Ipv4Addr>().unwrap());
        assert_eq!(b.enis[1].gateway, "198.19.128.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(b.enis[1].subnet(), "198.19.128.0/24");
        assert_eq!(plan.owned_by(b, &b.enis[0]), vec![b.enis[0].ip], "the primary ENI hosts no pods");
        for p in plan.pods_on("node-b") {
            assert_eq!(p.eni, "eth1");
            assert!(Cidr4::new("198.19.128.0".parse().unwrap(), 24).contains(p.ip), "{}", p.ip);
            assert!(!plan.services.iter().any(|s| s.cluster_ip == p.ip));
        }
    }

    #[test]
    fn veth_prefix_is_checked_like_aws_node_does() {
        for ok in ["eni", "abc", "pod1", "x"] {
            check_veth_prefix(ok).unwrap();
        }
        for bad in ["abcde", "eth", "lo", "vlan", "", "A-b"] {
            assert!(check_veth_prefix(bad).is_err(), "{bad}");
        }
        let plan = Plan::new(&LabConfig { veth_prefix: "abc".into(), ..LabConfig::default() });
        for p in &plan.pods {
            assert!(p.veth.starts_with("abc") && p.veth.len() == 14, "{}", p.veth);
        }
    }
}
