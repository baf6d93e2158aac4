//! Paths: a pod's flows grouped by the way they cross the node, so that a busy pod reads as a
//! handful of rows (VPC, internet via SNAT, NodePort, ...) instead of one line per connection.
//!
//! A path's key is what a user debugging the node tells apart: the pod, direction, protocol,
//! the peer, the pod's own port on ingress, the ENI, the kinds of NAT, the ingress mode and
//! whether the flow crossed to another node. Everything that only tells connections apart
//! (ephemeral ports, the port a SNAT picked, which endpoint a DNAT chose) is summarised with
//! wildcards instead. Pure: the live view, the plain summary, the grouped JSON and the diagram
//! are all drawn from the same groups.
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
};

use crate::assemble::model::{Direction, Flow, HopName, IngressMode, NatKind, Proto, Role, percentile};

/// What one row of the view stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// One row per distinct path through the node.
    Path,
    /// One row per flow (connection).
    Flow,
}

/// How the rows are ordered (both descending).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    Bytes,
    Rate,
}

/// A path's peer port: exact, the `*` wildcard, or none for protocols without ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerPort {
    Port(u16),
    Any,
    None,
}

/// Who the pod talks to on a path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// A Kubernetes service as the node's rules name it (`namespace/name[:port]`).
    Service(String),
    /// An address. Egress: the destination as the pod addressed it (its ephemeral source port
    /// never matters). Ingress: the client, any port (clients pick ephemeral ports).
    Addr { ip: IpAddr, port: PeerPort },
    /// The smaller peers of a path that has too many to list, folded into one row.
    Many { count: usize },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Service(name) => f.write_str(name),
            Peer::Addr { ip, port } => {
                let port = match port {
                    PeerPort::Port(p) => p.to_string(),
                    PeerPort::Any => "*".into(),
                    PeerPort::None => return write!(f, "{ip}"),
                };
                match ip {
                    IpAddr::V4(v4) => write!(f, "{v4}:{port}"),
                    IpAddr::V6(v6) => write!(f, "[{v6}]:{port}"),
                }
            }
            Peer::Many { count } => write!(f, "* ({count} peers)"),
        }
    }
}

/// What tells one path from another.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathKey {
    pub namespace: String,
    pub pod: String,
    pub direction: Direction,
    pub proto: Proto,
    pub peer: Peer,
    /// Ingress: the pod's port the peer reached (what the pod serves). Egress flows leave from
    /// ephemeral ports, so `None`.
    pub pod_port: Option<u16>,
    /// The ENI the path leaves or enters the node by; `None` if it never left the node.
    pub eni: Option<String>,
    pub snat: Option<NatKind>,
    pub dnat: Option<NatKind>,
    pub ingress_mode: Option<IngressMode>,
    pub node_crossing: bool,
    /// `--group-by flow`: the flow's id (one row per flow).
    pub flow: Option<String>,
}

/// A set of addresses summarised for display: the address and port when all are equal, `*`
/// where they vary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrSet {
    /// Distinct addresses, sorted, at most [`AddrSet::MAX_IPS`] kept.
    ips: Vec<IpAddr>,
    /// More distinct addresses than were kept.
    more_ips: bool,
    port: u16,
    port_varies: bool,
}

impl AddrSet {
    const MAX_IPS: usize = 16;

    pub fn of(a: SocketAddr) -> AddrSet {
        AddrSet { ips: vec![a.ip()], more_ips: false, port: a.port(), port_varies: false }
    }

    pub fn merge(&mut self, other: &AddrSet) {
        for ip in &other.ips {
            if let Err(at) = self.ips.binary_search(ip) {
                if self.ips.len() < Self::MAX_IPS {
                    self.ips.insert(at, *ip);
                } else {
                    self.more_ips = true;
                }
            }
        }
        self.more_ips |= other.more_ips;
        self.port_varies |= other.port_varies || other.port != self.port;
    }

    /// The one address all members share, if they do.
    pub fn ip(&self) -> Option<IpAddr> {
        (self.ips.len() == 1 && !self.more_ips).then(|| self.ips[0])
    }

    /// The one port all members share, if they do.
    pub fn port(&self) -> Option<u16> {
        (!self.port_varies).then_some(self.port)
    }

    /// Distinct addresses (a lower bound when there are very many).
    pub fn ip_count(&self) -> usize {
        self.ips.len()
    }

    pub fn ips(&self) -> &[IpAddr] {
        &self.ips
    }
}

