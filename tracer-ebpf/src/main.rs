//! podtrace's kernel programs.
//!
//! * `hooks::tc`: TC classifiers on pod veths and ENIs. They parse each packet, add it to the
//!   per-(flow, interface, hook) table and, for sampled packets, tie consecutive sightings of the
//!   same packet into hop events (per-hop latency and NAT before/after tuples).
//! * `hooks::drop`: `skb:kfree_skb` raw tracepoint, drops of traced packets with their reason.
//! * `hooks::retransmit`: `tcp:tcp_retransmit_skb` raw tracepoint, retransmissions per flow.
//!
//! Every program only reads; TC programs always return "next" so other tools keep working.
//! The packet parser and the signature live in the library (lib.rs), which is unit-tested on
//! the host.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod globals;
#[cfg(target_arch = "bpf")]
mod hooks;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
use tracer_ebpf::mem;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

/// Host builds (`cargo build`, `cargo test`) get an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
