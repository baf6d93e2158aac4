use std::net::SocketAddr;

use tracer_common::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

use super::*;

fn t(proto: u8, src: &str, dst: &str) -> Tuple {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    addr::tuple(proto, s, d)
}

fn m(f: &str, tuple: &Tuple) -> bool {
    Filter::parse(f).unwrap_or_else(|e| panic!("{f:?}: {e}")).matches(Some(tuple))
}

#[test]
fn primitives_match_either_end_unless_src_or_dst_is_given() {
    let https = t(PROTO_TCP, "198.18.2.11:40000", "203.0.113.10:443");
    assert!(m("tcp port 443", &https));
    assert!(m("port 40000", &https));
    assert!(!m("udp port 443", &https));
    assert!(m("dst port 443", &https) && !m("src port 443", &https));
    assert!(m("host 203.0.113.10", &https) && m("dst host 203.0.113.10", &https));
    assert!(!m("src host 203.0.113.10", &https));
    assert!(m("net 198.18.0.0/15", &https) && !m("net 198.20.0.0/16", &https));
    assert!(m("src net 198.18.2.0/24", &https) && m("net 0.0.0.0/0", &https));
    assert!(m("portrange 400-500", &https) && !m("portrange 1-442", &https));
    assert!(m("tcp dst portrange 443-443", &https));
    assert!(m("ip", &https) && !m("ip6", &https) && m("tcp", &https) && !m("icmp", &https));
    let v6 = t(PROTO_UDP, "[2001:2::11]:53", "[2001:2::1]:5353");
    assert!(m("ip6 and udp port 53", &v6) && m("host 2001:2::1", &v6) && m("net 2001:2::/48", &v6));
    assert!(!m("host 198.18.2.11", &v6));
}

#[test]
fn ports_match_tcp_and_udp_only() {
    // ICMP echo carries its identifier where TCP and UDP have ports.
    let ping = t(PROTO_ICMP, "198.18.2.11:443", "203.0.113.10:443");
    assert!(!m("port 443", &ping) && m("icmp", &ping) && m("icmp and host 203.0.113.10", &ping));
}

#[test]
fn operators_have_tcpdump_precedence() {
    let dns = t(PROTO_UDP, "198.18.2.11:5000", "198.19.0.10:53");
    let ssh = t(PROTO_TCP, "198.18.2.11:5000", "198.18.3.10:22");
    // not > and > or; a protocol-qualified primitive is one unit for `not`.
    assert!(m("tcp port 22 or udp port 53", &dns) && m("tcp port 22 or udp port 53", &ssh));
    assert!(m("not tcp port 22", &dns) && !m("not tcp port 22", &ssh));
    assert!(m("udp and port 53 or tcp", &ssh));
    assert!(!m("udp and (port 53 or tcp)", &ssh));
    assert!(m("!tcp && port 53", &dns) && m("tcp || udp", &dns));
    assert!(m("not not udp", &dns));
    assert!(m("((udp))", &dns));
    assert!(m("UDP PORT 53", &dns), "words are case-insensitive");
}

#[test]
fn frames_that_did_not_parse_match_no_primitive() {
    let f = Filter::parse("tcp").unwrap();
    assert!(!f.matches(None));
    assert!(Filter::parse("not host 1.2.3.4").unwrap().matches(None));
}

#[test]
fn invalid_expressions_are_one_line_errors() {
    for (bad, says) in [
        ("", "empty filter"),
        ("tcp prot 443", "unexpected \"prot\""),
        ("prot 443", "unknown word \"prot\""),
        ("port", "expected a port number"),
        ("port 70000", "not a port number"),
        ("host 1.2.3", "not an IP address"),
        ("net 10.0.0.0", "not ADDR/LEN"),
        ("net 10.0.0.0/33", "bad prefix length"),
        ("portrange 9-1", "empty"),
        ("(tcp", "expected \")\""),
        ("tcp)", "unexpected \")\""),
        ("tcp & udp", "must be doubled"),
        ("tcp and", "at the end"),
        ("not", "at the end"),
        ("src tcp", "unknown word \"tcp\""),
    ] {
        let e = Filter::parse(bad).expect_err(bad);
        assert!(e.contains(says), "{bad:?}: {e:?} does not say {says:?}");
        assert!(!e.contains('\n'), "{bad:?}: one line");
    }
}
