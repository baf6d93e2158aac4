//! The IPAM variants of the lab (see ../shared/brief/eks-variants.md §6, §7, §8, §9):
//! prefix delegation on node-a, custom networking on node-b, an IPv6 pod with the egress-cni
//! plugin's IPv4 path on node-a, and the host veth name prefix.
//!
//! `apply` rewrites the classic plan (eks-datapath.md) the way ipamd would have allocated it
//! under each variant; the renderers in `render.rs` call the small hooks below for what the
//! VPC router (EC2) and the nodes add on top.
use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Result, bail};
use serde::{Serialize, Serializer};

use super::{
    egress_cni,
    plan::{Eni, LabConfig, Node, Plan, Pod, Variant, v6},
};
use crate::netns;

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

/// An IPv6 CIDR block (a delegated /80, a subnet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr6 {
    pub addr: Ipv6Addr,
    pub len: u8,
}

impl Cidr6 {
    pub fn new(addr: Ipv6Addr, len: u8) -> Cidr6 {
        let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
        Cidr6 { addr: Ipv6Addr::from(u128::from(addr) & mask), len }
    }
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        Cidr6::new(ip, self.len).addr == self.addr
    }
    pub fn nth(&self, i: u128) -> Option<Ipv6Addr> {
        let size = if self.len == 0 { u128::MAX } else { 1u128 << (128 - self.len) };
        (i < size).then(|| Ipv6Addr::from(u128::from(self.addr) + i))
    }
}

impl fmt::Display for Cidr4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Display for Cidr6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr4 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Cidr6 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `Pod::ip` in JSON: null for an IPv6 pod (it has no IPv4 VPC address).
pub fn ser_pod_ip<S: Serializer>(ip: &Ipv4Addr, s: S) -> Result<S::Ok, S::Error> {
    if ip.is_unspecified() { s.serialize_none() } else { s.collect_str(ip) }
}

/// The next address of `prefix` that is not in `used`, scanning from the prefix's own first
/// address as ipamd's datastore does (amazon-vpc-cni-k8s pkg/ipamd/datastore/data_store.go,
/// getUnusedIP: `for ip := ip.Mask(ipnet.Mask); ipnet.Contains(ip); getNextIPAddr(ip)`), so
/// the first pod of 198.18.1.32/28 gets 198.18.1.32.
pub fn carve4(prefix: Cidr4, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    (0..prefix.size()).filter_map(|i| prefix.nth(i)).find(|ip| !used.contains(ip))
}

/// Same for an IPv6 prefix (data_store.go getFreeIPv6AddrFromCidr → getUnusedIP).
pub fn carve6(prefix: Cidr6, used: &[Ipv6Addr]) -> Option<Ipv6Addr> {
    (0..).map_while(|i| prefix.nth(i)).find(|ip| !used.contains(ip))
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
    pub fn in_ipv6_prefix(&self, ip: Ipv6Addr) -> bool {
        self.ipv6_prefixes.iter().any(|p| p.contains(ip))
    }
}

impl Pod {
    /// An IPv6 pod (IPv6 cluster): no IPv4 VPC address.
    pub fn is_ipv6_only(&self) -> bool {
        self.ip.is_unspecified() && self.ipv6.is_some()
    }
}

impl Plan {
    /// Every VPC CIDR: the primary one first, then the secondary ones.
    pub fn vpc_cidrs(&self) -> Vec<String> {
        let mut v = vec![self.vpc_cidr.clone()];
        v.extend(self.secondary_vpc_cidrs.iter().cloned());
        v
    }

    /// The ENI's own IPv6 address (only primary ENIs get one, when the VPC has IPv6).
    pub fn eni_ipv6(&self, eni: &Eni) -> Option<Ipv6Addr> {
        let o = eni.ip.octets();
        (self.vpc_cidr_v6.is_some() && eni.device == 0).then(|| v6(o[2] as u16, o[3] as u16))
    }

