//! The TC programs' capture path (`podtrace capture`): copies of the traced pod's packets, up
//! to the snaplen, into `CAPTURE_RING` with the time, interface and hook. Which packets is
//! decided by `tracer_ebpf::capture::decide` (host-tested); this module gives it the maps and
//! does the copying and counting.
//!
//! It exists only in objects loaded with `CAPTURE_ARMED` set: otherwise the verifier sees the
//! constant and removes it. Armed, an idle capture costs one array lookup per packet.
use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use tracer_common::{
    CaptureControl, CaptureHeader, CaptureIface, Tuple,
    capture::{MAX_IFACES, PARSED, SNAP_MAX, STASH_BYTES, STASHED, STATS_LEN, global, stat},
};
use tracer_ebpf::capture::{CaptureSighting, CaptureTables, Missed, Packet, decide, reverse_into};
use tracer_ebpf::signature::Invariants;

use crate::{globals, mem};

/// The switch and the snaplen, written by user space.
#[map(name = "CAPTURE_CTL")]
pub static CAPTURE_CTL: Array<CaptureControl> = Array::with_max_entries(1, 0);

/// The interfaces a capture copies at: ifindex → role and statistics slot.
#[map(name = "CAPTURE_IFACES")]
pub static CAPTURE_IFACES: HashMap<u32, CaptureIface> = HashMap::with_max_entries(MAX_IFACES, 0);

/// The traced pod's addresses (16-byte form).
#[map(name = "CAPTURE_ADDRS")]
pub static CAPTURE_ADDRS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(64, 0);

/// NAT'd forms of the pod's flows, both directions: learned here, added from conntrack.
#[map(name = "CAPTURE_TUPLES")]
pub static CAPTURE_TUPLES: HashMap<Tuple, u8> = HashMap::with_max_entries(65536, 0);

/// Slots per CPU in `CAPTURE_SIGHTINGS` (a power of two).
const SIGHTING_SLOTS: u32 = 4096;

/// The last packet seen per signature slot during a capture (see `CaptureSighting`).
#[map(name = "CAPTURE_SIGHTINGS")]
pub static CAPTURE_SIGHTINGS: PerCpuArray<CaptureSighting> = PerCpuArray::with_max_entries(SIGHTING_SLOTS, 0);

/// Slots per CPU in `CAPTURE_STASH` (a power of two).
const STASH_SLOTS: u32 = 64;

/// A copy kept aside: the first packet of a new flow at an ENI's ingress.
#[repr(C)]
pub struct Stash {
    pub hdr: CaptureHeader,
    pub data: [u8; STASH_BYTES as usize],
}

#[map(name = "CAPTURE_STASH")]
pub static CAPTURE_STASH: PerCpuArray<Stash> = PerCpuArray::with_max_entries(STASH_SLOTS, 0);

/// A record as it goes into the ring: built in this CPU's scratch slot (far too large for the
/// stack), then copied with its actual length.
#[repr(C)]
pub struct Record {
    pub hdr: CaptureHeader,
    pub data: [u8; SNAP_MAX as usize + 1],
}

/// One `Record` per CPU (CPU `c` owns slot `c`); user space sizes it for the possible CPUs.
#[map(name = "CAPTURE_SCRATCH")]
pub static CAPTURE_SCRATCH: Array<Record> = Array::with_max_entries(1, 0);

/// The copies, read by user space; sized by user space at load time (`--buffer-size`).
#[map(name = "CAPTURE_RING")]
pub static CAPTURE_RING: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Per (interface slot, hook) and capture-wide statistics, see `tracer_common::capture::stat`.
#[map(name = "CAPTURE_STATS")]
pub static CAPTURE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

/// Copies wake user space only once this much is queued; below it, it drains on its timer.
const WAKEUP_BYTES: u64 = 256 * 1024;

const HDR: usize = size_of::<CaptureHeader>();

#[inline(always)]
fn add(index: u32, n: u64) {
    if let Some(v) = CAPTURE_STATS.get_ptr_mut(index) {
        unsafe { *v += n };
    }
}

