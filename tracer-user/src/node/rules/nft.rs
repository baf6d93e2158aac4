//! nf_tables over netlink: iptables-nft's tables and native nftables tables in one dump of
//! rules (NFT_MSG_GETRULE, every family), each rule's expressions folded into a [`Rule`]. The
//! expressions are the kernel's (`nf_tables.h`): what `nft --debug=netlink` prints, such as
//! `[ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x06 ] [ immediate reg 1 0x0b0212c6 ]
//! [ nat dnat ip addr_min reg 1 proto_min reg 2 ]`. iptables-nft's targets and matches arrive
//! as `target`/`match` compat expressions carrying the x_tables payloads (see `xt`).
use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{Action, Backend, BackendRead, NatTarget, Rule, Ruleset, SetElement, xt};
use crate::kernel::nfnetlink::{self, DumpError, attr, attrs, be32, string};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSETELEM: u16 = 13;

const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
/// `NFTNL_UDATA_RULE_COMMENT`: the comment TLV of a rule's userdata.
const UDATA_RULE_COMMENT: u8 = 0;

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_MARK: u32 = 3;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_NAT_SNAT: u32 = 0;
const NFT_CMP_EQ: u32 = 0;

/// Table names iptables-nft uses; any other table is native nftables.
const IPTABLES_TABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];

fn family_name(f: u8) -> &'static str {
    match f {
        NFPROTO_INET => "inet",
        NFPROTO_IPV4 => "ip",
        NFPROTO_IPV6 => "ip6",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        _ => "unknown",
    }
}

fn backend_of(family: u8, table: &str) -> Backend {
    if matches!(family, NFPROTO_IPV4 | NFPROTO_IPV6) && IPTABLES_TABLES.contains(&table) {
        Backend::IptablesNft
    } else {
        Backend::Nftables
    }
}

/// Byte offset of a register in the register file: NFT_REG_1..4 are 16 bytes wide,
/// NFT_REG32_00..15 (8..23) are 4 bytes wide and overlay them.
fn reg_offset(reg: u32) -> Option<usize> {
    match reg {
        1..=4 => Some((reg as usize - 1) * 16),
        8..=23 => Some((reg as usize - 8) * 4),
        _ => None,
    }
}

/// Where a register's value came from (for matches).
#[derive(Clone, Debug, PartialEq)]
enum Origin {
    L4Proto,
    Payload { base: u32, offset: u32, len: u32, mask: Option<Vec<u8>> },
}

struct Registers {
    data: [u8; 64],
    origin: HashMap<usize, Origin>,
}

impl Default for Registers {
    fn default() -> Registers {
        Registers { data: [0; 64], origin: HashMap::new() }
    }
}

impl Registers {
    fn write(&mut self, reg: u32, value: &[u8]) {
        if let Some(off) = reg_offset(reg) {
            let end = (off + value.len()).min(self.data.len());
            self.data[off..end].copy_from_slice(&value[..end - off]);
            self.origin.remove(&off);
        }
    }
    fn read(&self, reg: u32, len: usize) -> Option<&[u8]> {
        let off = reg_offset(reg)?;
        self.data.get(off..off + len)
    }
}

fn u32_attr(data: &[u8], ty: u16) -> Option<u32> {
    attr(data, ty).and_then(be32)
}

fn data_value(nested: &[u8]) -> Option<&[u8]> {
    attr(nested, NFTA_DATA_VALUE)
}

fn addr_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?))),
        _ => None,
    }
}

fn prefix_len(mask: Option<&[u8]>, len: usize) -> u8 {
    match mask {
        Some(m) => m.iter().map(|b| b.count_ones() as u8).sum(),
        None => (len * 8) as u8,
    }
}

/// The comment of a rule's userdata (`comment "..."`, iptables-nft's `-m comment` too when it
/// is stored there).
fn userdata_comment(mut udata: &[u8]) -> Option<String> {
    while udata.len() >= 2 {
        let (ty, len) = (udata[0], udata[1] as usize);
        let value = udata.get(2..2 + len)?;
        if ty == UDATA_RULE_COMMENT {
            return Some(string(value));
        }
        udata = &udata[2 + len..];
    }
    None
}

/// Folds one rule's expressions into a [`Rule`].
pub fn parse_rule(payload: &[u8]) -> Option<Rule> {
    let family = *payload.first()?;
    let body = payload.get(4..)?;
    let table = string(attr(body, NFTA_RULE_TABLE)?);
    let chain = string(attr(body, NFTA_RULE_CHAIN)?);
    let ipv6 = family == NFPROTO_IPV6;
    let mut rule = Rule {
        backend: backend_of(family, &table),
        ipv6,
        table,
        chain,
        proto: None,
        src: None,
        dst: None,
        dport: None,
        comment: attr(body, NFTA_RULE_USERDATA).and_then(userdata_comment),
        action: Action::Other,
    };
    let mut regs = Registers::default();
    let Some(exprs) = attr(body, NFTA_RULE_EXPRESSIONS) else { return Some(rule) };
    for (ty, e) in attrs(exprs) {
        if ty != NFTA_LIST_ELEM {
            continue;
        }
        let name = attr(e, NFTA_EXPR_NAME).map(string).unwrap_or_default();
        let data = attr(e, NFTA_EXPR_DATA).unwrap_or(&[]);
        expression(&name, data, &mut regs, &mut rule);
    }
    Some(rule)
}