/// `198.18.1.10:*`, `*:8080`, `[2001:2::1]:80`; `*:8080 (3 addresses)` when several.
impl fmt::Display for AddrSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = self.port().map_or("*".to_string(), |p| p.to_string());
        match self.ip() {
            Some(IpAddr::V4(v4)) => write!(f, "{v4}:{port}"),
            Some(IpAddr::V6(v6)) => write!(f, "[{v6}]:{port}"),
            None => {
                let plus = if self.more_ips { "+" } else { "" };
                write!(f, "*:{port} ({}{plus} addresses)", self.ips.len())
            }
        }
    }
}

/// One NAT step of a path: its kind (part of the key) and the addresses it rewrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatStep {
    pub kind: NatKind,
    pub from: AddrSet,
    pub to: AddrSet,
    /// The rule chain, when every connection's rewrite was matched to the same one.
    pub chain: Option<String>,
    /// The Kubernetes service of the rewrite, when every connection's names the same one.
    pub service: Option<String>,
    chain_varies: bool,
    service_varies: bool,
}

impl NatStep {
    fn of(n: &crate::assemble::model::Nat) -> NatStep {
        NatStep {
            kind: n.kind,
            from: AddrSet::of(n.from),
            to: AddrSet::of(n.to),
            chain: n.chain.clone(),
            service: n.service.clone(),
            chain_varies: false,
            service_varies: false,
        }
    }

    fn merge(&mut self, other: &NatStep) {
        self.from.merge(&other.from);
        self.to.merge(&other.to);
        if self.chain != other.chain || other.chain_varies {
            self.chain_varies = true;
            self.chain = None;
        }
        if self.service != other.service || other.service_varies {
            self.service_varies = true;
            self.service = None;
        }
    }
}

/// Latency percentiles over sampled packets, µs.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub samples: usize,
}

/// Drops of a path's packets at one place, for one reason.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DropPlace {
    pub reason: String,
    pub after_hop: Option<HopName>,
}

/// One connection of a path, as its expanded row shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    pub id: String,
    /// The peer's address with its port (the client on ingress, the destination on egress).
    pub peer: SocketAddr,
    /// The pod's side of the connection as the pod sees it.
    pub pod_side: SocketAddr,
    pub snat_to: Option<SocketAddr>,
    pub dnat_to: Option<SocketAddr>,
    pub packets: u64,
    pub bytes: u64,
    pub active: bool,
    pub in_node_p50_us: Option<f64>,
    pub drops: u64,
    pub retransmits: u64,
    /// TCP whose opener never got an answer through this node.
    pub unanswered: bool,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

/// One row: a path and its totals.
#[derive(Clone, Debug, PartialEq)]
pub struct PathGroup {
    pub key: PathKey,
    /// The pod's host veth on this path (from the flows' hops), if seen.
    pub veth: Option<String>,
    pub snat: Option<NatStep>,
    pub dnat: Option<NatStep>,
    pub connections: Vec<Connection>,
    pub packets: u64,
    pub bytes: u64,
    /// Bytes per second since the previous report (see [`RateMeter`]); `None` until measured.
    pub bytes_per_sec: Option<f64>,
    /// Sampled in-node delays (µs) of every connection, sorted once grouping is done.
    pub latency_us: Vec<f64>,
    pub drops: BTreeMap<DropPlace, u64>,
    pub retransmits: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

impl PathGroup {
    pub fn total(&self) -> usize {
        self.connections.len()
    }

    pub fn active(&self) -> usize {
        self.connections.iter().filter(|c| c.active).count()
    }

    pub fn unanswered(&self) -> usize {
        self.connections.iter().filter(|c| c.unanswered).count()
    }

    pub fn dropped(&self) -> u64 {
        self.drops.values().sum()
    }

    /// In-node latency percentiles over every sampled packet of the path.
    pub fn latency(&self) -> Option<Percentiles> {
        if self.latency_us.is_empty() {
            return None;
        }
        let v = &self.latency_us;
        Some(Percentiles {
            p50: percentile(v, 50.0),
            p90: percentile(v, 90.0),
            p99: percentile(v, 99.0),
            samples: v.len(),
        })
    }

    /// The ids of the path's flows.
    pub fn flow_ids(&self) -> impl Iterator<Item = &str> {
        self.connections.iter().map(|c| c.id.as_str())
    }

