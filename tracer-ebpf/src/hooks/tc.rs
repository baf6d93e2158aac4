//! TC classifiers for pod veths and ENIs (tcx or clsact, both ingress and egress).
//!
//! Per packet: parse, filter, add to the flow table. A busy flow's packets land in this CPU's
//! flow-cache slot (an inlined array access); only a flow's first packets on a CPU, and flows
//! whose slot is taken, go through the flow hash table. Only sampled packets touch the
//! sighting table and the hop log. In objects loaded for a capture, `hooks::capture` then
//! decides whether to copy the packet.
use core::{mem::MaybeUninit, ptr::write_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::classifier,
    programs::TcContext,
};
use tracer_common::{CachedFlow, FlowKey, FlowStats, HOP_RECORD_BUSY, Sighting, counter, hook};

use super::capture;
use crate::{
    globals,
    maps::{
        FLOWS, Tally, flow_cache_slot, hop_record, mark_slot_used, newest_sighting, next_sighting_slot,
        same_key, wanted,
    },
    mem,
};
use tracer_ebpf::packet::{
    Parsed, Reader, classify_frame,
    common::{Direct, Window},
};

/// TC_ACT_UNSPEC (-1) is also TCX_NEXT: "not my decision", the packet continues unchanged to
/// the next program / the stack. podtrace never returns anything else.
const PASS: i32 = TC_ACT_UNSPEC;

struct Skb<'a>(&'a TcContext);

/// Headers beyond this offset are read with `bpf_skb_load_bytes` only. The bound also lets the
/// verifier check the direct packet pointer arithmetic.
const MAX_DIRECT: usize = 256;

impl Skb<'_> {
    /// The packet bytes at `off..off + len` when they are in the linear part of the skb.
    #[inline(always)]
    fn direct(&self, off: usize, len: usize) -> Option<*const u8> {
        let (start, end) = (self.0.data(), self.0.data_end());
        (off < MAX_DIRECT && start + off + len <= end).then_some((start + off) as *const u8)
    }
}

/// Loads a `T` from packet memory with the widest loads its size allows (8, 4 or 2 bytes).
/// Byte-array reads would otherwise compile to one load per byte plus shifts and ors.
/// Header fields are only 2-byte aligned in a packet; unaligned loads are fine for the BPF JITs
/// of the architectures podtrace runs on (x86-64, arm64) and the verifier allows them on
/// packet pointers. Each byte is loaded once: 16 and 12 bytes as two 8-byte or three 4-byte
/// words.
#[inline(always)]
unsafe fn load<T: Copy>(p: *const u8) -> T {
    use core::{mem::transmute_copy, ptr::read_volatile};
    unsafe {
        match size_of::<T>() {
            16 => transmute_copy(&[read_volatile(p.cast::<u64>()), read_volatile(p.add(8).cast::<u64>())]),
            12 => transmute_copy(&[
                read_volatile(p.cast::<u32>()),
                read_volatile(p.add(4).cast::<u32>()),
                read_volatile(p.add(8).cast::<u32>()),
            ]),
            8 => transmute_copy(&read_volatile(p.cast::<u64>())),
            4 => transmute_copy(&read_volatile(p.cast::<u32>())),
            2 => transmute_copy(&read_volatile(p.cast::<u16>())),
            _ => core::ptr::read_unaligned(p.cast::<T>()),
        }
    }
}

impl Reader for Skb<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        // Direct packet access in the common case; the helper for non-linear packets.
        match self.direct(off, size_of::<T>()) {
            Some(p) => Some(unsafe { load::<T>(p) }),
            None => self.0.load::<T>(off).ok(),
        }
    }

    #[inline(always)]
    fn read_into(&self, off: usize, dst: &mut [u8]) -> bool {
        if let Some(p) = self.direct(off, dst.len()) {
            // Addresses: 4 or 16 bytes into a Tuple, which is 8-byte aligned.
            match dst.len() {
                4 => unsafe { dst.as_mut_ptr().cast::<[u8; 4]>().write(load::<[u8; 4]>(p)) },
                16 => unsafe { dst.as_mut_ptr().cast::<[u8; 16]>().write(load::<[u8; 16]>(p)) },
                n => unsafe { core::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), n) },
            }
            return true;
        }
        // Direct helper call with a constant length: aya's load_bytes clamps the length to
        // the packet, which the verifier sees as a possibly zero-sized read.
        let ret = unsafe {
            bpf_skb_load_bytes(self.0.as_ptr(), off as u32, dst.as_mut_ptr().cast(), dst.len() as u32)
        };
        ret == 0
    }
}

/// The packet's first bytes, checked once against its end (see `packet::common`).
struct Linear(*const u8);

impl Window for Linear {
    #[inline(always)]
    fn at<T: Copy>(&self, off: usize) -> T {
        // SAFETY: `Skb::window` checked that the window's length is in the packet, and the
        // common-case parser reads only inside it.
        unsafe { load::<T>(self.0.add(off)) }
    }
}

