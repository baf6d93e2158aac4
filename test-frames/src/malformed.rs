//! Malformed and unusual packets, each with what podtrace's TC classifier must make of it: the
//! counters it raises and the flow entry it records, if any.
use tracer_common::{FAMILY_V4, FAMILY_V6, Tuple, counter};

use crate::*;

pub struct Case {
    pub name: &'static str,
    pub frame: Vec<u8>,
    /// Counters (`tracer_common::counter`) expected to rise by one, besides `packets` (every
    /// frame) and `tracked` (every frame with an entry).
    pub counters: Vec<u32>,
    /// The flow entry expected, `None` when the frame must not be tracked.
    pub entry: Option<Entry>,
}

/// A flow entry between the table's fixed addresses (`V4::default()`'s, or `V6_SRC` →
/// `V6_DST`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub v6: bool,
}

impl Entry {
    /// The tuple the classifier must write for this entry.
    pub fn tuple(&self) -> Tuple {
        let mut t = Tuple { proto: self.proto, sport: self.sport, dport: self.dport, ..Tuple::default() };
        if self.v6 {
            t.family = FAMILY_V6;
            t.src = V6_SRC;
            t.dst = V6_DST;
        } else {
            t.family = FAMILY_V4;
            t.src[..4].copy_from_slice(&V4::default().src);
            t.dst[..4].copy_from_slice(&V4::default().dst);
        }
        t
    }
}

fn case(name: &'static str, frame: Vec<u8>, counters: &[u32], entry: Option<(u8, u16, u16, bool)>) -> Case {
    let entry = entry.map(|(proto, sport, dport, v6)| Entry { proto, sport, dport, v6 });
    Case { name, frame, counters: counters.to_vec(), entry }
}

fn v4(proto: u8) -> V4 {
    V4 { proto, ..V4::default() }
}

