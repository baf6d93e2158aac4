//! From kernel observations to per-flow reports.
//!
//! The kernel gives three kinds of facts:
//! * flow-table entries: a tuple seen at (interface, hook) with counters;
//! * hop events: one sampled packet seen with tuple A at hook X and tuple B at hook Y
//!   (A != B means the node rewrote it in between: NAT);
//! * conntrack entries: a connection's original and reply tuples.
//!
//! Tuples that belong to one connection are joined with a union-find over undirected tuples
//! that also tracks direction (parity): "same direction" (a hop event, or conntrack's original
//! vs. its NATed form) or "opposite direction" (a tuple and its reverse, conntrack original vs.
//! reply). Each component is one connection; within it every tuple is either in the initiating
//! direction or the reply direction, and its hooks, ordered, are the path.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use tracer_common::{FlowKey, FlowStats, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Tuple, hook};

use crate::{
    addr,
    conntrack::CtEntry,
    hops::{HopPair, HopSamples, HopTable},
    nat::NatRules,
};

/// What an interface is to the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    PodVeth,
    Eni,
    Other,
}

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
    fn hop_name(&self, ifindex: u32, hook: u8) -> String {
        format!("{}/{}", self.ifname(ifindex), hook_name(hook))
    }
    pub fn ifname(&self, ifindex: u32) -> String {
        self.ifaces.get(&ifindex).map(|i| i.name.clone()).unwrap_or_else(|| format!("if{ifindex}"))
    }
    fn role(&self, ifindex: u32) -> Role {
        self.ifaces.get(&ifindex).map(|i| i.role).unwrap_or(Role::Other)
    }
}

pub fn hook_name(h: u8) -> &'static str {
    if h == hook::INGRESS { "ingress" } else { "egress" }
}

pub fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_ICMP => "icmp".into(),
        PROTO_ICMPV6 => "icmpv6".into(),
        other => format!("ip-proto-{other}"),
    }
}

/// One hook of a flow's path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    pub ifname: String,
    pub role: Role,
    pub hook: String,
    pub src: String,
    pub dst: String,
    pub packets: u64,
    pub bytes: u64,
    #[serde(skip)]
    pub ifindex: u32,
    #[serde(skip)]
    pub tuple: Tuple,
    #[serde(skip)]
    pub first_ns: u64,
    #[serde(skip)]
    pub last_ns: u64,
    #[serde(skip)]
    pub tcp_flags: u8,
}

impl Hop {
    pub fn name(&self) -> String {
        format!("{}/{}", self.ifname, self.hook)
    }
}

/// A rewrite between two hooks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nat {
    pub from: String,
    pub to: String,
    /// Last hook that saw the packet before the rewrite (`<ifname>/<hook>`).
    pub after_hop: Option<String>,
    /// First hook that saw it rewritten.
    pub before_hop: Option<String>,
    /// pod-egress-snat | masquerade | service-dnat | nodeport-dnat | snat | dnat
    pub kind: String,
    /// The iptables chain whose rule matches the rewrite, when found.
    pub chain: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HopLatency {
    pub from: String,
    pub to: String,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub samples: usize,
    /// The sampled delays themselves (µs, sorted), for aggregations such as `compare`.
    #[serde(skip)]
    pub values_us: Vec<f64>,
}

/// A drop of this flow's packets, filled in by the drops collector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropReport {
    pub reason: String,
    pub location: String,
    pub after_hop: Option<String>,
    pub count: u64,
}

