//! All maps, their sizes and the counter helper. Sizes are defaults; user space resizes the
//! flow and drop tables at load time (`--max-flows`).
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tracer_common::{DropKey, DropStats, FlowKey, FlowStats, Sighting, Tuple, counter};

/// Per (tuple, ifindex, hook) packet/byte counters. A plain (not LRU) hash: when it is full new
/// flows are counted in `FLOW_MAP_FULL` instead of silently evicting old ones.
#[map(name = "FLOWS")]
pub static FLOWS: PerCpuHashMap<FlowKey, FlowStats> = PerCpuHashMap::with_max_entries(65536, 0);

/// Last sighting of each sampled packet signature. LRU: old signatures age out by design.
#[map(name = "SIGHTINGS")]
pub static SIGHTINGS: LruHashMap<u64, Sighting> = LruHashMap::with_max_entries(16384, 0);

/// Hop events (the same packet at two consecutive hooks), read by user space.
#[map(name = "HOPS")]
pub static HOPS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Global counters, see `tracer_common::counter`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Addresses of interest (traced pod IPs and the node's own ENI IPs), 16-byte form.
#[map(name = "ADDR_FILTER")]
pub static ADDR_FILTER: HashMap<[u8; 16], u8> = HashMap::with_max_entries(4096, 0);

/// Drops of traced packets, aggregated by (tuple, reason, device, location). Per-CPU: exact
/// counts without atomics.
#[map(name = "DROPS")]
pub static DROPS: PerCpuHashMap<DropKey, DropStats> = PerCpuHashMap::with_max_entries(8192, 0);

/// TCP retransmissions per tuple (as the sending socket sees it).
#[map(name = "RETRANS")]
pub static RETRANS: PerCpuHashMap<Tuple, u64> = PerCpuHashMap::with_max_entries(8192, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(v) = COUNTERS.get_ptr_mut(index) {
        unsafe { *v += 1 };
    }
}

/// True when the address filter is off or one end of the tuple is of interest.
#[inline(always)]
pub fn wanted(t: &Tuple) -> bool {
    if !crate::globals::filter_on() {
        return true;
    }
    unsafe { ADDR_FILTER.get(&t.src).is_some() || ADDR_FILTER.get(&t.dst).is_some() }
}