    /// IPv6 address of a named lab member (pod, host, or a node's primary ENI).
    pub fn ipv6_of(&self, name: &str) -> Option<Ipv6Addr> {
        self.pod(name)
            .and_then(|p| p.ipv6)
            .or_else(|| self.host(name).and_then(|h| h.ipv6))
            .or_else(|| self.node(name).and_then(|n| self.eni_ipv6(n.primary())))
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
    if cfg.has(Variant::Ipv6Egress) {
        ipv6_egress(plan, "node-a", "v6-1");
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
    for pod in plan.pods.iter_mut().filter(|p| p.node == node && !p.ip.is_unspecified()) {
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
    for pod in plan.pods.iter_mut().filter(|p| p.node == node && !p.ip.is_unspecified()) {
        next += 1;
        pod.ip = subnet.nth(next as u64).expect("pod in /24");
        pod.eni = eni.name.clone();
    }
    plan.secondary_vpc_cidrs.push(vpc_cidr.to_string());
    plan.custom_networking = Some(CustomNetworking {
        node: node.into(),
        eniconfig: super::imds::AVAILABILITY_ZONE.into(),
        vpc_cidr: vpc_cidr.to_string(),
        subnet: subnet.to_string(),
        eni: eni.name,
    });
}

/// An IPv6 pod as in an IPv6 cluster (ENABLE_IPv6=true needs prefix delegation and no custom
/// networking, pkg/ipamd/ipamd.go isConfigValid): ipamd delegates a /80 to the primary ENI
/// (`<subnet /64>:<node letter>::/80`) and carves the pod's address from it (data_store.go
/// AssignPodIPv6Address: "In IPv6 Prefix Delegation mode, eniPool will only have Primary
/// ENI"); the egress-cni plugin adds `v4if0` for IPv4 egress. The VPC, the db host and the
/// ALB get IPv6 so that v6 paths can be tried both ways.
fn ipv6_egress(plan: &mut Plan, node: &str, pod_name: &str) {
    plan.vpc_cidr_v6.get_or_insert_with(|| "2001:2::/48".into());
    for (host, sub) in [("db", 3u16), ("alb", 100)] {
        if let Some(h) = plan.hosts.iter_mut().find(|h| h.name == host) {
            h.ipv6.get_or_insert(v6(sub, 0x10));
        }
    }
    let lab_prefix = plan.prefix.clone();
    let veth_prefix = plan.veth_prefix.clone();
    let Some(n) = plan.nodes.iter_mut().find(|n| n.name == node) else { return };
    let letter = n.primary().mac.split(':').nth(3).and_then(|h| u16::from_str_radix(h, 16).ok()).unwrap_or(0);
    let primary = &mut n.enis[0];
    let sub = primary.ip.octets()[2] as u16;
    let prefix = Cidr6::new(Ipv6Addr::new(0x2001, 2, 0, sub, letter, 0, 0, 0), 80);
    primary.ipv6_prefixes = vec![prefix];
    let (eni_name, node_ip) = (primary.name.clone(), primary.ip);
    let used: Vec<Ipv6Addr> = plan.pods.iter().filter_map(|p| p.ipv6).collect();
    let ipv6 = carve6(prefix, &used).expect("free address in the /80");
    let index = plan.pods.iter().filter(|p| p.node == node && p.v4_egress.is_some()).count();
    let netns = format!("{lab_prefix}{pod_name}");
    plan.pods.push(Pod {
        name: pod_name.into(),
        namespace: "default".into(),
        netns: netns.clone(),
        node: node.into(),
        ip: Ipv4Addr::UNSPECIFIED,
        ipv6: Some(ipv6),
        eni: eni_name,
        veth: super::plan::host_veth_name(&veth_prefix, "default", pod_name),
        labels: vec![("app".into(), "v6".into())],
        v4_egress: Some(egress_cni::EgressV4::new(&netns, node_ip, index)),
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

/// Same for IPv6 prefixes (`node_v6` is the ENI's own IPv6 address).
pub fn vpc_prefixes_v6(eni: &Eni, node_v6: Ipv6Addr, ip: &mut Vec<String>, check6: &mut String) {
    let l = &eni.vpc_link;
    for p in &eni.ipv6_prefixes {
        ip.push(format!("route add {p} via {node_v6} dev {l}"));
        check6.push_str(&format!("-A VPC-SRC-DST-CHECK -i {l} -s {p} -j RETURN\n"));
    }
}

/// Per-interface sysctls of the variants on a node (after the links exist).
pub fn node_sysctls(plan: &Plan, node: &Node) -> Vec<(String, String)> {
    plan.pods_on(&node.name).filter(|p| p.is_ipv6_only()).flat_map(egress_cni::node_sysctls).collect()
}

/// What the variants add to a built lab that the base renderer has no slot for: IPv6 rules
/// (`ip -6` batch) and iptables rules inserted into the chains the base rules created.
pub struct Post {
    pub netns: String,
    pub ip6: Vec<String>,
    /// iptables-restore --noflush input.
    pub iptables: Option<String>,
}

pub fn post(plan: &Plan) -> Vec<Post> {
    plan.nodes
        .iter()
        .map(|n| Post {
            netns: n.netns.clone(),
            ip6: egress_cni::node_ip6(plan, n),
            iptables: egress_cni::node_iptables(plan, n),
        })
        .filter(|p| !p.ip6.is_empty() || p.iptables.is_some())
        .collect()
}

pub fn apply_post(plan: &Plan) -> Result<()> {
    for p in post(plan) {
        if !p.ip6.is_empty() {
            netns::run_with_input("ip", &["-6", "-n", &p.netns, "-batch", "-"], &(p.ip6.join("\n") + "\n"))?;
        }
        if let Some(rules) = &p.iptables {
            netns::run_with_input(
                "ip",
                // The node's own iptables backend (--iptables nft|legacy), like the plugin's.
                &["netns", "exec", &p.netns, plan.nat.iptables.restore_tool(), "--noflush"],
                rules,
            )?;
        }
    }
    Ok(())
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
        let p6 = Cidr6::new("2001:2:0:1:a::".parse().unwrap(), 80);
        assert_eq!(carve6(p6, &[]), Some("2001:2:0:1:a::".parse().unwrap()));
        assert_eq!(
            carve6(p6, &["2001:2:0:1:a::".parse().unwrap()]),
            Some("2001:2:0:1:a::1".parse().unwrap())
        );
        assert!(p6.contains("2001:2:0:1:a:ffff:ffff:ffff".parse().unwrap()));
        assert!(!p6.contains("2001:2:0:1:b::".parse().unwrap()));
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
    fn ipv6_egress_adds_an_ipv6_pod_with_v4if0() {
        let plan = Plan::new(&cfg(&[Variant::Ipv6Egress, Variant::PrefixDelegation]));
        let p = plan.pod("v6-1").unwrap();
        assert!(p.is_ipv6_only());
        assert_eq!(p.ipv6, Some("2001:2:0:1:a::".parse().unwrap()));
        assert_eq!(plan.ip_of("v6-1"), Some("2001:2:0:1:a::".parse().unwrap()));
        let e = p.v4_egress.as_ref().unwrap();
        assert_eq!(
            (e.ifname.as_str(), e.ip, e.gateway),
            ("v4if0", Ipv4Addr::new(169, 254, 172, 2), Ipv4Addr::new(169, 254, 172, 1))
        );
        assert_eq!(e.snat_to, plan.node("node-a").unwrap().primary_ip());
        assert!(plan.node("node-a").unwrap().primary().in_ipv6_prefix(p.ipv6.unwrap()));
        let json = serde_json::to_value(p).unwrap();
        assert!(json["ip"].is_null());
        assert_eq!(json["v4_egress"]["host_veth"], e.host_veth.as_str());
        // The pods file shows the IPv6 address as the API does (podIP, podIPs).
        let pods = crate::lab::podlist::render(&plan);
        let item =
            pods["items"].as_array().unwrap().iter().find(|i| i["metadata"]["name"] == "v6-1").unwrap();
        assert_eq!(item["status"]["podIP"], "2001:2:0:1:a::");
        assert_eq!(item["status"]["podIPs"], serde_json::json!([{ "ip": "2001:2:0:1:a::" }]));
        // The other pods are untouched by this variant (only by prefix delegation).
        assert_eq!(
            plan.owned_by(plan.node("node-a").unwrap(), &plan.node("node-a").unwrap().enis[0]).len(),
            1
        );
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
