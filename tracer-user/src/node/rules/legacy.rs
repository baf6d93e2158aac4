//! iptables-legacy: the x_tables tables, read with `getsockopt(IPT_SO_GET_INFO /
//! IPT_SO_GET_ENTRIES)` as `iptables-legacy-save` does, but on a UDP socket (which needs only
//! CAP_NET_ADMIN, where the tool's raw socket also needs CAP_NET_RAW). Only the tables the
//! kernel lists in `/proc/net/ip{,6}_tables_names` are asked for: asking for another one would
//! make the kernel create it (module autoload) and change the node.
//!
//! A table is a blob of entries (`struct ipt_entry`: the IP header match, matches, a target);
//! built-in chains start at the hook offsets of `ipt_getinfo`, user chains after an `ERROR`
//! target naming them. Layouts from `linux/netfilter_ipv4/ip_tables.h` and
//! `linux/netfilter_ipv6/ip6_tables.h`.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::{Action, Backend, BackendRead, Rule, Ruleset, xt};

const SO_GET_INFO: libc::c_int = 64;
const SO_GET_ENTRIES: libc::c_int = 65;
const GETINFO_SIZE: usize = 84;
const ENTRYTABLE_OFFSET: usize = 40;
/// Chains of the hooks, in hook order (NF_INET_PRE_ROUTING .. NF_INET_POST_ROUTING).
const HOOKS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
/// Standard-target verdicts: `-NF_DROP - 1`, `-NF_ACCEPT - 1`, `XT_RETURN`.
const VERDICT_DROP: i32 = -1;
const VERDICT_ACCEPT: i32 = -2;
const VERDICT_RETURN: i32 = -5;
/// Entries above this size are refused (a corrupt answer must not make us allocate).
const MAX_TABLE_BYTES: usize = 256 << 20;

/// The layout of one address family's entries.
struct Layout {
    ipv6: bool,
    /// Size of `struct ipt_entry` / `ip6t_entry`: where the matches start.
    entry_size: usize,
    target_offset: usize,
    src: usize,
    smsk: usize,
    dst: usize,
    dmsk: usize,
    proto: usize,
    flags: usize,
    invflags: usize,
    inv_src: u8,
    inv_dst: u8,
    inv_proto: u8,
    goto_flag: u8,
}

const IPV4: Layout = Layout {
    ipv6: false,
    entry_size: 112,
    target_offset: 88,
    src: 0,
    smsk: 8,
    dst: 4,
    dmsk: 12,
    proto: 80,
    flags: 82,
    invflags: 83,
    inv_src: 0x08,
    inv_dst: 0x10,
    inv_proto: 0x40,
    goto_flag: 0x02,
};

