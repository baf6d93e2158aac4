//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): structure member offsets
//! (Rust eBPF has no CO-RE, so the drop and retransmit programs get offsets from here at load
//! time) and enum names (`enum skb_drop_reason`, never a hard-coded table).
use std::{collections::HashMap, path::Path};

use anyhow::{Context, Result, bail};
use tracer_common::KernelLayout;

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Debug)]
struct Member {
    name: u32,
    ty: u32,
    /// Offset in bits.
    bit_offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    name: u32,
    kind: u32,
    /// size (struct/union/int/enum) or referenced type (ptr/typedef/const/...).
    size_or_type: u32,
    members: Vec<Member>,
    enum_values: Vec<(u32, i64)>,
}

/// Parsed BTF: types by id (index 0 is `void`) and the string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<(String, u32), u32>,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Btf> {
        let data = std::fs::read(path).with_context(|| format!("reading BTF from {}", path.display()))?;
        Btf::parse(&data).with_context(|| format!("parsing BTF of {}", path.display()))
    }

    /// Parses raw BTF (little-endian hosts).
    pub fn parse(data: &[u8]) -> Result<Btf> {
        let bad = || anyhow::anyhow!("truncated or malformed BTF");
        if u16_at(data, 0).ok_or_else(bad)? != MAGIC {
            bail!("not BTF (bad magic)");
        }
        let hdr_len = u32_at(data, 4).ok_or_else(bad)? as usize;
        let type_off = u32_at(data, 8).ok_or_else(bad)? as usize;
        let type_len = u32_at(data, 12).ok_or_else(bad)? as usize;
        let str_off = u32_at(data, 16).ok_or_else(bad)? as usize;
        let str_len = u32_at(data, 20).ok_or_else(bad)? as usize;
        let types_sec = data.get(hdr_len + type_off..hdr_len + type_off + type_len).ok_or_else(bad)?;
        let strings = data.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or_else(bad)?.to_vec();
        let mut types =
            vec![Type { name: 0, kind: 0, size_or_type: 0, members: vec![], enum_values: vec![] }];
        let mut o = 0;
        while o + 12 <= types_sec.len() {
            let name = u32_at(types_sec, o).ok_or_else(bad)?;
            let info = u32_at(types_sec, o + 4).ok_or_else(bad)?;
            let size_or_type = u32_at(types_sec, o + 8).ok_or_else(bad)?;
            o += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut t = Type { name, kind, size_or_type, members: vec![], enum_values: vec![] };
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => o += 4,
                KIND_ARRAY => o += 12,
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let off = u32_at(types_sec, o + 8).ok_or_else(bad)?;
                        t.members.push(Member {
                            name: u32_at(types_sec, o).ok_or_else(bad)?,
                            ty: u32_at(types_sec, o + 4).ok_or_else(bad)?,
                            bit_offset: if kind_flag { off & 0x00ff_ffff } else { off },
                        });
                        o += 12;
                    }
                }
                KIND_ENUM => {
                    for _ in 0..vlen {
                        let n = u32_at(types_sec, o).ok_or_else(bad)?;
                        let v = u32_at(types_sec, o + 4).ok_or_else(bad)? as i32 as i64;
                        t.enum_values.push((n, v));
                        o += 8;
                    }
                }
                KIND_ENUM64 => {
                    for _ in 0..vlen {
                        let n = u32_at(types_sec, o).ok_or_else(bad)?;
                        let lo = u32_at(types_sec, o + 4).ok_or_else(bad)? as u64;
                        let hi = u32_at(types_sec, o + 8).ok_or_else(bad)? as u64;
                        t.enum_values.push((n, ((hi << 32) | lo) as i64));
                        o += 12;
                    }
                }
                KIND_FUNC_PROTO => o += 8 * vlen,
                KIND_DATASEC => o += 12 * vlen,
                _ => {}
            }
            types.push(t);
        }
        let mut btf = Btf { types, strings, by_name: HashMap::new() };
        for (id, t) in btf.types.iter().enumerate().skip(1) {
            if t.name != 0 {
                btf.by_name.entry((btf.name(t.name).to_string(), t.kind)).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|b| *b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize).map(|t| t.kind) {
                Some(KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) => {
                    id = self.types[id as usize].size_or_type
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `field` in the struct/union `id`, looking through anonymous members.
    fn member(&self, id: u32, field: &str) -> Option<(u32, u32)> {
        let t = self.types.get(self.resolve(id) as usize)?;
        for m in &t.members {
            if m.name == 0 {
                if let Some((off, ty)) = self.member(m.ty, field) {
                    return Some((m.bit_offset + off, ty));
                }
            } else if self.name(m.name) == field {
                return Some((m.bit_offset, m.ty));
            }
        }
        None
    }

    /// Byte offset of a member path (`["nd_net", "net"]`) inside `struct name`.
    pub fn offset(&self, strukt: &str, path: &[&str]) -> Option<u32> {
        let mut id = *self.by_name.get(&(strukt.to_string(), KIND_STRUCT))?;
        let mut bits = 0;
        for f in path {
            let (off, ty) = self.member(id, f)?;
            bits += off;
            id = ty;
        }
        (bits % 8 == 0).then_some(bits / 8)
    }

    /// Name → value of an enum (e.g. `skb_drop_reason`).
    pub fn enum_values(&self, name: &str) -> Vec<(String, i64)> {
        let id = self
            .by_name
            .get(&(name.to_string(), KIND_ENUM))
            .or_else(|| self.by_name.get(&(name.to_string(), KIND_ENUM64)));
        id.map(|id| {
            self.types[*id as usize]
                .enum_values
                .iter()
                .map(|(n, v)| (self.name(*n).to_string(), *v))
                .collect()
        })
        .unwrap_or_default()
    }
}

/// The offsets the tracepoint programs need. `netns_inum` restricts drops to one namespace.
pub fn kernel_layout(btf: &Btf, netns_inum: u32) -> Result<KernelLayout> {
    let need = |s: &str, p: &[&str]| {
        btf.offset(s, p).with_context(|| format!("kernel BTF has no {s}.{}", p.join(".")))
    };
    Ok(KernelLayout {
        valid: 1,
        skb_head: need("sk_buff", &["head"])?,
        skb_network_header: need("sk_buff", &["network_header"])?,
        skb_protocol: need("sk_buff", &["protocol"])?,
        skb_dev: need("sk_buff", &["dev"])?,
        dev_ifindex: need("net_device", &["ifindex"])?,
        dev_nd_net: need("net_device", &["nd_net", "net"])?,
        net_ns_inum: need("net", &["ns", "inum"])?,
        skc_daddr: need("sock_common", &["skc_daddr"])?,
        skc_rcv_saddr: need("sock_common", &["skc_rcv_saddr"])?,
        skc_dport: need("sock_common", &["skc_dport"])?,
        skc_num: need("sock_common", &["skc_num"])?,
        skc_family: need("sock_common", &["skc_family"])?,
        skc_v6_daddr: need("sock_common", &["skc_v6_daddr"])?,
        skc_v6_rcv_saddr: need("sock_common", &["skc_v6_rcv_saddr"])?,
        netns_inum,
    })
}

/// `enum skb_drop_reason` value → name without the `SKB_DROP_REASON_` prefix.
pub fn drop_reasons(btf: &Btf) -> HashMap<u32, String> {
    btf.enum_values("skb_drop_reason")
        .into_iter()
        .map(|(n, v)| (v as u32, n.strip_prefix("SKB_DROP_REASON_").unwrap_or(&n).to_string()))
        .collect()
}

/// Inode number of this process's network namespace.
pub fn own_netns_inum() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").map(|m| m.ino() as u32).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_running_kernel() {
        let btf = Btf::from_file(Path::new("/sys/kernel/btf/vmlinux")).expect("kernel BTF");
        let l = kernel_layout(&btf, 0).expect("layout");
        assert!(l.skb_head > 0 && l.skb_dev < 512);
        let reasons = drop_reasons(&btf);
        assert!(reasons.values().any(|n| n == "NETFILTER_DROP"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(&[0u8; 3]).is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 255, 0, 0, 0]).is_err());
    }
}
