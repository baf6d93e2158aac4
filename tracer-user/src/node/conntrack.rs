//! The kernel's connection tracking table over ctnetlink (NETLINK_NETFILTER): original and
//! reply tuples of each connection, i.e. what NAT did to it. Dumped on demand and followed
//! through NEW/UPDATE events so that short-lived connections are seen too.
use std::io;

use anyhow::{Context, Result};
use netlink_sys::Socket;
use tracer_common::{FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, Tuple};

use crate::kernel::nfnetlink::{self, DumpError, attrs, be16, be32, messages};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
/// Multicast groups: NFNLGRP_CONNTRACK_NEW = 1, _UPDATE = 2.
const GROUPS: [u32; 2] = [1, 2];

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_MARK: u16 = 8;
const CTA_ID: u16 = 12;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;

/// `IPS_SRC_NAT` / `IPS_DST_NAT` status bits.
pub const IPS_SRC_NAT: u32 = 1 << 4;
pub const IPS_DST_NAT: u32 = 1 << 5;

/// One conntrack entry. `orig` is the tuple of the first packet as it arrived (before any
/// NAT); `reply` the tuple a reply carries before NAT is undone. Without NAT
/// `reply == orig.reversed()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    pub orig: Tuple,
    pub reply: Tuple,
    pub status: u32,
    pub mark: u32,
    pub id: u32,
}

impl CtEntry {
    /// The initiator-direction tuple after NAT (as it leaves the node).
    pub fn orig_after_nat(&self) -> Tuple {
        self.reply.reversed()
    }
    pub fn src_nat(&self) -> bool {
        self.orig.src != self.reply.dst || self.orig.sport != self.reply.dport
    }
    pub fn dst_nat(&self) -> bool {
        self.orig.dst != self.reply.src || self.orig.dport != self.reply.sport
    }
}

