//! Loading the embedded kernel object with podtrace's load-time settings.
use anyhow::Result;
use aya::{Ebpf, EbpfLoader};
use tracer_common::{
    CachedFlow, FLOW_CACHE_MAX_SLOTS, FLOW_CACHE_MIN_SLOTS, FlowKey, FlowStats, HOP_LOG_MAX_SLOTS,
    HOP_LOG_MIN_SLOTS, HopRecord, KernelLayout, globals, names,
};

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
    /// Keep the capture path (`podtrace capture`, the agent's `/capture`); `None` lets the
    /// verifier remove it, and its maps take no memory.
    pub capture: Option<CaptureLoad>,
    /// Write the hop log's sequence words with plain stores, which only CPUs that keep stores
    /// in order for other CPUs allow (x86-64, the default there); else with atomic exchanges.
    pub ordered_stores: bool,
}

/// The flow cache's default budget over all CPUs.
pub const DEFAULT_FLOW_CACHE_BYTES: u64 = 16 << 20;

/// Slots per CPU of the flow cache: as many as the budget allows over `cpus`, a power of two
/// between `FLOW_CACHE_MIN_SLOTS` and `FLOW_CACHE_MAX_SLOTS` (the minimum wins over the budget).
pub fn flow_cache_slots(cpus: u32, budget_bytes: u64) -> u32 {
    per_cpu_records(cpus, budget_bytes, size_of::<CachedFlow>(), FLOW_CACHE_MIN_SLOTS, FLOW_CACHE_MAX_SLOTS)
}

/// The hop log's budget over all CPUs (the minimum per CPU wins over it on big nodes).
pub const HOP_LOG_BYTES: u64 = 2 << 20;

/// Records per CPU of the hop log: as many as `HOP_LOG_BYTES` allows over `cpus`, a power of
/// two between `HOP_LOG_MIN_SLOTS` and `HOP_LOG_MAX_SLOTS`.
pub fn hop_log_slots(cpus: u32) -> u32 {
    per_cpu_records(cpus, HOP_LOG_BYTES, size_of::<HopRecord>(), HOP_LOG_MIN_SLOTS, HOP_LOG_MAX_SLOTS)
}

/// Records of `record_bytes` per CPU that `budget_bytes` allows over `cpus`, rounded down to a
/// power of two, at most `max` and at least `min`.
fn per_cpu_records(cpus: u32, budget_bytes: u64, record_bytes: usize, min: u32, max: u32) -> u32 {
    let fit = budget_bytes / (cpus.max(1) as u64 * record_bytes as u64);
    let pow2 = if fit == 0 { 0 } else { 1u64 << (63 - fit.leading_zeros()) };
    (pow2.min(max as u64) as u32).max(min)
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
            flow_cache_bytes: DEFAULT_FLOW_CACHE_BYTES,
            cpus: None,
            capture: None,
            ordered_stores: cfg!(target_arch = "x86_64"),
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
    let hop_slots = hop_log_slots(cpus);
    let ordered: u8 = opts.ordered_stores.into();
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
        .override_global(globals::FLOW_CACHE_SLOTS, &slots, true)
        .map_max_entries(names::MAP_FLOW_CACHE, cpus * slots)
        .map_max_entries(names::MAP_FLOW_CACHE_USED, cpus * slots / tracer_common::FLOW_CACHE_SLOTS_PER_WORD)
        .override_global(globals::HOP_LOG_SLOTS, &hop_slots, true)
        .override_global(globals::ORDERED_STORES, &ordered, true)
        .map_max_entries(names::MAP_HOP_LOG, cpus * hop_slots)
        .map_max_entries(names::MAP_COUNTERS, cpus)
        .map_max_entries(names::MAP_SIGHTINGS, cpus * tracer_common::SIGHTING_SLOTS);
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
    loader.load(OBJECT).map_err(|e| {
            let hint = match os_error(&e) {
                Some(libc::EPERM) | Some(libc::EACCES) => " (needs root or CAP_BPF+CAP_PERFMON)".to_string(),
                // Map memory is charged to the memory cgroup: a container limit below it fails here.
                Some(libc::ENOMEM) => super::maps::possible_cpus().map_or(String::new(), |cpus| {
                    format!(
                        " (out of memory: the flow table alone takes {} on {cpus} CPUs; lower --max-flows or raise the memory limit)",
                        human_bytes(flow_table_bytes(opts.max_flows, cpus))
                    )
                }),
                _ => String::new(),
            };
            anyhow::Error::new(e).context(format!("loading the podtrace eBPF object{hint}"))
        })
}

/// The OS error under an error, if any (the kernel's reason for refusing).
fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(code) = err.downcast_ref::<std::io::Error>().and_then(|io| io.raw_os_error()) {
            return Some(code);
        }
        cur = err.source();
    }
    None
}

/// Kernel memory a flow table of `max_flows` entries takes on a machine with `cpus` possible
/// CPUs. FLOWS is a preallocated per-CPU hash: every entry is a `struct htab_elem` (48 bytes)
/// with the key (rounded up to 8 bytes) and a pointer to its per-CPU values, and holds one
/// value (rounded up to 8 bytes) for each possible CPU; the bucket array has a power of two
/// of 16-byte buckets. This memory is allocated when the map is created and charged to the
/// creator's memory cgroup, whether or not flows ever fill it.
pub fn flow_table_bytes(max_flows: u32, cpus: usize) -> u64 {
    const HTAB_ELEM: u64 = 48;
    const BUCKET: u64 = 16;
    let round8 = |n: usize| (n as u64).div_ceil(8) * 8;
    let entry = HTAB_ELEM + round8(size_of::<FlowKey>()) + 8 + cpus as u64 * round8(size_of::<FlowStats>());
    let buckets = (max_flows as u64).max(1).next_power_of_two();
    max_flows as u64 * entry + buckets * BUCKET
}

