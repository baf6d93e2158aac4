//! Empty on purpose: the kernel programs are the `tracer-ebpf` binary (see main.rs), built for
//! `bpfel-unknown-none` by tracer-user's build script.
#![no_std]
