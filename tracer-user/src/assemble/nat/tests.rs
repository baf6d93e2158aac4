use super::*;
use crate::{
    assemble::model::HopName,
    node::rules::{Ruleset, SetElement},
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn rw(from: &str, to: &str) -> Rewrite {
    Rewrite {
        from: sa(from),
        to: sa(to),
        after_hop: Some("eth0/ingress".parse::<HopName>().unwrap()),
        before_hop: None,
    }
}

fn rule(
    backend: Backend,
    table: &str,
    chain: &str,
    proto: Option<u8>,
    comment: Option<&str>,
    action: Action,
) -> Rule {
    Rule {
        backend,
        ipv6: false,
        table: table.into(),
        chain: chain.into(),
        proto,
        src: None,
        dst: None,
        dport: None,
        comment: comment.map(str::to_string),
        action,
    }
}

fn to(addr: &str, port: Option<u16>) -> NatTarget {
    let ip = addr.parse().unwrap();
    NatTarget { addrs: Some((ip, ip)), ports: port.map(|p| (p, p)), ..Default::default() }
}

fn masq() -> NatTarget {
    NatTarget { fully_random: true, ..Default::default() }
}

fn ctx(rules: Vec<Rule>, elements: Vec<SetElement>) -> NodeContext {
    let mut c = NodeContext { rules: Ruleset { rules, elements, backends: vec![] }, ..Default::default() };
    c.node_ips.insert("198.18.1.10".parse().unwrap());
    c
}

/// kube-proxy iptables mode (either backend) with the VPC CNI's SNAT.
fn iptables_mode(backend: Backend) -> NodeContext {
    let mut nodeport = rule(
        backend,
        "nat",
        "KUBE-NODEPORTS",
        Some(6),
        Some("default/web"),
        Action::Jump("KUBE-EXT-X".into()),
    );
    nodeport.dport = Some(30080);
    ctx(
        vec![
            nodeport,
            rule(
                backend,
                "nat",
                "KUBE-SEP-AYUPPDUJE3VKXBT5",
                Some(6),
                Some("default/web"),
                Action::Dnat(to("198.18.2.11", Some(8080))),
            ),
            rule(
                backend,
                "nat",
                "KUBE-SEP-LLQLIR55PNHL6BZY",
                Some(6),
                Some("default/api:http"),
                Action::Dnat(to("198.18.1.21", Some(8080))),
            ),
            rule(
                backend,
                "nat",
                "KUBE-SEP-Y7LUKRCX2UVHQXXK",
                Some(17),
                Some("default/api:udp"),
                Action::Dnat(to("198.18.1.21", Some(8080))),
            ),
            rule(backend, "nat", "KUBE-POSTROUTING", None, None, Action::Masquerade(masq())),
            rule(
                backend,
                "nat",
                "AWS-SNAT-CHAIN-0",
                None,
                Some("AWS, SNAT"),
                Action::Snat(to("198.18.1.10", None)),
            ),
        ],
        vec![],
    )
}

/// kube-proxy nftables mode, the VPC CNI's SNAT in iptables-nft.
fn nftables_mode() -> NodeContext {
    let kp = |chain: &str, proto, action| rule(Backend::Nftables, "kube-proxy", chain, proto, None, action);
    ctx(
        vec![
            kp(
                "endpoint-D4QQNTBT-default/web/tcp/__198.18.2.11/8080",
                Some(6),
                Action::Dnat(to("198.18.2.11", Some(8080))),
            ),
            kp(
                "endpoint-Q5GYUFX5-default/api/tcp/http__198.18.1.21/8080",
                Some(6),
                Action::Dnat(to("198.18.1.21", Some(8080))),
            ),
            kp(
                "endpoint-FRWYB5E6-default/api/udp/udp__198.18.1.21/8080",
                Some(17),
                Action::Dnat(to("198.18.1.21", Some(8080))),
            ),
            kp("masquerading", None, Action::Masquerade(masq())),
            rule(
                Backend::IptablesNft,
                "nat",
                "AWS-SNAT-CHAIN-0",
                None,
                Some("AWS, SNAT"),
                Action::Snat(to("198.18.1.10", None)),
            ),
        ],
        vec![SetElement {
            table: "kube-proxy".into(),
            set: "service-nodeports".into(),
            key: vec![6, 0, 0, 0, 0x75, 0x80, 0, 0],
        }],
    )
}

fn nodeport(c: &NodeContext) -> (Nat, Nat) {
    let (s, d) = name(
        Some(rw("198.18.100.10:5555", "198.18.1.10:7777")),
        Some(rw("198.18.1.10:30080", "198.18.2.11:8080")),
        6,
        c,
    );
    (s.unwrap(), d.unwrap())
}

#[test]
fn nodeport_dnat_and_masquerade_in_iptables_mode_on_both_backends() {
    for backend in [Backend::IptablesNft, Backend::IptablesLegacy] {
        let (s, d) = nodeport(&iptables_mode(backend));
        assert_eq!(
            (d.kind, d.chain.as_deref(), d.service.as_deref()),
            (NatKind::NodeportDnat, Some("KUBE-SEP-AYUPPDUJE3VKXBT5"), Some("default/web"))
        );
        assert_eq!(
            (s.kind, s.chain.as_deref(), s.service.as_deref()),
            (NatKind::Masquerade, Some("KUBE-POSTROUTING"), Some("default/web"))
        );
    }
}

#[test]
fn nodeport_dnat_and_masquerade_in_nftables_mode() {
    let (s, d) = nodeport(&nftables_mode());
    assert_eq!(d.kind, NatKind::NodeportDnat);
    assert_eq!(d.chain.as_deref(), Some("kube-proxy/endpoint-D4QQNTBT-default/web/tcp/__198.18.2.11/8080"));
    assert_eq!(d.service.as_deref(), Some("default/web"));
    assert_eq!((s.kind, s.chain.as_deref()), (NatKind::Masquerade, Some("kube-proxy/masquerading")));
}

#[test]
fn cluster_ip_dnat_is_told_apart_by_protocol() {
    for c in [iptables_mode(Backend::IptablesNft), nftables_mode()] {
        let (_, d) = name(None, Some(rw("198.19.0.10:80", "198.18.1.21:8080")), 17, &c);
        let d = d.unwrap();
        assert_eq!(d.kind, NatKind::ServiceDnat);
        assert_eq!(d.service.as_deref(), Some("default/api:udp"), "{d:?}");
    }
}

#[test]
fn pod_egress_snat_names_the_aws_chain() {
    let (s, _) = name(Some(rw("198.18.2.11:40000", "198.18.1.10:61000")), None, 6, &nftables_mode());
    let s = s.unwrap();
    assert_eq!(
        (s.kind, s.chain.as_deref(), s.service),
        (NatKind::PodEgressSnat, Some("AWS-SNAT-CHAIN-0"), None)
    );
}

#[test]
fn without_a_matching_rule_nothing_is_invented() {
    let empty = ctx(vec![], vec![]);
    let (s, d) = nodeport(&empty);
    assert_eq!((d.kind, d.chain, d.service), (NatKind::Dnat, None, None));
    assert_eq!(
        (s.kind, s.chain, s.service),
        (NatKind::Masquerade, None, None),
        "the tuples prove a masquerade"
    );
    let (s, _) = name(Some(rw("198.18.2.11:40000", "198.18.1.10:61000")), None, 6, &empty);
    assert_eq!((s.as_ref().unwrap().kind, s.unwrap().chain), (NatKind::Snat, None));
}

#[test]
fn a_port_only_rewrite_is_the_nat_core_not_a_rule() {
    let (s, _) = name(
        Some(rw("198.18.100.10:40000", "198.18.100.10:40001")),
        None,
        6,
        &iptables_mode(Backend::IptablesNft),
    );
    let s = s.unwrap();
    assert_eq!((s.kind, s.chain), (NatKind::Snat, None));
}

#[test]
fn two_chains_that_could_have_done_it_name_neither() {
    let mut c = iptables_mode(Backend::IptablesNft);
    c.rules.rules.push(rule(
        Backend::IptablesLegacy,
        "nat",
        "CUSTOM-SNAT",
        None,
        None,
        Action::Snat(to("198.18.1.10", None)),
    ));
    let (s, _) = name(Some(rw("198.18.2.11:40000", "198.18.1.10:61000")), None, 6, &c);
    assert_eq!(s.unwrap().chain, None);
}
