//! `tcp:tcp_retransmit_skb` (raw tracepoint, args: sk, skb, reason): TCP retransmissions per
//! flow, keyed by the tuple as the sending socket sees it (the pod's own view).
use core::mem::MaybeUninit;

use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::raw_tracepoint, programs::RawTracePointContext};
use tracer_common::{FAMILY_V4, FAMILY_V6, KernelLayout, PROTO_TCP, Tuple, counter};

use crate::{
    globals,
    maps::{RETRANS, count, wanted},
    mem,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[inline(always)]
fn field<T: Copy>(base: u64, offset: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn podtrace_retrans(ctx: RawTracePointContext) -> i32 {
    let l = globals::layout();
    if l.valid != 0 {
        let sk: u64 = ctx.arg(0);
        let _ = record(&l, sk);
    }
    0
}

#[inline(always)]
fn record(l: &KernelLayout, sk: u64) -> Option<()> {
    let family: u16 = field(sk, l.skc_family)?;
    let mut t_slot = MaybeUninit::<Tuple>::uninit();
    let t = mem::zeroed(&mut t_slot);
    t.proto = PROTO_TCP;
    t.sport = field(sk, l.skc_num)?;
    t.dport = u16::from_be(field(sk, l.skc_dport)?);
    match family {
        AF_INET => {
            t.family = FAMILY_V4;
            let s: [u8; 4] = field(sk, l.skc_rcv_saddr)?;
            let d: [u8; 4] = field(sk, l.skc_daddr)?;
            t.src[..4].copy_from_slice(&s);
            t.dst[..4].copy_from_slice(&d);
        }
        AF_INET6 => {
            t.family = FAMILY_V6;
            t.src = field(sk, l.skc_v6_rcv_saddr)?;
            t.dst = field(sk, l.skc_v6_daddr)?;
        }
        _ => return None,
    }
    if !wanted(t) {
        return None;
    }
    count(counter::RETRANSMITS);
    match RETRANS.get_ptr_mut(t) {
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = RETRANS.insert(t, &1, 0);
        }
    }
    Some(())
}
