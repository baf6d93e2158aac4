//! Figure 6: what one poll reads, against the CPU count and the number of flows. The programs
//! are loaded as if the node had 2, 64 or 192 CPUs (the flow cache is sized at load time for
//! the possible CPUs, so a simulated count sizes it as on such a node), filled through the real
//! classifier with BPF_PROG_TEST_RUN, and then read as the agent's poll reads them.
use std::{fmt::Write as _, time::Instant};

use anyhow::{Result, anyhow};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use podtrace::kernel::{
    attach::{AttachMode, Tracer},
    flow_cache::FlowCache,
    load::{DEFAULT_FLOW_CACHE_BYTES, LoadOptions, flow_cache_slots},
    maps,
};
use tests::packets::*;
use tracer_common::{CachedFlow, names};

pub const CPUS: [u32; 3] = [2, 64, 192];

/// One (CPUs, flows) cell.
pub struct PollCell {
    pub cpus: u32,
    pub flows: u32,
    /// Flows the table holds after the fill (all of them unless the table refused some).
    pub in_table: usize,
    pub bitmap_bytes: usize,
    pub taken_slots: usize,
    pub slot_bytes: usize,
    /// What reading every slot (the cache before its occupancy bitmap) would cost.
    pub whole_cache_bytes: usize,
    pub cache_read_ms: f64,
    pub table_read_ms: f64,
}

pub fn flow_counts(quick: bool) -> Vec<u32> {
    if quick { vec![1_000, 10_000] } else { vec![1_000, 100_000, 1_000_000] }
}

fn packet(i: u32) -> Vec<u8> {
    let dst = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
    eth(&[], ETH_IPV4, &ipv4(&V4 { dst, proto: 17, ..V4::default() }, &udp(40000, 9, b"poll")))
}

/// Loads the programs for `cpus` CPUs with a table for `flows`, sends one packet of each flow
/// through the ingress classifier, and times one poll's reads.
fn cell(cpus: u32, flows: u32) -> Result<PollCell> {
    let opts =
        LoadOptions { cpus: Some(cpus), max_flows: flows + flows / 8 + 1024, ..LoadOptions::default() };
    let tracer = Tracer::load(&opts, AttachMode::Auto)?;
    let prog: &SchedClassifier = tracer
        .ebpf
        .program(names::PROG_TC_INGRESS)
        .ok_or_else(|| anyhow!("no ingress program"))?
        .try_into()?;
    for i in 0..flows {
        let pkt = packet(i);
        // Two packets: the first enters the table and takes the flow's slot if it is free,
        // the second is counted in the slot (a flow that keeps sending).
        for _ in 0..2 {
            prog.test_run(TestRunOptions { data_in: Some(&pkt), ..TestRunOptions::default() })
                .map_err(|e| anyhow!("test run: {e}"))?;
        }
    }
    let t = Instant::now();
    let cache = FlowCache::map(&tracer.ebpf)?;
    let (taken, cost) = cache.occupied();
    let cache_read_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let in_table = maps::read_flows(&tracer.ebpf)?.len();
    let table_read_ms = t.elapsed().as_secs_f64() * 1000.0;
    let slots = flow_cache_slots(cpus, DEFAULT_FLOW_CACHE_BYTES) as usize;
    Ok(PollCell {
        cpus,
        flows,
        in_table,
        bitmap_bytes: cost.bitmap_bytes,
        taken_slots: taken.len(),
        slot_bytes: cost.slot_bytes,
        whole_cache_bytes: cpus as usize * slots * size_of::<CachedFlow>(),
        cache_read_ms,
        table_read_ms,
    })
}

pub fn measure(quick: bool) -> Result<Vec<PollCell>> {
    let mut out = Vec::new();
    for flows in flow_counts(quick) {
        for cpus in CPUS {
            out.push(cell(cpus, flows)?);
        }
    }
    Ok(out)
}

fn kib(bytes: usize) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

pub fn table(s: &mut String, cells: &[PollCell]) {
    let _ = writeln!(s, "## 6. Poll cost against CPUs and flows\n");
    let _ = writeln!(
        s,
        "| CPUs (simulated) | flows sent | flows read | cache bitmap read | slots read (taken) | cache read, total | reading every slot instead | cache read time | flow table read time |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for c in cells {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} ({}) | {} | {} | {:.3} ms | {:.1} ms |",
            c.cpus,
            c.flows,
            c.in_table,
            kib(c.bitmap_bytes),
            c.taken_slots,
            kib(c.slot_bytes),
            kib(c.bitmap_bytes + c.slot_bytes),
            kib(c.whole_cache_bytes),
            c.cache_read_ms,
            c.table_read_ms,
        );
    }
    let idle_192 = cells.iter().filter(|c| c.cpus == 192).map(|c| c.bitmap_bytes).max().unwrap_or(0);
    let _ = writeln!(
        s,
        "\nThe programs are loaded as if the node had that many CPUs: the flow cache is sized at load time for the possible CPUs within `--flow-cache-bytes` ({} MiB by default), so a simulated count gives it the size and bitmap it has on such a node. Each flow is two UDP packets sent through the real ingress classifier (BPF_PROG_TEST_RUN, which runs on this machine's CPUs, so only their slots fill). A poll reads the occupancy bitmap ({} on 192 CPUs, what an idle node's poll reads) and then only the taken slots: its cache cost follows the traffic, never the whole cache of the last column. The flow table is a per-CPU hash read in batches; its read time follows the flows (and, on a real node, its possible CPUs, which this machine cannot simulate: the kernel sizes per-CPU values by the real count).\n",
        DEFAULT_FLOW_CACHE_BYTES >> 20,
        kib(idle_192),
    );
}

/// The claim of the figure, checked on the run's own cells: for the same flows, a poll on 192
/// CPUs reads at most what it reads on 2 plus a bitmap of kilobytes (32 KiB).
pub fn independent_of_cpus(cells: &[PollCell]) -> bool {
    let read = |c: &PollCell| c.bitmap_bytes + c.slot_bytes;
    cells.iter().filter(|c| c.cpus == 192).all(|big| {
        cells
            .iter()
            .any(|small| small.cpus == 2 && small.flows == big.flows && read(big) <= read(small) + (32 << 10))
    })
}
