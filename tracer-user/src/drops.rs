//! Naming drops (reason from the kernel's BTF, location from kallsyms) and attaching them and
//! TCP retransmissions to the flows they belong to.
use std::collections::{BTreeMap, HashMap};

use tracer_common::{DropKey, DropStats, Tuple};

use crate::flows::{DropReport, FlowReport, Hop};

/// Everything needed to turn raw drop keys into names. Built before capabilities are dropped
/// (kallsyms shows addresses only to privileged readers).
#[derive(Default)]
pub struct DropNames {
    reasons: HashMap<u32, String>,
    symbols: BTreeMap<u64, String>,
}

impl DropNames {
    pub fn load(btf: &crate::btf::Btf) -> DropNames {
        DropNames {
            reasons: crate::btf::drop_reasons(btf),
            symbols: aya::util::kernel_symbols().unwrap_or_default(),
        }
    }

    pub fn reason(&self, r: u32) -> String {
        self.reasons.get(&r).cloned().unwrap_or_else(|| format!("reason {r}"))
    }

    /// `symbol+0xoff`, or the raw address when kallsyms is unavailable.
    pub fn location(&self, addr: u64) -> String {
        match self.symbols.range(..=addr).next_back() {
            Some((base, name)) if addr - base < 0x10_0000 => format!("{name}+0x{:x}", addr - base),
            _ => format!("0x{addr:x}"),
        }
    }
}

/// The hop a dropped packet passed last: among the flow's hooks that saw this tuple (or any,
/// if none did), the one with the latest packet not after the drop.
fn after_hop<'a>(
    hops: impl Iterator<Item = &'a Hop> + Clone,
    tuple: &Tuple,
    last_drop_ns: u64,
) -> Option<String> {
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
}

impl<'a> DropIndex<'a> {
    pub fn new(
        drops: &'a [(DropKey, DropStats)],
        retrans: &[(Tuple, u64)],
        names: &'a DropNames,
    ) -> DropIndex<'a> {
        let mut by_tuple: HashMap<Tuple, Vec<&(DropKey, DropStats)>> = HashMap::new();
        for d in drops {
            by_tuple.entry(d.0.tuple).or_default().push(d);
        }
        let mut r = HashMap::new();
        for (t, n) in retrans {
            *r.entry(*t).or_default() += n;
        }
        DropIndex { drops: by_tuple, retrans: r, names }
    }

    /// Adds the drops and retransmissions of the flow's tuples to it.
    pub fn attach(&self, f: &mut FlowReport) {
        let mut merged: BTreeMap<(String, String, Option<String>), u64> = BTreeMap::new();
        for t in &f.tuples {
            for (k, s) in self.drops.get(t).into_iter().flatten() {
                let hop = after_hop(f.path.iter().chain(f.reply_path.iter()), &k.tuple, s.last_ns);
                *merged
                    .entry((self.names.reason(k.reason), self.names.location(k.location), hop))
                    .or_default() += s.count;
            }
        }
        f.drops = merged
            .into_iter()
            .map(|((reason, location, after_hop), count)| DropReport { reason, location, after_hop, count })
            .collect();
        f.retransmits = f.tuples.iter().filter_map(|t| self.retrans.get(t)).sum();
    }
}
