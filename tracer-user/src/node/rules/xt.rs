//! The x_tables target and match payloads both iptables backends carry (in an x_tables blob for
//! iptables-legacy, in `target`/`match` compat expressions for iptables-nft): the NAT targets,
//! CONNMARK, and the `comment`, `tcp` and `udp` matches. Layouts from the kernel's uapi
//! headers (`nf_nat.h`, `xt_connmark.h`, `xt_comment.h`, `xt_tcpudp.h`); the payloads are in
//! host byte order except addresses and NAT ports, which are in network order.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Action, NatTarget};

const NF_NAT_RANGE_MAP_IPS: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NF_NAT_RANGE_PROTO_RANDOM: u32 = 4;
const NF_NAT_RANGE_PERSISTENT: u32 = 8;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 16;
const XT_CONNMARK_SET: u8 = 0;
const XT_TCP_INV_DSTPT: u8 = 0x02;
const XT_UDP_INV_DSTPT: u8 = 0x02;

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn port_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn v4_at(b: &[u8], off: usize) -> Option<IpAddr> {
    let o: [u8; 4] = b.get(off..off + 4)?.try_into().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(o)))
}

fn v6_at(b: &[u8], off: usize) -> Option<IpAddr> {
    let o: [u8; 16] = b.get(off..off + 16)?.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(o)))
}

/// Flags and ranges as the kernel's NAT core reads them.
pub fn nat_target(flags: u32, addrs: Option<(IpAddr, IpAddr)>, ports: Option<(u16, u16)>) -> NatTarget {
    NatTarget {
        addrs: addrs.filter(|_| flags & NF_NAT_RANGE_MAP_IPS != 0),
        ports: ports.filter(|_| flags & NF_NAT_RANGE_PROTO_SPECIFIED != 0),
        random: flags & NF_NAT_RANGE_PROTO_RANDOM != 0,
        fully_random: flags & NF_NAT_RANGE_PROTO_RANDOM_FULLY != 0,
        persistent: flags & NF_NAT_RANGE_PERSISTENT != 0,
    }
}

/// `struct nf_nat_ipv4_multi_range_compat` (revision 0 of SNAT, DNAT and IPv4 MASQUERADE).
fn compat_range(info: &[u8]) -> Option<NatTarget> {
    // { u32 rangesize; { u32 flags; be32 min_ip, max_ip; be16 min, max; } range[1]; }
    let flags = u32_at(info, 4)?;
    let addrs = Some((v4_at(info, 8)?, v4_at(info, 12)?));
    let ports = Some((port_at(info, 16)?, port_at(info, 18)?));
    Some(nat_target(flags, addrs, ports))
}

/// `struct nf_nat_range` / `nf_nat_range2` (revisions 1 and 2; IPv6 MASQUERADE).
fn range(info: &[u8], ipv6: bool) -> Option<NatTarget> {
    // { u32 flags; nf_inet_addr min_addr, max_addr; be16 min_proto, max_proto; [be16 base] }
    let flags = u32_at(info, 0)?;
    let addr = |off| if ipv6 { v6_at(info, off) } else { v4_at(info, off) };
    let addrs = Some((addr(4)?, addr(20)?));
    let ports = Some((port_at(info, 36)?, port_at(info, 38)?));
    Some(nat_target(flags, addrs, ports))
}

/// The action of an x_tables target with this name, revision and payload; `None` for a
/// target podtrace does not read (or a payload too short for its layout).
pub fn target(name: &str, revision: u8, info: &[u8], ipv6: bool) -> Option<Action> {
    let nat = |info: &[u8]| if revision == 0 && !ipv6 { compat_range(info) } else { range(info, ipv6) };
    match name {
        "SNAT" => nat(info).map(Action::Snat),
        "DNAT" => nat(info).map(Action::Dnat),
        "MASQUERADE" => nat(info).map(Action::Masquerade),
        // xt_connmark_tginfo{1,2}: { u32 ctmark, ctmask, nfmask; u8 mode; ... } (rev 1) or
        // { ...; u8 shift_dir, shift_bits, mode; } (rev 2).
        "CONNMARK" => {
            let mode = match revision {
                1 => *info.get(12)?,
                _ => *info.get(14)?,
            };
            Some(if mode == XT_CONNMARK_SET { Action::SetConnmark } else { Action::Other })
        }
        _ => None,
    }
}