/// One flow of one pod: the JSON contract of `podtrace -o json` (see README).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowReport {
    pub pod: String,
    pub namespace: String,
    pub pod_ip: String,
    pub proto: String,
    pub direction: String,
    pub src: String,
    pub dst: String,
    pub path: Vec<Hop>,
    pub reply_path: Vec<Hop>,
    pub eni: Option<String>,
    pub pod_ip_owner_eni: Option<String>,
    pub snat: Option<Nat>,
    pub dnat: Option<Nat>,
    pub ingress_mode: Option<String>,
    pub hop_latency_us: Vec<HopLatency>,
    pub packets: u64,
    pub bytes: u64,
    /// Rewrites of the initiating direction (0, 1 or 2).
    pub nat_steps: u32,
    /// Ingress flows: whether the pod saw the client's own address.
    pub client_ip_preserved: Option<bool>,
    /// Entered the node by an ENI and left it again by an ENI (served by another node).
    pub node_crossing: bool,
    /// TCP whose opener never completed the handshake although replies left the node: the
    /// last hop those replies took (e.g. `eth1/egress` when the VPC drops them).
    pub unanswered_after: Option<String>,
    /// TCP whose opener never got any reply through this node.
    pub no_reply: bool,
    pub drops: Vec<DropReport>,
    pub retransmits: u64,
    /// Milliseconds since the Unix epoch of the first and last packet seen.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Stable identity of the flow (initiating tuple as first seen), for joining snapshots.
    pub id: String,
    /// Every tuple of this flow (both directions, before/after NAT); used to attach drops.
    #[serde(skip)]
    pub tuples: Vec<Tuple>,
}

/// Union-find over undirected tuples with a direction parity per node. The tuples are known
/// up front, so a node is its tuple's position in a sorted array (no hash table: a third of
/// the memory at 100 000 flows).
struct Uf {
    /// Canonical (undirected) tuples, sorted and unique.
    nodes: Vec<Tuple>,
    parent: Vec<u32>,
    /// Parity of a node relative to its parent (1 = opposite orientation).
    parity: Vec<u8>,
}

/// A tuple's undirected form and its orientation relative to it.
fn canon(t: &Tuple) -> (Tuple, u8) {
    let r = t.reversed();
    if r < *t { (r, 1) } else { (*t, 0) }
}

impl Uf {
    fn new(tuples: impl Iterator<Item = Tuple>) -> Uf {
        let mut nodes: Vec<Tuple> = tuples.map(|t| canon(&t).0).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.shrink_to_fit();
        let n = nodes.len() as u32;
        Uf { nodes, parent: (0..n).collect(), parity: vec![0; n as usize] }
    }

    fn get(&self, t: &Tuple) -> Option<(u32, u8)> {
        let (c, o) = canon(t);
        self.nodes.binary_search(&c).ok().map(|i| (i as u32, o))
    }

    /// Root and parity of `x` relative to the root (with path compression).
    fn find(&mut self, x: u32) -> (u32, u8) {
        let p = self.parent[x as usize];
        if p == x {
            return (x, 0);
        }
        let (root, pp) = self.find(p);
        self.parent[x as usize] = root;
        self.parity[x as usize] ^= pp;
        (root, self.parity[x as usize])
    }

    /// Records that directed tuples `a` and `b` travel in the same (`opposite == false`) or
    /// opposite direction. Contradictions (tuple reuse) are ignored.
    fn relate(&mut self, a: &Tuple, b: &Tuple, opposite: bool) {
        let (Some((na, oa)), Some((nb, ob))) = (self.get(a), self.get(b)) else { return };
        let (ra, pa) = self.find(na);
        let (rb, pb) = self.find(nb);
        if ra == rb {
            return;
        }
        // direction(t) = orientation(t) ^ parity(node -> root)
        let want = oa ^ ob ^ opposite as u8;
        self.parent[rb as usize] = ra;
        self.parity[rb as usize] = pa ^ pb ^ want;
    }

    /// Component and direction bit of a directed tuple.
    fn direction(&mut self, t: &Tuple) -> Option<(u32, u8)> {
        let (n, o) = self.get(t)?;
        let (root, p) = self.find(n);
        Some((root, o ^ p))
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

/// Everything observed so far.
pub struct Observations<'a> {
    pub entries: &'a [(FlowKey, FlowStats)],
    pub hops: &'a HopTable,
    pub conntrack: &'a [CtEntry],
}

/// Percentile of sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Component<'a> {
    entries: Vec<(FlowKey, FlowStats, u8)>,
    hops: Vec<(&'a HopPair, &'a HopSamples)>,
    ct: Vec<CtEntry>,
}

