//! Following links as they come and go (pods created and deleted), over an rtnetlink
//! multicast subscription (RTNLGRP_LINK).
use anyhow::{Context, Result};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::sync::mpsc::UnboundedSender;

use super::links::{Link, link_from};

const RTNLGRP_LINK: u32 = 1;

#[derive(Debug)]
pub enum LinkEvent {
    /// A link appeared or changed.
    New(Link),
    /// A link was deleted (or left this namespace).
    Gone(u32),
    /// The kernel dropped events (socket buffer overrun): re-scan everything now.
    Resync,
}

/// Opens the subscription now (so no event is missed from here on) and forwards events from
/// a background thread until the receiver goes away.
pub fn watch(tx: UnboundedSender<LinkEvent>) -> Result<()> {
    let mut sock = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
    sock.bind(&SocketAddr::new(0, 0)).context("binding rtnetlink socket")?;
    sock.add_membership(RTNLGRP_LINK).context("subscribing to link events")?;
    // Room for bursts (hundreds of pods at once); if it still overflows, the kernel says so
    // with ENOBUFS and the agent re-scans instead of missing links.
    let _ = sock.set_rx_buf_sz(4 << 20);
    std::thread::Builder::new().name("link-events".into()).spawn(move || {
        loop {
            let buf = match sock.recv_from_full() {
                Ok((buf, _)) => buf,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    if tx.send(LinkEvent::Resync).is_err() {
                        return;
                    }
                    continue;
                }
                Err(_) => continue,
            };
            let mut off = 0;
            let mut undecodable = false;
            while off + 16 <= buf.len() {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
                if len < 16 || off + len > buf.len() {
                    undecodable = true;
                    break;
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..off + len]);
                off += (len + 3) & !3;
                let ev = match msg {
                    Ok(m) => match m.payload {
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                            LinkEvent::New(link_from(l))
                        }
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                            LinkEvent::Gone(l.header.index)
                        }
                        _ => continue,
                    },
                    // A message this decoder cannot read: never guess, re-scan instead.
                    Err(_) => {
                        undecodable = true;
                        continue;
                    }
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
            if undecodable && tx.send(LinkEvent::Resync).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}
