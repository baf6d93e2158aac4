//! All maps, their sizes and the counter helper. User space resizes two at load time: the flow
//! table (`--max-flows`) and the flow cache (for the possible CPUs); the others keep the sizes
//! written here.
use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tracer_common::{
    CachedFlow, DropKey, DropStats, FLOW_CACHE_MAX_SLOTS, FLOW_CACHE_SLOTS_PER_WORD, FlowKey, FlowStats,
    Sighting, Tuple, counter,
};
use tracer_ebpf::packet::Counters;

/// Per (tuple, ifindex, hook) packet/byte counters. A plain (not LRU) hash: when it is full new
/// flows are counted in `FLOW_MAP_FULL` instead of silently evicting old ones.
#[map(name = "FLOWS")]
pub static FLOWS: PerCpuHashMap<FlowKey, FlowStats> = PerCpuHashMap::with_max_entries(65536, 0);

/// `BPF_F_MMAPABLE`: user space maps the array into its memory, reads only the occupied slots
/// and frees slots with ordered stores (a syscall update would copy a whole slot at once).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The flow cache (see `tracer_common::CachedFlow`): `globals::flow_cache_slots()` slots per
/// CPU, CPU `c` owning `c * slots ..`. A plain array rather than a per-CPU one so that user
/// space can free one CPU's slot without writing the other CPUs' (which may be busy). User
/// space sizes it for the possible CPUs and a memory budget at load time.
#[map(name = "FLOW_CACHE")]
pub static FLOW_CACHE: Array<CachedFlow> = Array::with_max_entries(FLOW_CACHE_MAX_SLOTS, BPF_F_MMAPABLE);

/// Which flow-cache slots are taken, one bit per slot: a poll reads this bitmap and then only
/// the taken slots, so its cost follows the traffic, not the CPU count. Only the owning CPU
/// sets a bit (when its flow takes the slot); user space clears it (atomically, through its
/// mapping) before it frees the slot.
#[map(name = "FLOW_CACHE_USED")]
pub static FLOW_CACHE_USED: Array<u64> =
    Array::with_max_entries(FLOW_CACHE_MAX_SLOTS / FLOW_CACHE_SLOTS_PER_WORD, BPF_F_MMAPABLE);

/// This CPU's cache slot for `key`, chosen by a hash of the key's words, with its index.
#[inline(always)]
pub fn flow_cache_slot(key: &FlowKey) -> Option<(u32, *mut CachedFlow)> {
    let w = key_words(key);
    let h = tracer_ebpf::signature::mix(w[0] ^ w[2] ^ w[4], w[1] ^ w[3] ^ w[5]);
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let slots = crate::globals::flow_cache_slots();
    let index = cpu.wrapping_mul(slots) + (h as u32 & (slots - 1));
    FLOW_CACHE.get_ptr_mut(index).map(|c| (index, c))
}

/// Marks a slot taken in the occupancy bitmap (only its CPU sets its bits).
#[inline(always)]
pub fn mark_slot_used(index: u32) {
    if let Some(w) = FLOW_CACHE_USED.get_ptr_mut(index / FLOW_CACHE_SLOTS_PER_WORD) {
        unsafe { *w |= 1u64 << (index % FLOW_CACHE_SLOTS_PER_WORD) };
    }
}

/// A flow key as six words, to hash and compare without byte loops.
#[inline(always)]
pub fn key_words(key: &FlowKey) -> &[u64; 6] {
    const { assert!(size_of::<FlowKey>() == 48 && align_of::<FlowKey>() == 8) };
    // SAFETY: FlowKey is 48 bytes, 8-byte aligned plain data.
    unsafe { &*(key as *const FlowKey).cast::<[u64; 6]>() }
}

/// Word-wise key equality (a slice comparison would become a byte-loop `memcmp` call).
#[inline(always)]
pub fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    let (a, b) = (key_words(a), key_words(b));
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5]
}

/// The last sampled packet seen on this CPU in one slot of a direct-mapped table, chosen by
/// signature. An array lookup is inlined by the verifier (no hashing, no locks, no LRU
/// eviction); a later signature in the same slot simply replaces an older one. Per CPU, because
/// a packet crosses its ingress and egress hooks on the same CPU (softirq) and that keeps
/// concurrent writers off each slot.
#[map(name = "SIGHTINGS")]
pub static SIGHTINGS: PerCpuArray<SightingSlot> = PerCpuArray::with_max_entries(SIGHTING_SLOTS, 0);

/// Slots per CPU in `SIGHTINGS` (a power of two).
pub const SIGHTING_SLOTS: u32 = 8192;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct SightingSlot {
    pub sig: u64,
    pub at: Sighting,
}

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

/// `COUNTERS` for the code shared with the host (`tracer_ebpf::packet`).
pub struct KernelCounters;

impl Counters for KernelCounters {
    #[inline(always)]
    fn count(&mut self, index: u32) {
        count(index)
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
