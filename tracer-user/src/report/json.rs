//! The JSON contract of `podtrace -o json`, the agent's `GET /flows` and its client (see
//! README). Built from the typed model at the edges only; the fields are typed too, and
//! serialize to exactly the documented text (`"ip:port"`, `"eth0/egress"`, `"nodeport"`).
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::assemble::model::{
    Direction, Flow, FlowDrop, Hook, Hop, HopLatency, HopName, IngressMode, Nat, NatKind, Proto, Role,
};

/// One hook of a flow's path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopReport {
    pub ifname: String,
    pub role: Role,
    pub hook: Hook,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub packets: u64,
    pub bytes: u64,
}

impl HopReport {
    pub fn name(&self) -> HopName {
        HopName { ifname: self.ifname.clone(), hook: self.hook }
    }
}

/// A rewrite between two hooks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatReport {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub after_hop: Option<HopName>,
    pub before_hop: Option<HopName>,
    pub kind: NatKind,
    pub chain: Option<String>,
    pub service: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyReport {
    pub from: HopName,
    pub to: HopName,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub samples: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropReport {
    pub reason: String,
    pub location: String,
    pub after_hop: Option<HopName>,
    pub program: Option<String>,
    pub count: u64,
}

/// One flow of one pod, as printed and served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowReport {
    pub pod: String,
    pub namespace: String,
    pub pod_ip: IpAddr,
    pub proto: Proto,
    pub direction: Direction,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub path: Vec<HopReport>,
    pub reply_path: Vec<HopReport>,
    pub eni: Option<String>,
    pub trunk_eni: Option<String>,
    pub branch_eni_id: Option<String>,
    pub pod_ip_owner_eni: Option<String>,
    pub snat: Option<NatReport>,
    pub dnat: Option<NatReport>,
    pub ingress_mode: Option<IngressMode>,
    pub hop_latency_us: Vec<LatencyReport>,
    pub packets: u64,
    pub bytes: u64,
    pub nat_steps: u32,
    pub client_ip_preserved: Option<bool>,
    pub node_crossing: bool,
    pub unanswered_after: Option<HopName>,
    pub no_reply: bool,
    pub drops: Vec<DropReport>,
    pub retransmits: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub id: String,
    pub community_id: Option<String>,
}

impl From<&Hop> for HopReport {
    fn from(h: &Hop) -> HopReport {
        HopReport {
            ifname: h.ifname.clone(),
            role: h.role,
            hook: h.hook,
            src: h.src,
            dst: h.dst,
            packets: h.packets,
            bytes: h.bytes,
        }
    }
}

impl From<&Nat> for NatReport {
    fn from(n: &Nat) -> NatReport {
        NatReport {
            from: n.from,
            to: n.to,
            after_hop: n.after_hop.clone(),
            before_hop: n.before_hop.clone(),
            kind: n.kind,
            chain: n.chain.clone(),
            service: n.service.clone(),
        }
    }
}

impl From<&HopLatency> for LatencyReport {
    fn from(l: &HopLatency) -> LatencyReport {
        LatencyReport {
            from: l.from.clone(),
            to: l.to.clone(),
            p50: l.p50,
            p90: l.p90,
            p99: l.p99,
            samples: l.values_us.len(),
        }
    }
}

impl From<&FlowDrop> for DropReport {
    fn from(d: &FlowDrop) -> DropReport {
        DropReport {
            reason: d.reason.clone(),
            location: d.location.clone(),
            after_hop: d.after_hop.clone(),
            program: d.program.clone(),
            count: d.count,
        }
    }
}

impl From<&Flow> for FlowReport {
    fn from(f: &Flow) -> FlowReport {
        FlowReport {
            pod: f.pod.clone(),
            namespace: f.namespace.clone(),
            pod_ip: f.pod_ip,
            proto: f.proto,
            direction: f.direction,
            src: f.src,
            dst: f.dst,
            path: f.path.iter().map(HopReport::from).collect(),
            reply_path: f.reply_path.iter().map(HopReport::from).collect(),
            eni: f.eni.clone(),
            trunk_eni: f.trunk_eni.clone(),
            branch_eni_id: f.branch_eni_id.clone(),
            pod_ip_owner_eni: f.pod_ip_owner_eni.clone(),
            snat: f.snat.as_ref().map(NatReport::from),
            dnat: f.dnat.as_ref().map(NatReport::from),
            ingress_mode: f.ingress_mode,
            hop_latency_us: f.hop_latency_us.iter().map(LatencyReport::from).collect(),
            packets: f.packets,
            bytes: f.bytes,
            nat_steps: f.nat_steps(),
            client_ip_preserved: f.client_ip_preserved,
            node_crossing: f.node_crossing,
            unanswered_after: f.unanswered_after.clone(),
            no_reply: f.no_reply,
            drops: f.drops.iter().map(DropReport::from).collect(),
            retransmits: f.retransmits,
            first_seen_ms: f.first_seen_ms,
            last_seen_ms: f.last_seen_ms,
            id: f.id(),
            community_id: f.community_id.clone(),
        }
    }
}

