//! The common case in one pass: an untagged Ethernet frame carrying IPv4 without options (and
//! not a later fragment) or IPv6 without extension headers, then TCP or UDP.
//!
//! Nearly every packet a pod sends or receives is that. The general parser reads each header
//! through [`Reader`](super::Reader), which checks every read against the end of the packet and
//! falls back to a helper call for non-linear data; in the kernel those checks reload the
//! packet pointers and keep values on the stack across the fallback calls. Here one bounds check
//! covers every header, and the fields come from plain loads. Anything else, including any
//! frame the window does not fit, returns `false` with nothing written, and the general parser
//! takes it: the results are the same either way (checked on the host for every test frame,
//! cut-off and corrupted ones included).
use tracer_common::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, Tuple};

use super::{ETH_P_IP, ETH_P_IPV6, Parsed};
use crate::signature::Invariants;

/// The first bytes of a frame, all readable with plain loads (the caller checked their length).
pub trait Window {
    /// The `T` at `off`; `off + size_of::<T>()` is within the window's length.
    fn at<T: Copy>(&self, off: usize) -> T;
}

/// Frames that can hand out a [`Window`] over their first bytes.
pub trait Direct {
    type Window: Window;
    /// The first `len` bytes, when they are all directly readable (`len` is a constant at
    /// every call, so that the kernel's verifier sees one bounds check for the whole window).
    fn window(&self, len: usize) -> Option<Self::Window>;
}

/// Ethernet, IPv4 without options, the first 16 bytes of L4 (TCP through its window; UDP's
/// header and the 8 payload bytes that feed the signature).
pub const V4_WINDOW: usize = ETH_LEN + V4_LEN + L4_LEN;
/// Ethernet, IPv6 without extension headers, the first 16 bytes of L4.
pub const V6_WINDOW: usize = ETH_LEN + V6_LEN + L4_LEN;

const ETH_LEN: usize = 14;
const V4_LEN: usize = 20;
const V6_LEN: usize = 40;
const L4_LEN: usize = 16;

#[inline(always)]
fn be16<W: Window>(w: &W, off: usize) -> u16 {
    u16::from_be(w.at::<u16>(off))
}

#[inline(always)]
fn be32<W: Window>(w: &W, off: usize) -> u32 {
    u32::from_be(w.at::<u32>(off))
}

/// Parses the common case into `t` and `p` (`p` as `Parsed::default()` left it) and returns
/// `true`; returns `false` without writing anything for every other frame.
#[inline(always)]
pub fn parse_common<D: Direct>(d: &D, t: &mut Tuple, p: &mut Parsed) -> bool {
    let Some(w) = d.window(V4_WINDOW) else { return false };
    match be16(&w, 12) {
        ETH_P_IP => parse_v4(&w, t, p),
        ETH_P_IPV6 => match d.window(V6_WINDOW) {
            Some(w) => parse_v6(&w, t, p),
            None => false,
        },
        _ => false,
    }
}

#[inline(always)]
fn parse_v4<W: Window>(w: &W, t: &mut Tuple, p: &mut Parsed) -> bool {
    const IP: usize = ETH_LEN;
    // Version 4 with a 20-byte header; a total length below it is malformed, which the general
    // parser counts.
    let total = be16(w, IP + 2);
    let frag = be16(w, IP + 6);
    let proto = w.at::<u8>(IP + 9);
    if w.at::<u8>(IP) != 0x45 || (total as usize) < V4_LEN || frag & 0x1fff != 0 || !is_tcp_or_udp(proto) {
        return false;
    }
    let id = be16(w, IP + 4);
    let l4_len = (total as usize - V4_LEN) as u64;
    let l3 = Invariants::v4_l3(l4_len, id, frag, proto);
    // Addresses as they are in the packet: native-order loads keep their byte order.
    let (src, dst) = (w.at::<u32>(IP + 12), w.at::<u32>(IP + 16));
    t.set_v4_addrs(src.to_ne_bytes(), dst.to_ne_bytes());
    parse_l4(w, t, p, IP + V4_LEN, l3, proto, FAMILY_V4);
    true
}

#[inline(always)]
fn parse_v6<W: Window>(w: &W, t: &mut Tuple, p: &mut Parsed) -> bool {
    const IP: usize = ETH_LEN;
    let first = be32(w, IP);
    let next = w.at::<u8>(IP + 6);
    if first >> 28 != 6 || !is_tcp_or_udp(next) {
        return false;
    }
    let l3 = Invariants::v6_l3(be16(w, IP + 4) as u64, first & 0x000f_ffff, next);
    t.src = w.at::<[u8; 16]>(IP + 8);
    t.dst = w.at::<[u8; 16]>(IP + 24);
    parse_l4(w, t, p, IP + V6_LEN, l3, next, FAMILY_V6);
    true
}

#[inline(always)]
fn is_tcp_or_udp(proto: u8) -> bool {
    proto == PROTO_TCP || proto == PROTO_UDP
}

/// TCP or UDP at `off`.
#[inline(always)]
fn parse_l4<W: Window>(w: &W, t: &mut Tuple, p: &mut Parsed, off: usize, l3: u64, proto: u8, family: u8) {
    t.set_ports(be16(w, off), be16(w, off + 2), proto, family);
    if proto == PROTO_TCP {
        let flags = w.at::<u8>(off + 13);
        p.inv = Invariants::tcp(l3, be32(w, off + 4), be32(w, off + 8), be16(w, off + 14), flags);
        p.tcp_flags = flags;
    } else {
        p.inv = Invariants::udp(l3, w.at::<u64>(off + 8));
    }
}
