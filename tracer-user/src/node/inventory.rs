//! The node as the VPC CNI built it, read over netlink: ENIs, their route tables, pod veths and
//! which ENI owns each pod IP. Nothing here assumes interface names: ENIs are the interfaces
//! that carry the node's VPC addresses (eth0/eth1 on AL2, ens5/ens6 on AL2023, ...).
use std::net::IpAddr;

use anyhow::{Result, bail};
use serde::Serialize;

use super::links::{self, Addr, Link, Route, Rule};

/// VPC CNI rule priorities (amazon-vpc-cni-k8s pkg/networkutils).
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

/// A snapshot of the node's links, addresses, routes and rules.
#[derive(Clone, Debug)]
pub struct Inventory {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
    pub enis: Vec<Eni>,
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
        let mut inv = Inventory { links, addrs, routes, rules, enis: Vec::new() };
        inv.enis = inv.discover_enis(eni_override)?;
        Ok(inv)
    }

    pub fn from_parts(links: Vec<Link>, addrs: Vec<Addr>, routes: Vec<Route>, rules: Vec<Rule>) -> Inventory {
        let mut inv = Inventory { links, addrs, routes, rules, enis: Vec::new() };
        inv.enis = inv.discover_enis(&[]).unwrap_or_default();
        inv
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

    /// The host veth of a pod IP: the interface of its /32 (/128) route in the main table.
    pub fn pod_veth(&self, ip: IpAddr) -> Option<&Link> {
        let host_len = if ip.is_ipv4() { 32 } else { 128 };
        self.routes
            .iter()
            .filter(|r| r.table == MAIN_TABLE)
            .find(|r| r.dst == Some((ip, host_len)))
            .and_then(|r| r.oif)
            .and_then(|i| self.link(i))
            .filter(|l| self.eni(l.index).is_none())
    }

    /// Every pod IP routed to a local veth, with that veth (the pods of this node).
    pub fn pod_routes(&self) -> Vec<(IpAddr, &Link)> {
        self.routes
            .iter()
            .filter(|r| r.table == MAIN_TABLE)
            .filter_map(|r| match r.dst {
                Some((ip, len)) if len == if ip.is_ipv4() { 32 } else { 128 } => {
                    r.oif.and_then(|i| self.link(i)).map(|l| (ip, l))
                }
                _ => None,
            })
            .filter(|(_, l)| self.eni(l.index).is_none() && l.name != "lo")
            .collect()
    }

    /// The `from <podIP> lookup <table>` rule (pref 1536) of a pod IP, if any.
    pub fn from_pod_rule(&self, ip: IpAddr) -> Option<&Rule> {
        let host_len = if ip.is_ipv4() { 32 } else { 128 };
        self.rules.iter().find(|r| r.priority == PREF_FROM_POD && r.src == Some((ip, host_len)))
    }

    /// The ENI whose secondary IP the pod uses: the ENI of the table its pref-1536 rule points
    /// at, else the primary ENI (pods on the primary ENI have no such rule).
    pub fn pod_ip_owner_eni(&self, ip: IpAddr) -> Option<&Eni> {
        match self.from_pod_rule(ip) {
            Some(rule) => self.enis.iter().find(|e| e.table == Some(rule.table)),
            None => self.primary_eni(),
        }
    }
}
