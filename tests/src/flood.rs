//! A SYN flood of distinct flows, sent for real through the lab (the hardening test and the
//! benchmark's scale figures).
use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::Result;
use xtask::netns;

use crate::packets::*;

/// The TCP checksum of `seg` between `src` and `dst` (RFC 793 pseudo-header).
fn tcp_checksum(src: [u8; 4], dst: [u8; 4], seg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src);
    add(&dst);
    add(&[0, 6]);
    add(&(seg.len() as u16).to_be_bytes());
    add(seg);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends `n` TCP SYNs of distinct flows (source ports 1024.., then the next destination port)
/// from `src` to `dst` with a raw socket in the namespace `ns`: a SYN flood, through whatever
/// lies between (a lab pod's veth, its node's routing and conntrack, the VPC). Returns the
/// seconds it took.
pub fn send_syns(ns: &str, src: Ipv4Addr, dst: Ipv4Addr, n: u32) -> Result<f64> {
    let (src, dst) = (src.octets(), dst.octets());
    netns::run_in(ns, move || {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: fd was just returned by socket(2).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst) },
            sin_zero: [0; 8],
        };
        let start = Instant::now();
        for i in 0..n {
            let (sport, dport) = (1024 + (i % 60_000) as u16, 10_000 + (i / 60_000) as u16);
            let mut seg = tcp(sport, dport, 0x02, &[]);
            let sum = tcp_checksum(src, dst, &seg);
            seg[16..18].copy_from_slice(&sum.to_be_bytes());
            let pkt = ipv4(&V4 { src, dst, proto: 6, id: i as u16, ..V4::default() }, &seg);
            // SAFETY: a valid buffer and address for the call's duration.
            let r = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&raw const to).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                // A full device queue: wait for it, as a sender's stack would.
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                return Err(e.into());
            }
        }
        Ok(start.elapsed().as_secs_f64())
    })
}
