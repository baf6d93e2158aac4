//! podtrace as a library: the CLI in main.rs is a thin layer over these modules.
pub mod addr;
pub mod attach;
pub mod ebpf;
pub mod maps;
pub mod netlink;