/// Builds one report per (traced pod, connection), sorted by pod and first packet.
pub fn assemble(obs: &Observations, ctx: &NodeContext, pods: &[TracedPod], clock: Clock) -> Vec<FlowReport> {
    let mut out = Vec::new();
    assemble_each(obs, ctx, pods, clock, |r, _| out.push(r));
    out.sort_by(|a, b| {
        (a.pod.as_str(), a.first_seen_ms, &a.id).cmp(&(b.pod.as_str(), b.first_seen_ms, &b.id))
    });
    out
}

/// Hands each report to `sink`, with the number of its connection, as soon as it is built, so
/// that callers that only aggregate (the agent) never hold every flow's report at once.
/// Returns the connection number of each of `obs.entries` (what the agent expires by).
pub fn assemble_each(
    obs: &Observations,
    ctx: &NodeContext,
    pods: &[TracedPod],
    clock: Clock,
    mut sink: impl FnMut(FlowReport, u32),
) -> Vec<u32> {
    let hops: Vec<(&HopPair, &HopSamples)> = obs.hops.iter().collect();
    let observed = || {
        obs.entries
            .iter()
            .map(|(k, _)| k.tuple)
            .chain(hops.iter().flat_map(|(h, _)| [h.from.tuple, h.to.tuple]))
    };
    // Only conntrack entries that touch something we saw can join connections.
    let seen = Uf::new(observed());
    let ct: Vec<&CtEntry> = obs
        .conntrack
        .iter()
        .filter(|c| {
            [c.orig, c.reply].iter().any(|t| seen.get(t).is_some() || seen.get(&t.reversed()).is_some())
        })
        .collect();
    drop(seen);
    let mut uf = Uf::new(observed().chain(ct.iter().flat_map(|c| [c.orig, c.reply])));
    for (h, _) in &hops {
        uf.relate(&h.from.tuple, &h.to.tuple, false);
    }
    for c in &ct {
        uf.relate(&c.orig, &c.reply, true);
    }

    // Group by root with sorted (root, index) lists: every connection's members are contiguous.
    let mut entries: Vec<(u32, u32, u8)> = obs
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, (k, _))| uf.direction(&k.tuple).map(|(root, dir)| (root, i as u32, dir)))
        .collect();
    entries.sort_unstable();
    let mut hop_roots: Vec<(u32, u32)> = hops
        .iter()
        .enumerate()
        .filter_map(|(i, (h, _))| uf.direction(&h.from.tuple).map(|(root, _)| (root, i as u32)))
        .collect();
    hop_roots.sort_unstable();
    let mut ct_roots: Vec<(u32, u32)> = ct
        .iter()
        .enumerate()
        .filter_map(|(i, c)| uf.direction(&c.orig).map(|(root, _)| (root, i as u32)))
        .collect();
    ct_roots.sort_unstable();

    let mut connection_of = vec![u32::MAX; obs.entries.len()];
    let (mut h, mut c) = (0, 0);
    let mut comp = Component { entries: vec![], hops: vec![], ct: vec![] };
    for (number, group) in entries.chunk_by(|a, b| a.0 == b.0).enumerate() {
        let root = group[0].0;
        comp.entries.clear();
        comp.hops.clear();
        comp.ct.clear();
        for &(_, i, dir) in group {
            connection_of[i as usize] = number as u32;
            let (k, s) = obs.entries[i as usize];
            comp.entries.push((k, s, dir));
        }
        // Hops and conntrack entries of roots without kernel entries belong to no flow.
        while h < hop_roots.len() && hop_roots[h].0 <= root {
            if hop_roots[h].0 == root {
                comp.hops.push(hops[hop_roots[h].1 as usize]);
            }
            h += 1;
        }
        while c < ct_roots.len() && ct_roots[c].0 <= root {
            if ct_roots[c].0 == root {
                comp.ct.push(*ct[ct_roots[c].1 as usize]);
            }
            c += 1;
        }
        for pod in pods {
            if let Some(r) = report(&comp, &mut uf, ctx, pod, clock) {
                sink(r, number as u32);
            }
        }
    }
    connection_of
}

fn touches(t: &Tuple, ips: &[IpAddr]) -> bool {
    ips.iter().any(|ip| {
        let k = addr::to_key(*ip);
        t.src == k || t.dst == k
    })
}