/// Every case; `TESTING.md` states how many there are (checked by a test below).
pub fn cases() -> Vec<Case> {
    use counter::*;
    let udp4 = |sp, dp, payload: &[u8]| eth(&[], ETH_IPV4, &ipv4(&v4(17), &udp(sp, dp, payload)));
    let v6 = |next, rest: &[u8]| eth(&[], ETH_IPV6, &ipv6(next, V6_SRC, V6_DST, rest, None));
    let mut inner =
        ipv4(&V4 { src: [198, 18, 3, 10], dst: [198, 18, 2, 11], ..v4(17) }, &udp(8080, 4444, b""));
    inner.truncate(28);
    vec![
        // The kernel's test runner refuses IPv4/IPv6 frames shorter than the IP header, so
        // truncated IP headers are sent behind a VLAN tag, where it does not look.
        case(
            "ethernet header + 1 byte (behind VLAN)",
            eth(&[ETH_8021Q], ETH_IPV4, &[0x45]),
            &[VLAN, MALFORMED],
            None,
        ),
        case(
            "truncated IPv4 header (behind VLAN)",
            eth(&[ETH_8021Q], ETH_IPV4, &[0x45, 0, 0, 40, 0, 0, 0, 0, 64, 17]),
            &[VLAN, MALFORMED],
            None,
        ),
        case(
            "IPv4 IHL < 5",
            eth(&[], ETH_IPV4, &ipv4(&V4 { ihl: 4, ..v4(17) }, &udp(1, 2, b""))),
            &[MALFORMED],
            None,
        ),
        case(
            "IPv4 with options (IHL 6)",
            eth(&[], ETH_IPV4, &ipv4(&V4 { ihl: 6, ..v4(17) }, &udp(1001, 53, b"q"))),
            &[],
            Some((17, 1001, 53, false)),
        ),
        case(
            "IPv4 with 40 bytes of options (IHL 15)",
            eth(&[], ETH_IPV4, &ipv4(&V4 { ihl: 15, ..v4(6) }, &tcp(1002, 443, 0x02, b""))),
            &[],
            Some((6, 1002, 443, false)),
        ),
        case(
            "IPv4 options cut off (IHL 15, short packet)",
            eth(&[], ETH_IPV4, &ipv4(&V4 { ihl: 15, total_len: Some(60), ..v4(6) }, &[])[..30]),
            &[MALFORMED],
            None,
        ),
        case(
            "IPv4 total length shorter than the header",
            eth(&[], ETH_IPV4, &ipv4(&V4 { total_len: Some(10), ..v4(17) }, &udp(1003, 53, b""))),
            &[MALFORMED],
            None,
        ),
        case(
            "IPv4 total length larger than the packet",
            eth(&[], ETH_IPV4, &ipv4(&V4 { total_len: Some(1400), ..v4(17) }, &udp(1004, 53, b"x"))),
            &[],
            Some((17, 1004, 53, false)),
        ),
        case(
            "IPv4 total length smaller than the data",
            eth(&[], ETH_IPV4, &ipv4(&V4 { total_len: Some(28), ..v4(17) }, &udp(1005, 53, &[7; 100]))),
            &[],
            Some((17, 1005, 53, false)),
        ),
        case(
            "IPv4 ethertype, version 6 in the header",
            eth(&[], ETH_IPV4, &ipv4(&V4 { version: 6, ..v4(17) }, &udp(1, 2, b""))),
            &[MALFORMED],
            None,
        ),
        case(
            "truncated TCP header",
            eth(&[], ETH_IPV4, &ipv4(&v4(6), &tcp(1006, 80, 0x10, b"")[..10])),
            &[MALFORMED],
            None,
        ),
        case(
            "truncated UDP header",
            eth(&[], ETH_IPV4, &ipv4(&v4(17), &udp(1007, 53, b"")[..4])),
            &[MALFORMED],
            None,
        ),
        case("UDP with zero-length payload", udp4(1008, 9, b""), &[], Some((17, 1008, 9, false))),
        case(
            "TCP SYN without payload",
            eth(&[], ETH_IPV4, &ipv4(&v4(6), &tcp(1009, 8080, 0x02, b""))),
            &[],
            Some((6, 1009, 8080, false)),
        ),
        case(
            "IPv4 first fragment",
            eth(&[], ETH_IPV4, &ipv4(&V4 { frag: 0x2000, ..v4(17) }, &udp(1010, 53, &[1; 64]))),
            &[],
            Some((17, 1010, 53, false)),
        ),
        case(
            "IPv4 non-first fragment",
            eth(&[], ETH_IPV4, &ipv4(&V4 { frag: 185, id: 0x99, ..v4(17) }, &[2; 64])),
            &[FRAGMENTS],
            Some((17, 0, 0, false)),
        ),
        case(
            "802.1Q VLAN",
            eth(&[ETH_8021Q], ETH_IPV4, &ipv4(&v4(17), &udp(1011, 53, b"v"))),
            &[VLAN],
            Some((17, 1011, 53, false)),
        ),
        case(
            "QinQ (802.1ad + 802.1Q)",
            eth(&[ETH_8021AD, ETH_8021Q], ETH_IPV4, &ipv4(&v4(6), &tcp(1012, 443, 0x18, b"qq"))),
            &[VLAN],
            Some((6, 1012, 443, false)),
        ),
        case("VLAN tag cut off", eth(&[], ETH_8021Q, &[0x00]), &[VLAN, MALFORMED], None),
        case(
            "three VLAN tags (beyond the bound)",
            eth(&[ETH_8021AD, ETH_8021Q, ETH_8021Q], ETH_IPV4, &ipv4(&v4(17), &udp(1, 2, b""))),
            &[VLAN, NON_IP],
            None,
        ),
        case(
            "ARP",
            eth(
                &[],
                ETH_ARP,
                &[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 198, 18, 2, 11, 0, 0, 0, 0, 0, 0, 198, 18, 2, 1],
            ),
            &[NON_IP],
            None,
        ),
        case("LLDP", eth(&[], ETH_LLDP, &[2, 7, 4, 0, 0, 0, 0, 0, 1]), &[NON_IP], None),
        case("IPv6 UDP", v6(17, &udp(1013, 53, b"six")), &[], Some((17, 1013, 53, true))),
        case(
            "truncated IPv6 header (behind VLAN)",
            eth(&[ETH_8021Q], ETH_IPV6, &ipv6(17, V6_SRC, V6_DST, &[], None)[..30]),
            &[VLAN, MALFORMED],
            None,
        ),
        case(
            "IPv6 hop-by-hop + TCP",
            v6(0, &[ext8(6), tcp(1014, 443, 0x02, b"")].concat()),
            &[],
            Some((6, 1014, 443, true)),
        ),
        case(
            "IPv6 routing header + UDP",
            v6(43, &[ext8(17), udp(1015, 53, b"r")].concat()),
            &[],
            Some((17, 1015, 53, true)),
        ),
        case(
            "IPv6 hop-by-hop + destination options + UDP",
            v6(0, &[ext8(60), ext8(17), udp(1016, 53, b"")].concat()),
            &[],
            Some((17, 1016, 53, true)),
        ),
        case(
            "IPv6 first fragment",
            v6(44, &[frag6(17, 0, true), udp(1017, 53, &[3; 32])].concat()),
            &[],
            Some((17, 1017, 53, true)),
        ),
        case(
            "IPv6 non-first fragment",
            v6(44, &[frag6(17, 100, false), vec![4; 32]].concat()),
            &[FRAGMENTS],
            Some((17, 0, 0, true)),
        ),
        case(
            "IPv6 middle fragment (offset and more-fragments set)",
            v6(44, &[frag6(6, 100, true), vec![4; 32]].concat()),
            &[FRAGMENTS],
            Some((6, 0, 0, true)),
        ),
        case(
            "IPv6 extension chain longer than the parser's bound",
            v6(
                60,
                &[ext8(60), ext8(60), ext8(60), ext8(60), ext8(60), ext8(60), ext8(17), udp(1018, 53, b"")]
                    .concat(),
            ),
            &[IPV6_EXT_LIMIT],
            Some((60, 0, 0, true)),
        ),
        case(
            "IPv6 authentication header + UDP",
            v6(51, &[ah(17), udp(1020, 53, b"a")].concat()),
            &[],
            Some((17, 1020, 53, true)),
        ),
        case("IPv6 extension header cut off", v6(0, &[0, 0, 0]), &[MALFORMED], None),
        case(
            "IPv6 payload length shorter than its extension headers",
            eth(&[], ETH_IPV6, &ipv6(0, V6_SRC, V6_DST, &[ext8(17), udp(1, 2, b"")].concat(), Some(0))),
            &[MALFORMED],
            None,
        ),
        case(
            "ICMP echo request",
            eth(&[], ETH_IPV4, &ipv4(&v4(1), &icmp(8, 0, [0x12, 0x34, 0, 1], b"ping"))),
            &[],
            Some((1, 0x1234, 0x1234, false)),
        ),
        case(
            "ICMP echo reply",
            eth(&[], ETH_IPV4, &ipv4(&v4(1), &icmp(0, 0, [0x12, 0x35, 0, 1], b"pong"))),
            &[],
            Some((1, 0x1235, 0x1235, false)),
        ),
        case(
            "ICMP port unreachable quoting the inner packet",
            eth(&[], ETH_IPV4, &ipv4(&v4(1), &icmp(3, 3, [0; 4], &inner))),
            &[],
            Some((1, 3, 3, false)),
        ),
        case(
            "ICMPv6 echo request",
            v6(58, &icmp(128, 0, [0x00, 0x07, 0, 1], b"ping6")),
            &[],
            Some((58, 7, 7, true)),
        ),
        case(
            "ICMPv6 echo reply",
            v6(58, &icmp(129, 0, [0x00, 0x08, 0, 1], b"pong6")),
            &[],
            Some((58, 8, 8, true)),
        ),
        case(
            "GRE (other L4)",
            eth(&[], ETH_IPV4, &ipv4(&v4(47), &[0, 0, 0x08, 0x00])),
            &[OTHER_L4],
            Some((47, 0, 0, false)),
        ),
        // BPF_PROG_TEST_RUN takes at most a page of linear data; 9000-byte jumbo frames on the
        // lab's MTU-9001 links are covered end to end in tests/tests/reliability.rs.
        case(
            "large frame (3500 bytes of UDP payload)",
            udp4(1019, 4789, &[9; 3500]),
            &[],
            Some((17, 1019, 4789, false)),
        ),
        case(
            "IPv4 multicast",
            eth(&[], ETH_IPV4, &ipv4(&V4 { dst: [224, 0, 0, 251], ..v4(17) }, &udp(5353, 5353, b"m"))),
            &[LOCAL_SCOPE],
            None,
        ),
        // Not tracked, so not counted as a fragment either: `fragments` counts tracked packets.
        case(
            "IPv4 multicast non-first fragment",
            eth(&[], ETH_IPV4, &ipv4(&V4 { dst: [239, 1, 2, 3], frag: 185, ..v4(17) }, &[5; 64])),
            &[LOCAL_SCOPE],
            None,
        ),
        case(
            "IPv6 multicast from a global address",
            eth(
                &[],
                ETH_IPV6,
                &ipv6(
                    17,
                    V6_SRC,
                    [0xff, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 3],
                    &udp(547, 547, b"m"),
                    None,
                ),
            ),
            &[LOCAL_SCOPE],
            None,
        ),
        case(
            "IPv6 link-local neighbour solicitation",
            eth(
                &[],
                ETH_IPV6,
                &ipv6(
                    58,
                    [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1],
                    &icmp(135, 0, [0; 4], &[0; 16]),
                    None,
                ),
            ),
            &[LOCAL_SCOPE],
            None,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// TESTING.md names the number of cases; this keeps the two from drifting apart.
    #[test]
    fn testing_md_states_the_number_of_cases() {
        let doc = include_str!("../../TESTING.md");
        let claim = format!("{} malformed and unusual packets", cases().len());
        assert!(doc.contains(&claim), "TESTING.md should say \"{claim}\"");
    }

    /// Names identify the failing case in both tests' reports, and the kernel test recognises a
    /// case's entry as the one new entry in the flow table, so no two cases may share one.
    #[test]
    fn cases_have_distinct_names_and_entries() {
        let cases = cases();
        let names: HashSet<&str> = cases.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), cases.len(), "duplicate names");
        let entries: Vec<Tuple> = cases.iter().filter_map(|c| c.entry.map(|e| e.tuple())).collect();
        let distinct: HashSet<Tuple> = entries.iter().copied().collect();
        assert_eq!(distinct.len(), entries.len(), "cases sharing an entry");
    }
}
