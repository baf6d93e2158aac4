//! What the assembler needs to know about the node and the traced pods besides the kernel's
//! observations: interface names and roles, node addresses, the NAT rules, the pods.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use crate::{assemble::model::Role, node::inventory::Inventory, node::rules::NatRules};

#[derive(Clone, Debug)]
pub struct Iface {
    pub name: String,
    pub role: Role,
}

/// A traced pod as the assembler needs it.
#[derive(Clone, Debug)]
pub struct TracedPod {
    pub name: String,
    pub namespace: String,
    pub ips: Vec<IpAddr>,
    /// ifindex of the host veth when the pod runs on this node.
    pub veth: Option<u32>,
    pub owner_eni: Option<String>,
}

/// Everything about the node the assembler needs besides the observations.
#[derive(Clone, Debug, Default)]
pub struct NodeContext {
    pub ifaces: HashMap<u32, Iface>,
    pub node_ips: HashSet<IpAddr>,
    pub nat_rules: NatRules,
}

impl NodeContext {
    /// Names and roles of the node's interfaces, its addresses and NAT rules.
    pub fn new(inv: &Inventory, nat_rules: NatRules) -> NodeContext {
        let mut ctx =
            NodeContext { node_ips: inv.node_ips().into_iter().collect(), nat_rules, ..Default::default() };
        ctx.set_interfaces(inv);
        ctx
    }

    /// Re-reads interface names and roles (pods come and go; the rules change rarely).
    pub fn set_interfaces(&mut self, inv: &Inventory) {
        self.ifaces.clear();
        for l in &inv.links {
            self.ifaces.insert(l.index, Iface { name: l.name.clone(), role: Role::Other });
        }
        for (_, l) in inv.pod_routes() {
            self.ifaces.insert(l.index, Iface { name: l.name.clone(), role: Role::PodVeth });
        }
        for e in &inv.enis {
            self.ifaces.insert(e.ifindex, Iface { name: e.name.clone(), role: Role::Eni });
        }
    }

    /// The interface's name, or `if<index>` for one that vanished before we read its name.
    pub fn ifname(&self, ifindex: u32) -> String {
        self.ifaces.get(&ifindex).map(|i| i.name.clone()).unwrap_or_else(|| format!("if{ifindex}"))
    }

    pub fn role(&self, ifindex: u32) -> Role {
        self.ifaces.get(&ifindex).map(|i| i.role).unwrap_or(Role::Other)
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
}
