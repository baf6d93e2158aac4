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
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { sample_rate: SampleRate(16), filter: false, max_flows: 65536, layout: None }
    }
}

/// Loads the object (maps created, programs not yet loaded into the kernel).
pub fn load(opts: &LoadOptions) -> Result<Ebpf> {
    let max_age_ns: u64 = 1_000_000_000;
    let filter_on: u8 = opts.filter.into();
    let layout = opts.layout.unwrap_or_default();
    EbpfLoader::new()
        .override_global(globals::SAMPLE_MASK, &opts.sample_rate.mask(), true)
        .override_global(globals::FILTER_ON, &filter_on, true)
        .override_global(globals::SIGHTING_MAX_AGE_NS, &max_age_ns, true)
        .override_global(globals::LAYOUT, &layout, true)
        .map_max_entries(names::MAP_FLOWS, opts.max_flows.max(1))
        .map_max_entries(names::MAP_FLOW_CACHE, super::maps::possible_cpus()? as u32 * FLOW_CACHE_SLOTS)
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
    fn sample_rates_are_powers_of_two() {
        assert_eq!("16".parse::<SampleRate>().unwrap().mask(), 15);
        assert_eq!("1".parse::<SampleRate>().unwrap().mask(), 0);
        for bad in ["0", "3", "100", "131072", "18446744073709551615", "x", "-4"] {
            assert!(bad.parse::<SampleRate>().is_err(), "{bad} accepted");
        }
    }
}
