//! The lab's topology as data: who exists, which addresses, which ENI owns which IP.
//! Everything else (commands, rules, status, pods file) is rendered from this one plan.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

pub use super::{
    egress_cni::EgressV4,
    ipam_variants::{Cidr4, Cidr6, CustomNetworking},
    variant::Variant,
};
use super::{imds, ipam_variants};

pub const DEFAULT_VETH_PREFIX: &str = "eni";

/// externalTrafficPolicy of the NodePort service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Etp {
    Cluster,
    Local,
}

/// How the node's ENIs are named: `eth0/eth1` (AL2) or `ens5/ens6` (AL2023).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EniNames {
    Eth,
    Ens,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LabConfig {
    /// Prefix of every namespace name, so labs never collide with each other or the user's.
    pub prefix: String,
    pub etp: Etp,
    pub eni_names: EniNames,
    /// First two octets of the VPC /16 (default 198.18 — the benchmark range).
    pub vpc: [u8; 2],
    /// Also give web-1 and the db host IPv6 addresses.
    pub ipv6: bool,
    /// AWS_VPC_K8S_CNI_VETHPREFIX: host veths are `<prefix>` + 11 hex (1 to 4 characters).
    pub veth_prefix: String,
    /// Datapath variants (SGP, network policy agent, prefix delegation, ...), see `variant.rs`.
    pub variants: Vec<Variant>,
    /// kube-proxy mode, iptables backend and the VPC CNI's SNAT options.
    pub nat: super::nat_config::NatOptions,
}

impl LabConfig {
    pub fn has(&self, v: Variant) -> bool {
        self.variants.contains(&v)
    }
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            prefix: "pt-".into(),
            etp: Etp::Cluster,
            eni_names: EniNames::Eth,
            vpc: [198, 18],
            ipv6: false,
            veth_prefix: DEFAULT_VETH_PREFIX.into(),
            variants: Vec::new(),
            nat: Default::default(),
        }
    }
}

/// One ENI of a node.
#[derive(Clone, Debug, Serialize)]
pub struct Eni {
    /// Interface name on the node (eth0 / ens5 ...).
    pub name: String,
    /// Device number: 0 = primary. Its route table is device number + 1 (secondary only).
    pub device: u8,
    /// The ENI's own (first) IP.
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// The link's name on the VPC router side.
    pub vpc_link: String,
    pub mac: String,
    /// The ENI's ID (IMDS `interface-id`).
    pub interface_id: String,
    /// /28 prefixes delegated to the ENI (prefix delegation), IMDS `ipv4-prefix`.
    pub ipv4_prefixes: Vec<Cidr4>,
    /// IPv6 prefixes delegated to the ENI (IPv6 cluster), IMDS `ipv6-prefix`.
    pub ipv6_prefixes: Vec<Cidr6>,
}

impl Eni {
    pub fn table(&self) -> Option<u32> {
        (self.device > 0).then_some(self.device as u32 + 1)
    }
    pub fn subnet(&self) -> String {
        let o = self.ip.octets();
        format!("{}.{}.{}.0/{}", o[0], o[1], o[2], self.prefix_len)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub name: String,
    /// Namespace name (with prefix).
    pub netns: String,
    pub enis: Vec<Eni>,
    /// IMDS `instance-id` and `instance-type`.
    pub instance_id: String,
    pub instance_type: String,
}

impl Node {
    pub fn primary(&self) -> &Eni {
        &self.enis[0]
    }
    pub fn primary_ip(&self) -> Ipv4Addr {
        self.primary().ip
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub netns: String,
    pub node: String,
    /// The pod's IPv4 VPC address; 0.0.0.0 (JSON null) for an IPv6 pod, see `v4_egress`.
    #[serde(serialize_with = "ipam_variants::ser_pod_ip")]
    pub ip: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    /// Name of the ENI (on its node) that owns the pod's IP.
    pub eni: String,
    /// Host-side veth, named like the VPC CNI does.
    pub veth: String,
    pub labels: Vec<(String, String)>,
    /// The egress-cni plugin's IPv4 interface of an IPv6 pod.
    pub v4_egress: Option<EgressV4>,
}

/// A non-node host: alb, internet, a VPC database host.
#[derive(Clone, Debug, Serialize)]
pub struct Host {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    pub ipv6: Option<Ipv6Addr>,
    pub vpc_link: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServicePort {
    /// Port name; empty for the single unnamed port of a service (kube-proxy then prints
    /// `default/web`, else `default/api:http`).
    pub name: String,
    pub proto: String,
    pub port: u16,
    pub target_port: u16,
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Service {
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    /// Pod names.
    pub endpoints: Vec<String>,
    pub etp: Etp,
}

/// Ports every lab server (pods, db, inet) answers on, TCP and UDP. 9090 is the port the
/// network policy stand-in denies (`npa::DENIED_PORT`): without `--variant npa` it answers.
pub const SERVER_PORTS: [u16; 3] = [80, 8080, 9090];
pub const NODE_PORT: u16 = 30080;

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub prefix: String,
    pub vpc_cidr: String,
    pub vpc_cidr_v6: Option<String>,
    pub etp: Etp,
    pub vpc_netns: String,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub hosts: Vec<Host>,
    pub services: Vec<Service>,
    pub veth_prefix: String,
    pub variants: Vec<Variant>,
    /// Trunk and branch ENIs (`--variant sgp-strict|sgp-standard`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sgp: Option<super::sgp::Sgp>,
    /// VPC CIDRs besides `vpc_cidr` (IMDS `vpc-ipv4-cidr-blocks` lists all of them).
    pub secondary_vpc_cidrs: Vec<String>,
    pub custom_networking: Option<CustomNetworking>,
    pub nat: super::nat_config::NatOptions,
}

/// `eni` + the first 11 hex characters of sha1("<namespace>.<pod>"), as the VPC CNI names
/// host veths (pkg/networkutils/names.go).
pub fn veth_name(namespace: &str, pod: &str) -> String {
    host_veth_name(DEFAULT_VETH_PREFIX, namespace, pod)
}

/// `<veth prefix>` + the first 11 hex characters of sha1("<namespace>.<pod>")
/// (amazon-vpc-cni-k8s pkg/networkutils/names.go, GeneratePodHostVethName).
pub fn host_veth_name(prefix: &str, namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..11])
}

/// The lab's IPv6 prefix: 2001:2::/48 is reserved for benchmarking (RFC 5180).
pub fn v6(subnet: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0x2, 0, subnet, 0, 0, 0, host)
}

