//! The kernel side: loading the eBPF object with offsets from BTF, attaching the TC programs
//! (tcx or netlink clsact) and removing leftovers, reading the maps, privileges.
pub mod addr;
pub mod attach;
pub mod batch;
pub mod btf;
pub mod capture;
pub mod flow_cache;
pub mod hop_log;
pub mod leftovers;
pub mod load;
mod mapping;
pub mod maps;
pub mod netlink;
pub mod nfnetlink;
pub mod preflight;
pub mod tc;
