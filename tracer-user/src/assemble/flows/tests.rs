use super::*;
use crate::assemble::{context::Iface, model::NatKind};
use std::net::SocketAddr;
use tracer_common::{HopEvent, Sighting, hook};

fn t(src: &str, dst: &str) -> Tuple {
    addr::tuple(PROTO_TCP, sa(src), sa(dst))
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
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
    let iface = |name: &str, role| Iface { name: name.into(), role, trunk: None };
    c.ifaces.insert(1, iface("eth0", Role::Eni));
    c.ifaces.insert(2, iface("eth1", Role::Eni));
    c.ifaces.insert(5, iface("enib", Role::PodVeth));
    c.node_ips.insert("198.18.1.10".parse().unwrap());
    c
}

fn pod() -> TracedPod {
    TracedPod {
        name: "web-2".into(),
        namespace: "default".into(),
        ips: vec!["198.18.2.11".parse().unwrap()],
        veths: vec![5],
        owner_eni: Some("eth1".into()),
        branch_eni_id: None,
    }
}

fn obs<'a>(entries: &'a [(FlowKey, FlowStats)], hops: &'a HopTable, ct: &'a [CtEntry]) -> Observations<'a> {
    Observations { entries, hops, conntrack: ct, drops: &[], retransmits: &[] }
}

fn names(path: &[Hop]) -> Vec<String> {
    path.iter().map(|h| h.name().to_string()).collect()
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
    let r = assemble(&obs(&entries, &hops, &[]), &ctx(), &DropNames::default(), &[pod()], Clock::default());
    assert_eq!(r.len(), 1);
    let r = &r[0];
    assert_eq!(r.direction, Direction::Egress);
    assert_eq!(r.src, sa("198.18.2.11:40112"));
    assert_eq!(r.eni.as_deref(), Some("eth0"));
    assert_eq!(names(&r.path), ["enib/ingress", "eth0/egress"]);
    assert_eq!(names(&r.reply_path), ["eth0/ingress", "enib/egress"]);
    let snat = r.snat.as_ref().unwrap();
    assert_eq!((snat.from, snat.to), (sa("198.18.2.11:40112"), sa("198.18.1.10:61000")));
    assert_eq!(snat.after_hop.as_ref().map(ToString::to_string).as_deref(), Some("enib/ingress"));
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
    let hops = HopTable::new(16);
    let r = assemble(&obs(&entries, &hops, &ct), &ctx(), &DropNames::default(), &[pod()], Clock::default());
    assert_eq!(r.len(), 1);
    let r = &r[0];
    assert_eq!(r.direction, Direction::Ingress);
    assert_eq!(r.ingress_mode, Some(IngressMode::Nodeport));
    assert_eq!(r.dnat.as_ref().unwrap().to, sa("198.18.2.11:8080"));
    // No rules in this context: the tuples prove a DNAT from a node address, not which rule.
    assert_eq!(
        (r.dnat.as_ref().unwrap().kind, r.dnat.as_ref().unwrap().chain.as_deref()),
        (NatKind::Dnat, None)
    );
    assert_eq!(r.snat.as_ref().unwrap().to, sa("198.18.1.10:7777"));
    assert_eq!(r.snat.as_ref().unwrap().kind, NatKind::Masquerade);
    assert_eq!(r.client_ip_preserved, Some(false));
    assert_eq!(r.nat_steps(), 2);
    assert_eq!(r.src, sa("198.18.1.10:7777"));
}

#[test]
fn ipv6_addresses_stay_addresses() {
    let out = addr::tuple(PROTO_TCP, sa("[2001:2::1:11]:40000"), sa("[2001:2::3:10]:80"));
    let entries = vec![entry(out, 5, hook::INGRESS, 100), entry(out, 1, hook::EGRESS, 150)];
    let mut p = pod();
    p.ips = vec!["2001:2::1:11".parse().unwrap()];
    let hops = HopTable::new(16);
    let r = assemble(&obs(&entries, &hops, &[]), &ctx(), &DropNames::default(), &[p], Clock::default());
    assert_eq!(r[0].dst.ip().to_string(), "2001:2::3:10");
    assert_eq!(r[0].pod_ip.to_string(), "2001:2::1:11");
    assert_eq!(r[0].id(), "tcp:[2001:2::1:11]:40000>[2001:2::3:10]:80");
}

#[test]
fn unrelated_flows_stay_apart() {
    let a = t("198.18.2.11:1000", "198.18.3.10:8080");
    let b = t("198.18.9.9:1000", "198.18.3.10:8080");
    let entries = vec![entry(a, 5, hook::INGRESS, 1), entry(b, 1, hook::INGRESS, 2)];
    let hops = HopTable::new(16);
    let r = assemble(&obs(&entries, &hops, &[]), &ctx(), &DropNames::default(), &[pod()], Clock::default());
    assert_eq!(r.len(), 1, "only the pod's own flow is reported");
}

#[test]
fn percentiles_use_nearest_rank() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&v, 50.0), 50.0);
    assert_eq!(percentile(&v, 99.0), 99.0);
    assert_eq!(percentile(&[], 50.0), 0.0);
}
