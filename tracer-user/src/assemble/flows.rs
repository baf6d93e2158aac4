//! From kernel observations to complete flows.
//!
//! The kernel gives three kinds of facts:
//! * flow-table entries: a tuple seen at (interface, hook) with counters;
//! * hop events: one sampled packet seen with tuple A at hook X and tuple B at hook Y
//!   (A != B means the node rewrote it in between: NAT);
//! * conntrack entries: a connection's original and reply tuples.
//!
//! Tuples that belong to one connection are joined by [`Uf`]; each component is one
//! connection, and each (traced pod, connection) one [`Flow`], built complete in one pass:
//! paths, NAT named against the node's rules, latencies, drops and retransmissions.
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use tracer_common::{DropKey, DropStats, FlowKey, FlowStats, PROTO_TCP, Tuple};

use super::{
    community_id::community_id,
    context::{Clock, NodeContext, TracedPod},
    drops::{DropIndex, DropNames},
    hops::{HopPair, HopSamples, HopTable},
    model::{Direction, Flow, Hook, Hop, HopLatency, HopName, IngressMode, Proto, Role, percentile},
    nat::{self, Rewrite},
    union_find::Uf,
};
use crate::{kernel::addr, node::conntrack::CtEntry};

/// Everything observed so far.
pub struct Observations<'a> {
    pub entries: &'a [(FlowKey, FlowStats)],
    pub hops: &'a HopTable,
    pub conntrack: &'a [CtEntry],
    pub drops: &'a [(DropKey, DropStats)],
    pub retransmits: &'a [(Tuple, u64)],
}

struct Component<'a> {
    entries: Vec<(FlowKey, FlowStats, u8)>,
    hops: Vec<(&'a HopPair, &'a HopSamples)>,
    ct: Vec<CtEntry>,
}

/// Builds one flow per (traced pod, connection), sorted by pod and first packet.
pub fn assemble(
    obs: &Observations,
    ctx: &NodeContext,
    names: &DropNames,
    pods: &[TracedPod],
    clock: Clock,
) -> Vec<Flow> {
    let mut out = Vec::new();
    assemble_each(obs, ctx, names, pods, clock, |f, _| out.push(f));
    out.sort_by(|a, b| {
        (a.pod.as_str(), a.first_seen_ms, a.id_tuple).cmp(&(b.pod.as_str(), b.first_seen_ms, b.id_tuple))
    });
    out
}

/// Hands each flow to `sink`, with the number of its connection, as soon as it is built, so
/// that callers that only aggregate (the agent) never hold every flow at once.
/// Returns the connection number of each of `obs.entries` (what the agent expires by).
pub fn assemble_each(
    obs: &Observations,
    ctx: &NodeContext,
    names: &DropNames,
    pods: &[TracedPod],
    clock: Clock,
    mut sink: impl FnMut(Flow, u32),
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
    let drops = DropIndex::new(obs.drops, obs.retransmits, names, &ctx.tc_programs);

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
            if let Some(f) = build(&comp, &mut uf, ctx, &drops, pod, clock) {
                sink(f, number as u32);
            }
        }
    }
    connection_of
}

fn touches(t: &Tuple, ips: &[std::net::IpAddr]) -> bool {
    ips.iter().any(|ip| {
        let k = addr::to_key(*ip);
        t.src == k || t.dst == k
    })
}

