//! The typed flow model: what podtrace knows about one flow of one pod, built complete in one
//! pass by [`super::flows`]. Serialization lives at the edges (`report::json`); nothing here is
//! compared as text.
use std::{fmt, net::IpAddr, net::SocketAddr};

use tracer_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Tuple, hook};

/// What an interface is to the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    PodVeth,
    Eni,
    /// A branch ENI of Security Groups for Pods (a VLAN link on a trunk ENI).
    BranchEni,
    Other,
}

/// The TC hook of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    pub fn from_kernel(h: u8) -> Hook {
        if h == hook::INGRESS { Hook::Ingress } else { Hook::Egress }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// Who opened the flow, seen from the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// The pod opened it.
    Egress,
    /// A peer opened it.
    Ingress,
}

/// What a rewrite is, from the rule that made it or, without one, from the tuples alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NatKind {
    /// The VPC CNI's SNAT of pod traffic leaving the VPC (AWS-SNAT-CHAIN).
    PodEgressSnat,
    /// kube-proxy's masquerade of service traffic (KUBE-POSTROUTING / kube-proxy masquerading).
    Masquerade,
    /// kube-proxy's DNAT of a service address to an endpoint.
    ServiceDnat,
    /// kube-proxy's DNAT of a node address and NodePort to an endpoint.
    NodeportDnat,
    Snat,
    Dnat,
}

impl NatKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NatKind::PodEgressSnat => "pod-egress-snat",
            NatKind::Masquerade => "masquerade",
            NatKind::ServiceDnat => "service-dnat",
            NatKind::NodeportDnat => "nodeport-dnat",
            NatKind::Snat => "snat",
            NatKind::Dnat => "dnat",
        }
    }
}

/// How an ingress flow reached the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IngressMode {
    /// Arrived for node:NodePort and was DNATed (target-type: instance).
    Nodeport,
    /// Arrived for the pod IP (target-type: ip).
    Direct,
}

impl IngressMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressMode::Nodeport => "nodeport",
            IngressMode::Direct => "direct",
        }
    }
}

/// The transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Other(u8),
}

impl Proto {
    pub fn from_number(p: u8) -> Proto {
        match p {
            PROTO_TCP => Proto::Tcp,
            PROTO_UDP => Proto::Udp,
            PROTO_ICMP => Proto::Icmp,
            PROTO_ICMPV6 => Proto::Icmpv6,
            other => Proto::Other(other),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proto::Tcp => f.write_str("tcp"),
            Proto::Udp => f.write_str("udp"),
            Proto::Icmp => f.write_str("icmp"),
            Proto::Icmpv6 => f.write_str("icmpv6"),
            Proto::Other(n) => write!(f, "ip-proto-{n}"),
        }
    }
}

/// A hook of one interface, printed `<ifname>/<hook>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HopName {
    pub ifname: String,
    pub hook: Hook,
}

impl fmt::Display for HopName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ifname, self.hook.as_str())
    }
}

/// One hook of a flow's path, with the tuple it saw there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub ifname: String,
    pub role: Role,
    pub hook: Hook,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub packets: u64,
    pub bytes: u64,
    pub ifindex: u32,
    pub tuple: Tuple,
    pub first_ns: u64,
    pub last_ns: u64,
    pub tcp_flags: u8,
}

impl Hop {
    pub fn name(&self) -> HopName {
        HopName { ifname: self.ifname.clone(), hook: self.hook }
    }
}

/// A rewrite between two hooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nat {
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// Last hook that saw the packet before the rewrite.
    pub after_hop: Option<HopName>,
    /// First hook that saw it rewritten.
    pub before_hop: Option<HopName>,
    pub kind: NatKind,
    /// The chain holding the rewriting statement (`table/chain` for native nftables), when
    /// one rule read from the node matches.
    pub chain: Option<String>,
    /// The Kubernetes service (`namespace/name[:port]`) of a kube-proxy rewrite, from the
    /// rule's comment (iptables mode) or chain name (nftables mode).
    pub service: Option<String>,
}

/// Sampled delays between two hooks.
#[derive(Clone, Debug, PartialEq)]
pub struct HopLatency {
    pub from: HopName,
    pub to: HopName,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// The sampled delays themselves (µs, sorted), for aggregations such as `compare`.
    pub values_us: Vec<f64>,
}

/// Drops of this flow's packets at one place, for one reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowDrop {
    pub reason: String,
    pub location: String,
    pub after_hop: Option<HopName>,
    /// For a drop by a tc hook (`TC_INGRESS`/`TC_EGRESS`): the other tool's tc program that
    /// runs there, when exactly one does (e.g. a network policy's `handle_egress`).
    pub program: Option<String>,
    pub count: u64,
}

/// One flow of one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Flow {
    pub pod: String,
    pub namespace: String,
    pub pod_ip: IpAddr,
    pub proto: Proto,
    pub direction: Direction,
    /// The first packet as the pod sees it (at its veth).
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub path: Vec<Hop>,
    pub reply_path: Vec<Hop>,
    /// The ENI (or branch ENI) the flow left or entered the node by.
    pub eni: Option<String>,
    /// When `eni` is a branch ENI: the trunk ENI it rides on.
    pub trunk_eni: Option<String>,
    /// The AWS id of the pod's branch ENI (`vpc.amazonaws.com/pod-eni` annotation).
    pub branch_eni_id: Option<String>,
    pub pod_ip_owner_eni: Option<String>,
    pub snat: Option<Nat>,
    pub dnat: Option<Nat>,
    pub ingress_mode: Option<IngressMode>,
    pub hop_latency_us: Vec<HopLatency>,
    pub packets: u64,
    pub bytes: u64,
    /// Ingress flows: whether the pod saw the client's own address.
    pub client_ip_preserved: Option<bool>,
    /// Entered the node by an ENI and left it again by an ENI (served by another node).
    pub node_crossing: bool,
    /// TCP whose opener never completed the handshake although replies left the node: the
    /// last hop those replies took (e.g. `eth1/egress` when the VPC drops them).
    pub unanswered_after: Option<HopName>,
    /// TCP whose opener never got any reply through this node.
    pub no_reply: bool,
    pub drops: Vec<FlowDrop>,
    pub retransmits: u64,
    /// Milliseconds since the Unix epoch of the first and last packet seen.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// The initiating tuple as first seen: a stable identity for joining snapshots.
    pub id_tuple: Tuple,
    /// Community ID v1 of the flow's tuple on the wire between nodes (see `flows`).
    pub community_id: Option<String>,
}

impl Flow {
    /// Rewrites of the initiating direction (0, 1 or 2).
    pub fn nat_steps(&self) -> u32 {
        self.snat.is_some() as u32 + self.dnat.is_some() as u32
    }

    /// `proto:src>dst` of the initiating tuple.
    pub fn id(&self) -> String {
        let t = &self.id_tuple;
        format!(
            "{}:{}>{}",
            Proto::from_number(t.proto),
            crate::kernel::addr::src(t),
            crate::kernel::addr::dst(t)
        )
    }

    /// The sampled delays from the first to the last hook of the path (or of the reply path).
    pub fn end_to_end(&self, reply: bool) -> Option<&HopLatency> {
        let path = if reply { &self.reply_path } else { &self.path };
        let (first, last) = (path.first()?.name(), path.last()?.name());
        self.hop_latency_us.iter().find(|l| l.from == first && l.to == last)
    }
}

/// Percentile of sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