/// What an x_tables match tells podtrace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MatchFacts {
    pub comment: Option<String>,
    /// A single destination port (not a range, not negated).
    pub dport: Option<u16>,
}

/// Reads the `comment`, `tcp` and `udp` matches; others tell nothing.
pub fn matched(name: &str, info: &[u8]) -> MatchFacts {
    let mut m = MatchFacts::default();
    match name {
        "comment" => {
            let end = info.iter().position(|c| *c == 0).unwrap_or(info.len()).min(256);
            m.comment = Some(String::from_utf8_lossy(&info[..end]).into_owned());
        }
        // xt_tcp { u16 spts[2], dpts[2]; u8 option, flg_mask, flg_cmp, invflags; }
        // xt_udp { u16 spts[2], dpts[2]; u8 invflags; }
        "tcp" | "udp" => {
            let inv = if name == "tcp" {
                info.get(11).map(|f| f & XT_TCP_INV_DSTPT)
            } else {
                info.get(8).map(|f| f & XT_UDP_INV_DSTPT)
            };
            if let (Some(lo), Some(hi), Some(0)) = (u16_at(info, 4), u16_at(info, 6), inv)
                && lo == hi
            {
                m.dport = Some(lo);
            }
        }
        _ => {}
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snat_revision_0_reads_the_compat_range() {
        // rangesize 1, flags MAP_IPS|RANDOM_FULLY, 198.18.1.10-198.18.1.10, no ports.
        let mut info = 1u32.to_ne_bytes().to_vec();
        info.extend((NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_RANDOM_FULLY).to_ne_bytes());
        info.extend([198, 18, 1, 10, 198, 18, 1, 10, 0, 0, 0, 0]);
        let Some(Action::Snat(t)) = target("SNAT", 0, &info, false) else { panic!() };
        assert_eq!(t.addrs, Some(("198.18.1.10".parse().unwrap(), "198.18.1.10".parse().unwrap())));
        assert!(t.fully_random && !t.random);
        assert_eq!(t.ports, None);
    }

    #[test]
    fn dnat_revision_2_reads_address_and_port() {
        let mut info = (NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED).to_ne_bytes().to_vec();
        let addr = |o: [u8; 4]| [o.to_vec(), vec![0; 12]].concat();
        info.extend(addr([198, 18, 2, 11]));
        info.extend(addr([198, 18, 2, 11]));
        info.extend(8080u16.to_be_bytes());
        info.extend(8080u16.to_be_bytes());
        info.extend([0, 0, 0, 0]);
        let Some(Action::Dnat(t)) = target("DNAT", 2, &info, false) else { panic!() };
        assert!(t.maps_addr("198.18.2.11".parse().unwrap()));
        assert!(t.maps_port(8080) && !t.maps_port(80));
    }

    #[test]
    fn short_payloads_read_nothing() {
        for n in 0..20 {
            assert_eq!(target("SNAT", 0, &vec![0; n], false), None);
            assert_eq!(target("DNAT", 2, &vec![0; n], false), None);
        }
        assert_eq!(matched("tcp", &[1, 2]), MatchFacts::default());
    }

    #[test]
    fn comment_and_dport_matches() {
        let mut c = b"default/web".to_vec();
        c.resize(256, 0);
        assert_eq!(matched("comment", &c).comment.as_deref(), Some("default/web"));
        let mut tcp = Vec::new();
        for p in [0u16, 65535, 30080, 30080] {
            tcp.extend(p.to_ne_bytes());
        }
        tcp.extend([0, 0, 0, 0]);
        assert_eq!(matched("tcp", &tcp).dport, Some(30080));
        tcp[11] = XT_TCP_INV_DSTPT;
        assert_eq!(matched("tcp", &tcp).dport, None, "! --dport is not a port match");
    }
}
