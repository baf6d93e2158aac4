//! Grouping on flow sets recorded on the lab, plus synthetic sets for what the lab does not
//! produce.
use std::{collections::BTreeSet, net::SocketAddr};

use super::{
    fixtures::{DEMO_WEB_2, IPV6_WEB_1, RECORDED_NOW_MS, recorded},
    *,
};
use crate::{
    assemble::model::{FlowDrop, HopLatency},
    kernel::addr,
    report::json::FlowReport,
};
use tracer_common::PROTO_TCP;

fn by_path(flows: &[Flow]) -> Vec<PathGroup> {
    group(flows, &GroupOptions::new(GroupBy::Path, RECORDED_NOW_MS))
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn find<'a>(groups: &'a [PathGroup], what: &str, pred: impl Fn(&PathGroup) -> bool) -> &'a PathGroup {
    let found: Vec<&PathGroup> = groups.iter().filter(|g| pred(g)).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one path {what} in {:#?}",
        groups.iter().map(|g| &g.key).collect::<Vec<_>>()
    );
    found[0]
}

/// The ids of the reports a predicate selects, counted independently of the grouping.
fn ids_where(reports: &[FlowReport], pred: impl Fn(&FlowReport) -> bool) -> BTreeSet<String> {
    reports.iter().filter(|r| pred(r)).map(|r| r.id.clone()).collect()
}

fn ids(g: &PathGroup) -> BTreeSet<String> {
    g.flow_ids().map(str::to_string).collect()
}

#[test]
fn the_demo_traffic_of_web_2_is_six_paths_not_25_lines() {
    let (reports, flows) = recorded(DEMO_WEB_2);
    assert_eq!(flows.len(), 25);
    let groups = by_path(&flows);
    assert_eq!(groups.len(), 6, "{:#?}", groups.iter().map(|g| &g.key).collect::<Vec<_>>());

    let vpc = find(&groups, "to db over TCP", |g| {
        g.key.proto == Proto::Tcp && g.key.peer.to_string() == "198.18.3.10:8080"
    });
    assert_eq!((vpc.key.direction, vpc.key.eni.as_deref()), (Direction::Egress, Some("eth1")));
    assert_eq!((vpc.snat.as_ref(), vpc.dnat.as_ref()), (None, None));
    assert_eq!(ids(vpc), ids_where(&reports, |r| r.proto == Proto::Tcp && r.dst == sa("198.18.3.10:8080")));

    let inet = find(&groups, "to the internet", |g| g.key.peer.to_string() == "203.0.113.10:80");
    assert_eq!(inet.key.eni.as_deref(), Some("eth0"));
    assert_eq!(inet.key.snat, Some(NatKind::PodEgressSnat));
    let snat = inet.snat.as_ref().unwrap();
    // Five different SNAT ports, one address: the port is a wildcard, the address is kept.
    assert_eq!(snat.to.to_string(), "198.18.1.10:*");
    assert_eq!(snat.from.to_string(), "198.18.2.11:*");
    assert_eq!(
        ids(inet),
        ids_where(&reports, |r| r.dst.port() == 80 && r.dst.ip().to_string() == "203.0.113.10")
    );

    let nodeport = find(&groups, "via the NodePort", |g| g.key.ingress_mode == Some(IngressMode::Nodeport));
    assert_eq!(nodeport.key.peer.to_string(), "198.18.100.10:*", "the ALB, whatever its ports");
    assert_eq!(nodeport.key.pod_port, Some(8080));
    assert_eq!(nodeport.key.eni.as_deref(), Some("eth0"));
    assert_eq!(
        (nodeport.key.dnat, nodeport.key.snat),
        (Some(NatKind::NodeportDnat), Some(NatKind::Masquerade))
    );
    let dnat = nodeport.dnat.as_ref().unwrap();
    assert_eq!(dnat.from.to_string(), "198.18.1.10:30080");
    assert_eq!(dnat.to.to_string(), "198.18.2.11:8080");
    assert_eq!(nodeport.total(), 4, "web-2 served 4 of the 10 NodePort requests");
    assert_eq!(dnat.service.as_deref(), Some("default/web"), "named by kube-proxy's rule");

    let direct = find(&groups, "straight to the pod IP", |g| g.key.ingress_mode == Some(IngressMode::Direct));
    assert_eq!(
        (direct.key.eni.as_deref(), direct.key.peer.to_string()),
        (Some("eth1"), "198.18.100.10:*".into())
    );
    assert_eq!(direct.total(), 5);

    let cluster_ip = find(&groups, "to the ClusterIP", |g| g.key.dnat == Some(NatKind::ServiceDnat));
    assert_eq!(cluster_ip.key.peer.to_string(), "default/api:http", "the service the pod asked for");
    assert_eq!(cluster_ip.dnat.as_ref().unwrap().from.to_string(), "198.19.0.10:80");
    assert_eq!(cluster_ip.dnat.as_ref().unwrap().to.to_string(), "198.18.1.21:8080");
    assert_eq!(ids(cluster_ip), ids_where(&reports, |r| r.dst == sa("198.19.0.10:80")));

    let udp = find(&groups, "UDP", |g| g.key.proto == Proto::Udp);
    assert_eq!((udp.total(), udp.packets), (1, 40));

    // Every flow is in exactly one path, and the totals are the flows' own.
    let all: Vec<String> = groups.iter().flat_map(|g| g.flow_ids().map(str::to_string)).collect();
    let unique: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!((all.len(), unique), (25, ids_where(&reports, |_| true)));
    let bytes: u64 = reports.iter().map(|r| r.bytes).sum();
    assert_eq!(groups.iter().map(|g| g.bytes).sum::<u64>(), bytes);
    // Every TCP connection of the recording was closed; the UDP socket is 10 s quiet.
    assert_eq!(groups.iter().map(PathGroup::active).sum::<usize>(), 0);
}

