//! The node as the VPC CNI built it, read over netlink: ENIs, branch ENIs (Security Groups for
//! Pods), their route tables, pod veths and which ENI owns each pod IP. Nothing here assumes
//! interface names: ENIs are the interfaces that carry the node's VPC addresses (eth0/eth1 on
//! AL2, ens5/ens6 on AL2023, ...), branch ENIs the VLAN links stacked on an ENI, pod veths the
//! veths a /32 route points at (in whatever table the VPC CNI put it).
use std::net::IpAddr;

use anyhow::{Result, bail};
use serde::Serialize;

use super::links::{self, Addr, Link, Route, Rule};

/// VPC CNI rule priorities (amazon-vpc-cni-k8s pkg/networkutils; the pref-10 `iif` rules and
/// the local rule moved to 20 are the strict Security Groups for Pods mode, driver.go).
pub const PREF_IIF: u32 = 10;
pub const PREF_LOCAL_MOVED: u32 = 20;
pub const LOCAL_TABLE: u32 = 255;
pub const PREF_TO_POD: u32 = 512;
pub const PREF_FWMARK: u32 = 1024;
pub const PREF_FROM_POD: u32 = 1536;
pub const MAIN_TABLE: u32 = 254;

/// One ENI of the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Eni {
    pub name: String,
    pub ifindex: u32,
    pub mac: Option<String>,
    /// Addresses configured on the interface (the ENI's own IPs).
    pub addrs: Vec<(IpAddr, u8)>,
    /// Route table used by this ENI (`None` for the primary ENI, which uses main).
    pub table: Option<u32>,
    pub primary: bool,
}

impl Eni {
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.addrs.iter().find(|(a, _)| a.is_ipv4()).or(self.addrs.first()).map(|(a, _)| *a)
    }
}

/// A branch ENI of Security Groups for Pods: the VLAN link the VPC CNI stacks on the trunk
/// ENI (`vlan.eth.<id>`), or a stand-in stacked the same way (a macvlan, where the kernel has
/// no 802.1Q).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Branch {
    pub name: String,
    pub ifindex: u32,
    pub mac: Option<String>,
    /// The VLAN id, read from the link (`None` for a stand-in without 802.1Q).
    pub vlan_id: Option<u16>,
    /// The trunk ENI it is stacked on.
    pub trunk: String,
    /// Its route table (the VPC CNI uses 100 + VLAN id).
    pub table: Option<u32>,
}

/// Who owns a pod IP: an ENI, or a branch ENI on a trunk.
#[derive(Clone, Copy, Debug)]
pub enum Owner<'a> {
    Eni(&'a Eni),
    Branch(&'a Branch),
}

impl Owner<'_> {
    pub fn name(&self) -> &str {
        match self {
            Owner::Eni(e) => &e.name,
            Owner::Branch(b) => &b.name,
        }
    }
}

/// A snapshot of the node's links, addresses, routes and rules.
#[derive(Clone, Debug)]
pub struct Inventory {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
    pub enis: Vec<Eni>,
    pub branches: Vec<Branch>,
}

/// Link kinds that are never ENIs even when they carry an address.
const NOT_ENI_KINDS: [&str; 9] =
    ["bridge", "dummy", "vxlan", "tun", "ipip", "wireguard", "geneve", "ipvlan", "macvlan"];

