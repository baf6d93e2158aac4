//! Loading the embedded kernel object with podtrace's load-time settings.
use anyhow::{Context, Result};
use aya::{Ebpf, EbpfLoader};
use tracer_common::{CachedFlow, FLOW_CACHE_MAX_SLOTS, FLOW_CACHE_MIN_SLOTS, KernelLayout, globals, names};

/// The kernel programs, built by build.rs for bpfel-unknown-none.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// Settings fixed for the lifetime of one loaded object.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// One packet in N is sampled for hop events.
    pub sample_rate: SampleRate,
    /// Only track packets to/from the addresses written into the address filter.
    pub filter: bool,
    /// Capacity of the per-hook flow table.
    pub max_flows: u32,
    /// Offsets for the drop/retransmit tracepoints; `None` disables them.
    pub layout: Option<KernelLayout>,
    /// Memory budget of the flow cache over all CPUs (it takes fewer slots per CPU on big
    /// nodes; see [`flow_cache_slots`]).
    pub flow_cache_bytes: u64,
    /// Size the per-CPU maps for this many CPUs instead of the possible CPUs (tests: what a
    /// big node would cost).
    pub cpus: Option<u32>,
}

/// The flow cache's default budget over all CPUs.
pub const DEFAULT_FLOW_CACHE_BYTES: u64 = 16 << 20;

/// Slots per CPU of the flow cache: as many as the budget allows over `cpus`, a power of two
/// between `FLOW_CACHE_MIN_SLOTS` and `FLOW_CACHE_MAX_SLOTS` (the minimum wins over the budget).
pub fn flow_cache_slots(cpus: u32, budget_bytes: u64) -> u32 {
    let fit = budget_bytes / (cpus.max(1) as u64 * size_of::<CachedFlow>() as u64);
    let pow2 = if fit == 0 { 0 } else { 1u64 << (63 - fit.leading_zeros()) };
    (pow2.min(FLOW_CACHE_MAX_SLOTS as u64) as u32).max(FLOW_CACHE_MIN_SLOTS)
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            sample_rate: SampleRate(16),
            filter: false,
            max_flows: 65536,
            layout: None,
            flow_cache_bytes: DEFAULT_FLOW_CACHE_BYTES,
            cpus: None,
        }
    }
}

/// Loads the object (maps created, programs not yet loaded into the kernel).
pub fn load(opts: &LoadOptions) -> Result<Ebpf> {
    let max_age_ns: u64 = 1_000_000_000;
    let filter_on: u8 = opts.filter.into();
    let layout = opts.layout.unwrap_or_default();
    let cpus = match opts.cpus {
        Some(n) => n,
        None => super::maps::possible_cpus()? as u32,
    };
    let slots = flow_cache_slots(cpus, opts.flow_cache_bytes);
    EbpfLoader::new()
        .override_global(globals::SAMPLE_MASK, &opts.sample_rate.mask(), true)
        .override_global(globals::FILTER_ON, &filter_on, true)
        .override_global(globals::SIGHTING_MAX_AGE_NS, &max_age_ns, true)
        .override_global(globals::LAYOUT, &layout, true)
        .map_max_entries(names::MAP_FLOWS, opts.max_flows.max(1))
        .override_global(globals::FLOW_CACHE_SLOTS, &slots, true)
        .map_max_entries(names::MAP_FLOW_CACHE, cpus * slots)
        .map_max_entries(names::MAP_FLOW_CACHE_USED, cpus * slots / tracer_common::FLOW_CACHE_SLOTS_PER_WORD)
        .load(OBJECT)
        .context("loading the podtrace eBPF object (needs root or CAP_BPF+CAP_PERFMON)")
}

/// One packet in N is sampled for per-hop latency; N is a power of two so that the kernel
/// decides with a mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleRate(u64);

impl SampleRate {
    pub const MAX: u64 = 65536;

    /// The kernel's mask: a packet is sampled when `signature & mask == 0`.
    pub fn mask(self) -> u64 {
        self.0 - 1
    }
}

impl std::str::FromStr for SampleRate {
    type Err = String;
    fn from_str(s: &str) -> Result<SampleRate, String> {
        let n: u64 = s
            .trim()
            .parse()
            .map_err(|_| format!("invalid sample rate {s:?}: expected 1, 2, 4, ... 65536"))?;
        if n == 0 || !n.is_power_of_two() || n > Self::MAX {
            return Err(format!("invalid sample rate {s:?}: expected a power of two between 1 and 65536"));
        }
        Ok(SampleRate(n))
    }
}

impl std::fmt::Display for SampleRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flow_cache_fits_its_budget_whatever_the_cpu_count() {
        let mib = 1u64 << 20;
        assert_eq!(flow_cache_slots(2, 16 * mib), 1024, "the maximum on small nodes");
        assert_eq!(flow_cache_slots(64, 16 * mib), 1024, "64 × 1024 × 88 B = 5.5 MiB fits");
        assert_eq!(flow_cache_slots(192, 16 * mib), 512, "192 × 1024 × 88 B would be 16.5 MiB");
        for cpus in [1, 2, 8, 64, 96, 192, 256] {
            let slots = flow_cache_slots(cpus, 16 * mib);
            assert!(slots.is_power_of_two());
            assert!(cpus as u64 * slots as u64 * 88 <= 16 * mib || slots == FLOW_CACHE_MIN_SLOTS);
        }
        assert_eq!(flow_cache_slots(192, 0), FLOW_CACHE_MIN_SLOTS, "the minimum wins");
    }

    #[test]
    fn sample_rates_are_powers_of_two() {
        assert_eq!("16".parse::<SampleRate>().unwrap().mask(), 15);
        assert_eq!("1".parse::<SampleRate>().unwrap().mask(), 0);
        for bad in ["0", "3", "100", "131072", "18446744073709551615", "x", "-4"] {
            assert!(bad.parse::<SampleRate>().is_err(), "{bad} accepted");
        }
    }
}
