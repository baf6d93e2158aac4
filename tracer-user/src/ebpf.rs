//! Loading the embedded kernel object with podtrace's load-time settings.
use anyhow::{Context, Result};
use aya::{Ebpf, EbpfLoader};
use tracer_common::{FLOW_CACHE_SLOTS, KernelLayout, globals, names};

/// The kernel programs, built by build.rs for bpfel-unknown-none.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// Settings fixed for the lifetime of one loaded object.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Sample a packet when `signature & sample_mask == 0` (power of two minus one).
    pub sample_mask: u64,
    /// Only track packets to/from the addresses written into the address filter.
    pub filter: bool,
    /// Capacity of the per-hook flow table.
    pub max_flows: u32,
    /// Offsets for the drop/retransmit tracepoints; `None` disables them.
    pub layout: Option<KernelLayout>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { sample_mask: 0xf, filter: false, max_flows: 65536, layout: None }
    }
}

/// Loads the object (maps created, programs not yet loaded into the kernel).
pub fn load(opts: &LoadOptions) -> Result<Ebpf> {
    let max_age_ns: u64 = 1_000_000_000;
    let filter_on: u8 = opts.filter.into();
    let layout = opts.layout.unwrap_or_default();
    EbpfLoader::new()
        .override_global(globals::SAMPLE_MASK, &opts.sample_mask, true)
        .override_global(globals::FILTER_ON, &filter_on, true)
        .override_global(globals::SIGHTING_MAX_AGE_NS, &max_age_ns, true)
        .override_global(globals::LAYOUT, &layout, true)
        .map_max_entries(names::MAP_FLOWS, opts.max_flows.max(1))
        .map_max_entries(names::MAP_FLOW_CACHE, crate::maps::possible_cpus()? as u32 * FLOW_CACHE_SLOTS)
        .load(OBJECT)
        .context("loading the podtrace eBPF object (needs root or CAP_BPF+CAP_PERFMON)")
}