fn expression(name: &str, d: &[u8], regs: &mut Registers, rule: &mut Rule) {
    match name {
        "immediate" => {
            let dreg = u32_attr(d, 1).unwrap_or(u32::MAX);
            let Some(value) = attr(d, 2) else { return };
            if let Some(v) = data_value(value) {
                regs.write(dreg, v);
            } else if let Some(verdict) = attr(value, NFTA_DATA_VERDICT) {
                let code = u32_attr(verdict, NFTA_VERDICT_CODE).map(|c| c as i32);
                let target = attr(verdict, NFTA_VERDICT_CHAIN).map(string);
                rule.action = match (code, target) {
                    (Some(NFT_JUMP), Some(c)) => Action::Jump(c),
                    (Some(NFT_GOTO), Some(c)) => Action::Goto(c),
                    (Some(NFT_RETURN), _) => Action::Return,
                    (Some(NF_ACCEPT), _) => Action::Accept,
                    (Some(NF_DROP), _) => Action::Drop,
                    _ => Action::Other,
                };
            }
        }
        "meta" => {
            if let (Some(dreg), Some(NFT_META_L4PROTO)) = (u32_attr(d, 1), u32_attr(d, 2))
                && let Some(off) = reg_offset(dreg)
            {
                regs.origin.insert(off, Origin::L4Proto);
            }
        }
        "payload" => {
            if let (Some(dreg), Some(base), Some(offset), Some(len)) =
                (u32_attr(d, 1), u32_attr(d, 2), u32_attr(d, 3), u32_attr(d, 4))
                && let Some(off) = reg_offset(dreg)
            {
                regs.origin.insert(off, Origin::Payload { base, offset, len, mask: None });
            }
        }
        "bitwise" => {
            let (Some(sreg), Some(dreg)) = (u32_attr(d, 1), u32_attr(d, 2)) else { return };
            let (Some(s), Some(dst)) = (reg_offset(sreg), reg_offset(dreg)) else { return };
            let mask = attr(d, 4).and_then(data_value).map(<[u8]>::to_vec);
            if let Some(Origin::Payload { base, offset, len, .. }) = regs.origin.get(&s).cloned() {
                regs.origin.insert(dst, Origin::Payload { base, offset, len, mask });
            }
        }
        "cmp" => {
            let (Some(sreg), Some(NFT_CMP_EQ)) = (u32_attr(d, 1), u32_attr(d, 2)) else { return };
            let Some(value) = attr(d, 3).and_then(data_value) else { return };
            match reg_offset(sreg).and_then(|o| regs.origin.get(&o)) {
                Some(Origin::L4Proto) => rule.proto = value.first().copied(),
                // ip saddr/daddr (offsets 12/16; ip6: 8/24): whole, masked to a prefix, or
                // only their first bytes (`-d 10.1.0.0/16` loads 2 bytes).
                Some(Origin::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset, len, mask }) => {
                    let width = if rule.ipv6 { 16 } else { 4 };
                    let (saddr, daddr) = if rule.ipv6 { (8, 24) } else { (12, 16) };
                    if (*offset == daddr || *offset == saddr)
                        && (*len as usize) <= width
                        && value.len() == *len as usize
                    {
                        let mut full = vec![0u8; width];
                        full[..value.len()].copy_from_slice(value);
                        let net = addr_from(&full).map(|a| (a, prefix_len(mask.as_deref(), value.len())));
                        if *offset == daddr {
                            rule.dst = net;
                        } else {
                            rule.src = net;
                        }
                    }
                }
                Some(Origin::Payload {
                    base: NFT_PAYLOAD_TRANSPORT_HEADER,
                    offset: 2,
                    len: 2,
                    mask: None,
                }) => {
                    rule.dport = nfnetlink::be16(value);
                }
                _ => {}
            }
        }
        "nat" => {
            let family = u32_attr(d, 2).unwrap_or(NFPROTO_IPV4 as u32);
            let width = if family == NFPROTO_IPV6 as u32 { 16 } else { 4 };
            let reg = |ty| u32_attr(d, ty);
            let addr = |ty| reg(ty).and_then(|r| regs.read(r, width)).and_then(addr_from);
            let port = |ty| reg(ty).and_then(|r| regs.read(r, 2)).and_then(nfnetlink::be16);
            let lo = addr(3);
            let (plo, phi) = (port(5), port(6).or(port(5)));
            let target = NatTarget {
                addrs: lo.map(|lo| (lo, addr(4).unwrap_or(lo))),
                ports: plo.zip(phi),
                ..xt::nat_target(u32_attr(d, 7).unwrap_or(0), None, None)
            };
            rule.action =
                if reg(1) == Some(NFT_NAT_SNAT) { Action::Snat(target) } else { Action::Dnat(target) };
        }
        "masq" => {
            let port = |ty| u32_attr(d, ty).and_then(|r| regs.read(r, 2)).and_then(nfnetlink::be16);
            let target = NatTarget {
                ports: port(2).zip(port(3).or(port(2))),
                ..xt::nat_target(u32_attr(d, 1).unwrap_or(0), None, None)
            };
            rule.action = Action::Masquerade(target);
        }
        "ct" => {
            // `ct mark set ...`: a source register and the mark key.
            if u32_attr(d, 4).is_some() && u32_attr(d, 2) == Some(NFT_CT_MARK) {
                rule.action = Action::SetConnmark;
            }
        }
        "target" => {
            let tname = attr(d, 1).map(string).unwrap_or_default();
            let rev = u32_attr(d, 2).unwrap_or(0) as u8;
            if let Some(a) = attr(d, 3).and_then(|info| xt::target(&tname, rev, info, rule.ipv6)) {
                rule.action = a;
            }
        }
        "match" => {
            let mname = attr(d, 1).map(string).unwrap_or_default();
            let facts = xt::matched(&mname, attr(d, 3).unwrap_or(&[]));
            rule.comment = facts.comment.or(rule.comment.take());
            rule.dport = facts.dport.or(rule.dport);
        }
        _ => {}
    }
}

