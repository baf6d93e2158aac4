//! An IPv6 pod (IPv6 cluster) and the egress-cni plugin's IPv4 path for it
//! (eks-variants.md §8): what the routed-eni plugin and the chained egress-cni plugin write
//! into the pod and the node, rule by rule.
use std::{fmt::Write as _, net::Ipv4Addr};

use serde::Serialize;
use sha1::{Digest as _, Sha1};
use sha2::Sha512;

use super::{
    ipam_variants::Cidr4,
    plan::{Node, Plan, Pod},
    render::NsConfig,
};

/// The CNI network name the egress plugin runs under: libcni gives every plugin of a conflist
/// the list's name, and aws-node's conflist is named `aws-cni` (amazon-vpc-cni-k8s
/// misc/10-aws.conflist).
pub const NETWORK_NAME: &str = "aws-cni";
/// Container-side interface (amazon-vpc-cni-k8s cmd/egress-cni-plugin/netconf.go,
/// egressIPv4InterfaceName).
pub const IFNAME: &str = "v4if0";
/// host-local IPAM range of the plugin in an IPv6 cluster (cmd/aws-vpc-cni/main.go,
/// egressPluginIpamSubnetV4).
pub const SUBNET: Cidr4 = Cidr4 { addr: Ipv4Addr::new(169, 254, 172, 0), len: 22 };
const MTU: u32 = 9001;