#[test]
fn grouping_by_flow_keeps_one_row_per_flow_with_exact_ports() {
    let (reports, flows) = recorded(DEMO_WEB_2);
    let groups = group(&flows, &GroupOptions::new(GroupBy::Flow, RECORDED_NOW_MS));
    assert_eq!(groups.len(), reports.len());
    for g in &groups {
        assert_eq!(g.total(), 1);
        assert_eq!(g.key.flow.as_deref(), Some(g.connections[0].id.as_str()));
        let r = reports.iter().find(|r| r.id == g.connections[0].id).unwrap();
        if r.direction == Direction::Ingress {
            assert_eq!(g.key.peer.to_string(), r.path[0].src.to_string(), "the client with its port");
        }
    }
}

#[test]
fn ipv6_peers_are_bracketed_and_wildcarded_like_ipv4() {
    let (reports, flows) = recorded(IPV6_WEB_1);
    let groups = by_path(&flows);
    let peers: BTreeSet<(Direction, String)> =
        groups.iter().map(|g| (g.key.direction, g.key.peer.to_string())).collect();
    let expected: BTreeSet<(Direction, String)> = [
        (Direction::Egress, "[2001:2:0:3::10]:8080"),
        (Direction::Ingress, "[2001:2:0:3::10]:*"),
        (Direction::Egress, "203.0.113.10:80"),
        // Neighbour discovery has no ports.
        (Direction::Egress, "fe80::1"),
    ]
    .into_iter()
    .map(|(d, p)| (d, p.to_string()))
    .collect();
    assert_eq!(peers, expected);
    let to_db = find(&groups, "IPv6 to db", |g| g.key.peer.to_string() == "[2001:2:0:3::10]:8080");
    assert_eq!(ids(to_db), ids_where(&reports, |r| r.dst == sa("[2001:2:0:3::10]:8080")));
    let from_db = find(&groups, "IPv6 from db", |g| g.key.direction == Direction::Ingress);
    assert_eq!((from_db.total(), from_db.key.pod_port), (3, Some(8080)));
    let nd = find(&groups, "neighbour discovery", |g| g.key.proto == Proto::Icmpv6);
    assert_eq!((nd.key.eni.as_ref(), nd.key.pod_port), (None, None));
}

fn internet_flows() -> Vec<Flow> {
    let (_, flows) = recorded(DEMO_WEB_2);
    flows.into_iter().filter(|f| f.snat.is_some() && f.direction == Direction::Egress).collect()
}

