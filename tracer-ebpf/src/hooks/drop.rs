//! `skb:kfree_skb` (raw tracepoint, args: skb, location, reason, rx_sk): packets of traced
//! flows that the kernel freed as dropped, aggregated by (tuple, reason, device, location).
//!
//! `struct sk_buff` / `net_device` / `net` are read with offsets user space took from the
//! running kernel's BTF (`LAYOUT`); without them (`valid == 0`) the program does nothing.
use core::mem::MaybeUninit;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracer_common::{DropKey, DropStats, KernelLayout, counter};

use crate::{
    globals,
    maps::{DROPS, count, wanted},
    mem,
};
use tracer_ebpf::packet::{Parsed, Reader, TRACKED, local_scope, parse_l3};

/// Reads packet bytes from kernel memory starting at the network header.
struct KernelPacket {
    base: u64,
}

impl Reader for KernelPacket {
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        unsafe { bpf_probe_read_kernel((self.base + off as u64) as *const T).ok() }
    }

    #[inline(always)]
    fn read_into(&self, off: usize, dst: &mut [u8]) -> bool {
        unsafe { bpf_probe_read_kernel_buf((self.base + off as u64) as *const u8, dst).is_ok() }
    }
}

#[inline(always)]
fn field<T: Copy>(base: u64, offset: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn podtrace_drop(ctx: RawTracePointContext) -> i32 {
    let l = globals::layout();
    if l.valid != 0 {
        let skb: u64 = ctx.arg(0);
        let location: u64 = ctx.arg(1);
        let reason: u64 = ctx.arg(2);
        record(&l, skb, location, reason as u32);
    }
    0
}

#[inline(always)]
fn record(l: &KernelLayout, skb: u64, location: u64, reason: u32) -> Option<()> {
    // A packet on the node's path has a device; skbs without one are socket-level frees
    // (queue purges on close) of some process, not drops on the path.
    let dev: u64 = field(skb, l.skb_dev)?;
    if dev == 0 {
        return None;
    }
    let ifindex: u32 = field(dev, l.dev_ifindex)?;
    if l.netns_inum != 0 {
        // Only drops in the traced node's network namespace.
        let net: u64 = field(dev, l.dev_nd_net)?;
        let inum: u32 = field(net, l.net_ns_inum)?;
        if inum != l.netns_inum {
            return None;
        }
    }
    let head: u64 = field(skb, l.skb_head)?;
    let network: u16 = field(skb, l.skb_network_header)?;
    let proto: u16 = field(skb, l.skb_protocol)?;
    if network == u16::MAX {
        return None; // network header never set
    }
    let mut key_slot = MaybeUninit::<DropKey>::uninit();
    let key = mem::zeroed(&mut key_slot);
    let packet = KernelPacket { base: head + network as u64 };
    if parse_l3(&packet, u16::from_be(proto), 0, &mut key.tuple, &mut Parsed::default()) != TRACKED {
        return None;
    }
    if local_scope(&key.tuple) || !wanted(&key.tuple) {
        return None;
    }
    key.reason = reason;
    key.ifindex = ifindex;
    key.location = location;
    let now = unsafe { bpf_ktime_get_ns() };
    count(counter::DROPS);
    match DROPS.get_ptr_mut(key) {
        Some(s) => unsafe {
            (*s).count += 1;
            (*s).last_ns = now;
        },
        None => {
            let mut s_slot = MaybeUninit::<DropStats>::uninit();
            let s = mem::zeroed(&mut s_slot);
            s.count = 1;
            s.last_ns = now;
            if DROPS.insert(key, s, 0).is_err() {
                count(counter::DROP_MAP_FULL);
            }
        }
    }
    Some(())
}