fn parse_tuple(buf: &[u8]) -> Option<Tuple> {
    let mut t = Tuple::default();
    let (mut have_ip, mut icmp_id) = (false, None);
    for (ty, p) in attrs(buf) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, a) in attrs(p) {
                    match (ty, a.len()) {
                        (1, 4) => {
                            t.src[..4].copy_from_slice(a);
                            t.family = FAMILY_V4;
                        }
                        (2, 4) => t.dst[..4].copy_from_slice(a),
                        (3, 16) => {
                            t.src.copy_from_slice(a);
                            t.family = FAMILY_V6;
                        }
                        (4, 16) => t.dst.copy_from_slice(a),
                        _ => {}
                    }
                }
                have_ip = t.family != 0;
            }
            CTA_TUPLE_PROTO => {
                for (ty, a) in attrs(p) {
                    match ty {
                        1 => t.proto = *a.first()?,
                        2 => t.sport = be16(a)?,
                        3 => t.dport = be16(a)?,
                        4 | 7 => icmp_id = be16(a),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if matches!(t.proto, PROTO_ICMP | PROTO_ICMPV6) {
        // podtrace keys ICMP echo by its identifier on both "ports" (see Tuple).
        let id = icmp_id.unwrap_or(0);
        t.sport = id;
        t.dport = id;
    }
    have_ip.then_some(t)
}

/// Parses the payload of one IPCTNL_MSG_CT_NEW message (after the nlmsghdr).
pub fn parse_entry(payload: &[u8]) -> Option<CtEntry> {
    // struct nfgenmsg { u8 family; u8 version; be16 res_id; }
    let body = payload.get(4..)?;
    let (mut orig, mut reply, mut status, mut mark, mut id) = (None, None, 0, 0, 0);
    for (ty, p) in attrs(body) {
        match ty {
            CTA_TUPLE_ORIG => orig = parse_tuple(p),
            CTA_TUPLE_REPLY => reply = parse_tuple(p),
            CTA_STATUS => status = be32(p).unwrap_or(0),
            CTA_MARK => mark = be32(p).unwrap_or(0),
            CTA_ID => id = be32(p).unwrap_or(0),
            _ => {}
        }
    }
    Some(CtEntry { orig: orig?, reply: reply?, status, mark, id })
}

fn dump_family(family: u8) -> Result<Vec<CtEntry>> {
    match nfnetlink::dump(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET, family, &[]) {
        Ok(payloads) => Ok(payloads.iter().filter_map(|p| parse_entry(p)).collect()),
        // No conntrack module loaded: no entries rather than an error.
        Err(DumpError::Errno(e)) if e == libc::ENOENT || e == libc::EOPNOTSUPP => Ok(Vec::new()),
        Err(e) => Err(e).context("ctnetlink dump (needs CAP_NET_ADMIN)"),
    }
}

/// Every conntrack entry of this network namespace (IPv4 and IPv6).
pub fn dump() -> Result<Vec<CtEntry>> {
    let mut v = dump_family(libc::AF_INET as u8)?;
    v.extend(dump_family(libc::AF_INET6 as u8)?);
    Ok(v)
}

/// A subscription to new/updated conntrack entries.
pub struct Events {
    sock: Socket,
}

impl Events {
    pub fn subscribe() -> Result<Events> {
        let sock = nfnetlink::socket().context("opening a ctnetlink event socket")?;
        for g in GROUPS {
            sock.add_membership(g).context("joining conntrack event groups")?;
        }
        // Losing events on a busy node must not error out the reader: ENOBUFS is ignored.
        let _ = sock.set_no_enobufs(true);
        Ok(Events { sock })
    }

    /// Makes `next` return an error after `t` without events (so a reader thread can stop).
    pub fn set_timeout(&self, t: std::time::Duration) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let tv = libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: t.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: valid socket fd and a correctly sized timeval.
        let rc = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    /// Blocks for the next datagram and returns the entries it carries.
    pub fn next(&self) -> Result<Vec<CtEntry>> {
        let (buf, _) = self.sock.recv_from_full()?;
        Ok(messages(&buf)
            .into_iter()
            .filter(|m| m.ty >> 8 == NFNL_SUBSYS_CTNETLINK && m.ty & 0xff == IPCTNL_MSG_CT_NEW)
            .filter_map(|m| parse_entry(m.payload))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        nfnetlink::put_attr(&mut v, ty, payload);
        v
    }

    fn tuple_attr(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let ip = [nla(1, &src), nla(2, &dst)].concat();
        let proto = [nla(1, &[6]), nla(2, &sport.to_be_bytes()), nla(3, &dport.to_be_bytes())].concat();
        [nla(CTA_TUPLE_IP | 0x8000, &ip), nla(CTA_TUPLE_PROTO | 0x8000, &proto)].concat()
    }

    #[test]
    fn parses_a_snat_entry() {
        let orig = tuple_attr([198, 18, 2, 11], [203, 0, 113, 10], 40112, 80);
        let reply = tuple_attr([203, 0, 113, 10], [198, 18, 1, 10], 80, 61000);
        let mut payload = vec![2, 0, 0, 0];
        payload.extend(nla(CTA_TUPLE_ORIG | 0x8000, &orig));
        payload.extend(nla(CTA_TUPLE_REPLY | 0x8000, &reply));
        payload.extend(nla(CTA_STATUS, &(IPS_SRC_NAT | 0x8).to_be_bytes()));
        let e = parse_entry(&payload).unwrap();
        assert!(e.src_nat());
        assert!(!e.dst_nat());
        assert_eq!(e.orig.sport, 40112);
        assert_eq!(e.orig_after_nat().sport, 61000);
        assert_eq!(&e.orig_after_nat().src[..4], &[198, 18, 1, 10]);
    }

    #[test]
    fn truncated_input_is_rejected_not_misread() {
        let orig = tuple_attr([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
        let mut payload = vec![2, 0, 0, 0];
        payload.extend(nla(CTA_TUPLE_ORIG | 0x8000, &orig));
        for cut in 0..payload.len() {
            // Must never panic; entries without both tuples are dropped.
            assert!(parse_entry(&payload[..cut]).is_none());
        }
    }
}
