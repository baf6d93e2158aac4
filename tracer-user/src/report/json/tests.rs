use super::*;
use crate::kernel::addr;
use tracer_common::PROTO_TCP;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn hop(ifname: &str, role: Role, hook: Hook, src: &str, dst: &str) -> Hop {
    let (src, dst) = (sa(src), sa(dst));
    Hop {
        ifname: ifname.into(),
        role,
        hook,
        src,
        dst,
        packets: 10,
        bytes: 1234,
        ifindex: 7,
        tuple: addr::tuple(PROTO_TCP, src, dst),
        first_ns: 1,
        last_ns: 2,
        tcp_flags: 0x12,
    }
}

fn name(s: &str) -> HopName {
    s.parse().unwrap()
}

/// A NodePort flow with every field set, as the old string-built contract printed it.
fn nodeport_flow() -> Flow {
    let wire = hop("eth0", Role::Eni, Hook::Ingress, "198.18.100.10:35750", "198.18.1.10:30080");
    let to_pod = hop("eni9fb0db7f13e", Role::PodVeth, Hook::Egress, "198.18.1.10:2590", "198.18.2.11:8080");
    Flow {
        pod: "web-2".into(),
        namespace: "default".into(),
        pod_ip: "198.18.2.11".parse().unwrap(),
        proto: Proto::Tcp,
        direction: Direction::Ingress,
        src: sa("198.18.1.10:2590"),
        dst: sa("198.18.2.11:8080"),
        path: vec![wire.clone(), to_pod],
        reply_path: vec![hop(
            "eni9fb0db7f13e",
            Role::PodVeth,
            Hook::Ingress,
            "198.18.2.11:8080",
            "198.18.1.10:2590",
        )],
        eni: Some("eth0".into()),
        trunk_eni: None,
        branch_eni_id: None,
        pod_ip_owner_eni: Some("eth1".into()),
        snat: Some(Nat {
            from: sa("198.18.100.10:35750"),
            to: sa("198.18.1.10:2590"),
            after_hop: Some(name("eth0/ingress")),
            before_hop: Some(name("eni9fb0db7f13e/egress")),
            kind: NatKind::Masquerade,
            chain: Some("KUBE-POSTROUTING".into()),
            service: Some("default/web".into()),
        }),
        dnat: Some(Nat {
            from: sa("198.18.1.10:30080"),
            to: sa("198.18.2.11:8080"),
            after_hop: Some(name("eth0/ingress")),
            before_hop: None,
            kind: NatKind::NodeportDnat,
            chain: None,
            service: None,
        }),
        ingress_mode: Some(IngressMode::Nodeport),
        hop_latency_us: vec![HopLatency {
            from: name("eth0/ingress"),
            to: name("eni9fb0db7f13e/egress"),
            p50: 8.6,
            p90: 12.0,
            p99: 30.25,
            values_us: vec![8.6, 12.0, 30.25],
        }],
        packets: 20,
        bytes: 2468,
        client_ip_preserved: Some(false),
        node_crossing: false,
        unanswered_after: None,
        no_reply: false,
        drops: vec![FlowDrop {
            reason: "NETFILTER_DROP".into(),
            location: "nf_hook_slow+0x9c".into(),
            after_hop: Some(name("eth0/ingress")),
            program: None,
            count: 3,
        }],
        retransmits: 1,
        first_seen_ms: 1764650000000,
        last_seen_ms: 1764650000123,
        id_tuple: wire.tuple,
        community_id: Some("1:EQV5Bf0H5S0jttJaI7AUOZ++h3c=".into()),
    }
}

/// Byte for byte what README's contract documents (field order included).
const GOLDEN: &str = concat!(
    r#"{"pod":"web-2","namespace":"default","pod_ip":"198.18.2.11","proto":"tcp","direction":"ingress","#,
    r#""src":"198.18.1.10:2590","dst":"198.18.2.11:8080","#,
    r#""path":[{"ifname":"eth0","role":"eni","hook":"ingress","src":"198.18.100.10:35750","dst":"198.18.1.10:30080","packets":10,"bytes":1234},"#,
    r#"{"ifname":"eni9fb0db7f13e","role":"pod-veth","hook":"egress","src":"198.18.1.10:2590","dst":"198.18.2.11:8080","packets":10,"bytes":1234}],"#,
    r#""reply_path":[{"ifname":"eni9fb0db7f13e","role":"pod-veth","hook":"ingress","src":"198.18.2.11:8080","dst":"198.18.1.10:2590","packets":10,"bytes":1234}],"#,
    r#""eni":"eth0","trunk_eni":null,"branch_eni_id":null,"pod_ip_owner_eni":"eth1","#,
    r#""snat":{"from":"198.18.100.10:35750","to":"198.18.1.10:2590","after_hop":"eth0/ingress","before_hop":"eni9fb0db7f13e/egress","kind":"masquerade","chain":"KUBE-POSTROUTING","service":"default/web"},"#,
    r#""dnat":{"from":"198.18.1.10:30080","to":"198.18.2.11:8080","after_hop":"eth0/ingress","before_hop":null,"kind":"nodeport-dnat","chain":null,"service":null},"#,
    r#""ingress_mode":"nodeport","#,
    r#""hop_latency_us":[{"from":"eth0/ingress","to":"eni9fb0db7f13e/egress","p50":8.6,"p90":12.0,"p99":30.25,"samples":3}],"#,
    r#""packets":20,"bytes":2468,"nat_steps":2,"client_ip_preserved":false,"node_crossing":false,"#,
    r#""unanswered_after":null,"no_reply":false,"#,
    r#""drops":[{"reason":"NETFILTER_DROP","location":"nf_hook_slow+0x9c","after_hop":"eth0/ingress","program":null,"count":3}],"#,
    r#""retransmits":1,"first_seen_ms":1764650000000,"last_seen_ms":1764650000123,"#,
    r#""id":"tcp:198.18.100.10:35750>198.18.1.10:30080","community_id":"1:EQV5Bf0H5S0jttJaI7AUOZ++h3c="}"#
);

#[test]
fn the_contract_is_byte_for_byte_the_documented_one() {
    let report = FlowReport::from(&nodeport_flow());
    assert_eq!(serde_json::to_string(&report).unwrap(), GOLDEN);
}

#[test]
fn the_contract_reads_back_without_loss() {
    let report = FlowReport::from(&nodeport_flow());
    let back: FlowReport = serde_json::from_str(GOLDEN).unwrap();
    assert_eq!(back, report);
}

#[test]
fn ipv6_addresses_and_odd_protocols_keep_their_form() {
    let mut f = nodeport_flow();
    f.src = sa("[2001:2::1:11]:40000");
    f.proto = Proto::Other(132);
    let text = serde_json::to_string(&FlowReport::from(&f)).unwrap();
    assert!(text.contains(r#""src":"[2001:2::1:11]:40000""#), "{text}");
    assert!(text.contains(r#""proto":"ip-proto-132""#), "{text}");
    let back: FlowReport = serde_json::from_str(&text).unwrap();
    assert_eq!(back.src.ip().to_string(), "2001:2::1:11");
    assert_eq!(back.proto, Proto::Other(132));
}

#[test]
fn unknown_values_are_refused_with_their_name() {
    let bad = GOLDEN.replace(r#""kind":"masquerade""#, r#""kind":"teleport""#);
    let e = serde_json::from_str::<FlowReport>(&bad).unwrap_err().to_string();
    assert!(e.contains("invalid NAT kind \"teleport\""), "{e}");
}