fn report(
    comp: &Component,
    uf: &mut Uf,
    ctx: &NodeContext,
    pod: &TracedPod,
    clock: Clock,
) -> Option<FlowReport> {
    let on_veth = |ifindex: u32| pod.veth == Some(ifindex);
    let mine = comp.entries.iter().any(|(k, _, _)| on_veth(k.ifindex) || touches(&k.tuple, &pod.ips))
        || comp.ct.iter().any(|c| touches(&c.orig, &pod.ips) || touches(&c.reply, &pod.ips));
    if !mine {
        return None;
    }
    // Initiating direction: conntrack's original direction, else the earliest packet's.
    let init_dir = comp
        .ct
        .iter()
        .find_map(|c| uf.direction(&c.orig).map(|(_, d)| d))
        .or_else(|| comp.entries.iter().min_by_key(|(_, s, _)| s.first_ns).map(|(_, _, d)| *d))?;
    let path = ordered_hops(comp, ctx, init_dir);
    let reply_path = ordered_hops(comp, ctx, init_dir ^ 1);

    // The pod's own view: the tuple at its veth in the initiating direction.
    let at_veth = path.iter().find(|h| on_veth(h.ifindex));
    let direction = match at_veth {
        Some(h) if h.hook == "ingress" => "egress",
        Some(_) => "ingress",
        None => {
            let first = path.first().map(|h| h.tuple).or_else(|| comp.ct.first().map(|c| c.orig))?;
            let src_is_pod = pod.ips.iter().any(|ip| addr::to_key(*ip) == first.src);
            if src_is_pod { "egress" } else { "ingress" }
        }
    };
    let view = at_veth.map(|h| h.tuple).or_else(|| {
        // Not seen at the veth (dropped before it, or the pod is remote): the last tuple of
        // the path (after any DNAT), or conntrack's NATed original.
        path.last().map(|h| h.tuple).or_else(|| comp.ct.first().map(|c| c.orig_after_nat()))
    })?;
    let pod_ip_key = if direction == "egress" { view.src } else { view.dst };
    let pod_ip = pod
        .ips
        .iter()
        .find(|ip| addr::to_key(**ip) == pod_ip_key)
        .or(pod.ips.first())
        .map(|ip| ip.to_string())
        .unwrap_or_default();

    let (mut snat, mut dnat) = rewrites(&path);
    if snat.is_none() || dnat.is_none() {
        // Rewrites not visible between two of our hooks: take them from conntrack.
        if let Some(c) = comp.ct.first() {
            let (cs, cd) = ct_rewrites(c, &path);
            snat = snat.or(cs);
            dnat = dnat.or(cd);
        }
    }
    crate::nat::classify(&mut snat, &mut dnat, direction, ctx);

    let eni_hop = if direction == "egress" {
        path.iter().rev().find(|h| h.role == Role::Eni && h.hook == "egress")
    } else {
        path.iter().find(|h| h.role == Role::Eni && h.hook == "ingress")
    };
    let eni = eni_hop.map(|h| h.ifname.clone());
    let entered_by_eni = path.first().is_some_and(|h| h.role == Role::Eni && h.hook == "ingress");
    let node_crossing =
        entered_by_eni && path.iter().skip(1).any(|h| h.role == Role::Eni && h.hook == "egress");
    let ingress_mode = match direction {
        "ingress" if entered_by_eni => {
            let nodeport = dnat.as_ref().is_some_and(|d| {
                d.from.parse::<std::net::SocketAddr>().is_ok_and(|a| ctx.node_ips.contains(&a.ip()))
            });
            Some(if nodeport { "nodeport" } else { "direct" })
        }
        _ => None,
    };
    let client_ip_preserved = (direction == "ingress" && entered_by_eni).then(|| {
        let first_src = path.first().map(|h| h.src.clone());
        let pod_src = at_veth.map(|h| h.src.clone()).or_else(|| path.last().map(|h| h.src.clone()));
        first_src.map(|s| host_of(&s)) == pod_src.map(|s| host_of(&s))
    });

    // A TCP opener that never sent an ACK never saw the SYN-ACK.
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    let opener_flags = path.iter().fold(0, |a, h| a | h.tcp_flags);
    let handshake_failed = view.proto == PROTO_TCP && opener_flags & SYN != 0 && opener_flags & ACK == 0;
    let unanswered_after = if handshake_failed { reply_path.last().map(Hop::name) } else { None };
    let no_reply = handshake_failed && reply_path.is_empty();
    let first_ns = comp.entries.iter().map(|(_, s, _)| s.first_ns).filter(|t| *t > 0).min().unwrap_or(0);
    let last_ns = comp.entries.iter().map(|(_, s, _)| s.last_ns).max().unwrap_or(0);
    let (packets, bytes) = [path.first(), reply_path.first()]
        .into_iter()
        .flatten()
        .fold((0, 0), |(p, b), h| (p + h.packets, b + h.bytes));
    let id_tuple = path.first().map(|h| h.tuple).unwrap_or(view);
    let mut tuples: Vec<Tuple> = comp.entries.iter().map(|(k, _, _)| k.tuple).collect();
    for c in &comp.ct {
        tuples.extend([c.orig, c.reply, c.orig.reversed(), c.reply.reversed()]);
    }
    tuples.sort();
    tuples.dedup();
    Some(FlowReport {
        pod: pod.name.clone(),
        namespace: pod.namespace.clone(),
        pod_ip,
        proto: proto_name(view.proto),
        direction: direction.to_string(),
        src: addr::src(&view).to_string(),
        dst: addr::dst(&view).to_string(),
        nat_steps: snat.is_some() as u32 + dnat.is_some() as u32,
        hop_latency_us: latencies(comp, ctx),
        path,
        reply_path,
        eni,
        pod_ip_owner_eni: pod.owner_eni.clone(),
        snat,
        dnat,
        ingress_mode: ingress_mode.map(str::to_string),
        packets,
        bytes,
        client_ip_preserved,
        node_crossing,
        unanswered_after,
        no_reply,
        drops: Vec::new(),
        retransmits: 0,
        first_seen_ms: clock.unix_ms(first_ns),
        last_seen_ms: clock.unix_ms(last_ns),
        id: format!("{}:{}>{}", proto_name(id_tuple.proto), addr::src(&id_tuple), addr::dst(&id_tuple)),
        tuples,
    })
}