fn is_vpc_address(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

fn mac_text(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl Inventory {
    /// Reads everything from the kernel. `eni_override` replaces ENI discovery (`--eni`).
    pub fn read(eni_override: &[String]) -> Result<Inventory> {
        let links = links::links()?;
        let addrs = links::addresses()?;
        let routes = links::routes()?;
        let rules = links::rules()?;
        let mut inv = Inventory { links, addrs, routes, rules, enis: Vec::new(), branches: Vec::new() };
        inv.enis = inv.discover_enis(eni_override)?;
        inv.branches = inv.discover_branches();
        Ok(inv)
    }

    pub fn from_parts(links: Vec<Link>, addrs: Vec<Addr>, routes: Vec<Route>, rules: Vec<Rule>) -> Inventory {
        let mut inv = Inventory { links, addrs, routes, rules, enis: Vec::new(), branches: Vec::new() };
        inv.enis = inv.discover_enis(&[]).unwrap_or_default();
        inv.branches = inv.discover_branches();
        inv
    }

    /// VLAN (or stand-in macvlan) links whose lower device is an ENI.
    fn discover_branches(&self) -> Vec<Branch> {
        self.links
            .iter()
            .filter(|l| matches!(l.kind.as_deref(), Some("vlan" | "macvlan")))
            .filter_map(|l| {
                let trunk = self.eni(l.parent?)?;
                let table = self
                    .routes
                    .iter()
                    .find(|r| {
                        r.dst.is_none() && r.oif == Some(l.index) && r.table != MAIN_TABLE && r.table < 253
                    })
                    .map(|r| r.table);
                Some(Branch {
                    name: l.name.clone(),
                    ifindex: l.index,
                    mac: l.mac.as_ref().map(mac_text),
                    vlan_id: l.vlan_id,
                    trunk: trunk.name.clone(),
                    table,
                })
            })
            .collect()
    }

    pub fn branch(&self, ifindex: u32) -> Option<&Branch> {
        self.branches.iter().find(|b| b.ifindex == ifindex)
    }

    /// Whether the ENI carries branch ENIs (a trunk ENI).
    pub fn is_trunk(&self, eni: &Eni) -> bool {
        self.branches.iter().any(|b| b.trunk == eni.name)
    }

    fn discover_enis(&self, eni_override: &[String]) -> Result<Vec<Eni>> {
        let main_default_oif = self
            .routes
            .iter()
            .find(|r| r.table == MAIN_TABLE && r.dst.is_none() && !r.v6)
            .and_then(|r| r.oif);
        let mut enis = Vec::new();
        for l in &self.links {
            let addrs: Vec<(IpAddr, u8)> = self
                .addrs
                .iter()
                .filter(|a| a.index == l.index && is_vpc_address(&a.addr))
                .map(|a| (a.addr, a.prefix))
                .collect();
            let chosen = if eni_override.is_empty() {
                !addrs.is_empty()
                    && l.name != "lo"
                    && !l.kind.as_deref().is_some_and(|k| NOT_ENI_KINDS.contains(&k))
            } else {
                eni_override.contains(&l.name)
            };
            if !chosen {
                continue;
            }
            let table = self
                .routes
                .iter()
                .find(|r| r.dst.is_none() && r.oif == Some(l.index) && r.table != MAIN_TABLE && r.table < 253)
                .map(|r| r.table);
            enis.push(Eni {
                name: l.name.clone(),
                ifindex: l.index,
                mac: l.mac.as_ref().map(mac_text),
                addrs,
                table,
                primary: main_default_oif == Some(l.index),
            });
        }
        for name in eni_override {
            if !enis.iter().any(|e| &e.name == name) {
                bail!("--eni {name}: no such interface on this node");
            }
        }
        if !enis.iter().any(|e| e.primary)
            && let Some(first) = enis.first_mut()
        {
            first.primary = true;
        }
        // Primary first, then by route table (= device number + 1), then by name.
        enis.sort_by_key(|e| (!e.primary, e.table.unwrap_or(0), e.name.clone()));
        Ok(enis)
    }

    pub fn link(&self, ifindex: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == ifindex)
    }

    pub fn link_by_name(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn eni(&self, ifindex: u32) -> Option<&Eni> {
        self.enis.iter().find(|e| e.ifindex == ifindex)
    }

    pub fn primary_eni(&self) -> Option<&Eni> {
        self.enis.iter().find(|e| e.primary)
    }

    /// Every address of the node's ENIs.
    pub fn node_ips(&self) -> Vec<IpAddr> {
        self.enis.iter().flat_map(|e| e.addrs.iter().map(|(a, _)| *a)).collect()
    }

    fn host_len(ip: IpAddr) -> u8 {
        if ip.is_ipv4() { 32 } else { 128 }
    }

    /// A link pods hang off: a veth (the VPC CNI's host side of a pod's interface).
    fn pod_link(&self, ifindex: u32) -> Option<&Link> {
        self.link(ifindex).filter(|l| l.kind.as_deref() == Some("veth") && self.eni(l.index).is_none())
    }

    /// The host veth of a pod IP: the veth its /32 (/128) route points at, in the main table or
    /// in the table a branch ENI's rules send it to (strict Security Groups for Pods).
    pub fn pod_veth(&self, ip: IpAddr) -> Option<&Link> {
        let len = Self::host_len(ip);
        let mut routes: Vec<&Route> = self.routes.iter().filter(|r| r.dst == Some((ip, len))).collect();
        routes.sort_by_key(|r| r.table != MAIN_TABLE);
        routes.iter().find_map(|r| self.pod_link(r.oif?))
    }

    /// Every pod IP routed to a local veth, with that veth (the pods of this node).
    pub fn pod_routes(&self) -> Vec<(IpAddr, &Link)> {
        let mut v: Vec<(IpAddr, &Link)> = self
            .routes
            .iter()
            .filter_map(|r| match r.dst {
                Some((ip, len)) if len == Self::host_len(ip) => {
                    r.oif.and_then(|i| self.pod_link(i)).map(|l| (ip, l))
                }
                _ => None,
            })
            .collect();
        v.sort_by_key(|(ip, l)| (*ip, l.index));
        v.dedup_by_key(|(ip, l)| (*ip, l.index));
        v
    }

    /// The other host veths of the pod behind `veth` (their peers share one network
    /// namespace), e.g. the egress-cni plugin's `veth…` beside an IPv6 pod's `eni…`.
    pub fn sibling_veths(&self, veth: &Link) -> Vec<&Link> {
        let Some(ns) = veth.peer_netns else { return Vec::new() };
        self.links
            .iter()
            .filter(|l| {
                l.index != veth.index && l.peer_netns == Some(ns) && l.kind.as_deref() == Some("veth")
            })
            .collect()
    }

    /// The `from <podIP> lookup <table>` rule (pref 1536) of a pod IP, if any.
    pub fn from_pod_rule(&self, ip: IpAddr) -> Option<&Rule> {
        let len = Self::host_len(ip);
        self.rules.iter().find(|r| r.priority == PREF_FROM_POD && r.src == Some((ip, len)))
    }

    /// The `iif <link> lookup <table>` rule (pref 10, strict Security Groups for Pods).
    pub fn iif_rule(&self, ifname: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.priority == PREF_IIF && r.iif.as_deref() == Some(ifname))
    }

    /// Who owns a pod IP: the ENI or branch ENI of the table its pref-1536 rule (or, strict
    /// SGP, its veth's pref-10 `iif` rule) points at; the primary ENI without such a rule (pods
    /// on the primary ENI have none).
    pub fn pod_ip_owner(&self, ip: IpAddr) -> Option<Owner<'_>> {
        let table = self
            .from_pod_rule(ip)
            .or_else(|| self.pod_veth(ip).and_then(|v| self.iif_rule(&v.name)))
            .map(|r| r.table);
        match table {
            Some(t) => self
                .branches
                .iter()
                .find(|b| b.table == Some(t))
                .map(Owner::Branch)
                .or_else(|| self.enis.iter().find(|e| e.table == Some(t)).map(Owner::Eni)),
            None => self.primary_eni().map(Owner::Eni),
        }
    }

    /// The name of the ENI or branch ENI whose IP the pod uses.
    pub fn pod_ip_owner_eni(&self, ip: IpAddr) -> Option<String> {
        self.pod_ip_owner(ip).map(|o| o.name().to_string())
    }
}
