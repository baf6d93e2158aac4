//! Conversions between the kernel's 16-byte address form and std types, and "ip:port" text.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracer_common::{FAMILY_V4, Tuple};

/// The 16-byte form used in kernel maps: IPv4 in the first 4 bytes, the rest zero.
pub fn to_key(ip: IpAddr) -> [u8; 16] {
    let mut k = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => k[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => k = v6.octets(),
    }
    k
}

pub fn ip(bytes: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

pub fn src(t: &Tuple) -> SocketAddr {
    SocketAddr::new(ip(&t.src, t.family), t.sport)
}

pub fn dst(t: &Tuple) -> SocketAddr {
    SocketAddr::new(ip(&t.dst, t.family), t.dport)
}

/// A tuple built from socket addresses (tests and user input).
pub fn tuple(proto: u8, src: SocketAddr, dst: SocketAddr) -> Tuple {
    Tuple {
        src: to_key(src.ip()),
        dst: to_key(dst.ip()),
        sport: src.port(),
        dport: dst.port(),
        proto,
        family: if src.is_ipv4() { FAMILY_V4 } else { tracer_common::FAMILY_V6 },
        _pad: [0; 2],
    }
}