fn host_of(s: &str) -> String {
    s.parse::<std::net::SocketAddr>().map(|a| a.ip().to_string()).unwrap_or_else(|_| s.to_string())
}

/// The hops of one direction, in the order packets crossed them: hop events give the order
/// where they exist, the first-packet timestamps everywhere else.
fn ordered_hops(comp: &Component<'_>, ctx: &NodeContext, dir: u8) -> Vec<Hop> {
    let mut hops: Vec<Hop> = comp
        .entries
        .iter()
        .filter(|(_, _, d)| *d == dir)
        .map(|(k, s, _)| Hop {
            ifname: ctx.ifname(k.ifindex),
            role: ctx.role(k.ifindex),
            hook: hook_name(k.hook).to_string(),
            src: addr::src(&k.tuple).to_string(),
            dst: addr::dst(&k.tuple).to_string(),
            packets: s.packets,
            bytes: s.bytes,
            ifindex: k.ifindex,
            tuple: k.tuple,
            first_ns: s.first_ns,
            last_ns: s.last_ns,
            tcp_flags: s.tcp_flags,
        })
        .collect();
    hops.sort_by_key(|h| h.first_ns);
    // Precedence from hop events: (from position) comes before (to position).
    type Position = (u32, &'static str);
    let pos = |ifindex: u32, hook: u8| -> Position { (ifindex, hook_name(hook)) };
    let before: HashSet<(Position, Position)> = comp
        .hops
        .iter()
        .map(|(e, _)| (pos(e.from.ifindex, e.from.hook), pos(e.to.ifindex, e.to.hook)))
        .collect();
    // Stable insertion sort honouring the sampled order (few hops per flow).
    let mut ordered: Vec<Hop> = Vec::with_capacity(hops.len());
    for h in hops {
        let me = (h.ifindex, h.hook.as_str());
        let at = ordered
            .iter()
            .position(|o| before.contains(&(me, (o.ifindex, o.hook.as_str()))))
            .unwrap_or(ordered.len());
        ordered.insert(at, h);
    }
    ordered
}

/// SNAT/DNAT seen between consecutive hooks of the initiating direction.
fn rewrites(path: &[Hop]) -> (Option<Nat>, Option<Nat>) {
    let (mut snat, mut dnat) = (None, None);
    for w in path.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let nat = |from: &str, to: &str| Nat {
            from: from.into(),
            to: to.into(),
            after_hop: Some(a.name()),
            before_hop: Some(b.name()),
            kind: String::new(),
            chain: None,
        };
        if snat.is_none() && a.src != b.src {
            snat = Some(nat(&a.src, &b.src));
        }
        if dnat.is_none() && a.dst != b.dst {
            dnat = Some(nat(&a.dst, &b.dst));
        }
    }
    (snat, dnat)
}