impl FlowReport {
    /// The median delay from the first to the last hook of the initiating path.
    pub fn in_node_latency(&self) -> Option<f64> {
        let (first, last) = (self.path.first()?.name(), self.path.last()?.name());
        self.hop_latency_us.iter().find(|l| l.from == first && l.to == last).map(|l| l.p50)
    }
}

/// The model's enums and names as their contract text, in both directions.
trait Text: Sized {
    const WHAT: &'static str;
    fn text(&self) -> String;
    fn parse(s: &str) -> Option<Self>;
}

macro_rules! as_text {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.text())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                <$t as Text>::parse(&s).ok_or_else(|| de::Error::custom(format!("invalid {} {s:?}", <$t as Text>::WHAT)))
            }
        }
    )*};
}

as_text!(Role, Hook, Direction, NatKind, IngressMode, Proto, HopName);

/// Every value of an enum, to parse by matching the text.
fn parse_among<T: Text + Copy>(all: &[T], s: &str) -> Option<T> {
    all.iter().copied().find(|v| v.text() == s)
}

impl Text for Role {
    const WHAT: &'static str = "role";
    fn text(&self) -> String {
        match self {
            Role::PodVeth => "pod-veth",
            Role::Eni => "eni",
            Role::BranchEni => "branch-eni",
            Role::Other => "other",
        }
        .into()
    }
    fn parse(s: &str) -> Option<Self> {
        parse_among(&[Role::PodVeth, Role::Eni, Role::BranchEni, Role::Other], s)
    }
}

impl Text for Hook {
    const WHAT: &'static str = "hook";
    fn text(&self) -> String {
        self.as_str().into()
    }
    fn parse(s: &str) -> Option<Self> {
        parse_among(&[Hook::Ingress, Hook::Egress], s)
    }
}

impl Text for Direction {
    const WHAT: &'static str = "direction";
    fn text(&self) -> String {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        }
        .into()
    }
    fn parse(s: &str) -> Option<Self> {
        parse_among(&[Direction::Egress, Direction::Ingress], s)
    }
}

impl Text for NatKind {
    const WHAT: &'static str = "NAT kind";
    fn text(&self) -> String {
        self.as_str().into()
    }
    fn parse(s: &str) -> Option<Self> {
        use NatKind::*;
        parse_among(&[PodEgressSnat, Masquerade, ServiceDnat, NodeportDnat, Snat, Dnat], s)
    }
}

impl Text for IngressMode {
    const WHAT: &'static str = "ingress mode";
    fn text(&self) -> String {
        self.as_str().into()
    }
    fn parse(s: &str) -> Option<Self> {
        parse_among(&[IngressMode::Nodeport, IngressMode::Direct], s)
    }
}

impl Text for Proto {
    const WHAT: &'static str = "protocol";
    fn text(&self) -> String {
        self.to_string()
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "icmp" => Some(Proto::Icmp),
            "icmpv6" => Some(Proto::Icmpv6),
            other => other.strip_prefix("ip-proto-")?.parse().ok().map(Proto::from_number),
        }
    }
}

impl Text for HopName {
    const WHAT: &'static str = "hop (<ifname>/<hook>)";
    fn text(&self) -> String {
        self.to_string()
    }
    fn parse(s: &str) -> Option<Self> {
        let (ifname, hook) = s.rsplit_once('/')?;
        Some(HopName { ifname: ifname.into(), hook: Hook::parse(hook)? })
    }
}

impl FromStr for HopName {
    type Err = String;
    fn from_str(s: &str) -> Result<HopName, String> {
        <HopName as Text>::parse(s).ok_or_else(|| format!("invalid hop {s:?}"))
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
