//! Raw Ethernet frames, well-formed or deliberately broken, for the classifier's tests: the
//! builders, and in [`malformed`] the table of odd packets with the outcome each must have.
//! One table serves the host unit tests of the parser (`tracer-ebpf`, a byte-slice reader) and
//! the end-to-end test of the loaded program (`tests/tests/malformed.rs`, BPF_PROG_TEST_RUN),
//! so both check the same packets against the same expectations.
//! Checksums are left zero: the classifier never validates them.

pub mod malformed;

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_LLDP: u16 = 0x88cc;
pub const ETH_8021Q: u16 = 0x8100;
pub const ETH_8021AD: u16 = 0x88a8;

/// Ethernet header (optionally with VLAN tags, outermost first) + payload.
pub fn eth(tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for tpid in tags {
        v.extend_from_slice(&tpid.to_be_bytes());
        v.extend_from_slice(&[0x00, 0x64]); // VLAN id 100
    }
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// IPv4 header knobs.
#[derive(Clone)]
pub struct V4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    /// Header length in 32-bit words (5 = no options).
    pub ihl: u8,
    /// `None`: computed from the real length.
    pub total_len: Option<u16>,
    pub version: u8,
    /// Flags and fragment offset field (MF = 0x2000).
    pub frag: u16,
    pub id: u16,
}

impl Default for V4 {
    fn default() -> V4 {
        V4 {
            src: [198, 18, 2, 11],
            dst: [198, 18, 3, 10],
            proto: 17,
            ihl: 5,
            total_len: None,
            version: 4,
            frag: 0x4000,
            id: 0x1234,
        }
    }
}

pub fn ipv4(h: &V4, payload: &[u8]) -> Vec<u8> {
    let hdr_len = h.ihl as usize * 4;
    let mut v = vec![
        (h.version << 4) | (h.ihl & 0x0f),
        0,
        0,
        0,
        (h.id >> 8) as u8,
        h.id as u8,
        (h.frag >> 8) as u8,
        h.frag as u8,
        64,
        h.proto,
        0,
        0,
    ];
    v.extend_from_slice(&h.src);
    v.extend_from_slice(&h.dst);
    // Options: NOPs up to the header length.
    while v.len() < hdr_len.max(20) {
        v.push(1);
    }
    let total = h.total_len.unwrap_or((v.len() + payload.len()) as u16);
    v[2..4].copy_from_slice(&total.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// IPv6 header + extension headers (each `(next_header_of_this_ext, bytes)`) + payload.
/// `payload_len`: `None` computes it.
pub fn ipv6(first_next: u8, src: [u8; 16], dst: [u8; 16], rest: &[u8], payload_len: Option<u16>) -> Vec<u8> {
    let mut v = vec![0x60, 0x01, 0x23, 0x45];
    let len = payload_len.unwrap_or(rest.len() as u16);
    v.extend_from_slice(&len.to_be_bytes());
    v.push(first_next);
    v.push(64);
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    v.extend_from_slice(rest);
    v
}

/// An 8-byte generic extension header (hop-by-hop, routing, destination options).
pub fn ext8(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// An IPv6 fragment header.
pub fn frag6(next: u8, offset_units: u16, more: bool) -> Vec<u8> {
    let field = (offset_units << 3) | more as u16;
    let mut v = vec![next, 0];
    v.extend_from_slice(&field.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 42]);
    v
}

/// An IPv6 authentication header with a 12-byte ICV (24 bytes; its length field counts 4-octet
/// units minus 2, unlike the other extension headers).
pub fn ah(next: u8) -> Vec<u8> {
    let mut v = vec![next, 4, 0, 0, 0, 0, 0x10, 0x01, 0, 0, 0, 1];
    v.extend_from_slice(&[0xa5; 12]);
    v
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

pub fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&1000u32.to_be_bytes());
    v.extend_from_slice(&2000u32.to_be_bytes());
    v.push(5 << 4);
    v.push(flags);
    v.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    v.extend_from_slice(payload);
    v
}

pub fn icmp(ty: u8, code: u8, rest4: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty, code, 0, 0];
    v.extend_from_slice(&rest4);
    v.extend_from_slice(body);
    v
}

pub const V6_SRC: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x11];
pub const V6_DST: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0x10];