#[test]
fn snat_addresses_that_differ_stay_visible_and_other_nat_kinds_split_the_path() {
    let mut flows = internet_flows();
    assert_eq!(flows.len(), 5);
    flows[0].snat.as_mut().unwrap().to = sa("198.18.1.99:4000");
    let groups = by_path(&flows);
    assert_eq!(groups.len(), 1, "the SNAT address is not part of the key");
    assert_eq!(groups[0].snat.as_ref().unwrap().to.to_string(), "*:* (2 addresses)");
    assert_eq!(groups[0].snat.as_ref().unwrap().to.ips().len(), 2);

    flows[1].snat.as_mut().unwrap().kind = NatKind::Snat;
    let groups = by_path(&flows);
    assert_eq!(groups.len(), 2);
    assert_eq!(groups.iter().map(PathGroup::total).collect::<BTreeSet<_>>(), BTreeSet::from([1, 4]));
}

#[test]
fn a_service_named_by_the_dnat_is_the_peer_and_an_unnamed_one_stays_an_address() {
    let (_, mut flows) = recorded(DEMO_WEB_2);
    // One ClusterIP connection whose rule the node did not let us read.
    let unnamed = flows
        .iter_mut()
        .find(|f| f.dnat.as_ref().is_some_and(|d| d.service.is_some()) && f.direction == Direction::Egress)
        .unwrap();
    unnamed.dnat.as_mut().unwrap().service = None;
    let groups = by_path(&flows);
    assert_eq!(groups.len(), 7);
    let api = find(&groups, "to the service", |g| g.key.peer == Peer::Service("default/api:http".into()));
    assert_eq!((api.total(), api.key.dnat), (4, Some(NatKind::ServiceDnat)));
    let by_address =
        find(&groups, "to the ClusterIP address", |g| g.key.peer.to_string() == "198.19.0.10:80");
    assert_eq!((by_address.total(), by_address.dnat.as_ref().unwrap().service.as_ref()), (1, None));
    // A NodePort's DNAT names its service too, but on ingress the peer is the client.
    let nodeport = find(&groups, "via the NodePort", |g| g.key.ingress_mode == Some(IngressMode::Nodeport));
    assert!(matches!(nodeport.key.peer, Peer::Addr { .. }));
    assert_eq!(nodeport.dnat.as_ref().unwrap().service.as_deref(), Some("default/web"));
}

/// `n` ingress flows of the same shape from `n` different clients, flow `i` carrying
/// `(i + 1) * 100` bytes.
fn clients(n: usize) -> Vec<Flow> {
    let (_, flows) = recorded(DEMO_WEB_2);
    let direct = flows.iter().find(|f| f.ingress_mode == Some(IngressMode::Direct)).unwrap();
    (0..n)
        .map(|i| {
            let mut f = direct.clone();
            let client: SocketAddr = format!("198.18.100.{}:{}", 20 + i, 40000 + i).parse().unwrap();
            f.path[0].src = client;
            f.src = client;
            f.id_tuple = addr::tuple(PROTO_TCP, client, f.path[0].dst);
            f.bytes = (i as u64 + 1) * 100;
            f
        })
        .collect()
}

#[test]
fn many_clients_on_one_path_fold_into_one_row_and_nothing_is_lost() {
    let flows = clients(20);
    let groups = by_path(&flows);
    assert_eq!(groups.len(), MAX_PEERS_PER_PATH);
    // The biggest clients keep their own rows.
    let listed: BTreeSet<String> = groups
        .iter()
        .filter(|g| matches!(g.key.peer, Peer::Addr { .. }))
        .map(|g| g.key.peer.to_string())
        .collect();
    let expected: BTreeSet<String> =
        (0..MAX_PEERS_PER_PATH - 1).map(|i| format!("198.18.100.{}:*", 39 - i)).collect();
    assert_eq!(listed, expected);
    let rest = groups.iter().find(|g| matches!(g.key.peer, Peer::Many { .. })).unwrap();
    assert_eq!(rest.key.peer.to_string(), "* (13 peers)");
    assert_eq!(rest.total(), 13);
    assert_eq!(rest.bytes, (1..=13).map(|i| i * 100).sum::<u64>());
    assert_eq!(groups.iter().map(|g| g.total()).sum::<usize>(), 20);
    // With few enough clients nothing folds.
    assert_eq!(by_path(&clients(MAX_PEERS_PER_PATH)).len(), MAX_PEERS_PER_PATH);
}