impl Direct for Skb<'_> {
    type Window = Linear;

    #[inline(always)]
    fn window(&self, len: usize) -> Option<Linear> {
        let (start, end) = (self.0.data(), self.0.data_end());
        (len <= MAX_DIRECT && start + len <= end).then_some(Linear(start as *const u8))
    }
}

#[classifier]
pub fn podtrace_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, hook::INGRESS);
    PASS
}

#[classifier]
pub fn podtrace_egress(ctx: TcContext) -> i32 {
    observe(&ctx, hook::EGRESS);
    PASS
}

/// Does nothing but pass the packet on: the cost floor that `cargo xtask bench` measures
/// podtrace against. podtrace itself never attaches it.
#[classifier]
pub fn podtrace_noop(_ctx: TcContext) -> i32 {
    PASS
}

#[inline(always)]
fn observe(ctx: &TcContext, hook: u8) {
    // Fails only on a CPU beyond the possible CPUs the map was sized for: none runs programs.
    let Some(counters) = Tally::this_cpu() else { return };
    counters.add(counter::PACKETS);
    let mut key_slot = MaybeUninit::<FlowKey>::uninit();
    let key = mem::zeroed(&mut key_slot);
    let mut p = Parsed::default();
    if !classify_frame(&Skb(ctx), &mut key.tuple, &mut p, &mut &counters) {
        capture::capture(ctx, hook, None, false);
        return;
    }
    let skb = ctx.as_ptr() as *const __sk_buff;
    let len = unsafe { (*skb).len };
    // At an ingress hook the receiving interface is also in the skb itself (`skb_iif`, set
    // just before the hook runs), where `ifindex` is read from the device struct: a cache
    // line of its own, cold on most packets. (Zero only where no receive path ran, as in a
    // BPF_PROG_TEST_RUN.)
    let ifindex = match hook {
        hook::INGRESS => match unsafe { (*skb).ingress_ifindex } {
            0 => unsafe { (*skb).ifindex },
            i => i,
        },
        _ => unsafe { (*skb).ifindex },
    };
    key.set_iface(ifindex, hook);

    // Steady state: the flow already holds this CPU's cache slot. Otherwise the flow table,
    // after which the flow takes its slot if it is free.
    let slot = flow_cache_slot(key);
    let new_flow = match slot {
        Some((_, c)) if same_key(unsafe { &(*c).key }, key) => {
            count_in_slot(unsafe { &mut *c }, len, p.tcp_flags);
            false
        }
        _ => {
            let Some(new_flow) = count_in_table(&counters, key, len, p.tcp_flags) else {
                capture::capture(ctx, hook, Some((&key.tuple, &p.inv)), false);
                return;
            };
            if let Some((index, c)) = slot {
                take_slot_if_free(unsafe { &mut *c }, index, key);
            }
            new_flow
        }
    };
    counters.add(counter::TRACKED);

    // The first packet of a flow at each hook is always sampled so that NAT is seen even for
    // one-packet flows; the rest by signature, so a packet is sampled at all hooks or none.
    if new_flow || p.inv.sampled(globals::sample_mask()) {
        sample(&counters, p.inv.signature(), key);
    }
    capture::capture(ctx, hook, Some((&key.tuple, &p.inv)), new_flow);
}

/// Counts a packet in the flow's cache slot (per CPU: no other CPU writes it, no atomics).
#[inline(always)]
fn count_in_slot(c: &mut CachedFlow, len: u32, tcp_flags: u8) {
    c.packets += 1;
    c.bytes += len as u64;
    // The coarse clock moves once per tick, as jiffies do; reading jiffies is a plain load
    // (inlined by the JIT), the clock a helper call: read it only when jiffies moved.
    let jiffies = unsafe { bpf_jiffies64() };
    if c.last_jiffies != jiffies {
        c.last_jiffies = jiffies;
        c.last_ns = unsafe { bpf_ktime_get_coarse_ns() };
    }
    c.tcp_flags |= tcp_flags;
}