/// Rewrites known to conntrack; the hooks are those of the path whose tuple matches the
/// pre- or post-NAT form.
fn ct_rewrites(c: &CtEntry, path: &[Hop]) -> (Option<Nat>, Option<Nat>) {
    let before = c.orig;
    let after = c.orig_after_nat();
    let hop_with = |pred: &dyn Fn(&Tuple) -> bool, last: bool| {
        let mut it = path.iter().filter(|h| pred(&h.tuple));
        if last { it.last() } else { it.next() }.map(|h| h.name())
    };
    let mk = |from: String, to: String, pre: &dyn Fn(&Tuple) -> bool, post: &dyn Fn(&Tuple) -> bool| Nat {
        from,
        to,
        after_hop: hop_with(pre, true),
        before_hop: hop_with(post, false),
        kind: String::new(),
        chain: None,
    };
    let snat = (before.src != after.src || before.sport != after.sport).then(|| {
        mk(
            addr::src(&before).to_string(),
            addr::src(&after).to_string(),
            &|t| t.src == before.src && t.sport == before.sport,
            &|t| t.src == after.src && t.sport == after.sport,
        )
    });
    let dnat = (before.dst != after.dst || before.dport != after.dport).then(|| {
        mk(
            addr::dst(&before).to_string(),
            addr::dst(&after).to_string(),
            &|t| t.dst == before.dst && t.dport == before.dport,
            &|t| t.dst == after.dst && t.dport == after.dport,
        )
    });
    (snat, dnat)
}

