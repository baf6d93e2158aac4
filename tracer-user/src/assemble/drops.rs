//! Naming drops (reason from the kernel's BTF, location from kallsyms) and attaching them and
//! TCP retransmissions to the flows they belong to.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use tracer_common::{DropKey, DropStats, Tuple};

use super::model::{FlowDrop, Hop, HopName};
use crate::node::tc_programs::TcPrograms;

/// Everything needed to turn raw drop keys into names. Built before capabilities are dropped
/// (kallsyms shows addresses only to privileged readers).
#[derive(Default)]
pub struct DropNames {
    reasons: HashMap<u32, String>,
    symbols: Kallsyms,
}

impl DropNames {
    pub fn load(btf: &crate::kernel::btf::Btf) -> DropNames {
        DropNames { reasons: crate::kernel::btf::drop_reasons(btf), symbols: Kallsyms::open() }
    }

    pub fn reason(&self, r: u32) -> String {
        self.reasons.get(&r).cloned().unwrap_or_else(|| format!("reason {r}"))
    }

    /// `symbol+0xoff`, or the raw address when kallsyms is unavailable.
    pub fn location(&self, addr: u64) -> String {
        self.symbols.locate(addr)
    }
}

/// Kernel symbols, looked up on demand. The kernel decides when `/proc/kallsyms` is opened
/// whether its reader may see addresses, so it is opened while privileged and read again from
/// the start for each new drop site: holding its ~200 000 symbols would cost tens of MiB for
/// the handful of sites that ever drop.
#[derive(Default)]
struct Kallsyms {
    file: Option<std::fs::File>,
    known: Mutex<HashMap<u64, String>>,
}

/// Distinct drop sites remembered (they are few; the bound only guards memory).
const MAX_KNOWN_SITES: usize = 4096;

impl Kallsyms {
    fn open() -> Kallsyms {
        Kallsyms { file: std::fs::File::open("/proc/kallsyms").ok(), known: Mutex::default() }
    }

    fn locate(&self, addr: u64) -> String {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = known.get(&addr) {
            return name.clone();
        }
        let name = self.scan(addr).unwrap_or_else(|| format!("0x{addr:x}"));
        if known.len() < MAX_KNOWN_SITES {
            known.insert(addr, name.clone());
        }
        name
    }

    /// The symbol with the highest address not above `addr`, within 1 MiB of it.
    fn scan(&self, addr: u64) -> Option<String> {
        use std::io::{BufRead, Seek};
        let mut file = self.file.as_ref()?;
        file.seek(std::io::SeekFrom::Start(0)).ok()?;
        let mut best: Option<(u64, String)> = None;
        let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
        let mut line = String::new();
        // One reused line buffer: the file has hundreds of thousands of lines.
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            let mut parts = line.split_whitespace();
            let (Some(a), Some(_kind), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
                line.clear();
                continue;
            };
            if let Ok(base) = u64::from_str_radix(a, 16)
                && base != 0
                && base <= addr
                && best.as_ref().is_none_or(|(b, _)| base > *b)
            {
                best = Some((base, name.to_string()));
            }
            line.clear();
        }
        best.filter(|(base, _)| addr - base < 0x10_0000)
            .map(|(base, name)| format!("{name}+0x{:x}", addr - base))
    }
}

/// The hop a dropped packet passed last: among the flow's hooks that saw this tuple (or any,
/// if none did), the one with the latest packet not after the drop.
fn after_hop<'a>(
    hops: impl Iterator<Item = &'a Hop> + Clone,
    tuple: &Tuple,
    last_drop_ns: u64,
) -> Option<HopName> {
    let matching: Vec<&Hop> = hops.clone().filter(|h| h.tuple == *tuple).collect();
    let pool: Vec<&Hop> = if matching.is_empty() { hops.collect() } else { matching };
    pool.iter()
        .filter(|h| h.last_ns <= last_drop_ns)
        .max_by_key(|h| h.last_ns)
        .or_else(|| pool.iter().min_by_key(|h| h.first_ns))
        .map(|h| h.name())
}

/// Drops and retransmissions indexed by tuple, to attach them to flows in one pass.
pub struct DropIndex<'a> {
    drops: HashMap<Tuple, Vec<&'a (DropKey, DropStats)>>,
    retrans: HashMap<Tuple, u64>,
    names: &'a DropNames,
    tc_programs: &'a TcPrograms,
}

impl<'a> DropIndex<'a> {
    pub fn new(
        drops: &'a [(DropKey, DropStats)],
        retrans: &[(Tuple, u64)],
        names: &'a DropNames,
        tc_programs: &'a TcPrograms,
    ) -> DropIndex<'a> {
        let mut by_tuple: HashMap<Tuple, Vec<&(DropKey, DropStats)>> = HashMap::new();
        for d in drops {
            by_tuple.entry(d.0.tuple).or_default().push(d);
        }
        let mut r = HashMap::new();
        for (t, n) in retrans {
            *r.entry(*t).or_default() += n;
        }
        DropIndex { drops: by_tuple, retrans: r, names, tc_programs }
    }

    /// The drops of a flow's tuples, merged by reason, place and the hop they followed.
    pub fn drops_of<'h, I>(&self, tuples: &[Tuple], hops: impl Fn() -> I) -> Vec<FlowDrop>
    where
        I: Iterator<Item = &'h Hop> + Clone,
    {
        type Place = (String, String, Option<HopName>, Option<String>);
        let mut merged: BTreeMap<Place, u64> = BTreeMap::new();
        for t in tuples {
            for (k, s) in self.drops.get(t).into_iter().flatten() {
                let hop = after_hop(hops(), &k.tuple, s.last_ns);
                let reason = self.names.reason(k.reason);
                let program = self.tc_program(k.ifindex, &reason);
                *merged.entry((reason, self.names.location(k.location), hop, program)).or_default() +=
                    s.count;
            }
        }
        merged
            .into_iter()
            .map(|((reason, location, after_hop, program), count)| FlowDrop {
                reason,
                location,
                after_hop,
                program,
                count,
            })
            .collect()
    }

    /// The one foreign tc program on the hook a `TC_INGRESS`/`TC_EGRESS` drop happened at.
    fn tc_program(&self, ifindex: u32, reason: &str) -> Option<String> {
        let ingress = match reason {
            "TC_INGRESS" => true,
            "TC_EGRESS" => false,
            _ => return None,
        };
        match self.tc_programs.get(&(ifindex, ingress)).map(Vec::as_slice) {
            Some([one]) => Some(one.name.clone()),
            _ => None,
        }
    }

    /// TCP retransmissions of a flow's tuples.
    pub fn retransmits_of(&self, tuples: &[Tuple]) -> u64 {
        tuples.iter().filter_map(|t| self.retrans.get(t)).sum()
    }
}