/// Counts a packet in the flow table: `Some(true)` for a new flow, `None` when it is not
/// tracked (not of interest, or the table is full).
#[inline(always)]
fn count_in_table(counters: &Tally, key: &FlowKey, len: u32, tcp_flags: u8) -> Option<bool> {
    match FLOWS.get_ptr_mut(key) {
        Some(s) => {
            // Per-CPU value: no other CPU writes it, no atomics needed.
            let s = unsafe { &mut *s };
            s.packets += 1;
            s.bytes += len as u64;
            // Coarse time (the last timer tick) is enough to date a flow's latest packet and
            // costs a fraction of a precise clock read; precise times are taken where ordering
            // or latency needs them: a flow's first packet and sampled packets.
            s.last_ns = unsafe { bpf_ktime_get_coarse_ns() };
            s.tcp_flags |= tcp_flags;
            if s.first_ns == 0 {
                s.first_ns = unsafe { bpf_ktime_get_ns() };
            }
            Some(false)
        }
        // An existing entry means the flow already passed the address filter, so the filter
        // is consulted for new flows only.
        None => {
            if !wanted(&key.tuple) {
                return None;
            }
            let now = unsafe { bpf_ktime_get_ns() };
            let mut s_slot = MaybeUninit::<FlowStats>::uninit();
            let s = mem::zeroed(&mut s_slot);
            s.packets = 1;
            s.bytes = len as u64;
            s.first_ns = now;
            s.last_ns = now;
            s.tcp_flags = tcp_flags;
            // BPF_ANY on a per-CPU hash only writes this CPU's slot, so a racing insert of the
            // same key on another CPU loses nothing.
            if FLOWS.insert(key, s, 0).is_err() {
                counters.add(counter::FLOW_MAP_FULL);
                return None;
            }
            Some(true)
        }
    }
}

/// Gives a free cache slot to a flow that is in the table, so that its next packets skip the
/// hash. The slot starts empty: the packet that got here is already counted in the table.
#[inline(always)]
fn take_slot_if_free(c: &mut CachedFlow, index: u32, key: &FlowKey) {
    if c.key.ifindex == 0 {
        c.packets = 0;
        c.bytes = 0;
        c.last_ns = 0;
        c.last_jiffies = 0;
        c.tcp_flags = 0;
        unsafe { mem::copy(&mut c.key, key) };
        // After the key: a reader that sees the bit finds the slot filled.
        mark_slot_used(index);
    }
}

/// A sampled packet. At an ingress hook it is remembered; at an egress hook the newest
/// remembered ingress sighting of the same packet (same signature) on this CPU makes a hop.
#[inline(always)]
fn sample(counters: &Tally, sig: u64, key: &FlowKey) {
    counters.add(counter::SAMPLES);
    let now = unsafe { bpf_ktime_get_ns() };
    if key.hook == hook::INGRESS {
        if let Some(slot) = next_sighting_slot(counters) {
            let slot = unsafe { &mut *slot };
            slot.sig = sig;
            slot.at.ts_ns = now;
            unsafe { mem::copy(sighting_place(&mut slot.at), key) };
        }
        return;
    }
    // Inside one network namespace a packet goes from an ingress hook to an egress hook; any
    // other pair is two different packets that share a signature.
    let Some(slot) = newest_sighting(counters, sig, key.ifindex, now) else { return };
    let from = unsafe { &mut *slot };
    let seq = counters.add(counter::HOP_EVENTS);
    if let Some(r) = hop_record(seq) {
        unsafe {
            let word = &raw mut (*r).seq;
            publish(word, seq << 1 | HOP_RECORD_BUSY);
            let ev = &raw mut (*r).event;
            mem::copy(&raw mut (*ev).from, &from.at);
            write_volatile(&raw mut (*ev).to.ts_ns, now);
            mem::copy(sighting_place(&raw mut (*ev).to), key);
            publish(word, seq << 1);
        }
    }
    // Used: a second egress hook of the same packet (a VLAN device, then its trunk) is not
    // another hop from that ingress.
    from.at.hook = hook::EGRESS;
}

/// Writes a hop record's sequence word. Plain (volatile, so in program order) stores where the
/// CPU keeps stores in order for other CPUs; elsewhere an atomic exchange, a full barrier in
/// the BPF JITs: the busy mark is visible before the event's stores, they before the final
/// sequence.
#[inline(always)]
unsafe fn publish(word: *mut u64, value: u64) {
    if globals::ordered_stores() {
        unsafe { write_volatile(word, value) };
    } else {
        // BPF_XCHG (Linux >= 5.12); core's atomics do not offer it on the BPF target.
        unsafe {
            core::arch::asm!("{v} = xchg_64({p} + 0, {v})", p = in(reg) word, v = inout(reg) value => _);
        }
    }
}

/// The part of a `Sighting` after its time, which has `FlowKey`'s layout (tuple, interface,
/// hook), so a key is copied into it as six words.
#[inline(always)]
fn sighting_place(s: *mut Sighting) -> *mut FlowKey {
    const {
        assert!(
            core::mem::offset_of!(Sighting, tuple) == 8 && size_of::<Sighting>() == 8 + size_of::<FlowKey>()
        );
        assert!(core::mem::offset_of!(Sighting, ifindex) == 8 + core::mem::offset_of!(FlowKey, ifindex));
        assert!(core::mem::offset_of!(Sighting, hook) == 8 + core::mem::offset_of!(FlowKey, hook));
    };
    unsafe { (&raw mut (*s).tuple).cast::<FlowKey>() }
}
