//! Bounded, read-only packet parsing shared by the TC programs and the drop tracepoint.
//!
//! Ethernet (+ up to two VLAN tags) → IPv4 (with options, fragments) / IPv6 (extension
//! headers, bounded) → TCP / UDP / ICMP / ICMPv6. Every read goes through [`Reader`], which
//! fails cleanly past the end of the packet, so truncated or lying headers end in an error
//! counter, never in a bad read.
use tracer_common::{FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Tuple, counter};

use crate::signature::Invariants;

pub mod common;
use common::{Direct, parse_common};

/// Byte-level access to a packet, starting at the given offset.
pub trait Reader {
    fn read<T: Copy>(&self, off: usize) -> Option<T>;
    /// Copies `dst.len()` bytes at `off` straight into `dst` (no stack temporary).
    fn read_into(&self, off: usize, dst: &mut [u8]) -> bool;
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// IPv6 extension headers followed before giving up (counted in `IPV6_EXT_LIMIT`).
const MAX_IPV6_EXT: usize = 6;

/// What the flow table needs from one packet besides its tuple.
///
/// The parser writes it through a reference and returns a plain [`Verdict`], rather than
/// returning `Result<Parsed, _>`: in an enum, the payload is undefined on the other variant's
/// paths, and LLVM may copy that undefined register, which the verifier rejects (`!read_ok`;
/// seen with BPF CPU v3 and with cold-path hints). Every field here is defined on every path.
pub struct Parsed {
    /// The packet's NAT-invariant fields, see `signature`.
    pub inv: Invariants,
    pub tcp_flags: u8,
    /// The counter to bump when the packet is tracked without ports, or [`NO_NOTE`].
    pub note: u32,
}

/// `Parsed::note` of a packet tracked with its ports.
pub const NO_NOTE: u32 = u32::MAX;

/// The outcome of parsing: [`TRACKED`], or the counter that explains why nothing was tracked.
pub type Verdict = u32;

/// The packet is tracked (no counter has this index).
pub const TRACKED: Verdict = u32::MAX;

impl Default for Parsed {
    #[inline(always)]
    fn default() -> Self {
        Parsed { inv: Invariants::default(), tcp_flags: 0, note: NO_NOTE }
    }
}

impl Parsed {
    /// Records a packet tracked without ports (fragments, other protocols): only the network
    /// layer's invariants, and the counter that says so.
    #[inline(always)]
    fn without_ports(&mut self, l3: u64, note: u32) -> Verdict {
        self.inv = Invariants { l3, ..Invariants::default() };
        self.note = note;
        TRACKED
    }
}

/// `r.read(off)`, or returns `counter::MALFORMED` from the enclosing parser.
macro_rules! read_or_malformed {
    ($r:expr, $ty:ty, $off:expr) => {
        match $r.read::<$ty>($off) {
            Some(v) => v,
            None => return counter::MALFORMED,
        }
    };
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
fn be32(b: [u8; 4]) -> u32 {
    u32::from_be_bytes(b)
}

/// Where a TC program's counters go: the kernel's `COUNTERS` map, or a list in host tests.
pub trait Counters {
    fn count(&mut self, index: u32);
}

/// What a TC program makes of a frame before its flow table: parses it into `t` and counts
/// what is odd about it (a VLAN tag; why it is not tracked; why it is tracked without ports).
/// `p` must start as `Parsed::default()`. Returns whether the frame is tracked.
///
/// The common case (`common`) is tried first; every other frame goes through the general
/// parser, which gives the same results for the common case too.
#[inline(always)]
pub fn classify_frame<R: Reader + Direct, C: Counters>(
    r: &R,
    t: &mut Tuple,
    p: &mut Parsed,
    counters: &mut C,
) -> bool {
    if parse_common(r, t, p) {
        return tracked_unless_local(t, counters);
    }
    classify_frame_general(r, t, p, counters)
}

/// [`classify_frame`] with the general parser only.
#[inline(always)]
pub fn classify_frame_general<R: Reader, C: Counters>(
    r: &R,
    t: &mut Tuple,
    p: &mut Parsed,
    counters: &mut C,
) -> bool {
    let (verdict, vlan) = parse_ethernet(r, t, p);
    if vlan {
        counters.count(counter::VLAN);
    }
    if verdict != TRACKED {
        counters.count(verdict);
        return false;
    }
    if !tracked_unless_local(t, counters) {
        return false;
    }
    // Notes say how a tracked packet is tracked, so they come after the last reason not to.
    if p.note != NO_NOTE {
        counters.count(p.note);
    }
    true
}

/// A parsed frame is tracked unless it is link-local or multicast (counted).
#[inline(always)]
fn tracked_unless_local<C: Counters>(t: &Tuple, counters: &mut C) -> bool {
    if local_scope(t) {
        counters.count(counter::LOCAL_SCOPE);
        return false;
    }
    true
}

/// Parses from the Ethernet header at offset 0. Also reports whether a VLAN tag was present.
#[inline(always)]
pub fn parse_ethernet<R: Reader>(r: &R, t: &mut Tuple, p: &mut Parsed) -> (Verdict, bool) {
    let Some(mut proto) = r.read::<[u8; 2]>(12).map(be16) else {
        return (counter::MALFORMED, false);
    };
    let mut off = 14usize;
    let mut vlan = false;
    // 802.1Q or QinQ (802.1ad outer + 802.1Q inner): at most two tags.
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        vlan = true;
        match r.read::<[u8; 2]>(off + 2) {
            Some(b) => proto = be16(b),
            None => return (counter::MALFORMED, vlan),
        }
        off += 4;
    }
    (parse_l3(r, proto, off, t, p), vlan)
}

/// Parses from the network header at `off`, given the ethertype.
#[inline(always)]
pub fn parse_l3<R: Reader>(r: &R, ethertype: u16, off: usize, t: &mut Tuple, p: &mut Parsed) -> Verdict {
    match ethertype {
        ETH_P_IP => parse_ipv4(r, off, t, p),
        ETH_P_IPV6 => parse_ipv6(r, off, t, p),
        _ => counter::NON_IP,
    }
}

#[inline(always)]
fn parse_ipv4<R: Reader>(r: &R, off: usize, t: &mut Tuple, p: &mut Parsed) -> Verdict {
    // version/ihl, tos, total length, id, flags/fragment offset, ttl, protocol, checksum
    let h = read_or_malformed!(r, [u8; 12], off);
    if h[0] >> 4 != 4 {
        return counter::MALFORMED;
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let total = be16([h[2], h[3]]) as usize;
    if ihl < 20 || total < ihl {
        return counter::MALFORMED;
    }
    let id = be16([h[4], h[5]]);
    let frag = be16([h[6], h[7]]);
    let frag_offset = frag & 0x1fff;
    let proto = h[9];
    let a = read_or_malformed!(r, [u8; 8], off + 12);
    t.set_v4_addrs([a[0], a[1], a[2], a[3]], [a[4], a[5], a[6], a[7]]);
    let l4_len = (total - ihl) as u64;
    let l3 = Invariants::v4_l3(l4_len, id, frag, proto);
    if frag_offset != 0 {
        // Not the first fragment: there is no L4 header to read ports from.
        t.set_ports(0, 0, proto, FAMILY_V4);
        return p.without_ports(l3, counter::FRAGMENTS);
    }
    parse_l4(r, t, p, off + ihl, l3, proto, FAMILY_V4)
}

#[inline(always)]
fn parse_ipv6<R: Reader>(r: &R, off: usize, t: &mut Tuple, p: &mut Parsed) -> Verdict {
    let h = read_or_malformed!(r, [u8; 8], off);
    if h[0] >> 4 != 6 {
        return counter::MALFORMED;
    }
    let flow_label = be32([h[0], h[1], h[2], h[3]]) & 0x000f_ffff;
    let payload = be16([h[4], h[5]]) as usize;
    let mut next = h[6];
    if !r.read_into(off + 8, &mut t.src) || !r.read_into(off + 24, &mut t.dst) {
        return counter::MALFORMED;
    }
    let mut l4 = off + 40;
    let end = l4 + payload;
    let mut non_first_fragment = false;
    let mut i = 0;
    while i < MAX_IPV6_EXT {
        match next {
            // hop-by-hop, routing, destination options: length in 8-octet units after the first 8
            0 | 43 | 60 => {
                let e = read_or_malformed!(r, [u8; 2], l4);
                next = e[0];
                l4 += (e[1] as usize + 1) * 8;
            }
            // fragment header: fixed 8 bytes
            44 => {
                let e = read_or_malformed!(r, [u8; 4], l4);
                next = e[0];
                non_first_fragment = be16([e[2], e[3]]) >> 3 != 0;
                l4 += 8;
            }
            // authentication header: length in 4-octet units, minus 2
            51 => {
                let e = read_or_malformed!(r, [u8; 2], l4);
                next = e[0];
                l4 += (e[1] as usize + 2) * 4;
            }
            _ => break,
        }
        i += 1;
    }
    if l4 > end {
        return counter::MALFORMED;
    }
    let l4_len = (end - l4) as u64; // at most the 16-bit payload length
    let l3 = Invariants::v6_l3(l4_len, flow_label, next);
    if matches!(next, 0 | 43 | 60 | 44 | 51) {
        // Still inside the extension header chain after MAX_IPV6_EXT headers.
        t.set_ports(0, 0, next, FAMILY_V6);
        return p.without_ports(l3, counter::IPV6_EXT_LIMIT);
    }
    if non_first_fragment {
        t.set_ports(0, 0, next, FAMILY_V6);
        return p.without_ports(l3, counter::FRAGMENTS);
    }
    parse_l4(r, t, p, l4, l3, next, FAMILY_V6)
}

#[inline(always)]
fn parse_l4<R: Reader>(
    r: &R,
    t: &mut Tuple,
    p: &mut Parsed,
    off: usize,
    l3: u64,
    proto: u8,
    family: u8,
) -> Verdict {
    match proto {
        PROTO_TCP => {
            // ports, seq, ack, data offset, flags, window
            let h = read_or_malformed!(r, [u8; 16], off);
            t.set_ports(be16([h[0], h[1]]), be16([h[2], h[3]]), proto, family);
            let seq = be32([h[4], h[5], h[6], h[7]]);
            let ack = be32([h[8], h[9], h[10], h[11]]);
            let flags = h[13];
            p.inv = Invariants::tcp(l3, seq, ack, be16([h[14], h[15]]), flags);
            p.tcp_flags = flags;
        }
        PROTO_UDP => {
            let h = read_or_malformed!(r, [u8; 8], off);
            t.set_ports(be16([h[0], h[1]]), be16([h[2], h[3]]), proto, family);
            // The first payload bytes only feed the hash; they never leave the kernel.
            let head = r.read::<u64>(off + 8).unwrap_or(0);
            p.inv = Invariants::udp(l3, head);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let h = read_or_malformed!(r, [u8; 8], off);
            let (ty, code) = (h[0], h[1]);
            let echo = if proto == PROTO_ICMP { ty == 8 || ty == 0 } else { ty == 128 || ty == 129 };
            let seq = be16([h[6], h[7]]) as u64;
            if echo {
                // NAT may rewrite the echo identifier, so only the sequence goes into the hash.
                let id = be16([h[4], h[5]]);
                t.set_ports(id, id, proto, family);
            } else {
                t.set_ports(ty as u16, code as u16, proto, family);
            }
            let l4 = (seq << 16) | ((ty as u64) << 8) | code as u64;
            p.inv = Invariants { l3, l4, l4_extra: 0 };
        }
        _ => {
            t.set_ports(0, 0, proto, family);
            return p.without_ports(l3, counter::OTHER_L4);
        }
    }
    TRACKED
}

/// Multicast, broadcast and IPv6 link-local: neighbour discovery and the like, never a pod
/// flow, and identical copies on every interface would look like one packet crossing them.
#[inline(always)]
pub fn local_scope(t: &Tuple) -> bool {
    if t.family == FAMILY_V4 {
        t.dst[0] >= 224 || t.dst[..4] == [255; 4]
    } else {
        t.dst[0] == 0xff || (t.src[0] == 0xfe && t.src[1] & 0xc0 == 0x80)
    }
}

#[cfg(test)]
mod tests;
