//! TC classifiers for pod veths and ENIs (tcx or clsact, both ingress and egress).
//!
//! Per packet: parse, filter, add to the flow table. Only sampled packets touch the sighting
//! table and the ring buffer, so steady-state cost is one hash update.
use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::classifier,
    programs::TcContext,
};
use tracer_common::{FlowKey, FlowStats, HopEvent, Sighting, counter, hook};

use crate::{
    globals,
    maps::{FLOWS, HOPS, SIGHTINGS, count, wanted},
    packet::{Reader, local_scope, parse_ethernet},
};

/// TC_ACT_UNSPEC (-1) is also TCX_NEXT: "not my decision", the packet continues unchanged to
/// the next program / the stack. podtrace never returns anything else.
const PASS: i32 = TC_ACT_UNSPEC;

struct Skb<'a>(&'a TcContext);

impl Reader for Skb<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        self.0.load::<T>(off).ok()
    }

    #[inline(always)]
    fn read_into(&self, off: usize, dst: &mut [u8]) -> bool {
        // Direct helper call with a constant length: aya's load_bytes clamps the length to
        // the packet, which the verifier sees as a possibly zero-sized read.
        let ret = unsafe {
            bpf_skb_load_bytes(self.0.as_ptr(), off as u32, dst.as_mut_ptr().cast(), dst.len() as u32)
        };
        ret == 0
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

#[inline(always)]
fn observe(ctx: &TcContext, hook: u8) {
    count(counter::PACKETS);
    // Zeroed as whole words: `Default` would compile to a byte-wise memset loop.
    let mut key: FlowKey = unsafe { core::mem::transmute([0u64; 6]) };
    let (parsed, vlan) = parse_ethernet(&Skb(ctx), &mut key.tuple);
    if vlan {
        count(counter::VLAN);
    }
    let p = match parsed {
        Ok(p) => p,
        Err(reason) => {
            count(reason);
            return;
        }
    };
    if let Some(note) = p.note {
        count(note);
    }
    if local_scope(&key.tuple) {
        count(counter::LOCAL_SCOPE);
        return;
    }
    if !wanted(&key.tuple) {
        return;
    }
    let skb = ctx.as_ptr() as *const __sk_buff;
    let (ifindex, len) = unsafe { ((*skb).ifindex, (*skb).len) };
    let now = unsafe { bpf_ktime_get_ns() };
    key.ifindex = ifindex;
    key.hook = hook;
    count(counter::TRACKED);

    let new_flow = match FLOWS.get_ptr_mut(&key) {
        Some(s) => {
            // Per-CPU value: no other CPU writes it, no atomics needed.
            let s = unsafe { &mut *s };
            s.packets += 1;
            s.bytes += len as u64;
            s.last_ns = now;
            s.tcp_flags |= p.tcp_flags;
            if s.first_ns == 0 {
                s.first_ns = now;
            }
            false
        }
        None => {
            let s = FlowStats {
                packets: 1,
                bytes: len as u64,
                first_ns: now,
                last_ns: now,
                tcp_flags: p.tcp_flags,
                _pad: [0; 7],
            };
            // BPF_ANY on a per-CPU hash only writes this CPU's slot, so a racing insert of the
            // same key on another CPU loses nothing.
            if FLOWS.insert(&key, &s, 0).is_err() {
                count(counter::FLOW_MAP_FULL);
            }
            true
        }
    };

    // The first packet of a flow at each hook is always sampled so that NAT is seen even for
    // one-packet flows; the rest by signature, so a packet is sampled at all hooks or none.
    if new_flow || p.sig & globals::sample_mask() == 0 {
        sample(p.sig, now, &key);
    }
}

#[inline(always)]
fn sample(sig: u64, now: u64, key: &FlowKey) {
    count(counter::SAMPLES);
    let here = Sighting { ts_ns: now, tuple: key.tuple, ifindex: key.ifindex, hook: key.hook, _pad: [0; 3] };
    if let Some(prev) = SIGHTINGS.get_ptr(&sig) {
        // Compare through the map pointer; copy straight into the ring buffer record.
        let (prev_ifindex, prev_hook, prev_ts) = unsafe { ((*prev).ifindex, (*prev).hook, (*prev).ts_ns) };
        // Inside one network namespace a packet goes from an ingress hook to an egress hook;
        // any other pair is two different packets that share a signature.
        let crossed = prev_hook == hook::INGRESS && key.hook == hook::EGRESS && prev_ifindex != key.ifindex;
        if crossed && now.wrapping_sub(prev_ts) < globals::sighting_max_age_ns() {
            match HOPS.reserve::<HopEvent>(0) {
                Some(mut e) => {
                    let ev = e.as_mut_ptr();
                    unsafe {
                        (*ev).from = *prev;
                        (*ev).to = here;
                    }
                    e.submit(0);
                    count(counter::HOP_EVENTS);
                }
                None => {
                    count(counter::RINGBUF_FULL);
                    count(counter::SAMPLES_DROPPED);
                }
            }
        }
    }
    if SIGHTINGS.insert(&sig, &here, 0).is_err() {
        count(counter::SAMPLES_DROPPED);
    }
}
