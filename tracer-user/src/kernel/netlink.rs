//! rtnetlink requests and dumps: the transport under node facts (`node::links`) and our own
//! tc objects (`tc`). podtrace never runs `ip`/`tc`: every fact about the node comes from these.

use std::io;

use anyhow::{Context, Result, bail};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

fn socket() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    Ok(sock)
}

fn send(sock: &Socket, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    sock.send(&buf, 0).context("netlink send")?;
    Ok(())
}

/// Reads replies until DONE (dumps) or the ACK (requests), collecting inner messages.
fn receive(sock: &Socket) -> Result<Vec<RouteNetlinkMessage>> {
    let mut out = Vec::new();
    loop {
        let (buf, _) = sock.recv_from_full().context("netlink receive")?;
        let mut offset = 0;
        while offset < buf.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                .context("decoding a netlink message")?;
            let len = msg.header.length as usize;
            if len == 0 {
                bail!("netlink message with zero length");
            }
            offset += len;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => match e.code {
                    None => return Ok(out),
                    Some(code) => {
                        return Err(io::Error::from_raw_os_error(-code.get()).into());
                    }
                },
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
        }
    }
}

/// Sends a dump request and returns every message of the reply.
pub fn dump(msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
    let sock = socket().context("opening a netlink socket")?;
    send(&sock, msg, NLM_F_REQUEST | NLM_F_DUMP)?;
    receive(&sock)
}

/// Sends a request and waits for the kernel's acknowledgement.
pub fn request(msg: RouteNetlinkMessage) -> Result<()> {
    let sock = socket().context("opening a netlink socket")?;
    send(&sock, msg, NLM_F_REQUEST | NLM_F_ACK)?;
    receive(&sock).map(|_| ())
}

/// Whether an interface with this index exists in our network namespace.
pub fn link_exists(ifindex: u32) -> bool {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    !unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) }.is_null()
}

/// Index of the interface with this name in our network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => None,
        i => Some(i),
    }
}
