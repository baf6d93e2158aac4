//! podtrace as a library: the CLI in main.rs is a thin layer over these modules.
pub mod addr;
pub mod attach;
pub mod conntrack;
pub mod ebpf;
pub mod flows;
pub mod inventory;
pub mod leftovers;
pub mod maps;
pub mod nat;
pub mod netlink;
pub mod node;
pub mod output;
pub mod pods;
pub mod preflight;
pub mod session;
pub mod trace;