    fn absorb(&mut self, other: PathGroup) {
        merge_nat(&mut self.snat, other.snat.as_ref());
        merge_nat(&mut self.dnat, other.dnat.as_ref());
        if self.veth.is_none() {
            self.veth = other.veth;
        }
        self.connections.extend(other.connections);
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.latency_us.extend(other.latency_us);
        for (place, n) in other.drops {
            *self.drops.entry(place).or_default() += n;
        }
        self.retransmits += other.retransmits;
        self.first_seen_ms = self.first_seen_ms.min(other.first_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
    }
}

fn merge_nat(into: &mut Option<NatStep>, other: Option<&NatStep>) {
    match (into.as_mut(), other) {
        (Some(a), Some(b)) => a.merge(b),
        (None, Some(b)) => *into = Some(b.clone()),
        _ => {}
    }
}

/// A path with more peers than this shows the biggest and folds the rest into one row.
pub const MAX_PEERS_PER_PATH: usize = 8;

/// Non-TCP flows (and TCP never answered) count as active this long after their last packet.
pub const ACTIVE_WINDOW_MS: u64 = 10_000;

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// How to group.
pub struct GroupOptions {
    pub by: GroupBy,
    /// Unix ms "now", for the active connections.
    pub now_ms: u64,
    /// Peers listed per path before the rest are folded (`by: Path` only).
    pub max_peers: usize,
}

impl GroupOptions {
    pub fn new(by: GroupBy, now_ms: u64) -> GroupOptions {
        GroupOptions { by, now_ms, max_peers: MAX_PEERS_PER_PATH }
    }
}

/// Whether a connection still lives: TCP until a FIN or RST is seen (an answered connection
/// may idle for long), everything else while packets keep coming.
pub fn is_active(f: &Flow, now_ms: u64) -> bool {
    let recent = now_ms.saturating_sub(f.last_seen_ms) <= ACTIVE_WINDOW_MS;
    match f.proto {
        Proto::Tcp => {
            let flags = f.path.iter().chain(&f.reply_path).fold(0u8, |acc, h| acc | h.tcp_flags);
            let closed = flags & (TCP_FIN | TCP_RST) != 0;
            let answered = !f.reply_path.is_empty() && !f.no_reply && f.unanswered_after.is_none();
            !closed && (answered || recent)
        }
        _ => recent,
    }
}

fn has_ports(p: Proto) -> bool {
    matches!(p, Proto::Tcp | Proto::Udp)
}

/// The peer as the pod's side of the node sees it: the client where it entered the node on
/// ingress (before any rewrite), the destination the pod addressed on egress.
fn peer_addr(f: &Flow) -> SocketAddr {
    match f.direction {
        Direction::Egress => f.dst,
        Direction::Ingress => f.path.first().map_or(f.src, |h| h.src),
    }
}

/// The key of a flow's path.
pub fn key_of(f: &Flow, opts: &GroupOptions) -> PathKey {
    let peer_at = peer_addr(f);
    let ports = has_ports(f.proto);
    // A service (named by the node's rules for the DNAT) is what the pod asked for; on
    // ingress the peer is the client, whatever service it reached.
    let service = match f.direction {
        Direction::Egress => f.dnat.as_ref().and_then(|d| d.service.clone()),
        Direction::Ingress => None,
    };
    let peer = match service {
        Some(name) => Peer::Service(name),
        None if !ports => Peer::Addr { ip: peer_at.ip(), port: PeerPort::None },
        None if f.direction == Direction::Ingress && opts.by == GroupBy::Path => {
            Peer::Addr { ip: peer_at.ip(), port: PeerPort::Any }
        }
        None => Peer::Addr { ip: peer_at.ip(), port: PeerPort::Port(peer_at.port()) },
    };
    PathKey {
        namespace: f.namespace.clone(),
        pod: f.pod.clone(),
        direction: f.direction,
        proto: f.proto,
        peer,
        pod_port: (f.direction == Direction::Ingress && ports).then(|| f.dst.port()),
        eni: f.eni.clone(),
        snat: f.snat.as_ref().map(|n| n.kind),
        dnat: f.dnat.as_ref().map(|n| n.kind),
        ingress_mode: f.ingress_mode,
        node_crossing: f.node_crossing,
        flow: (opts.by == GroupBy::Flow).then(|| f.id()),
    }
}

/// One flow as a group of one.
fn single(f: &Flow, key: PathKey, now_ms: u64) -> PathGroup {
    let latency = f.end_to_end(false);
    let drops: u64 = f.drops.iter().map(|d| d.count).sum();
    let mut places = BTreeMap::new();
    for d in &f.drops {
        *places.entry(DropPlace { reason: d.reason.clone(), after_hop: d.after_hop.clone() }).or_default() +=
            d.count;
    }
    let pod_side = match f.direction {
        Direction::Egress => f.src,
        Direction::Ingress => f.dst,
    };
    PathGroup {
        key,
        veth: f.path.iter().chain(&f.reply_path).find(|h| h.role == Role::PodVeth).map(|h| h.ifname.clone()),
        snat: f.snat.as_ref().map(NatStep::of),
        dnat: f.dnat.as_ref().map(NatStep::of),
        connections: vec![Connection {
            id: f.id(),
            peer: peer_addr(f),
            pod_side,
            snat_to: f.snat.as_ref().map(|n| n.to),
            dnat_to: f.dnat.as_ref().map(|n| n.to),
            packets: f.packets,
            bytes: f.bytes,
            active: is_active(f, now_ms),
            in_node_p50_us: latency.map(|l| l.p50),
            drops,
            retransmits: f.retransmits,
            unanswered: f.no_reply || f.unanswered_after.is_some(),
            first_seen_ms: f.first_seen_ms,
            last_seen_ms: f.last_seen_ms,
        }],
        packets: f.packets,
        bytes: f.bytes,
        bytes_per_sec: None,
        latency_us: latency.map(|l| l.values_us.clone()).unwrap_or_default(),
        drops: places,
        retransmits: f.retransmits,
        first_seen_ms: f.first_seen_ms,
        last_seen_ms: f.last_seen_ms,
    }
}

/// Groups flows into rows, sorted by bytes (see [`sort`] for the other orders).
pub fn group(flows: &[Flow], opts: &GroupOptions) -> Vec<PathGroup> {
    let mut by_key: BTreeMap<PathKey, PathGroup> = BTreeMap::new();
    for f in flows {
        let key = key_of(f, opts);
        let one = single(f, key.clone(), opts.now_ms);
        match by_key.get_mut(&key) {
            Some(g) => g.absorb(one),
            None => {
                by_key.insert(key, one);
            }
        }
    }
    let mut groups: Vec<PathGroup> = by_key.into_values().collect();
    if opts.by == GroupBy::Path {
        groups = fold_peers(groups, opts.max_peers.max(2));
    }
    for g in &mut groups {
        g.latency_us.sort_by(f64::total_cmp);
        g.connections.sort_by(|a, b| b.last_seen_ms.cmp(&a.last_seen_ms).then_with(|| a.id.cmp(&b.id)));
    }
    sort(&mut groups, SortBy::Bytes);
    groups
}

/// Paths that differ only in their peer, beyond `max` of them: the `max - 1` biggest stay,
/// the rest become one row (a pod serving thousands of clients stays a few rows).
fn fold_peers(groups: Vec<PathGroup>, max: usize) -> Vec<PathGroup> {
    let mut shapes: BTreeMap<PathKey, Vec<PathGroup>> = BTreeMap::new();
    for g in groups {
        let mut shape = g.key.clone();
        shape.peer = Peer::Many { count: 0 };
        shapes.entry(shape).or_default().push(g);
    }
    let mut out = Vec::new();
    for (shape, mut same) in shapes {
        if same.len() <= max {
            out.extend(same);
            continue;
        }
        same.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.key.cmp(&b.key)));
        let rest = same.split_off(max - 1);
        let count = rest.len();
        let mut folded: Option<PathGroup> = None;
        for g in rest {
            match folded.as_mut() {
                Some(f) => f.absorb(g),
                None => folded = Some(g),
            }
        }
        out.extend(same);
        if let Some(mut f) = folded {
            f.key = PathKey { peer: Peer::Many { count }, ..shape };
            out.push(f);
        }
    }
    out
}

