//! All maps, their sizes and the counter helper. User space resizes two at load time: the flow
//! table (`--max-flows`) and the flow cache (for the possible CPUs); the others keep the sizes
//! written here.
use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, HashMap, PerCpuHashMap},
};
use tracer_common::{
    COUNTER_STRIDE, CachedFlow, CpuCounters, DropKey, DropStats, FLOW_CACHE_MAX_SLOTS,
    FLOW_CACHE_SLOTS_PER_WORD, FlowKey, FlowStats, HOP_LOG_MAX_SLOTS, HopRecord, SIGHTING_SLOTS, Sighting,
    Tuple, counter, hook,
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
    // One multiply (Fibonacci hashing, top bits) over the folded words: a slot only has to
    // spread flows, and a collision costs a table lookup, not a wrong count.
    let folded = w[0] ^ w[2] ^ w[4] ^ (w[1] ^ w[3] ^ w[5]).rotate_left(32);
    let h = (folded.wrapping_mul(tracer_ebpf::signature::FIBONACCI) >> 32) as u32;
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let slots = crate::globals::flow_cache_slots();
    let index = cpu.wrapping_mul(slots) + (h & (slots - 1));
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

/// The last `SIGHTING_SLOTS` sampled packets seen at an ingress hook on each CPU, written in
/// turn (CPU `c` owns `c * SIGHTING_SLOTS ..`; user space sizes the map for the possible CPUs
/// at load time). A packet crosses its ingress hook and its next egress hook on one CPU, in one
/// pass through the stack (the egress hook runs before any qdisc queue; a listified receive
/// batch holds at most a few packets in between), so a sighting is found at the egress hook
/// as long as fewer than `SIGHTING_SLOTS` sampled packets entered on that CPU meanwhile,
/// whatever their signatures. The table is small and written in turn, so it stays in cache: a
/// table indexed by signature (8 192 slots, 512 KiB per CPU) missed the cache and the TLB on
/// every sampled packet.
///
/// A plain array, not a per-CPU one: its lookup is the map's base address plus an offset,
/// where a per-CPU array first loads the element's pointer from a table (one more cache miss).
#[map(name = "SIGHTINGS")]
pub static SIGHTINGS: Array<SightingSlot> = Array::with_max_entries(SIGHTING_SLOTS, 0);

/// This CPU's count of sightings written, in its `COUNTERS` entry after the reported counters.
const SIGHTINGS_WRITTEN: u32 = counter::COUNT;
const _: () = assert!(SIGHTINGS_WRITTEN < COUNTER_STRIDE);

/// The slot the next ingress sighting on this CPU goes to (the oldest one).
#[inline(always)]
pub fn next_sighting_slot(counters: &Tally) -> Option<*mut SightingSlot> {
    let n = counters.add(SIGHTINGS_WRITTEN) as u32;
    let cpu = unsafe { bpf_get_smp_processor_id() };
    SIGHTINGS.get_ptr_mut(cpu * SIGHTING_SLOTS + (n & (SIGHTING_SLOTS - 1)))
}

/// The newest ingress sighting on this CPU with signature `sig`, at another interface than
/// `ifindex` and younger than the maximum age at `now`.
#[inline(always)]
pub fn newest_sighting(counters: &Tally, sig: u64, ifindex: u32, now: u64) -> Option<*mut SightingSlot> {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let newest = counters.get(SIGHTINGS_WRITTEN) as u32;
    for back in 0..SIGHTING_SLOTS {
        let i = newest.wrapping_sub(back) & (SIGHTING_SLOTS - 1);
        let slot = SIGHTINGS.get_ptr_mut(cpu * SIGHTING_SLOTS + i)?;
        let s = unsafe { &*slot };
        if s.sig == sig
            && s.at.hook == hook::INGRESS
            && s.at.ifindex != ifindex
            && now.wrapping_sub(s.at.ts_ns) < crate::globals::sighting_max_age_ns()
        {
            return Some(slot);
        }
    }
    None
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct SightingSlot {
    pub sig: u64,
    pub at: Sighting,
}

/// Hop events (the same packet at two consecutive hooks), a log per CPU that user space reads
/// in place (see `tracer_common::HopRecord`): CPU `c` owns records `c * slots ..`, sized by user
/// space for the possible CPUs and a memory budget. A record is written with plain stores
/// (its two sequence-word stores are atomic exchanges where the CPU does not keep stores in
/// order) into this CPU's own records: no lock, no read of anything user space writes (a ring
/// buffer's reserve reads the consumer position, takes a spinlock and exchanges the record's
/// header, each a cache line another CPU touched), so the stores retire without stalling the
/// program. The price: the kernel does not know what user space has read, so an event is
/// overwritten rather than refused when the log is full, and user space counts it lost.
#[map(name = "HOP_LOG")]
pub static HOP_LOG: Array<HopRecord> = Array::with_max_entries(HOP_LOG_MAX_SLOTS, BPF_F_MMAPABLE);

/// The record this CPU's hop event number `seq` goes to.
#[inline(always)]
pub fn hop_record(seq: u64) -> Option<*mut HopRecord> {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let slots = crate::globals::hop_log_slots();
    HOP_LOG.get_ptr_mut(cpu.wrapping_mul(slots) + (seq as u32 & (slots - 1)))
}

/// Global counters, see `tracer_common::counter`: entry `c` holds CPU `c`'s (user space sizes
/// the map for the possible CPUs and sums over them). A plain array rather than a per-CPU one
/// for the reason given at `SIGHTINGS`. One entry per CPU rather than one per counter: a TC
/// program looks its CPU's entry up once and bumps each counter at a constant offset.
#[map(name = "COUNTERS")]
pub static COUNTERS: Array<CpuCounters> = Array::with_max_entries(1, 0);

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

/// This CPU's counters (its `COUNTERS` entry), looked up once per program run. Only this CPU
/// writes them: no atomics.
pub struct Tally(*mut CpuCounters);

impl Tally {
    /// `None` only for a CPU beyond the possible CPUs user space sized the map for.
    #[inline(always)]
    pub fn this_cpu() -> Option<Tally> {
        let cpu = unsafe { bpf_get_smp_processor_id() };
        COUNTERS.get_ptr_mut(cpu).map(Tally)
    }

    /// Adds one to counter `index` and returns its new value (0 if the index is invalid).
    #[inline(always)]
    pub fn add(&self, index: u32) -> u64 {
        match unsafe { (*self.0).get_mut(index as usize) } {
            Some(v) => {
                *v += 1;
                *v
            }
            None => 0,
        }
    }

    /// Counter `index` (0 if the index is invalid).
    #[inline(always)]
    pub fn get(&self, index: u32) -> u64 {
        unsafe { (*self.0).get(index as usize).copied().unwrap_or(0) }
    }
}

/// The code shared with the host (`tracer_ebpf::packet`) counts through this.
impl Counters for &Tally {
    #[inline(always)]
    fn count(&mut self, index: u32) {
        self.add(index);
    }
}

/// Adds one to a counter of this CPU, for programs that count once per run.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(t) = Tally::this_cpu() {
        t.add(index);
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
