use super::*;
use crate::kernel::nfnetlink::{NLA_F_NESTED, put_attr};

fn nested(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    put_attr(&mut v, ty | NLA_F_NESTED, &parts.concat());
    v
}

fn attr_bytes(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    put_attr(&mut v, ty, payload);
    v
}

fn u32be(ty: u16, x: u32) -> Vec<u8> {
    attr_bytes(ty, &x.to_be_bytes())
}

fn expr(name: &str, data: Vec<Vec<u8>>) -> Vec<u8> {
    nested(
        NFTA_LIST_ELEM,
        &[attr_bytes(NFTA_EXPR_NAME, format!("{name}\0").as_bytes()), nested(NFTA_EXPR_DATA, &data)],
    )
}

fn value(ty: u16, v: &[u8]) -> Vec<u8> {
    nested(ty, &[attr_bytes(NFTA_DATA_VALUE, v)])
}

fn rule(family: u8, table: &str, chain: &str, exprs: Vec<Vec<u8>>, udata: Option<&[u8]>) -> Vec<u8> {
    let mut p = vec![family, 0, 0, 0];
    p.extend(attr_bytes(NFTA_RULE_TABLE, format!("{table}\0").as_bytes()));
    p.extend(attr_bytes(NFTA_RULE_CHAIN, format!("{chain}\0").as_bytes()));
    p.extend(nested(NFTA_RULE_EXPRESSIONS, &exprs));
    if let Some(u) = udata {
        p.extend(attr_bytes(NFTA_RULE_USERDATA, u));
    }
    p
}

/// kube-proxy's `meta l4proto tcp dnat to 198.18.2.11:8080`, as the kernel dumps it.
#[test]
fn a_kube_proxy_endpoint_dnat_reads_protocol_address_and_port() {
    let chain = "endpoint-D4QQNTBT-default/web/tcp/__198.18.2.11/8080";
    let exprs = vec![
        expr("meta", vec![u32be(2, NFT_META_L4PROTO), u32be(1, 1)]),
        expr("cmp", vec![u32be(1, 1), u32be(2, NFT_CMP_EQ), value(3, &[6])]),
        expr("immediate", vec![u32be(1, 1), value(2, &[198, 18, 2, 11])]),
        expr("immediate", vec![u32be(1, 2), value(2, &8080u16.to_be_bytes())]),
        expr(
            "nat",
            vec![u32be(1, 1), u32be(2, 2), u32be(3, 1), u32be(4, 1), u32be(5, 2), u32be(6, 2), u32be(7, 3)],
        ),
    ];
    let r = parse_rule(&rule(NFPROTO_IPV4, "kube-proxy", chain, exprs, None)).unwrap();
    assert_eq!(r.backend, Backend::Nftables);
    assert_eq!(r.chain_ref(), format!("kube-proxy/{chain}"));
    assert_eq!(r.proto, Some(6));
    let Action::Dnat(t) = &r.action else { panic!("{r:?}") };
    assert!(t.maps_addr("198.18.2.11".parse().unwrap()));
    assert_eq!(t.ports, Some((8080, 8080)));
}

/// iptables-nft's `-d 198.18.0.0/16 ... -j RETURN` with a `comment` match.
#[test]
fn an_iptables_nft_return_reads_its_destination_prefix_and_comment() {
    let mut comment = b"AWS SNAT CHAIN".to_vec();
    comment.resize(256, 0);
    let exprs = vec![
        expr("payload", vec![u32be(1, 1), u32be(2, NFT_PAYLOAD_NETWORK_HEADER), u32be(3, 16), u32be(4, 4)]),
        expr(
            "bitwise",
            vec![u32be(1, 1), u32be(2, 1), u32be(3, 4), value(4, &[255, 255, 0, 0]), value(5, &[0; 4])],
        ),
        expr("cmp", vec![u32be(1, 1), u32be(2, NFT_CMP_EQ), value(3, &[198, 18, 0, 0])]),
        expr("match", vec![attr_bytes(1, b"comment\0"), u32be(2, 0), attr_bytes(3, &comment)]),
        expr(
            "immediate",
            vec![
                u32be(1, 0),
                nested(2, &[nested(NFTA_DATA_VERDICT, &[u32be(NFTA_VERDICT_CODE, NFT_RETURN as u32)])]),
            ],
        ),
    ];
    let r = parse_rule(&rule(NFPROTO_IPV4, "nat", "AWS-SNAT-CHAIN-0", exprs, None)).unwrap();
    assert_eq!(r.backend, Backend::IptablesNft);
    assert_eq!(r.chain_ref(), "AWS-SNAT-CHAIN-0");
    assert_eq!(r.dst, Some(("198.18.0.0".parse().unwrap(), 16)));
    assert_eq!(r.comment.as_deref(), Some("AWS SNAT CHAIN"));
    assert_eq!(r.action, Action::Return);
}

#[test]
fn a_native_comment_comes_from_userdata_and_a_jump_names_its_chain() {
    let exprs = vec![expr(
        "immediate",
        vec![
            u32be(1, 0),
            nested(
                2,
                &[nested(
                    NFTA_DATA_VERDICT,
                    &[
                        u32be(NFTA_VERDICT_CODE, NFT_JUMP as u32),
                        attr_bytes(NFTA_VERDICT_CHAIN, b"snat-mark\0"),
                    ],
                )],
            ),
        ],
    )];
    let udata = [UDATA_RULE_COMMENT, 5, b'h', b'e', b'l', b'l', 0];
    let r = parse_rule(&rule(NFPROTO_IPV4, "aws-cni", "nat-prerouting", exprs, Some(&udata))).unwrap();
    assert_eq!(r.action, Action::Jump("snat-mark".into()));
    assert_eq!(r.comment.as_deref(), Some("hell"));
}

#[test]
fn truncated_rules_never_panic() {
    let exprs = vec![expr("masq", vec![u32be(1, 0x10)])];
    let full = rule(NFPROTO_IPV4, "kube-proxy", "masquerading", exprs, None);
    let r = parse_rule(&full).unwrap();
    let Action::Masquerade(t) = &r.action else { panic!() };
    assert!(t.fully_random);
    for cut in 0..full.len() {
        let _ = parse_rule(&full[..cut]);
    }
}