/// Orders rows, biggest first; ties keep the key order so rows do not jump between refreshes.
pub fn sort(groups: &mut [PathGroup], by: SortBy) {
    let rate = |g: &PathGroup| g.bytes_per_sec.unwrap_or(0.0);
    groups.sort_by(|a, b| {
        let primary = match by {
            SortBy::Bytes => b.bytes.cmp(&a.bytes),
            SortBy::Rate => rate(b).total_cmp(&rate(a)).then_with(|| b.bytes.cmp(&a.bytes)),
        };
        primary.then_with(|| a.key.cmp(&b.key))
    });
}

/// Rates: the bytes each path's connections carried since the previous measurement.
/// Connections are followed one by one, so a path whose membership changes (a new peer
/// folded in) still gets its own bytes only.
#[derive(Debug, Default)]
pub struct RateMeter {
    last: HashMap<(String, String, String), u64>,
    last_ms: u64,
}

impl RateMeter {
    /// A meter whose first window starts at `start_ms`, when no connection had any bytes.
    pub fn starting_at(start_ms: u64) -> RateMeter {
        RateMeter { last: HashMap::new(), last_ms: start_ms }
    }

    pub fn measure(&mut self, groups: &mut [PathGroup], now_ms: u64) {
        let secs = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        let mut next = HashMap::with_capacity(self.last.len());
        for g in groups.iter_mut() {
            let mut delta = 0;
            for c in &g.connections {
                let k = (g.key.namespace.clone(), g.key.pod.clone(), c.id.clone());
                delta += c.bytes.saturating_sub(self.last.get(&k).copied().unwrap_or(0));
                next.insert(k, c.bytes);
            }
            g.bytes_per_sec = (secs > 0.0).then(|| delta as f64 / secs);
        }
        self.last = next;
        self.last_ms = now_ms;
    }
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