const IPV6: Layout = Layout {
    ipv6: true,
    entry_size: 168,
    target_offset: 140,
    src: 0,
    smsk: 32,
    dst: 16,
    dmsk: 48,
    proto: 128,
    flags: 131,
    invflags: 132,
    inv_src: 0x08,
    inv_dst: 0x10,
    inv_proto: 0x40,
    goto_flag: 0x04,
};

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn name_at(b: &[u8], off: usize, len: usize) -> String {
    let raw = b.get(off..off + len).unwrap_or(&[]);
    let end = raw.iter().position(|c| *c == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// One entry, before jumps are resolved to chain names.
struct Entry {
    offset: usize,
    rule: Rule,
    /// A standard target's verdict (negative) or jump offset.
    verdict: Option<i32>,
    goto: bool,
    /// The chain an `ERROR` target starts (or `ERROR` at the table's end).
    error_name: Option<String>,
}

fn parse_entry(blob: &[u8], offset: usize, l: &Layout, table: &str) -> Option<(Entry, usize)> {
    let e = blob.get(offset..)?;
    let target_offset = u16_at(e, l.target_offset)? as usize;
    let next_offset = u16_at(e, l.target_offset + 2)? as usize;
    if next_offset < l.entry_size
        || target_offset < l.entry_size
        || target_offset > next_offset
        || next_offset > e.len()
    {
        return None;
    }
    let (addr_len, flags, inv) = (if l.ipv6 { 16 } else { 4 }, e[l.flags], e[l.invflags]);
    let addr = |off: usize| -> Option<IpAddr> {
        let b = e.get(off..off + addr_len)?;
        Some(if l.ipv6 {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))
        } else {
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?))
        })
    };
    let bits =
        |at: usize| -> Option<u32> { Some(e.get(at..at + addr_len)?.iter().map(|b| b.count_ones()).sum()) };
    let (smask, dmask) = (bits(l.smsk)?, bits(l.dmsk)?);
    let proto = u16_at(e, l.proto)?;
    let mut rule = Rule {
        backend: Backend::IptablesLegacy,
        ipv6: l.ipv6,
        table: table.to_string(),
        chain: String::new(),
        proto: (proto != 0 && proto <= 255 && inv & l.inv_proto == 0).then_some(proto as u8),
        src: (smask > 0 && inv & l.inv_src == 0).then(|| addr(l.src).map(|a| (a, smask as u8))).flatten(),
        dst: (dmask > 0 && inv & l.inv_dst == 0).then(|| addr(l.dst).map(|a| (a, dmask as u8))).flatten(),
        dport: None,
        comment: None,
        action: Action::Other,
    };
    // Matches: { u16 match_size; char name[29]; u8 revision; data }.
    let mut m = l.entry_size;
    while m + 32 <= target_offset {
        let size = u16_at(e, m)? as usize;
        if size < 32 || m + size > target_offset {
            return None;
        }
        let facts = xt::matched(&name_at(e, m + 2, 29), &e[m + 32..m + size]);
        rule.comment = facts.comment.or(rule.comment.take());
        rule.dport = facts.dport.or(rule.dport);
        m += size;
    }
    // Target: { u16 target_size; char name[29]; u8 revision; data }.
    let t = target_offset;
    let tsize = (u16_at(e, t)? as usize).min(next_offset - t);
    let tname = name_at(e, t + 2, 29);
    let revision = *e.get(t + 31)?;
    let data = e.get(t + 32..t + tsize).unwrap_or(&[]);
    let (mut verdict, mut error_name) = (None, None);
    match tname.as_str() {
        "" => verdict = u32_at(data, 0).map(|v| v as i32),
        "ERROR" => error_name = Some(name_at(data, 0, data.len().min(32))),
        other => rule.action = xt::target(other, revision, data, l.ipv6).unwrap_or(Action::Other),
    }
    let goto = flags & l.goto_flag != 0;
    Some((Entry { offset, rule, verdict, goto, error_name }, next_offset))
}

/// Offsets of a table's chains: where the kernel's hooks enter it and where each built-in
/// chain's policy entry sits (`struct ipt_getinfo`'s `hook_entry` and `underflow`).
pub struct Hooks {
    pub valid: u32,
    pub entry: [u32; 5],
    pub underflow: [u32; 5],
}

/// The rules of one table blob, each with its chain and resolved jumps (built-in chains'
/// policy entries are not rules anyone wrote, and are left out).
pub fn parse_table(blob: &[u8], hooks: &Hooks, ipv6: bool, table: &str) -> Vec<Rule> {
    let l = if ipv6 { &IPV6 } else { &IPV4 };
    let mut entries = Vec::new();
    let mut off = 0;
    while off < blob.len() {
        let Some((e, next)) = parse_entry(blob, off, l, table) else { break };
        entries.push(e);
        off += next;
    }
    let valid = |h: &usize| hooks.valid & (1 << h) != 0;
    let hook_at: HashMap<usize, &str> =
        (0..5).filter(valid).map(|h| (hooks.entry[h] as usize, HOOKS[h])).collect();
    let policies: Vec<usize> = (0..5).filter(valid).map(|h| hooks.underflow[h] as usize).collect();
    // Each entry's chain: a hook offset starts a built-in chain, an ERROR entry names the
    // user chain that starts right after it (jumps point at that first entry).
    let mut chain_of = Vec::with_capacity(entries.len());
    let mut chain_at: HashMap<usize, String> = HashMap::new();
    let (mut current, mut next_chain) = (String::new(), None::<String>);
    for e in &entries {
        if let Some(h) = hook_at.get(&e.offset) {
            current = h.to_string();
        }
        if let Some(name) = next_chain.take() {
            chain_at.insert(e.offset, name.clone());
            current = name;
        }
        next_chain = e.error_name.clone();
        chain_of.push(current.clone());
    }
    // libiptc ends every user chain with a RETURN of its own (the entry before the next
    // chain's head): not a rule anyone wrote either.
    let tails: Vec<usize> =
        entries.windows(2).filter(|w| w[1].error_name.is_some()).map(|w| w[0].offset).collect();
    let builtin = |c: &str| HOOKS.contains(&c);
    entries
        .into_iter()
        .zip(chain_of)
        .filter(|(e, c)| {
            e.error_name.is_none()
                && !policies.contains(&e.offset)
                && !(tails.contains(&e.offset) && !builtin(c))
        })
        .map(|(mut e, chain)| {
            e.rule.chain = chain;
            if let Some(v) = e.verdict {
                e.rule.action = match v {
                    VERDICT_ACCEPT => Action::Accept,
                    VERDICT_DROP => Action::Drop,
                    VERDICT_RETURN => Action::Return,
                    v if v >= 0 => match chain_at.get(&(v as usize)) {
                        Some(c) if e.goto => Action::Goto(c.clone()),
                        Some(c) => Action::Jump(c.clone()),
                        None => Action::Other,
                    },
                    _ => Action::Other,
                };
            }
            e.rule
        })
        .collect()
}

