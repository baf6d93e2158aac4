//! Following links as they come and go (pods created and deleted), over an rtnetlink
//! multicast subscription (RTNLGRP_LINK).
use anyhow::{Context, Result};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::sync::mpsc::UnboundedSender;

use crate::netlink::{Link, route::link_from};

const RTNLGRP_LINK: u32 = 1;

#[derive(Debug)]
pub enum LinkEvent {
    /// A link appeared or changed.
    New(Link),
    /// A link was deleted (or left this namespace).
    Gone(u32),
}

/// Opens the subscription now (so no event is missed from here on) and forwards events from
/// a background thread until the receiver goes away.
pub fn watch(tx: UnboundedSender<LinkEvent>) -> Result<()> {
    let mut sock = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
    sock.bind(&SocketAddr::new(0, 0)).context("binding rtnetlink socket")?;
    sock.add_membership(RTNLGRP_LINK).context("subscribing to link events")?;
    let _ = sock.set_no_enobufs(true);
    std::thread::Builder::new().name("link-events".into()).spawn(move || {
        loop {
            let Ok((buf, _)) = sock.recv_from_full() else { continue };
            let mut off = 0;
            while off < buf.len() {
                let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..]) else { break };
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                let ev = match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                        LinkEvent::New(link_from(l))
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                        LinkEvent::Gone(l.header.index)
                    }
                    _ => continue,
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
        }
    })?;
    Ok(())
}
