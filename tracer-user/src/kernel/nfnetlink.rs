//! nfnetlink (NETLINK_NETFILTER) plumbing shared by ctnetlink (conntrack) and nf_tables:
//! the socket, dump requests, splitting datagrams into messages and messages into attributes.
//! Every parser stops at the first malformed length instead of reading past its buffer.
use std::io;

use anyhow::{Context, Result};
use netlink_sys::{Socket, SocketAddr};

const NETLINK_NETFILTER: isize = 12;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
/// Set on a dump's messages when the state changed while it was being dumped.
const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLA_F_NESTED: u16 = 0x8000;

pub fn socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_NETFILTER)?;
    s.bind_auto()?;
    Ok(s)
}

/// Iterates over netlink attributes: (type without flags, payload).
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        let aligned = (len + 3) & !3;
        buf = if aligned >= buf.len() { &[] } else { &buf[aligned..] };
        Some((ty, payload))
    })
}

/// The payload of the first attribute of type `ty`.
pub fn attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

pub fn be16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
}

pub fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// A NUL-terminated string attribute.
pub fn string(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Encodes one attribute (padded to 4 bytes).
pub fn put_attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// One message of a datagram: (type, flags, payload after the nlmsghdr).
pub struct Message<'a> {
    pub ty: u16,
    pub flags: u16,
    pub payload: &'a [u8],
}

/// Splits a netlink datagram into messages.
pub fn messages(buf: &[u8]) -> Vec<Message<'_>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let flags = u16::from_ne_bytes([buf[off + 6], buf[off + 7]]);
        if len < 16 || off + len > buf.len() {
            break;
        }
        out.push(Message { ty, flags, payload: &buf[off + 16..off + len] });
        off += (len + 3) & !3;
    }
    out
}

/// Why a dump ended without its data.
#[derive(Debug)]
pub enum DumpError {
    /// The kernel answered with this errno.
    Errno(i32),
    /// The state changed while it was dumped (retry).
    Interrupted,
    Io(io::Error),
}

impl std::fmt::Display for DumpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DumpError::Errno(e) => write!(f, "{}", io::Error::from_raw_os_error(*e)),
            DumpError::Interrupted => f.write_str("the rules changed while they were read"),
            DumpError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DumpError {}

/// Sends a dump request `(subsystem << 8) | msg` for `family` with `attributes`, and returns
/// the payload of every message of the answer (each still starting with its nfgenmsg).
pub fn dump(
    subsys: u16,
    msg: u16,
    family: u8,
    attributes: &[u8],
) -> std::result::Result<Vec<Vec<u8>>, DumpError> {
    let sock = socket().map_err(DumpError::Io)?;
    let len = 20 + attributes.len();
    let mut req = Vec::with_capacity(len);
    req.extend_from_slice(&(len as u32).to_ne_bytes());
    req.extend_from_slice(&((subsys << 8) | msg).to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id
    req.extend_from_slice(&[family, 0, 0, 0]); // struct nfgenmsg
    req.extend_from_slice(attributes);
    sock.send_to(&req, &SocketAddr::new(0, 0), 0).map_err(DumpError::Io)?;
    let mut out = Vec::new();
    loop {
        let (buf, _) = sock.recv_from_full().map_err(DumpError::Io)?;
        let msgs = messages(&buf);
        if msgs.is_empty() {
            return Err(DumpError::Io(io::Error::new(io::ErrorKind::InvalidData, "empty netlink answer")));
        }
        for m in msgs {
            if m.flags & NLM_F_DUMP_INTR != 0 {
                return Err(DumpError::Interrupted);
            }
            match m.ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = m.payload.get(..4).map(|b| i32::from_ne_bytes(b.try_into().expect("4")));
                    return match code {
                        Some(0) | None => Ok(out),
                        Some(c) if -c == libc::EINTR => Err(DumpError::Interrupted),
                        Some(c) => Err(DumpError::Errno(-c)),
                    };
                }
                t if t >> 8 == subsys => out.push(m.payload.to_vec()),
                _ => {}
            }
        }
    }
}

/// [`dump`], retried a few times when the state changed under it.
pub fn dump_retrying(subsys: u16, msg: u16, family: u8, attributes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut tries = 0;
    loop {
        match dump(subsys, msg, family, attributes) {
            Err(DumpError::Interrupted) if tries < 5 => tries += 1,
            r => return r.context("netfilter netlink dump"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_and_truncation_stops() {
        let mut buf = Vec::new();
        put_attr(&mut buf, 1, b"nat\0");
        put_attr(&mut buf, 2 | NLA_F_NESTED, &[1, 2, 3]);
        let got: Vec<(u16, Vec<u8>)> = attrs(&buf).map(|(t, p)| (t, p.to_vec())).collect();
        assert_eq!(got, vec![(1, b"nat\0".to_vec()), (2, vec![1, 2, 3])]);
        assert_eq!(string(attr(&buf, 1).unwrap()), "nat");
        for cut in 0..buf.len() {
            assert!(attrs(&buf[..cut]).count() <= 2);
        }
    }
}
