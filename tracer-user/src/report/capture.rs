//! From the kernel's packet copies to the pcapng file: time order, the `--filter` (a packet
//! that matches at one hop is written at every hop), a comment with podtrace's path and NAT
//! summary on the first packet of each flow, per-hook counts and the closing statistics.
//!
//! Copies wait `window` before they are written: long enough for the copies of one packet at
//! its other hops to arrive (for the filter) and for the flow to be assembled (for the
//! comment).
use std::{
    collections::{HashMap, HashSet},
    io::Write,
    time::Duration,
};

use anyhow::Result;
use tracer_common::{FlowKey, Tuple, capture::PARSED};

use super::{
    json::FlowReport,
    pcapng::{Interface, InterfaceStats, Pcapng},
    table::{Style, row},
};
use crate::{
    assemble::{capture_filter::Filter, context::Clock, model::Flow},
    kernel::{
        addr,
        capture::{CaptureStats, Copy, HookStats},
    },
};

/// What the writer needs besides the packets.
pub struct CaptureOptions {
    pub filter: Option<Filter>,
    /// Stop after this many packets written.
    pub max_packets: Option<u64>,
    pub window: Duration,
}

/// Per (interface, hook) counts of the writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HookCounts {
    pub written: u64,
    /// Written shorter than the packet (the snaplen).
    pub truncated: u64,
    pub filtered_out: u64,
}

/// The copies on their way to a pcapng stream.
pub struct CaptureWriter<W: Write> {
    out: Pcapng<W>,
    /// ifindex of each interface slot (interface block `slot * 2 + hook`).
    slots: HashMap<u32, u16>,
    names: Vec<String>,
    opts: CaptureOptions,
    clock: Clock,
    pending: Vec<Copy>,
    /// Signatures of packets the filter accepted at some hop, with when (monotonic ns).
    accepted: HashMap<u64, u64>,
    /// (tuple, interface, hook) → the comment of its flow, from the last assembly.
    flow_of: HashMap<FlowKey, usize>,
    comments: Vec<(Tuple, String)>,
    commented: HashSet<Tuple>,
    counts: Vec<HookCounts>,
    /// Packets written per (tuple, interface, hook), to set against the flow counters.
    pub per_key: HashMap<FlowKey, u64>,
    pub written: u64,
    start_mono_ns: u64,
}

/// An interface of a capture: ifindex, name, what it is, MAC.
pub type CaptureInterface = (u32, String, String, Option<[u8; 6]>);

/// Interface block of (slot, hook).
pub fn block_id(slot: u16, hook: u8) -> u32 {
    slot as u32 * 2 + hook as u32
}

impl<W: Write> CaptureWriter<W> {
    /// Writes the header and the interface blocks: `ifaces` (ifindex, name, role description,
    /// MAC) in slot order, each with an ingress and an egress block.
    pub fn new(
        w: W,
        ifaces: &[CaptureInterface],
        snaplen: u32,
        header_comment: &str,
        opts: CaptureOptions,
        clock: Clock,
        start_mono_ns: u64,
    ) -> Result<Self> {
        let mut blocks = Vec::new();
        for (_, name, role, mac) in ifaces {
            for (hook, sees) in
                [("ingress", "packets entering the node's stack"), ("egress", "packets leaving it")]
            {
                blocks.push(Interface {
                    name: format!("{name}/{hook}"),
                    description: format!("{role}, {hook} hook: {sees}"),
                    mac: *mac,
                });
            }
        }
        let app = format!("podtrace {}", env!("CARGO_PKG_VERSION"));
        let out = Pcapng::new(w, &app, header_comment, snaplen, &blocks)?;
        Ok(CaptureWriter {
            out,
            slots: ifaces.iter().enumerate().map(|(i, (ifindex, ..))| (*ifindex, i as u16)).collect(),
            names: ifaces.iter().map(|(_, n, ..)| n.clone()).collect(),
            opts,
            clock,
            pending: Vec::new(),
            accepted: HashMap::new(),
            flow_of: HashMap::new(),
            comments: Vec::new(),
            commented: HashSet::new(),
            counts: vec![HookCounts::default(); blocks.len()],
            per_key: HashMap::new(),
            written: 0,
            start_mono_ns,
        })
    }

    pub fn push(&mut self, c: Copy) {
        self.pending.push(c);
    }

    /// The flows assembled so far: their hooks get the flow's comment.
    pub fn set_flows(&mut self, flows: &[Flow]) {
        self.flow_of.clear();
        self.comments.clear();
        for f in flows {
            let i = self.comments.len();
            self.comments.push((f.id_tuple, flow_comment(f)));
            for h in f.path.iter().chain(&f.reply_path) {
                let key = FlowKey { tuple: h.tuple, ifindex: h.ifindex, hook: h.hook as u8, _pad: [0; 3] };
                self.flow_of.insert(key, i);
            }
        }
    }