/// The egress-cni plugin's IPv4 interface of one IPv6 pod.
#[derive(Clone, Debug, Serialize)]
pub struct EgressV4 {
    /// `v4if0`.
    pub ifname: String,
    /// From 169.254.172.0/22 (host-local IPAM; the first pod gets .2, .1 is the gateway).
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// Host peer, `veth` + 8 hex characters.
    pub host_veth: String,
    /// The pod sandbox's container ID (CNI_CONTAINERID), from which the chain name is hashed.
    pub container_id: String,
    /// `CNI-E4-<hash>`, the per-pod SNAT chain in the nat table.
    pub snat_chain: String,
    /// The comment on every rule of the chain.
    pub snat_comment: String,
    /// The node's primary IPv4 (`nodeIP` of the plugin's config).
    pub snat_to: Ipv4Addr,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// containernetworking/plugins pkg/utils/utils.go, MustFormatChainNameWithPrefix →
/// MustFormatHashWithPrefix(28, "CNI-" + prefix, name + id): the prefix followed by the hex
/// sha512 of name + id, cut to 28 characters.
pub fn chain_name(name: &str, id: &str, prefix: &str) -> String {
    let s = format!("CNI-{prefix}{}", hex(&Sha512::digest(format!("{name}{id}").as_bytes())));
    s[..28].to_string()
}

/// containernetworking/plugins pkg/utils/utils.go, FormatComment: `name: %q id: %q`.
pub fn comment(name: &str, id: &str) -> String {
    format!("name: \"{name}\" id: \"{id}\"")
}

impl EgressV4 {
    /// The `index`-th pod of a node to get an egress interface. containerd's sandbox IDs are
    /// 64 random hex characters and the plugin's host veth name has 4 random bytes
    /// (containernetworking/plugins pkg/ip/link_linux.go, RandomVethName: `veth%x`); the lab
    /// derives both from the pod's namespace name so that every command rebuilds the same plan.
    pub fn new(pod_netns: &str, node_ip: Ipv4Addr, index: usize) -> EgressV4 {
        let container_id = hex(&Sha512::digest(format!("sandbox:{pod_netns}").as_bytes()))[..64].to_string();
        let host_veth =
            format!("veth{}", &hex(&Sha1::digest(format!("{IFNAME}:{container_id}").as_bytes()))[..8]);
        EgressV4 {
            ifname: IFNAME.into(),
            // host-local: RangeStart = .1 = gateway, which the allocator skips
            // (plugins/ipam/host-local/backend/allocator/allocator.go, RangeIter.Next).
            ip: SUBNET.nth(2 + index as u64).expect("address in 169.254.172.0/22"),
            prefix_len: SUBNET.len,
            gateway: SUBNET.nth(1).expect("gateway"),
            host_veth,
            snat_chain: chain_name(NETWORK_NAME, &container_id, "E4-"),
            snat_comment: comment(NETWORK_NAME, &container_id),
            container_id,
            snat_to: node_ip,
        }
    }
}

/// MAC of the IPv6 pod's host veth (upstream: a random one, driver.go setupVeth
/// generateUniqueRandomMAC).
fn host_veth_mac(pod: &Pod) -> String {
    let d = Sha1::digest(pod.veth.as_bytes());
    format!("02:e6:{:02x}:{:02x}:{:02x}:{:02x}", d[0], d[1], d[2], d[3])
}

/// The node side of an IPv6 pod.
pub fn pod_on_node(pod: &Pod) -> Vec<String> {
    let v = &pod.veth;
    let v6 = pod.ipv6.expect("IPv6 pod");
    // amazon-vpc-cni-k8s cmd/routed-eni-cni-plugin/driver/driver.go, setupVeth and
    // createVethPairContext.run: host veth (random MAC) with the pod's eth0 as its peer.
    let mut ip = vec![
        format!(
            "link add {v} address {} mtu {MTU} type veth peer name eth0 netns {}",
            host_veth_mac(pod),
            pod.netns
        ),
        format!("link set {v} up"),
        // driver.go setupIPBasedContainerRouteRules: /128 route in main (rule 512 is in
        // node_ip6; no 1536 rule: an IPv6 pod's prefix is on the primary ENI, table main).
        format!("route replace {v6}/128 dev {v} scope link"),
    ];
    if let Some(e) = &pod.v4_egress {
        let h = &e.host_veth;
        // cmd/egress-cni-plugin/egressContext.go, setupContainerVethV4: ip.SetupVeth("v4if0")
        // creates the pair from the pod, the host end named veth + random, and sets it up.
        ip.push(format!("link add {h} mtu {MTU} type veth peer name {} netns {}", e.ifname, pod.netns));
        ip.push(format!("link set {h} up"));
        // egressContext.go, setupHostVethV4: the gateway as a /32 link-scope address on the
        // host veth, and a link-scope /32 route to the pod's v4if0 address.
        ip.push(format!("addr add {}/32 dev {h} scope link", e.gateway));
        ip.push(format!("route add {}/32 dev {h} scope link", e.ip));
    }
    ip
}

/// Sysctls on the node for an IPv6 pod's host veths.
pub fn node_sysctls(pod: &Pod) -> Vec<(String, String)> {
    let s = |k: String, v: &str| (k, v.to_string());
    let v = &pod.veth;
    // driver.go setHostVethV6Sysctls: accept_ra=0, accept_redirects=1, forwarding=0.
    let mut out = vec![
        s(format!("net.ipv6.conf.{v}.accept_ra"), "0"),
        s(format!("net.ipv6.conf.{v}.accept_redirects"), "1"),
        s(format!("net.ipv6.conf.{v}.forwarding"), "0"),
    ];
    if let Some(e) = &pod.v4_egress {
        // containernetworking/plugins pkg/ip/link_linux.go SetupVethWithName: accept_ra=0.
        out.push(s(format!("net.ipv6.conf.{}.accept_ra", e.host_veth), "0"));
    }
    out
}

/// The IPv6 pod's namespace.
pub fn pod(pod: &Pod) -> NsConfig {
    let v6 = pod.ipv6.expect("IPv6 pod");
    let mac = host_veth_mac(pod);
    // driver.go createVethPairContext.run, IPv6: disable_ipv6=0 on eth0 and lo, gateway
    // fe80::1 (networkutils.CalculatePodIPv6GatewayIP(0)) as a link route, default route,
    // the /128 address (the lab skips DAD), permanent neighbour entry for the gateway.
    let mut ip = vec![
        "link set lo up".to_string(),
        format!("link set eth0 mtu {MTU} up"),
        "route replace fe80::1/128 dev eth0 scope link".to_string(),
        "route add default via fe80::1 dev eth0".to_string(),
        format!("addr add {v6}/128 dev eth0 nodad"),
        format!("neigh add fe80::1 dev eth0 lladdr {mac} nud permanent"),
    ];
    if let Some(e) = &pod.v4_egress {
        let (i, gw, sub) = (&e.ifname, e.gateway, SUBNET);
        // containernetworking/plugins pkg/ipam/ipam_linux.go ConfigureIface: address, link up,
        // the IPAM result's route 0.0.0.0/0 via the range gateway (egressPluginIpamDstV4).
        ip.push(format!("addr add {}/{} dev {i}", e.ip, e.prefix_len));
        // The pair was created with the MTU on both ends (ip.SetupVeth(..., mtu, ...)).
        ip.push(format!("link set {i} mtu {MTU} up"));
        ip.push(format!("route add default via {gw} dev {i}"));
        // egressContext.go setupContainerVethV4: the connected /22 route is replaced by a /32
        // to the gateway and the /22 via the gateway, both with the pod's source address.
        ip.push(format!("route del {sub} dev {i}"));
        ip.push(format!("route add {gw}/32 dev {i} scope link src {}", e.ip));
        ip.push(format!("route add {sub} via {gw} dev {i} src {}", e.ip));
    }
    let sysctls = vec![
        ("net.ipv6.conf.eth0.disable_ipv6".to_string(), "0".to_string()),
        ("net.ipv6.conf.lo.disable_ipv6".to_string(), "0".to_string()),
    ];
    NsConfig { netns: pod.netns.clone(), sysctls, ip, ..NsConfig::default() }
}

/// IPv6 policy rules of a node with IPv6 pods (`ip -6` batch lines).
pub fn node_ip6(plan: &Plan, node: &Node) -> Vec<String> {
    let pods: Vec<&Pod> = plan.pods_on(&node.name).filter(|p| p.is_ipv6_only()).collect();
    if pods.is_empty() {
        return Vec::new();
    }
    // amazon-vpc-cni-k8s pkg/networkutils/network.go SetupHostNetwork: in an IPv6 cluster the
    // main-ENI rule (fwmark 0x80/0x80 → main, pref 1024) is added for AF_INET6.
    let mut ip = vec!["rule add fwmark 0x80/0x80 lookup main pref 1024".to_string()];
    for p in pods {
        // driver.go setupIPBasedContainerRouteRules: to <pod>/128 lookup main pref 512.
        ip.push(format!("rule add to {}/128 lookup main pref 512", p.ipv6.expect("IPv6 pod")));
    }
    ip
}

/// iptables (iptables-restore --noflush input) of a node with IPv6 pods, or None.
pub fn node_iptables(plan: &Plan, node: &Node) -> Option<String> {
    let egress: Vec<&super::plan::EgressV4> =
        plan.pods_on(&node.name).filter_map(|p| p.v4_egress.as_ref()).collect();
    if egress.is_empty() {
        return None;
    }
    let mut s = String::from("*filter\n");
    // amazon-vpc-cni-k8s pkg/networkutils/network.go setupRuleToBlockNodeLocalAccess (called
    // by enableIPv6 in an IPv6 cluster): inserted as FORWARD rule 1.
    writeln!(s, "-I FORWARD 1 -d {SUBNET} -m conntrack --ctstate NEW -m comment --comment \"Block Node Local Pod access via IPv4\" -j REJECT").unwrap();
    s += "COMMIT\n*nat\n";
    for e in &egress {
        writeln!(s, ":{} - [0:0]", e.snat_chain).unwrap();
    }
    for e in egress {
        let (c, m) = (&e.snat_chain, &e.snat_comment);
        // cmd/egress-cni-plugin/snat/snat.go iptRules + Add: multicast ACCEPT, SNAT to the
        // node IP with --random-fully (AWS_VPC_K8S_CNI_RANDOMIZESNAT=prng, the default), and
        // the POSTROUTING jump for the pod's v4if0 address. The plugin appends the jump; on a
        // real IPv6-cluster node POSTROUTING has no AWS-SNAT-CHAIN-0 before it, so the lab
        // (whose node-a also carries IPv4 pods) inserts it first to keep that effect.
        let esc = m.replace('"', "\\\"");
        writeln!(s, "-A {c} -d 224.0.0.0/4 -m comment --comment \"{esc}\" -j ACCEPT").unwrap();
        writeln!(s, "-A {c} -m comment --comment \"{esc}\" -j SNAT --to-source {} --random-fully", e.snat_to)
            .unwrap();
        writeln!(s, "-I POSTROUTING 1 -s {}/32 -m comment --comment \"{esc}\" -j {c}", e.ip).unwrap();
    }
    s += "COMMIT\n";
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_name_is_cni_e4_and_sha512_of_name_and_id() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let c = chain_name(NETWORK_NAME, id, "E4-");
        assert_eq!(c.len(), 28);
        assert!(c.starts_with("CNI-E4-"));
        // sha512("aws-cni" + id), computed independently: `printf %s aws-cni<id> | sha512sum`.
        assert_eq!(c, "CNI-E4-807bd76e84ee4fda02860");
        // The plain chain of plugins/portmap etc. for comparison: 28 characters as well.
        assert_eq!(chain_name("cbr0", "abc", "").len(), 28);
        assert_eq!(comment(NETWORK_NAME, "abc"), r#"name: "aws-cni" id: "abc""#);
    }

    #[test]
    fn egress_interface_follows_host_local_and_random_veth_naming() {
        let e = EgressV4::new("pt-v6-1", Ipv4Addr::new(198, 18, 1, 10), 0);
        assert_eq!(e.ip, Ipv4Addr::new(169, 254, 172, 2));
        assert_eq!(e.gateway, Ipv4Addr::new(169, 254, 172, 1));
        assert_eq!(
            EgressV4::new("pt-v6-2", Ipv4Addr::new(198, 18, 1, 10), 1).ip,
            Ipv4Addr::new(169, 254, 172, 3)
        );
        assert!(e.host_veth.starts_with("veth") && e.host_veth.len() == 12);
        assert!(e.host_veth[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(e.container_id.len(), 64);
        assert_eq!(e.snat_chain, chain_name("aws-cni", &e.container_id, "E4-"));
    }

    #[test]
    fn node_rules_render_the_chain_and_the_reject() {
        let plan = Plan::new(&crate::lab::LabConfig {
            variants: vec![crate::lab::plan::Variant::Ipv6Egress],
            ..Default::default()
        });
        let a = plan.node("node-a").unwrap();
        let e = plan.pod("v6-1").unwrap().v4_egress.clone().unwrap();
        let t = node_iptables(&plan, a).unwrap();
        assert!(t.contains("-I FORWARD 1 -d 169.254.172.0/22 -m conntrack --ctstate NEW -m comment --comment \"Block Node Local Pod access via IPv4\" -j REJECT"));
        assert!(t.contains(&format!("-A {} -m comment --comment \"name: \\\"aws-cni\\\" id: \\\"{}\\\"\" -j SNAT --to-source 198.18.1.10 --random-fully", e.snat_chain, e.container_id)));
        assert!(t.contains("-I POSTROUTING 1 -s 169.254.172.2/32 -m comment"));
        assert!(node_iptables(&plan, plan.node("node-b").unwrap()).is_none());
        assert_eq!(
            node_ip6(&plan, a),
            vec![
                "rule add fwmark 0x80/0x80 lookup main pref 1024".to_string(),
                "rule add to 2001:2:0:1:a::/128 lookup main pref 512".into(),
            ]
        );
    }
}