#[inline(always)]
fn hook_stat(slot: u16, hook: u8, kind: u32) {
    add((slot as u32 * 2 + hook as u32) * stat::STATS_PER_HOOK + kind, 1);
}

struct KernelTables;

impl CaptureTables for KernelTables {
    #[inline(always)]
    fn pod_addr(&self, addr: &[u8; 16]) -> bool {
        unsafe { CAPTURE_ADDRS.get(addr).is_some() }
    }

    #[inline(always)]
    fn known(&self, t: &Tuple) -> bool {
        unsafe { CAPTURE_TUPLES.get(t).is_some() }
    }

    #[inline(always)]
    fn learn(&mut self, t: &Tuple) -> bool {
        let mut r_slot = core::mem::MaybeUninit::<Tuple>::uninit();
        let r = mem::zeroed(&mut r_slot);
        reverse_into(r, t);
        CAPTURE_TUPLES.insert(t, &1, 0).is_ok() && CAPTURE_TUPLES.insert(r, &1, 0).is_ok()
    }

    #[inline(always)]
    fn sighting(&mut self, sig: u64) -> Option<&mut CaptureSighting> {
        // High bits: the low ones decide sampling, the middle ones the stash slot.
        let index = (sig >> 32) as u32 & (SIGHTING_SLOTS - 1);
        CAPTURE_SIGHTINGS.get_ptr_mut(index).map(|s| unsafe { &mut *s })
    }
}

#[inline(always)]
fn stash_index(sig: u64) -> u32 {
    (sig >> 16) as u32 & (STASH_SLOTS - 1)
}

/// The capture step of a TC program, after the packet was counted. `tuple` is `None` when the
/// frame did not parse. `CAPTURE_ARMED` is a load-time constant: without it the verifier removes
/// the call and the function.
#[inline(always)]
pub fn capture(ctx: &TcContext, hook: u8, parsed: Option<(&Tuple, &Invariants)>, new_flow: bool) {
    if globals::capture_armed() {
        // The signature is computed here, where the verifier keeps it only in armed objects.
        let (tuple, sig) = match parsed {
            Some((t, inv)) => (Some(t), inv.signature()),
            None => (None, 0),
        };
        // SAFETY: a TC program's context pointer is never null.
        let skb = unsafe { core::ptr::NonNull::new_unchecked(ctx.as_ptr().cast::<__sk_buff>()) };
        capture_armed(skb, hook, tuple, sig, new_flow);
    }
}

/// One BPF function for the three places a TC program ends, rather than three inlined copies.
#[inline(never)]
fn capture_armed(
    skb: core::ptr::NonNull<__sk_buff>,
    hook: u8,
    tuple: Option<&Tuple>,
    sig: u64,
    new_flow: bool,
) {
    let ctx = &TcContext::new(skb);
    let skb = skb.as_ptr();
    let Some(ctl) = CAPTURE_CTL.get_ptr(0) else { return };
    let (active, snaplen) = unsafe { ((*ctl).active, (*ctl).snaplen) };
    if active == 0 {
        return;
    }
    let (ifindex, len) = unsafe { ((*skb).ifindex, (*skb).len) };
    let Some(iface) = (unsafe { CAPTURE_IFACES.get(&ifindex) }) else { return };
    let p = Packet {
        tuple,
        sig,
        ifindex,
        hook,
        role: iface.role,
        slot: iface.slot,
        now_ns: unsafe { bpf_ktime_get_ns() },
        new_flow,
    };
    let d = decide(&p, &mut KernelTables, globals::sighting_max_age_ns());
    if d.learned != 0 {
        add(global::index(global::LEARNED), d.learned as u64);
    }
    if d.learn_failed != 0 {
        add(global::index(global::TUPLES_FULL), d.learn_failed as u64);
    }
    if let Some(m) = d.missed {
        write_stashed(sig, &m);
    }
    if d.copy {
        copy(ctx, &p, len, snaplen);
    } else if d.stash {
        stash(ctx, &p, len, snaplen);
    }
}

