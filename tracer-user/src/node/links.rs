//! Links, addresses, routes and policy rules as plain data.
use std::net::IpAddr;

use anyhow::Result;
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{InfoData, InfoKind, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
};

use crate::kernel::netlink::dump;

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// rtnetlink kind ("veth", "bridge", ...); physical NICs have none.
    pub kind: Option<String>,
    pub up: bool,
    pub mtu: u32,
    /// IFLA_LINK: the lower device of a VLAN or macvlan link (same namespace), or a veth's
    /// peer (in the namespace `peer_netns` names).
    pub parent: Option<u32>,
    /// IFLA_LINK_NETNSID: the namespace of a veth's peer, as this namespace numbers it. The
    /// host veths of one pod share it.
    pub peer_netns: Option<i32>,
    /// The 802.1Q id of a VLAN link.
    pub vlan_id: Option<u16>,
}

/// An address configured on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix: u8,
}

/// A unicast route (local/broadcast routes are skipped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub table: u32,
    /// Destination network; `None` is the default route.
    pub dst: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub v6: bool,
}

/// A policy routing rule that looks up a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub priority: u32,
    pub v6: bool,
    pub src: Option<(IpAddr, u8)>,
    pub dst: Option<(IpAddr, u8)>,
    pub fwmark: Option<(u32, u32)>,
    pub iif: Option<String>,
    pub table: u32,
}

pub fn links() -> Result<Vec<Link>> {
    let msgs = dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_from(l)),
            _ => None,
        })
        .collect())
}

pub(crate) fn link_from(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: None,
        kind: None,
        up: l.header.flags.contains(LinkFlags::Up),
        mtu: 0,
        parent: None,
        peer_netns: None,
        vlan_id: None,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(m) if m.len() == 6 => {
                link.mac = Some([m[0], m[1], m[2], m[3], m[4], m[5]]);
            }
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Link(i) => link.parent = Some(i),
            LinkAttribute::LinkNetNsId(n) => link.peer_netns = Some(n),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => {
                            link.kind = Some(match k {
                                InfoKind::Veth => "veth".to_string(),
                                other => format!("{other:?}").to_lowercase(),
                            });
                        }
                        LinkInfo::Data(InfoData::Vlan(v)) => {
                            link.vlan_id = v.iter().find_map(|a| match a {
                                InfoVlan::Id(id) => Some(*id),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

pub fn addresses() -> Result<Vec<Addr>> {
    let msgs = dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        // IFA_LOCAL is the interface's own address on point-to-point links, else IFA_ADDRESS.
        let mut addr = None;
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Local(ip) => addr = Some(*ip),
                AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                _ => {}
            }
        }
        if let Some(addr) = addr {
            out.push(Addr { index: a.header.index, addr, prefix: a.header.prefix_len });
        }
    }
    Ok(out)
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Unicast routes of every table, IPv4 and IPv6.
pub fn routes() -> Result<Vec<Route>> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        for m in dump(RouteNetlinkMessage::GetRoute(req))? {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.kind != RouteType::Unicast {
                continue;
            }
            let mut route = Route {
                table: r.header.table as u32,
                dst: None,
                gateway: None,
                oif: None,
                v6: family == AddressFamily::Inet6,
            };
            for a in &r.attributes {
                match a {
                    RouteAttribute::Table(t) => route.table = *t,
                    RouteAttribute::Destination(d) => {
                        route.dst = ip_of(d).map(|ip| (ip, r.header.destination_prefix_length));
                    }
                    RouteAttribute::Gateway(g) => route.gateway = ip_of(g),
                    RouteAttribute::Oif(i) => route.oif = Some(*i),
                    _ => {}
                }
            }
            out.push(route);
        }
    }
    Ok(out)
}

/// Policy rules that look up a table, IPv4 and IPv6.
pub fn rules() -> Result<Vec<Rule>> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RuleMessage::default();
        req.header.family = family;
        for m in dump(RouteNetlinkMessage::GetRule(req))? {
            let RouteNetlinkMessage::NewRule(r) = m else {
                continue;
            };
            if r.header.action != RuleAction::ToTable {
                continue;
            }
            let mut rule = Rule {
                priority: 0,
                v6: family == AddressFamily::Inet6,
                src: None,
                dst: None,
                fwmark: None,
                iif: None,
                table: r.header.table as u32,
            };
            let mut mark = None;
            let mut mask = u32::MAX;
            for a in r.attributes {
                match a {
                    RuleAttribute::Priority(p) => rule.priority = p,
                    RuleAttribute::Source(ip) => rule.src = Some((ip, r.header.src_len)),
                    RuleAttribute::Destination(ip) => rule.dst = Some((ip, r.header.dst_len)),
                    RuleAttribute::FwMark(m) => mark = Some(m),
                    RuleAttribute::FwMask(m) => mask = m,
                    RuleAttribute::Iifname(n) => rule.iif = Some(n),
                    RuleAttribute::Table(t) => rule.table = t,
                    _ => {}
                }
            }
            rule.fwmark = mark.map(|m| (m, mask));
            out.push(rule);
        }
    }
    Ok(out)
}