fn latencies(comp: &Component<'_>, ctx: &NodeContext) -> Vec<HopLatency> {
    let mut by_pair: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for (e, samples) in &comp.hops {
        by_pair
            .entry((ctx.hop_name(e.from.ifindex, e.from.hook), ctx.hop_name(e.to.ifindex, e.to.hook)))
            .or_default()
            .extend(samples.delays_ns.iter().map(|ns| *ns as f64 / 1000.0));
    }
    by_pair
        .into_iter()
        .map(|((from, to), mut v)| {
            v.sort_by(f64::total_cmp);
            HopLatency {
                from,
                to,
                p50: round2(percentile(&v, 50.0)),
                p90: round2(percentile(&v, 90.0)),
                p99: round2(percentile(&v, 99.0)),
                samples: v.len(),
                values_us: v,
            }
        })
        .collect()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tracer_common::{HopEvent, Sighting};

    fn t(src: &str, dst: &str) -> Tuple {
        addr::tuple(PROTO_TCP, src.parse::<SocketAddr>().unwrap(), dst.parse::<SocketAddr>().unwrap())
    }

    fn entry(tuple: Tuple, ifindex: u32, h: u8, first: u64) -> (FlowKey, FlowStats) {
        (
            FlowKey { tuple, ifindex, hook: h, _pad: [0; 3] },
            FlowStats {
                packets: 10,
                bytes: 1000,
                first_ns: first,
                last_ns: first + 100,
                tcp_flags: 0x12,
                _pad: [0; 7],
            },
        )
    }

    fn ctx() -> NodeContext {
        let mut c = NodeContext::default();
        c.ifaces.insert(1, Iface { name: "eth0".into(), role: Role::Eni });
        c.ifaces.insert(2, Iface { name: "eth1".into(), role: Role::Eni });
        c.ifaces.insert(5, Iface { name: "enib".into(), role: Role::PodVeth });
        c.node_ips.insert("198.18.1.10".parse().unwrap());
        c
    }

    fn pod() -> TracedPod {
        TracedPod {
            name: "web-2".into(),
            namespace: "default".into(),
            ips: vec!["198.18.2.11".parse().unwrap()],
            veth: Some(5),
            owner_eni: Some("eth1".into()),
        }
    }

    #[test]
    fn snat_to_the_internet_is_one_flow_with_its_hooks_in_order() {
        let out = t("198.18.2.11:40112", "203.0.113.10:80");
        let nat = t("198.18.1.10:61000", "203.0.113.10:80");
        let entries = vec![
            entry(nat, 1, hook::EGRESS, 200),
            entry(out, 5, hook::INGRESS, 100),
            entry(nat.reversed(), 1, hook::INGRESS, 300),
            entry(out.reversed(), 5, hook::EGRESS, 400),
        ];
        let mut hops = HopTable::new(16);
        hops.add(&HopEvent {
            from: Sighting { ts_ns: 100, tuple: out, ifindex: 5, hook: hook::INGRESS, _pad: [0; 3] },
            to: Sighting { ts_ns: 138_000 + 100, tuple: nat, ifindex: 1, hook: hook::EGRESS, _pad: [0; 3] },
        });
        let obs = Observations { entries: &entries, hops: &hops, conntrack: &[] };
        let r = assemble(&obs, &ctx(), &[pod()], Clock::default());
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.direction, "egress");
        assert_eq!(r.src, "198.18.2.11:40112");
        assert_eq!(r.eni.as_deref(), Some("eth0"));
        assert_eq!(r.path.iter().map(Hop::name).collect::<Vec<_>>(), ["enib/ingress", "eth0/egress"]);
        assert_eq!(r.reply_path.iter().map(Hop::name).collect::<Vec<_>>(), ["eth0/ingress", "enib/egress"]);
        let snat = r.snat.as_ref().unwrap();
        assert_eq!((snat.from.as_str(), snat.to.as_str()), ("198.18.2.11:40112", "198.18.1.10:61000"));
        assert_eq!(snat.after_hop.as_deref(), Some("enib/ingress"));
        assert!(r.dnat.is_none());
        assert_eq!(r.hop_latency_us[0].p50, 138.0);
        assert_eq!(r.packets, 20);
    }

    #[test]
    fn conntrack_joins_a_nodeport_flow_without_samples() {
        let wire = t("198.18.100.10:5555", "198.18.1.10:30080");
        let to_pod = t("198.18.1.10:7777", "198.18.2.11:8080");
        let entries = vec![
            entry(wire, 1, hook::INGRESS, 100),
            entry(to_pod, 5, hook::EGRESS, 150),
            entry(to_pod.reversed(), 5, hook::INGRESS, 200),
        ];
        let ct = vec![CtEntry { orig: wire, reply: to_pod.reversed(), status: 0x30, mark: 0x80, id: 1 }];
        let obs = Observations { entries: &entries, hops: &HopTable::new(16), conntrack: &ct };
        let r = assemble(&obs, &ctx(), &[pod()], Clock::default());
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.direction, "ingress");
        assert_eq!(r.ingress_mode.as_deref(), Some("nodeport"));
        assert_eq!(r.dnat.as_ref().unwrap().to, "198.18.2.11:8080");
        assert_eq!(r.snat.as_ref().unwrap().to, "198.18.1.10:7777");
        assert_eq!(r.client_ip_preserved, Some(false));
        assert_eq!(r.nat_steps, 2);
        assert_eq!(r.src, "198.18.1.10:7777");
    }

    #[test]
    fn unrelated_flows_stay_apart() {
        let a = t("198.18.2.11:1000", "198.18.3.10:8080");
        let b = t("198.18.9.9:1000", "198.18.3.10:8080");
        let entries = vec![entry(a, 5, hook::INGRESS, 1), entry(b, 1, hook::INGRESS, 2)];
        let obs = Observations { entries: &entries, hops: &HopTable::new(16), conntrack: &[] };
        let r = assemble(&obs, &ctx(), &[pod()], Clock::default());
        assert_eq!(r.len(), 1, "only the pod's own flow is reported");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