impl Plan {
    pub fn new(cfg: &LabConfig) -> Plan {
        let [a, b] = cfg.vpc;
        let ip = |c: u8, d: u8| Ipv4Addr::new(a, b, c, d);
        let p = &cfg.prefix;
        let eni_name = |dev: u8| match cfg.eni_names {
            EniNames::Eth => format!("eth{dev}"),
            EniNames::Ens => format!("ens{}", dev + 5),
        };
        let node = |name: &str, letter: u8, host: u8| Node {
            name: name.into(),
            netns: format!("{p}{name}"),
            enis: (0..2u8)
                .map(|dev| Eni {
                    name: eni_name(dev),
                    device: dev,
                    ip: ip(dev + 1, host),
                    prefix_len: 24,
                    gateway: ip(dev + 1, 1),
                    vpc_link: format!("{name}-{}", eni_name(dev)),
                    mac: format!("02:00:00:{letter:02x}:{dev:02x}:01"),
                    interface_id: imds::aws_id("eni", &format!("{name}/{dev}")),
                    ipv4_prefixes: Vec::new(),
                    ipv6_prefixes: Vec::new(),
                })
                .collect(),
            instance_id: imds::aws_id("i", name),
            instance_type: imds::INSTANCE_TYPE.into(),
        };
        let nodes = vec![node("node-a", 0xa, 10), node("node-b", 0xb, 20)];
        let app = |v: &str| vec![("app".to_string(), v.to_string())];
        let pod = |name: &str, node: &Node, dev: usize, host: u8, labels| Pod {
            name: name.into(),
            namespace: "default".into(),
            netns: format!("{p}{name}"),
            node: node.name.clone(),
            ip: ip(dev as u8 + 1, host),
            ipv6: None,
            eni: node.enis[dev].name.clone(),
            veth: host_veth_name(&cfg.veth_prefix, "default", name),
            labels,
            v4_egress: None,
        };
        let mut pods = vec![
            pod("web-1", &nodes[0], 0, 11, app("static")),
            pod("web-2", &nodes[0], 1, 11, app("web")),
            pod("api-1", &nodes[1], 0, 21, app("api")),
            pod("web-3", &nodes[1], 1, 21, app("web")),
        ];
        let host = |name: &str, ip: Ipv4Addr, gw: Ipv4Addr| Host {
            name: name.into(),
            netns: format!("{p}{name}"),
            ip,
            gateway: gw,
            prefix_len: 24,
            ipv6: None,
            vpc_link: name.into(),
        };
        let mut hosts = vec![
            host("alb", ip(100, 10), ip(100, 1)),
            host("db", ip(3, 10), ip(3, 1)),
            host("inet", Ipv4Addr::new(203, 0, 113, 10), Ipv4Addr::new(203, 0, 113, 1)),
        ];
        if cfg.ipv6 {
            pods[0].ipv6 = Some(v6(1, 0x11));
            hosts[1].ipv6 = Some(v6(3, 0x10));
        }
        let port = |name: &str, proto: &str, node_port| ServicePort {
            name: name.into(),
            proto: proto.into(),
            port: 80,
            target_port: 8080,
            node_port,
        };
        let services = vec![
            Service {
                name: "api".into(),
                cluster_ip: Ipv4Addr::new(198, 19, 0, 10),
                // A service with several ports must name them (Kubernetes API validation).
                ports: vec![port("http", "tcp", None), port("udp", "udp", None)],
                endpoints: vec!["api-1".into()],
                etp: Etp::Cluster,
            },
            Service {
                name: "web".into(),
                cluster_ip: Ipv4Addr::new(198, 19, 0, 20),
                ports: vec![port("", "tcp", Some(NODE_PORT))],
                endpoints: vec!["web-2".into(), "web-3".into()],
                etp: cfg.etp,
            },
        ];
        let mut plan = Plan {
            prefix: cfg.prefix.clone(),
            vpc_cidr: format!("{a}.{b}.0.0/16"),
            vpc_cidr_v6: cfg.ipv6.then(|| "2001:2::/48".to_string()),
            etp: cfg.etp,
            vpc_netns: format!("{p}vpc"),
            nodes,
            pods,
            hosts,
            services,
            veth_prefix: cfg.veth_prefix.clone(),
            variants: cfg.variants.clone(),
            sgp: None,
            secondary_vpc_cidrs: Vec::new(),
            custom_networking: None,
            nat: cfg.nat.clone(),
        };
        ipam_variants::apply(cfg, &mut plan);
        super::sgp::extend(&mut plan, cfg);
        plan
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Every namespace of the lab, VPC router first.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.vpc_netns.clone()];
        v.extend(self.nodes.iter().map(|n| n.netns.clone()));
        v.extend(self.hosts.iter().map(|h| h.netns.clone()));
        v.extend(self.pods.iter().map(|p| p.netns.clone()));
        v
    }

    /// Pods of one node.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }

    /// Namespace of a named lab member (node, pod, host or "vpc").
    pub fn netns_of(&self, name: &str) -> Option<String> {
        if name == "vpc" {
            return Some(self.vpc_netns.clone());
        }
        self.node(name)
            .map(|n| n.netns.clone())
            .or_else(|| self.pod(name).map(|p| p.netns.clone()))
            .or_else(|| self.host(name).map(|h| h.netns.clone()))
    }

    /// IPv4 address of a named lab member (a node's is its primary ENI IP).
    pub fn ip_of(&self, name: &str) -> Option<IpAddr> {
        self.pod(name)
            .map(|p| match p.ipv6 {
                Some(v6) if p.ip.is_unspecified() => IpAddr::V6(v6),
                _ => IpAddr::V4(p.ip),
            })
            .or_else(|| self.host(name).map(|h| IpAddr::V4(h.ip)))
            .or_else(|| self.node(name).map(|n| IpAddr::V4(n.primary_ip())))
            .or_else(|| self.service(name).map(|s| IpAddr::V4(s.cluster_ip)))
    }

    /// IPs owned by one node ENI (its own IP and the pod IPs it carries), as the VPC sees it.
    pub fn owned_by(&self, node: &Node, eni: &Eni) -> Vec<Ipv4Addr> {
        let mut v = vec![eni.ip];
        // Pod IPs carved from a delegated prefix are routed as part of the prefix.
        let own = |p: &&Pod| p.eni == eni.name && !p.ip.is_unspecified() && !eni.in_ipv4_prefix(p.ip);
        v.extend(self.pods_on(&node.name).filter(own).map(|p| p.ip));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_follow_the_cni() {
        let n = veth_name("default", "web-1");
        assert_eq!(n.len(), 14);
        assert!(n.starts_with("eni"));
        assert_ne!(n, veth_name("default", "web-2"));
        assert_ne!(n, veth_name("other", "web-1"));
    }

    #[test]
    fn plan_allocates_pods_on_the_right_enis() {
        let plan = Plan::new(&LabConfig::default());
        let web2 = plan.pod("web-2").unwrap();
        assert_eq!(web2.eni, "eth1");
        assert_eq!(web2.ip, Ipv4Addr::new(198, 18, 2, 11));
        let a = plan.node("node-a").unwrap();
        assert_eq!(plan.owned_by(a, &a.enis[1]), vec![a.enis[1].ip, web2.ip]);
        assert_eq!(a.enis[1].table(), Some(2));
        let ens = Plan::new(&LabConfig { eni_names: EniNames::Ens, ..LabConfig::default() });
        assert_eq!(ens.pod("web-2").unwrap().eni, "ens6");
    }
}
