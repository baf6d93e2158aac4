//! Flow sets recorded on the lab (`-o json` of podtrace while `cargo xtask lab traffic` ran
//! the demo's cases), turned back into model flows for the report tests.
use crate::{
    assemble::model::{Flow, FlowDrop, Hop, HopLatency, Nat, Proto},
    kernel::addr,
    report::json::{FlowReport, HopReport, NatReport},
};
use tracer_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// web-2 on node-a during the demo's traffic: 5 × VPC db, 5 × internet (SNAT), 10 × ALB to
/// the NodePort (4 served by web-2), 5 × ALB to the pod IP, 5 × ClusterIP api (service
/// `default/api:http`), one UDP socket to db.
pub const DEMO_WEB_2: &str = include_str!("fixtures/demo-web-2.jsonl");
/// web-1 with IPv6 (`lab up --ipv6`): 4 × to db over IPv6, 3 × from db over IPv6, 2 × internet
/// over IPv4, and the pod's own neighbour solicitation.
pub const IPV6_WEB_1: &str = include_str!("fixtures/ipv6-web-1.jsonl");

/// When the recordings ended (after the last packet of either).
pub const RECORDED_NOW_MS: u64 = 1_796_192_580_000;

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
        Proto::Icmp => PROTO_ICMP,
        Proto::Icmpv6 => PROTO_ICMPV6,
        Proto::Other(n) => n,
    }
}

/// The model flow behind a recorded report. What JSON does not carry is filled in from what
/// the recording is known to be: every TCP connection of the traffic generator ended with a
/// FIN; delays are known exactly only for hop pairs with at most two samples (nearest-rank
/// p50 and p99 are then the samples), others keep none.
fn flow_of(r: &FlowReport) -> Flow {
    let proto = proto_number(r.proto);
    let hop = |h: &HopReport| Hop {
        ifname: h.ifname.clone(),
        role: h.role,
        hook: h.hook,
        src: h.src,
        dst: h.dst,
        packets: h.packets,
        bytes: h.bytes,
        ifindex: 0,
        tuple: addr::tuple(proto, h.src, h.dst),
        first_ns: 0,
        last_ns: 0,
        tcp_flags: if r.proto == Proto::Tcp { 0x1b } else { 0 },
    };
    let nat = |n: &NatReport| Nat {
        from: n.from,
        to: n.to,
        after_hop: n.after_hop.clone(),
        before_hop: n.before_hop.clone(),
        kind: n.kind,
        chain: n.chain.clone(),
        service: n.service.clone(),
    };
    let first = r.path.first().expect("recorded flows have a path");
    let f = Flow {
        pod: r.pod.clone(),
        namespace: r.namespace.clone(),
        pod_ip: r.pod_ip,
        proto: r.proto,
        direction: r.direction,
        src: r.src,
        dst: r.dst,
        path: r.path.iter().map(hop).collect(),
        reply_path: r.reply_path.iter().map(hop).collect(),
        eni: r.eni.clone(),
        trunk_eni: r.trunk_eni.clone(),
        branch_eni_id: r.branch_eni_id.clone(),
        pod_ip_owner_eni: r.pod_ip_owner_eni.clone(),
        snat: r.snat.as_ref().map(nat),
        dnat: r.dnat.as_ref().map(nat),
        ingress_mode: r.ingress_mode,
        hop_latency_us: r
            .hop_latency_us
            .iter()
            .map(|l| HopLatency {
                from: l.from.clone(),
                to: l.to.clone(),
                p50: l.p50,
                p90: l.p90,
                p99: l.p99,
                values_us: match l.samples {
                    1 => vec![l.p50],
                    2 => vec![l.p50, l.p99],
                    _ => vec![],
                },
            })
            .collect(),
        packets: r.packets,
        bytes: r.bytes,
        client_ip_preserved: r.client_ip_preserved,
        node_crossing: r.node_crossing,
        unanswered_after: r.unanswered_after.clone(),
        no_reply: r.no_reply,
        drops: r
            .drops
            .iter()
            .map(|d| FlowDrop {
                reason: d.reason.clone(),
                location: d.location.clone(),
                after_hop: d.after_hop.clone(),
                program: d.program.clone(),
                count: d.count,
            })
            .collect(),
        retransmits: r.retransmits,
        first_seen_ms: r.first_seen_ms,
        last_seen_ms: r.last_seen_ms,
        id_tuple: addr::tuple(proto, first.src, first.dst),
        community_id: r.community_id.clone(),
    };
    assert_eq!(f.id(), r.id, "the recorded id is the first hop's tuple");
    f
}

pub fn recorded(text: &str) -> (Vec<FlowReport>, Vec<Flow>) {
    let reports: Vec<FlowReport> =
        text.lines().map(|l| serde_json::from_str(l).expect("a flow of the contract")).collect();
    let flows = reports.iter().map(flow_of).collect();
    (reports, flows)
}
