//! The flow cache as user space sees it: the kernel's `FLOW_CACHE` slots and their occupancy
//! bitmap `FLOW_CACHE_USED`, both mapped into our memory (`BPF_F_MMAPABLE`). A poll reads the
//! bitmap (a bit per slot) and then only the taken slots, so its cost follows the traffic, not
//! the CPU count; freeing a slot clears its bit first (atomically: the kernel sets bits in the
//! same words) and then zeroes the slot, its key last, so the kernel never sees a half-freed
//! slot as free.
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use aya::Ebpf;
use tracer_common::{CachedFlow, FLOW_CACHE_SLOTS_PER_WORD, names};

use super::mapping::Mapping;

/// What one read of the cache touched: the bitmap and the taken slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadCost {
    pub bitmap_bytes: usize,
    pub slot_bytes: usize,
}

/// The mapped flow cache of a loaded object.
pub struct FlowCache {
    slots: Mapping,
    used: Mapping,
}

impl FlowCache {
    pub fn map(ebpf: &Ebpf) -> Result<FlowCache> {
        let slots = Mapping::new(ebpf, names::MAP_FLOW_CACHE, size_of::<CachedFlow>())?;
        let used = Mapping::new(ebpf, names::MAP_FLOW_CACHE_USED, size_of::<u64>())?;
        if used.entries * FLOW_CACHE_SLOTS_PER_WORD < slots.entries {
            bail!("the flow cache's occupancy bitmap is smaller than the cache");
        }
        Ok(FlowCache { slots, used })
    }

    fn word(&self, i: u32) -> &AtomicU64 {
        // SAFETY: i < used.entries; the mapping holds u64 values, 8-byte aligned (page start).
        unsafe { AtomicU64::from_ptr(self.used.ptr.as_ptr().cast::<u64>().add(i as usize)) }
    }

    fn slot_ptr(&self, index: u32) -> *mut CachedFlow {
        debug_assert!(index < self.slots.entries);
        // SAFETY: index < slots.entries, inside the mapping.
        unsafe { self.slots.ptr.as_ptr().cast::<CachedFlow>().add(index as usize) }
    }

    /// The taken slots that hold counts, with their indexes, and what reading them cost.
    pub fn occupied(&self) -> (Vec<(u32, CachedFlow)>, ReadCost) {
        let (mut out, cost) = self.held();
        // A slot taken by its flow's first packet on that CPU starts empty: that packet was
        // counted in the table.
        out.retain(|(_, slot)| slot.packets > 0);
        (out, cost)
    }

    /// The slots a flow holds, counted in or not yet, with their indexes. Freeing a flow's
    /// slots must free them all: an empty slot left holding the key would take the flow's
    /// next packets on that CPU, and the flow would not come back as new.
    pub fn held(&self) -> (Vec<(u32, CachedFlow)>, ReadCost) {
        let mut out = Vec::new();
        let mut read = 0;
        for w in 0..self.used.entries {
            let mut bits = self.word(w).load(Ordering::Acquire);
            while bits != 0 {
                let index = w * FLOW_CACHE_SLOTS_PER_WORD + bits.trailing_zeros();
                bits &= bits - 1;
                if index >= self.slots.entries {
                    break;
                }
                // SAFETY: a slot inside the mapping; the kernel may be counting in it on its
                // CPU, so the read is volatile (every field only grows until the slot is freed).
                let slot = unsafe { std::ptr::read_volatile(self.slot_ptr(index)) };
                read += 1;
                // A bit can outlive its slot's flow for a moment (freed, not yet retaken).
                if slot.key.ifindex != 0 {
                    out.push((index, slot));
                }
            }
        }
        let cost = ReadCost {
            bitmap_bytes: self.used.entries as usize * size_of::<u64>(),
            // Every slot whose bit is set is read, also one still empty (taken by a flow's
            // first packet, which the table counted) or freed under the bit.
            slot_bytes: read * size_of::<CachedFlow>(),
        };
        (out, cost)
    }

    /// Frees slots: bit first, then the slot's fields with the key's ifindex (what marks a
    /// slot free to the kernel) last.
    pub fn free(&self, indexes: &[u32]) {
        const WORDS: usize = size_of::<CachedFlow>() / 8;
        const { assert!(size_of::<CachedFlow>().is_multiple_of(8)) };
        // The word of the key holding `ifindex` (FlowKey { tuple: Tuple (40 bytes), ifindex, .. }).
        const IFINDEX_WORD: usize = 40 / 8;
        for &index in indexes.iter().filter(|i| **i < self.slots.entries) {
            let bit = 1u64 << (index % FLOW_CACHE_SLOTS_PER_WORD);
            self.word(index / FLOW_CACHE_SLOTS_PER_WORD).fetch_and(!bit, Ordering::SeqCst);
            let words = self.slot_ptr(index).cast::<u64>();
            for i in (0..WORDS).filter(|i| *i != IFINDEX_WORD).chain([IFINDEX_WORD]) {
                // SAFETY: word i of the slot, inside the mapping and 8-byte aligned.
                unsafe { AtomicU64::from_ptr(words.add(i)) }.store(0, Ordering::Release);
            }
        }
    }
}
