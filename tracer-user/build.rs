//! Builds the kernel programs (`tracer-ebpf`, target bpfel-unknown-none) so that a plain
//! `cargo build` produces a podtrace binary with its eBPF object embedded.

fn main() -> anyhow::Result<()> {
    // The eBPF crate needs `-Z build-std=core`; RUSTC_BOOTSTRAP=1 allows it on the pinned stable
    // toolchain. It is set for the nested eBPF build only, never for the host crates.
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    // Build with the toolchain cargo is running under (rust-toolchain.toml), whose LLVM is the one
    // bpf-linker was built against (`cargo xtask setup`).
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "1.99.1".into());
    println!("cargo::rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package { name: "tracer-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
