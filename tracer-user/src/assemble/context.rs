//! What the assembler needs to know about the node and the traced pods besides the kernel's
//! observations: interface names and roles, node addresses, the NAT rules, the pods.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use crate::{
    assemble::model::Role,
    node::{inventory::Inventory, links::Link, rules::Ruleset, tc_programs::TcPrograms},
};

#[derive(Clone, Debug)]
pub struct Iface {
    pub name: String,
    pub role: Role,
    /// The trunk ENI of a branch ENI.
    pub trunk: Option<String>,
}

/// A traced pod as the assembler needs it.
#[derive(Clone, Debug, Default)]
pub struct TracedPod {
    pub name: String,
    pub namespace: String,
    /// Its addresses: the API's, and those routed to its other host veths (egress-cni's
    /// IPv4 address of an IPv6 pod).
    pub ips: Vec<IpAddr>,
    /// ifindexes of its host veths when the pod runs on this node (more than one when it has
    /// more than one interface).
    pub veths: Vec<u32>,
    /// The ENI or branch ENI whose IP the pod uses.
    pub owner_eni: Option<String>,
    /// The AWS id of its branch ENI (Security Groups for Pods), from its pod-eni annotation.
    pub branch_eni_id: Option<String>,
}

impl TracedPod {
    /// The pod on this node behind `veth`, with `ips` from the API (or its routes): its
    /// sibling veths and their addresses join it.
    pub fn on_node(
        inv: &Inventory,
        veth: &Link,
        name: String,
        namespace: String,
        mut ips: Vec<IpAddr>,
    ) -> TracedPod {
        let mut veths = vec![veth.index];
        for s in inv.sibling_veths(veth) {
            veths.push(s.index);
        }
        for (ip, l) in inv.pod_routes() {
            if veths.contains(&l.index) && !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        let owner_eni = ips.iter().find_map(|ip| inv.pod_ip_owner_eni(*ip));
        TracedPod { name, namespace, ips, veths, owner_eni, branch_eni_id: None }
    }

    pub fn is_veth(&self, ifindex: u32) -> bool {
        self.veths.contains(&ifindex)
    }
}

/// Everything about the node the assembler needs besides the observations.
#[derive(Clone, Debug, Default)]
pub struct NodeContext {
    pub ifaces: HashMap<u32, Iface>,
    pub node_ips: HashSet<IpAddr>,
    /// The node's packet-filter rules, to name rewrites by.
    pub rules: Ruleset,
    /// Other tools' tc programs on the traced interfaces, to name what dropped at a tc hook.
    pub tc_programs: TcPrograms,
}

impl NodeContext {
    /// Names and roles of the node's interfaces, its addresses and NAT rules.
    pub fn new(inv: &Inventory, rules: Ruleset) -> NodeContext {
        let mut ctx =
            NodeContext { node_ips: inv.node_ips().into_iter().collect(), rules, ..Default::default() };
        ctx.set_interfaces(inv);
        ctx
    }

    /// Re-reads interface names and roles (pods come and go; the rules change rarely).
    pub fn set_interfaces(&mut self, inv: &Inventory) {
        self.ifaces.clear();
        let iface = |name: &str, role| Iface { name: name.to_string(), role, trunk: None };
        for l in &inv.links {
            self.ifaces.insert(l.index, iface(&l.name, Role::Other));
        }
        for (_, l) in inv.pod_routes() {
            self.ifaces.insert(l.index, iface(&l.name, Role::PodVeth));
        }
        for e in &inv.enis {
            self.ifaces.insert(e.ifindex, iface(&e.name, Role::Eni));
        }
        for b in &inv.branches {
            self.ifaces
                .insert(b.ifindex, Iface { trunk: Some(b.trunk.clone()), ..iface(&b.name, Role::BranchEni) });
        }
    }

    /// The interface's name, or `if<index>` for one that vanished before we read its name.
    pub fn ifname(&self, ifindex: u32) -> String {
        self.ifaces.get(&ifindex).map(|i| i.name.clone()).unwrap_or_else(|| format!("if{ifindex}"))
    }

    pub fn role(&self, ifindex: u32) -> Role {
        self.ifaces.get(&ifindex).map(|i| i.role).unwrap_or(Role::Other)
    }

    /// The trunk ENI of a branch ENI.
    pub fn trunk(&self, ifindex: u32) -> Option<&str> {
        self.ifaces.get(&ifindex).and_then(|i| i.trunk.as_deref())
    }
}

/// Converts monotonic kernel nanoseconds to Unix milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    /// realtime - monotonic, in ns.
    pub offset_ns: i128,
}

impl Clock {
    pub fn now() -> Clock {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok();
        let real = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).ok();
        let ns = |t: nix::sys::time::TimeSpec| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128;
        match (mono, real) {
            (Some(m), Some(r)) => Clock { offset_ns: ns(r) - ns(m) },
            _ => Clock::default(),
        }
    }
    pub fn unix_ms(&self, mono_ns: u64) -> u64 {
        ((mono_ns as i128 + self.offset_ns) / 1_000_000).max(0) as u64
    }
    pub fn unix_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
    }
}