/// The flow of one pod in one connection, if the connection concerns the pod.
fn build(
    comp: &Component,
    uf: &mut Uf,
    ctx: &NodeContext,
    drops: &DropIndex,
    pod: &TracedPod,
    clock: Clock,
) -> Option<Flow> {
    let on_veth = |ifindex: u32| pod.is_veth(ifindex);
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
        // Packets the pod sends enter the node at its veth's ingress hook.
        Some(h) if h.hook == Hook::Ingress => Direction::Egress,
        Some(_) => Direction::Ingress,
        None => {
            let first = path.first().map(|h| h.tuple).or_else(|| comp.ct.first().map(|c| c.orig))?;
            if pod.ips.iter().any(|ip| addr::to_key(*ip) == first.src) {
                Direction::Egress
            } else {
                Direction::Ingress
            }
        }
    };
    let view = at_veth.map(|h| h.tuple).or_else(|| {
        // Not seen at the veth (dropped before it, or the pod is remote): the last tuple of
        // the path (after any DNAT), or conntrack's NATed original.
        path.last().map(|h| h.tuple).or_else(|| comp.ct.first().map(|c| c.orig_after_nat()))
    })?;
    let pod_ip_key = if direction == Direction::Egress { view.src } else { view.dst };
    let pod_ip = *pod.ips.iter().find(|ip| addr::to_key(**ip) == pod_ip_key).or(pod.ips.first())?;

    let (mut snat, mut dnat) = rewrites(&path);
    if snat.is_none() || dnat.is_none() {
        // Rewrites not visible between two of our hooks: take them from conntrack.
        if let Some(c) = comp.ct.first() {
            let (cs, cd) = ct_rewrites(c, &path);
            snat = snat.or(cs);
            dnat = dnat.or(cd);
        }
    }
    let (snat, dnat) = nat::name(snat, dnat, view.proto, ctx);

    // The ENI the flow left or entered by: the last ENI egress or first ENI ingress hop; a
    // branch ENI rather than the trunk it rides on (the trunk's neighbour on the path).
    let any_eni = |r: Role| matches!(r, Role::Eni | Role::BranchEni);
    let edge = match direction {
        Direction::Egress => path.iter().rposition(|h| any_eni(h.role) && h.hook == Hook::Egress),
        Direction::Ingress => path.iter().position(|h| any_eni(h.role) && h.hook == Hook::Ingress),
    };
    let eni_hop = edge.map(|i| {
        let neighbour = match direction {
            Direction::Egress => i.checked_sub(1).and_then(|j| path.get(j)),
            Direction::Ingress => path.get(i + 1),
        };
        match neighbour {
            Some(n) if n.role == Role::BranchEni && ctx.trunk(n.ifindex) == Some(path[i].ifname.as_str()) => {
                n
            }
            _ => &path[i],
        }
    });
    let eni = eni_hop.map(|h| h.ifname.clone());
    // The tuple on the wire between nodes: where the flow leaves towards another node (egress,
    // or a NodePort bounced on), else where it came in.
    let any_eni_out = path.iter().rev().find(|h| any_eni(h.role) && h.hook == Hook::Egress);
    let wire = match direction {
        Direction::Egress => any_eni_out,
        Direction::Ingress => any_eni_out.or(eni_hop),
    }
    .map(|h| h.tuple);
    let trunk_eni = eni_hop.and_then(|h| ctx.trunk(h.ifindex)).map(str::to_string);
    let entered_by_eni = path.first().is_some_and(|h| any_eni(h.role) && h.hook == Hook::Ingress);
    let node_crossing =
        entered_by_eni && path.iter().skip(1).any(|h| any_eni(h.role) && h.hook == Hook::Egress);
    let from_outside = direction == Direction::Ingress && entered_by_eni;
    let ingress_mode = from_outside.then(|| {
        if dnat.as_ref().is_some_and(|d| ctx.node_ips.contains(&d.from.ip())) {
            IngressMode::Nodeport
        } else {
            IngressMode::Direct
        }
    });
    let client_ip_preserved = from_outside.then(|| {
        let first_src = path.first().map(|h| h.src.ip());
        let pod_src = at_veth.or(path.last()).map(|h| h.src.ip());
        first_src == pod_src
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
    // Every tuple of this connection (both directions, before/after NAT) names its drops.
    let mut tuples: Vec<Tuple> = comp.entries.iter().map(|(k, _, _)| k.tuple).collect();
    for c in &comp.ct {
        tuples.extend([c.orig, c.reply, c.orig.reversed(), c.reply.reversed()]);
    }
    tuples.sort();
    tuples.dedup();
    let hops = || path.iter().chain(reply_path.iter());
    let flow_drops = drops.drops_of(&tuples, hops);
    let retransmits = drops.retransmits_of(&tuples);
    Some(Flow {
        pod: pod.name.clone(),
        namespace: pod.namespace.clone(),
        pod_ip,
        proto: Proto::from_number(view.proto),
        direction,
        src: addr::src(&view),
        dst: addr::dst(&view),
        hop_latency_us: latencies(comp, ctx),
        eni,
        trunk_eni,
        branch_eni_id: pod.branch_eni_id.clone(),
        pod_ip_owner_eni: pod.owner_eni.clone(),
        snat,
        dnat,
        ingress_mode,
        packets,
        bytes,
        client_ip_preserved,
        node_crossing,
        unanswered_after,
        no_reply,
        drops: flow_drops,
        retransmits,
        first_seen_ms: clock.unix_ms(first_ns),
        last_seen_ms: clock.unix_ms(last_ns),
        community_id: community_id(&wire.unwrap_or(view)),
        id_tuple,
        path,
        reply_path,
    })
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
            hook: Hook::from_kernel(k.hook),
            src: addr::src(&k.tuple),
            dst: addr::dst(&k.tuple),
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
    type Position = (u32, Hook);
    let before: HashSet<(Position, Position)> = comp
        .hops
        .iter()
        .map(|(e, _)| {
            ((e.from.ifindex, Hook::from_kernel(e.from.hook)), (e.to.ifindex, Hook::from_kernel(e.to.hook)))
        })
        .collect();
    // Stable insertion sort honouring the sampled order (few hops per flow).
    let mut ordered: Vec<Hop> = Vec::with_capacity(hops.len());
    for h in hops {
        let me = (h.ifindex, h.hook);
        let at =
            ordered.iter().position(|o| before.contains(&(me, (o.ifindex, o.hook)))).unwrap_or(ordered.len());
        ordered.insert(at, h);
    }
    ordered
}

/// SNAT/DNAT seen between consecutive hooks of the initiating direction.
fn rewrites(path: &[Hop]) -> (Option<Rewrite>, Option<Rewrite>) {
    let (mut snat, mut dnat) = (None, None);
    for w in path.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let seen = |from, to| Rewrite { from, to, after_hop: Some(a.name()), before_hop: Some(b.name()) };
        if snat.is_none() && a.src != b.src {
            snat = Some(seen(a.src, b.src));
        }
        if dnat.is_none() && a.dst != b.dst {
            dnat = Some(seen(a.dst, b.dst));
        }
    }
    (snat, dnat)
}