#[test]
fn latency_percentiles_pool_every_sampled_packet_of_the_path() {
    let mut flows = internet_flows();
    flows.truncate(2);
    for (f, values) in flows.iter_mut().zip([vec![1.0, 2.0, 3.0], vec![10.0, 20.0]]) {
        let first = f.path.first().unwrap().name();
        let last = f.path.last().unwrap().name();
        f.hop_latency_us =
            vec![HopLatency { from: first, to: last, p50: 0.0, p90: 0.0, p99: 0.0, values_us: values }];
    }
    let g = &by_path(&flows)[0];
    // Nearest rank over [1, 2, 3, 10, 20].
    assert_eq!(g.latency(), Some(Percentiles { p50: 3.0, p90: 20.0, p99: 20.0, samples: 5 }));
    flows.iter_mut().for_each(|f| f.hop_latency_us.clear());
    assert_eq!(by_path(&flows)[0].latency(), None, "no samples, no made-up latency");
}

#[test]
fn active_means_open_tcp_or_recent_packets() {
    let (_, flows) = recorded(DEMO_WEB_2);
    let mut tcp = flows[0].clone();
    let now = tcp.last_seen_ms + 60_000;
    assert!(!is_active(&tcp, now), "FIN seen");
    tcp.path.iter_mut().chain(tcp.reply_path.iter_mut()).for_each(|h| h.tcp_flags = 0x12);
    assert!(is_active(&tcp, now), "answered and open, however idle");
    tcp.reply_path.clear();
    tcp.no_reply = true;
    assert!(!is_active(&tcp, now), "never answered and quiet");
    assert!(is_active(&tcp, tcp.last_seen_ms + 1_000));
    let udp = flows.iter().find(|f| f.proto == Proto::Udp).unwrap();
    assert!(is_active(udp, udp.last_seen_ms + ACTIVE_WINDOW_MS));
    assert!(!is_active(udp, udp.last_seen_ms + ACTIVE_WINDOW_MS + 1));
}

#[test]
fn drops_and_retransmits_add_up_per_place() {
    let mut flows = internet_flows();
    let drop = |n| FlowDrop {
        reason: "NETFILTER_DROP".into(),
        location: "nf_hook_slow+0x9c".into(),
        after_hop: Some("eth0/egress".parse().unwrap()),
        program: None,
        count: n,
    };
    flows[0].drops = vec![drop(2)];
    flows[1].drops = vec![drop(3)];
    flows[2].retransmits = 4;
    let g = &by_path(&flows)[0];
    assert_eq!(g.dropped(), 5);
    assert_eq!(g.drops.len(), 1, "same reason, same place");
    assert_eq!(g.retransmits, 4);
}

#[test]
fn rates_count_the_bytes_of_each_window_once() {
    let mut flows = clients(3); // 100, 200, 300 bytes
    let start = flows[0].first_seen_ms;
    let opts = GroupOptions::new(GroupBy::Path, start + 2_000);
    let mut meter = RateMeter::starting_at(start);
    let mut groups = group(&flows, &opts);
    meter.measure(&mut groups, start + 2_000);
    let rate = |gs: &[PathGroup], peer: &str| {
        gs.iter().find(|g| g.key.peer.to_string() == peer).and_then(|g| g.bytes_per_sec).unwrap()
    };
    assert_eq!(rate(&groups, "198.18.100.22:*"), 150.0);
    flows[2].bytes += 1000;
    let mut groups = group(&flows, &opts);
    meter.measure(&mut groups, start + 4_000);
    assert_eq!(rate(&groups, "198.18.100.22:*"), 500.0);
    assert_eq!(rate(&groups, "198.18.100.20:*"), 0.0);
    sort(&mut groups, SortBy::Rate);
    assert_eq!(groups[0].key.peer.to_string(), "198.18.100.22:*");
    // Bytes order: 1300, 200, 100.
    sort(&mut groups, SortBy::Bytes);
    assert_eq!(groups.iter().map(|g| g.bytes).collect::<Vec<_>>(), [1300, 200, 100]);
}