/// The elements of one set or map (their keys).
pub fn parse_elements(payload: &[u8]) -> Vec<SetElement> {
    let Some(body) = payload.get(4..) else { return Vec::new() };
    let table = attr(body, NFTA_SET_ELEM_LIST_TABLE).map(string).unwrap_or_default();
    let set = attr(body, NFTA_SET_ELEM_LIST_SET).map(string).unwrap_or_default();
    let Some(list) = attr(body, NFTA_SET_ELEM_LIST_ELEMENTS) else { return Vec::new() };
    attrs(list)
        .filter(|(ty, _)| *ty == NFTA_LIST_ELEM)
        .filter_map(|(_, e)| attr(e, NFTA_SET_ELEM_KEY).and_then(data_value))
        .map(|key| SetElement { table: table.clone(), set: set.clone(), key: key.to_vec() })
        .collect()
}

/// The kube-proxy sets whose elements podtrace reads (the NodePorts).
const READ_SETS: [&str; 1] = ["service-nodeports"];

fn why(e: &anyhow::Error) -> String {
    match e.downcast_ref::<DumpError>() {
        Some(DumpError::Errno(libc::EPERM)) => "permission denied: needs CAP_NET_ADMIN".into(),
        Some(DumpError::Errno(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT | libc::ENOENT)) => {
            "this kernel has no nf_tables".into()
        }
        _ => format!("{e:#}"),
    }
}

/// Reads every nf_tables rule into `set`, with one [`BackendRead`] for iptables-nft and one
/// for native nftables.
pub fn read_into(set: &mut Ruleset) {
    let payloads = match nfnetlink::dump_retrying(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETRULE, 0, &[]) {
        Ok(p) => p,
        Err(e) => {
            let error = Some(why(&e));
            for backend in [Backend::IptablesNft, Backend::Nftables] {
                set.backends.push(BackendRead {
                    backend,
                    tables: Vec::new(),
                    rules: 0,
                    error: error.clone(),
                });
            }
            return;
        }
    };
    let mut tables: BTreeSet<(Backend, u8, String)> = BTreeSet::new();
    let mut counts: HashMap<Backend, usize> = HashMap::new();
    for p in &payloads {
        if let Some(rule) = parse_rule(p) {
            tables.insert((rule.backend, p[0], rule.table.clone()));
            *counts.entry(rule.backend).or_default() += 1;
            set.rules.push(rule);
        }
    }
    for (_, family, table) in tables.iter().filter(|(b, _, _)| *b == Backend::Nftables) {
        for name in READ_SETS {
            let mut req = Vec::new();
            nfnetlink::put_attr(&mut req, NFTA_SET_ELEM_LIST_TABLE, format!("{table}\0").as_bytes());
            nfnetlink::put_attr(&mut req, NFTA_SET_ELEM_LIST_SET, format!("{name}\0").as_bytes());
            // A table without this set answers ENOENT: nothing to read.
            if let Ok(elems) = nfnetlink::dump(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETSETELEM, *family, &req) {
                set.elements.extend(elems.iter().flat_map(|p| parse_elements(p)));
            }
        }
    }
    for backend in [Backend::IptablesNft, Backend::Nftables] {
        set.backends.push(BackendRead {
            backend,
            tables: tables
                .iter()
                .filter(|(b, _, _)| *b == backend)
                .map(|(_, f, t)| format!("{} {t}", family_name(*f)))
                .collect(),
            rules: counts.get(&backend).copied().unwrap_or(0),
            error: None,
        });
    }
}

#[cfg(test)]
mod tests;