fn socket(ipv6: bool) -> std::io::Result<OwnedFd> {
    let domain = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn getsockopt(fd: &OwnedFd, ipv6: bool, opt: libc::c_int, buf: &mut [u8]) -> std::io::Result<()> {
    let level = if ipv6 { libc::SOL_IPV6 } else { libc::SOL_IP };
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is valid for len bytes; the kernel writes at most len bytes.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), level, opt, buf.as_mut_ptr().cast(), &mut len) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Reads one table: its rules.
fn read_table(ipv6: bool, table: &str) -> std::io::Result<Vec<Rule>> {
    let fd = socket(ipv6)?;
    let mut info = [0u8; GETINFO_SIZE];
    let name = table.as_bytes();
    info[..name.len().min(31)].copy_from_slice(&name[..name.len().min(31)]);
    getsockopt(&fd, ipv6, SO_GET_INFO, &mut info)?;
    // struct ipt_getinfo { char name[32]; u32 valid_hooks, hook_entry[5], underflow[5],
    // num_entries, size; }
    let mut hooks = Hooks { valid: u32_at(&info, 32).unwrap_or(0), entry: [0; 5], underflow: [0; 5] };
    for h in 0..5 {
        hooks.entry[h] = u32_at(&info, 36 + 4 * h).unwrap_or(0);
        hooks.underflow[h] = u32_at(&info, 56 + 4 * h).unwrap_or(0);
    }
    let size = u32_at(&info, 80).unwrap_or(0) as usize;
    if size > MAX_TABLE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("table {table} claims {size} bytes"),
        ));
    }
    let mut entries = vec![0u8; ENTRYTABLE_OFFSET + size];
    entries[..name.len().min(31)].copy_from_slice(&name[..name.len().min(31)]);
    entries[32..36].copy_from_slice(&(size as u32).to_ne_bytes());
    getsockopt(&fd, ipv6, SO_GET_ENTRIES, &mut entries)?;
    Ok(parse_table(&entries[ENTRYTABLE_OFFSET..], &hooks, ipv6, table))
}

/// Tables the kernel has instantiated in this network namespace (`None`: x_tables for this
/// family is not loaded at all).
fn table_names(ipv6: bool) -> Option<Vec<String>> {
    // thread-self: /proc/net follows the process's first thread, not a thread that entered
    // another network namespace.
    let path =
        if ipv6 { "/proc/thread-self/net/ip6_tables_names" } else { "/proc/thread-self/net/ip_tables_names" };
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// Reads every legacy table into `set`, with one [`BackendRead`].
pub fn read_into(set: &mut Ruleset) {
    let mut read =
        BackendRead { backend: Backend::IptablesLegacy, tables: Vec::new(), rules: 0, error: None };
    for ipv6 in [false, true] {
        let family = if ipv6 { "ip6" } else { "ip" };
        for table in table_names(ipv6).unwrap_or_default() {
            match read_table(ipv6, &table) {
                Ok(rules) => {
                    read.tables.push(format!("{family} {table}"));
                    read.rules += rules.len();
                    set.rules.extend(rules);
                }
                Err(e) => {
                    let why = if e.raw_os_error() == Some(libc::EPERM) {
                        "permission denied: needs CAP_NET_ADMIN".to_string()
                    } else {
                        e.to_string()
                    };
                    read.error = Some(format!("{family} {table}: {why}"));
                }
            }
        }
    }
    read.tables.sort();
    set.backends.push(read);
}

#[cfg(test)]
mod tests;
