//! Property-based fuzzing of every parser that reads input podtrace does not control: pods
//! files, ctnetlink messages, the agent's query strings, BTF, iptables-save output. None may
//! panic; well-formed input must parse to what was encoded. Case counts are in TESTING.md.
use podtrace::{
    cmd::agent::api::parse_flow_query,
    kernel::btf::Btf,
    node::{
        conntrack, pods,
        rules::{legacy, nft},
    },
};
use proptest::prelude::*;

const CASES: u32 = 4096;

fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    podtrace::kernel::nfnetlink::put_attr(&mut v, ty, payload);
    v
}

fn tuple_attr(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let ip = [nla(1, &src), nla(2, &dst)].concat();
    let p = [nla(1, &[proto]), nla(2, &sport.to_be_bytes()), nla(3, &dport.to_be_bytes())].concat();
    [nla(1 | 0x8000, &ip), nla(2 | 0x8000, &p)].concat()
}

const POD_LIST: &str = r#"{"apiVersion":"v1","kind":"List","items":[{"metadata":{"name":"web-1","namespace":"default","labels":{"app":"web"}},"spec":{"nodeName":"node-a","containers":[{"name":"c"}]},"status":{"phase":"Running","podIP":"198.18.1.11","podIPs":[{"ip":"198.18.1.11"}],"hostIP":"198.18.1.10"}}]}"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn conntrack_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = conntrack::parse_entry(&bytes);
        let _ = podtrace::kernel::nfnetlink::messages(&bytes);
    }

    #[test]
    fn conntrack_entries_round_trip_and_survive_truncation(
        src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), sport in any::<u16>(), dport in any::<u16>(),
        nsrc in any::<[u8; 4]>(), nport in any::<u16>(), cut in any::<prop::sample::Index>(),
    ) {
        let mut payload = vec![2, 0, 0, 0];
        payload.extend(nla(1 | 0x8000, &tuple_attr(src, dst, 6, sport, dport)));
        payload.extend(nla(2 | 0x8000, &tuple_attr(dst, nsrc, 6, dport, nport)));
        let e = conntrack::parse_entry(&payload).expect("well-formed entry parses");
        prop_assert_eq!(&e.orig.src[..4], &src[..]);
        prop_assert_eq!(e.orig.sport, sport);
        prop_assert_eq!(&e.orig_after_nat().src[..4], &nsrc[..]);
        prop_assert_eq!(e.src_nat(), nsrc != src || nport != sport);
        let _ = conntrack::parse_entry(&payload[..cut.index(payload.len())]);
    }

    #[test]
    fn pods_files_never_panic(text in ".{0,400}") {
        let _ = pods::parse_pod_list(&text);
    }

    #[test]
    fn damaged_pods_files_fail_with_a_position(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = POD_LIST.as_bytes().to_vec();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(text) = String::from_utf8(bytes)
            && let Err(e) = pods::parse_pod_list(&text)
        {
            prop_assert!(e.to_string().starts_with("line "), "{e}");
        }
        let _ = pods::parse_pod_list(&POD_LIST[..i]);
    }

    #[test]
    fn flow_queries_never_panic(q in ".{0,200}") {
        let _ = parse_flow_query(&q);
    }

    #[test]
    fn valid_flow_queries_round_trip(pod in "[a-z0-9-]{1,30}", ns in "[a-z0-9-]{1,20}", since in any::<u64>()) {
        let q = parse_flow_query(&format!("pod={pod}&namespace={ns}&since={since}")).unwrap();
        prop_assert_eq!(q.pod.as_deref(), Some(pod.as_str()));
        prop_assert_eq!(q.namespace.as_deref(), Some(ns.as_str()));
        prop_assert_eq!(q.since, Some(since));
    }

    #[test]
    fn btf_never_panics(body in proptest::collection::vec(any::<u8>(), 0..1024), type_len in 0u32..2048, str_len in 0u32..2048) {
        // A valid header in front of random type and string sections.
        let mut data = vec![0x9f, 0xeb, 1, 0];
        for v in [24u32, 0, type_len, type_len, str_len] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        data.extend_from_slice(&body);
        if let Ok(btf) = Btf::parse(&data) {
            let _ = btf.offset("sk_buff", &["head"]);
            let _ = btf.enum_values("skb_drop_reason");
        }
        let _ = Btf::parse(&body);
    }

    #[test]
    fn nf_tables_rules_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = nft::parse_rule(&bytes);
        let _ = nft::parse_elements(&bytes);
    }

    #[test]
    fn x_tables_blobs_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024), entry in 0u32..1024) {
        let hooks = legacy::Hooks { valid: 0x1f, entry: [entry; 5], underflow: [entry / 2; 5] };
        let _ = legacy::parse_table(&bytes, &hooks, false, "nat");
        let _ = legacy::parse_table(&bytes, &hooks, true, "nat");
    }
}