/// Rewrites known to conntrack; the hooks are those of the path whose address matches the
/// pre- or post-NAT form.
fn ct_rewrites(c: &CtEntry, path: &[Hop]) -> (Option<Rewrite>, Option<Rewrite>) {
    let (before, after) = (c.orig, c.orig_after_nat());
    let seen = |from: SocketAddr, to: SocketAddr, end: fn(&Hop) -> SocketAddr| Rewrite {
        from,
        to,
        after_hop: path.iter().rfind(|h| end(h) == from).map(Hop::name),
        before_hop: path.iter().find(|h| end(h) == to).map(Hop::name),
    };
    let (bs, as_) = (addr::src(&before), addr::src(&after));
    let (bd, ad) = (addr::dst(&before), addr::dst(&after));
    let snat = (bs != as_).then(|| seen(bs, as_, |h| h.src));
    let dnat = (bd != ad).then(|| seen(bd, ad, |h| h.dst));
    (snat, dnat)
}

fn latencies(comp: &Component<'_>, ctx: &NodeContext) -> Vec<HopLatency> {
    let name =
        |ifindex: u32, hook: u8| HopName { ifname: ctx.ifname(ifindex), hook: Hook::from_kernel(hook) };
    let mut by_pair: BTreeMap<(HopName, HopName), Vec<f64>> = BTreeMap::new();
    for (e, samples) in &comp.hops {
        by_pair
            .entry((name(e.from.ifindex, e.from.hook), name(e.to.ifindex, e.to.hook)))
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
                values_us: v,
            }
        })
        .collect()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests;