    /// Writes the copies older than `before_mono_ns` (all with `None`); true once
    /// `max_packets` were written.
    pub fn flush(&mut self, before_mono_ns: Option<u64>) -> Result<bool> {
        if let Some(f) = &self.opts.filter {
            for c in &self.pending {
                let t = (c.header.flags & PARSED != 0).then_some(&c.header.tuple);
                if c.header.sig != 0 && f.matches(t) {
                    self.accepted.insert(c.header.sig, c.header.ts_ns);
                }
            }
        }
        let (mut ready, rest): (Vec<Copy>, Vec<Copy>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|c| before_mono_ns.is_none_or(|b| c.header.ts_ns < b));
        self.pending = rest;
        ready.sort_by_key(|c| c.header.ts_ns);
        for c in ready {
            if self.opts.max_packets.is_some_and(|m| self.written >= m) {
                return Ok(true);
            }
            self.write(&c)?;
        }
        if let Some(b) = before_mono_ns {
            // A packet's hops are microseconds apart: older acceptances are of no more use.
            self.accepted.retain(|_, ts| b.saturating_sub(*ts) < 2_000_000_000);
        }
        Ok(self.opts.max_packets.is_some_and(|m| self.written >= m))
    }

    fn write(&mut self, c: &Copy) -> Result<()> {
        let h = &c.header;
        let Some(&slot) = self.slots.get(&h.ifindex) else { return Ok(()) };
        let id = block_id(slot, h.hook);
        let parsed = h.flags & PARSED != 0;
        if let Some(f) = &self.opts.filter {
            let t = parsed.then_some(&h.tuple);
            if !f.matches(t) && !(h.sig != 0 && self.accepted.contains_key(&h.sig)) {
                self.counts[id as usize].filtered_out += 1;
                return Ok(());
            }
        }
        let key = FlowKey { tuple: h.tuple, ifindex: h.ifindex, hook: h.hook, _pad: [0; 3] };
        let comment = match self.flow_of.get(&key) {
            Some(&i) if parsed && !self.commented.contains(&self.comments[i].0) => {
                self.commented.insert(self.comments[i].0);
                Some(self.comments[i].1.as_str())
            }
            _ => None,
        };
        let unix_ns = self.clock.unix_ns(h.ts_ns);
        self.out.packet(id, unix_ns, &c.data, h.len, comment)?;
        self.counts[id as usize].written += 1;
        if (c.data.len() as u32) < h.len {
            self.counts[id as usize].truncated += 1;
        }
        if parsed {
            *self.per_key.entry(key).or_default() += 1;
        }
        self.written += 1;
        Ok(())
    }

    pub fn get_mut(&mut self) -> &mut W {
        self.out.get_mut()
    }

    /// The writer's counts of interface block `id`.
    pub fn counts(&self, id: u32) -> HookCounts {
        self.counts.get(id as usize).copied().unwrap_or_default()
    }

    /// Writes the statistics blocks (what the kernel and the writer counted per hook) and
    /// hands back the stream.
    pub fn finish(mut self, kernel: &CaptureStats, end_mono_ns: u64) -> Result<W> {
        for id in 0..self.counts.len() as u32 {
            let k = kernel.hooks.get(&((id / 2) as u16, (id % 2) as u8)).copied().unwrap_or_default();
            let s = isb(
                k,
                self.counts(id),
                self.opts.filter.is_some(),
                &self.clock,
                self.start_mono_ns,
                end_mono_ns,
            );
            self.out.statistics(id, &s)?;
        }
        Ok(self.out.into_inner())
    }

    pub fn interface_names(&self) -> &[String] {
        &self.names
    }
}

fn isb(k: HookStats, w: HookCounts, filtered: bool, clock: &Clock, start: u64, end: u64) -> InterfaceStats {
    InterfaceStats {
        start_unix_ns: clock.unix_ns(start),
        end_unix_ns: clock.unix_ns(end),
        received: k.copied + k.ring_full + k.missed,
        dropped: k.ring_full + k.missed,
        filter_accepted: filtered.then_some(w.written),
        delivered: w.written,
        comment: format!(
            "podtrace: ring_full={} missed={} truncated={} filtered_out={}",
            k.ring_full, k.missed, w.truncated, w.filtered_out
        ),
    }
}

/// podtrace's one-line account of a flow, as a packet comment.
pub fn flow_comment(f: &Flow) -> String {
    let report = FlowReport::from(f);
    let mut s = format!("podtrace: {}", row(&report, Style::plain()));
    let hops = |path: &[crate::assemble::model::Hop]| {
        path.iter()
            .map(|h| format!("{}/{} {} > {}", h.ifname, h.hook.as_str(), h.src, h.dst))
            .collect::<Vec<_>>()
            .join(", ")
    };
    s += &format!(" | path: {}", hops(&f.path));
    if !f.reply_path.is_empty() {
        s += &format!(" | reply: {}", hops(&f.reply_path));
    }
    for (what, nat) in [("SNAT", &f.snat), ("DNAT", &f.dnat)] {
        if let Some(n) = nat {
            s += &format!(" | {what} {} -> {} ({}", n.from, n.to, n.kind.as_str());
            if let Some(c) = &n.chain {
                s += &format!(", {c}");
            }
            if let (Some(a), Some(b)) = (&n.after_hop, &n.before_hop) {
                s += &format!(", between {a} and {b}");
            }
            s += ")";
        }
    }
    if let Some(c) = &f.community_id {
        s += &format!(" | community_id {c}");
    }
    s
}

/// A tuple as `proto src > dst`, for the summary.
pub fn tuple_text(t: &Tuple) -> String {
    format!("{} {} > {}", crate::assemble::model::Proto::from_number(t.proto), addr::src(t), addr::dst(t))
}