/// Kernel memory of podtrace's other maps, an upper bound for `cpus` CPUs: per CPU the
/// sightings (8 × 64 B) and the drop and retransmission values (8192 × 24 B) stay under
/// 1 MiB; the drop and retransmission hash elements, the address filter and the counters
/// under 4 MiB; the hop log its records (see [`hop_log_slots`]); the flow cache takes its slots (see [`flow_cache_slots`]) and
/// a bit each for occupancy; an armed capture path its ring, and per CPU a record of the
/// largest snaplen, 64 stashed copies of 2 KiB and 4096 sightings (under 512 KiB), and the
/// 65 536 NAT'd tuples (under 8 MiB). Sizes as declared in tracer-ebpf/src/maps.rs and
/// hooks/capture.rs.
pub fn other_maps_bytes(cpus: usize, flow_cache_bytes: u64, capture: Option<CaptureLoad>) -> u64 {
    let cache_slots = cpus as u64 * flow_cache_slots(cpus as u32, flow_cache_bytes) as u64;
    let capture = capture.map_or(0, |c| c.ring_bytes as u64 + cpus as u64 * (512 << 10) + (8 << 20));
    cpus as u64 * (1 << 20)
        + (4 << 20)
        + cpus as u64 * hop_log_slots(cpus as u32) as u64 * size_of::<HopRecord>() as u64
        + cache_slots * size_of::<CachedFlow>() as u64
        + cache_slots / 8
        + capture
}

/// Most kernel memory a flow table may take (`--max-flows`): beyond it the table is refused
/// before anything is loaded. 262 144 entries (the agent's default) fit up to 96 CPUs.
pub const MAX_FLOW_TABLE_BYTES: u64 = 1 << 30;

/// Refuses flow tables whose kernel memory exceeds [`MAX_FLOW_TABLE_BYTES`] on this machine;
/// the message states the memory they would take (per-CPU values counted).
pub fn check_flow_table(max_flows: u32) -> Result<u64> {
    let cpus = super::maps::possible_cpus()?;
    let bytes = flow_table_bytes(max_flows, cpus);
    if bytes > MAX_FLOW_TABLE_BYTES {
        anyhow::bail!(
            "--max-flows {max_flows} would lock {} of kernel memory on this machine's {cpus} CPUs \
             (the flow table is per-CPU: {} bytes per entry here); at most {} is allowed, \
             that is --max-flows {} or less",
            human_bytes(bytes),
            flow_table_bytes(1, cpus) - 16,
            human_bytes(MAX_FLOW_TABLE_BYTES),
            max_flows_within(MAX_FLOW_TABLE_BYTES, cpus),
        );
    }
    Ok(bytes)
}

/// The largest flow table that fits in `bytes` on `cpus` CPUs.
fn max_flows_within(bytes: u64, cpus: usize) -> u32 {
    let (mut lo, mut hi) = (0u32, u32::MAX);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if flow_table_bytes(mid, cpus) <= bytes { lo = mid } else { hi = mid - 1 }
    }
    lo
}

/// `2.1 GB`, `512.0 MB`: decimal units, one decimal.
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n => format!("{:.1} kB", n as f64 / 1e3),
    }
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
    fn the_hop_log_fits_two_mib_until_the_minimum_per_cpu() {
        assert_eq!(hop_log_slots(2), 4096, "the maximum on small nodes: 2 × 4096 × 128 B = 1 MiB");
        assert_eq!(hop_log_slots(8), 2048, "8 × 2048 × 128 B = 2 MiB");
        assert_eq!(hop_log_slots(96), 128, "96 × 128 × 128 B = 1.5 MiB; 256 would be 3 MiB");
        assert_eq!(hop_log_slots(192), HOP_LOG_MIN_SLOTS, "192 × 64 × 128 B = 1.5 MiB");
        assert_eq!(hop_log_slots(1024), HOP_LOG_MIN_SLOTS, "the minimum wins over the budget");
    }

    #[test]
    fn flow_table_memory_counts_every_cpu() {
        // The figure: 10 M entries on 2 CPUs lock 2.1 GB.
        assert_eq!(human_bytes(flow_table_bytes(10_000_000, 2)), "2.1 GB");
        // 48 + 48 + 8 bytes per entry, 40 per CPU, 16 per bucket.
        assert_eq!(flow_table_bytes(1024, 4), 1024 * (104 + 4 * 40) + 1024 * 16);
        assert_eq!(flow_table_bytes(u32::MAX, 2), u32::MAX as u64 * 184 + (1u64 << 32) * 16);
        let fits = max_flows_within(MAX_FLOW_TABLE_BYTES, 96);
        assert!(flow_table_bytes(fits, 96) <= MAX_FLOW_TABLE_BYTES);
        assert!(flow_table_bytes(fits + 1, 96) > MAX_FLOW_TABLE_BYTES);
        assert!(fits >= 262_144, "the agent's default fits on 96 CPUs");
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
