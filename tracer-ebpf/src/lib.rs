//! The kernel programs' logic that needs no kernel: the packet parser, the NAT-invariant
//! signature and the capture decision. It builds for `bpfel-unknown-none`, where the programs
//! (main.rs) use it, and for the host, where its unit tests read packets from byte slices
//! (`cargo test -p tracer-ebpf`, no root). The library target also lets tracer-user declare a build-dependency on this crate,
//! so that cargo rebuilds the programs when the kernel code changes.
#![cfg_attr(not(test), no_std)]

pub mod capture;
pub mod mem;
pub mod packet;
pub mod signature;
