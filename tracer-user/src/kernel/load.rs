//! Loading the embedded kernel object with podtrace's load-time settings.
use anyhow::{Context, Result};
use aya::{Ebpf, EbpfLoader};
use tracer_common::{FLOW_CACHE_SLOTS, KernelLayout, globals, names};

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
    /// Keep the capture path (`podtrace capture`, the agent's `/capture`); `None` lets the
    /// verifier remove it, and its maps take no memory.
    pub capture: Option<CaptureLoad>,
}

/// How an object that can capture is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureLoad {
    /// Size of the copies' ring buffer (a power of two, at least a page).
    pub ring_bytes: u32,
}

impl CaptureLoad {
    pub const DEFAULT_RING_BYTES: u32 = 8 << 20;
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            sample_rate: SampleRate(16),
            filter: false,
            max_flows: 65536,
            layout: None,
            capture: None,
        }
    }
}

/// Loads the object (maps created, programs not yet loaded into the kernel).
pub fn load(opts: &LoadOptions) -> Result<Ebpf> {
    let max_age_ns: u64 = 1_000_000_000;
    let filter_on: u8 = opts.filter.into();
    let layout = opts.layout.unwrap_or_default();
    let cpus = super::maps::possible_cpus()? as u32;
    let armed: u8 = opts.capture.is_some().into();
    let mask = opts.sample_rate.mask();
    let mut loader = EbpfLoader::new();
    loader
        .override_global(globals::SAMPLE_MASK, &mask, true)
        .override_global(globals::FILTER_ON, &filter_on, true)
        .override_global(globals::SIGHTING_MAX_AGE_NS, &max_age_ns, true)
        .override_global(globals::LAYOUT, &layout, true)
        .override_global(globals::CAPTURE_ARMED, &armed, true)
        .map_max_entries(names::MAP_FLOWS, opts.max_flows.max(1))
        .map_max_entries(names::MAP_FLOW_CACHE, cpus * FLOW_CACHE_SLOTS);
    match opts.capture {
        Some(c) => {
            loader
                .map_max_entries(names::MAP_CAPTURE_RING, c.ring_bytes)
                .map_max_entries(names::MAP_CAPTURE_SCRATCH, cpus);
        }
        // The capture path is gone: its maps shrink to one entry (the ring to one page).
        None => {
            for map in [names::MAP_CAPTURE_TUPLES, names::MAP_CAPTURE_SIGHTINGS, names::MAP_CAPTURE_STASH] {
                loader.map_max_entries(map, 1);
            }
        }
    }
    loader.load(OBJECT).context("loading the podtrace eBPF object (needs root or CAP_BPF+CAP_PERFMON)")
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
    fn sample_rates_are_powers_of_two() {
        assert_eq!("16".parse::<SampleRate>().unwrap().mask(), 15);
        assert_eq!("1".parse::<SampleRate>().unwrap().mask(), 0);
        for bad in ["0", "3", "100", "131072", "18446744073709551615", "x", "-4"] {
            assert!(bad.parse::<SampleRate>().is_err(), "{bad} accepted");
        }
    }
}