#[inline(always)]
fn fill_header(h: &mut CaptureHeader, p: &Packet, len: u32, caplen: u32, flags: u8) {
    h.ts_ns = p.now_ns;
    h.sig = p.sig;
    match p.tuple {
        Some(t) => unsafe { mem::copy(&mut h.tuple, t) },
        None => {
            let mut z = core::mem::MaybeUninit::<Tuple>::uninit();
            let z = mem::zeroed(&mut z);
            unsafe { mem::copy(&mut h.tuple, z) };
        }
    }
    h.ifindex = p.ifindex;
    h.len = len;
    h.caplen = caplen;
    h.hook = p.hook;
    h.flags = flags | if p.tuple.is_some() { PARSED } else { 0 };
    h._pad = [0; 2];
}

#[inline(always)]
fn wake_flag() -> u64 {
    if CAPTURE_RING.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Puts a record of `caplen` bytes of data into the ring and counts it for (slot, hook).
#[inline(always)]
fn output(start: *const u8, caplen: u32, len: u32, slot: u16, hook: u8) {
    // SAFETY: `start` is a map value holding a header and at least `caplen` bytes of data.
    let bytes = unsafe { core::slice::from_raw_parts(start, HDR + caplen as usize) };
    if CAPTURE_RING.output(bytes, wake_flag()).is_ok() {
        hook_stat(slot, hook, stat::COPIED);
        if caplen < len {
            hook_stat(slot, hook, stat::TRUNCATED);
        }
    } else {
        hook_stat(slot, hook, stat::RING_FULL);
    }
}

/// Copies the first `min(len, snaplen, mask + 1)` bytes of the frame to `dst` (room for
/// `mask + 1`, a power of two); returns how many.
#[inline(always)]
fn load_frame(ctx: &TcContext, dst: *mut u8, len: u32, snaplen: u32, mask: u32) -> u32 {
    let mut want = if len < snaplen { len } else { snaplen };
    if want > mask + 1 {
        want = mask + 1;
    }
    // The verifier must see a length in [1, mask + 1]; written so that the compiler cannot turn
    // it back into `want`. A real frame is never empty: a 0 would ask for mask + 1 bytes and
    // fail below.
    let n = (want.wrapping_sub(1) & mask) + 1;
    let ret = unsafe { bpf_skb_load_bytes(ctx.as_ptr(), 0, dst.cast(), n) };
    if ret == 0 { n } else { 0 }
}

#[inline(always)]
fn copy(ctx: &TcContext, p: &Packet, len: u32, snaplen: u32) {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(rec) = CAPTURE_SCRATCH.get_ptr_mut(cpu) else { return };
    let rec = unsafe { &mut *rec };
    let caplen = load_frame(ctx, rec.data.as_mut_ptr(), len, snaplen, SNAP_MAX);
    fill_header(&mut rec.hdr, p, len, caplen, 0);
    output((rec as *const Record).cast(), caplen, len, p.slot, p.hook);
}

#[inline(always)]
fn stash(ctx: &TcContext, p: &Packet, len: u32, snaplen: u32) {
    let Some(s) = CAPTURE_STASH.get_ptr_mut(stash_index(p.sig)) else { return };
    let s = unsafe { &mut *s };
    let caplen = load_frame(ctx, s.data.as_mut_ptr(), len, snaplen, STASH_BYTES - 1);
    fill_header(&mut s.hdr, p, len, caplen, STASHED);
    add(global::index(global::STASHES), 1);
}

/// The packet passed `m` before a NAT hid it: writes its stashed copy, or counts it missed.
#[inline(always)]
fn write_stashed(sig: u64, m: &Missed) {
    let Some(s) = CAPTURE_STASH.get_ptr_mut(stash_index(sig)) else { return };
    let s = unsafe { &mut *s };
    let h = &s.hdr;
    let kept = h.sig == sig && h.ts_ns == m.ts_ns && h.ifindex == m.ifindex && h.hook == m.hook;
    let caplen = h.caplen;
    if !kept || caplen > STASH_BYTES {
        hook_stat(m.slot, m.hook, stat::MISSED);
        return;
    }
    output((s as *const Stash).cast(), caplen, h.len, m.slot, m.hook);
    s.hdr.sig = 0;
}
