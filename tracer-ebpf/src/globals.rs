//! Read-only settings written by user space at load time (`EbpfLoader::override_global`).
//! They live in .rodata, so the verifier sees constants and prunes unused branches.
use aya_ebpf::Global;
use tracer_common::KernelLayout;

/// A packet is sampled when `signature & SAMPLE_MASK == 0` (0 samples every packet).
#[unsafe(no_mangle)]
static SAMPLE_MASK: Global<u64> = Global::new(0xf);

/// Non-zero: track only packets whose source or destination is in `ADDR_FILTER`.
#[unsafe(no_mangle)]
static FILTER_ON: Global<u8> = Global::new(0);

/// Non-zero: the TC programs keep their capture path (`hooks::capture`), which then checks
/// `CAPTURE_CTL` per packet. Zero (the default): the verifier removes that path entirely.
#[unsafe(no_mangle)]
static CAPTURE_ARMED: Global<u8> = Global::new(0);

/// A sighting older than this is not tied to a later hook (the packet was queued elsewhere or
/// the signature is being reused).
#[unsafe(no_mangle)]
static SIGHTING_MAX_AGE_NS: Global<u64> = Global::new(1_000_000_000);

/// Kernel structure offsets from BTF for the tracepoint programs (`valid == 0`: disabled).
#[unsafe(no_mangle)]
static LAYOUT: Global<KernelLayout> = Global::new(KernelLayout {
    valid: 0,
    skb_head: 0,
    skb_network_header: 0,
    skb_protocol: 0,
    skb_dev: 0,
    dev_ifindex: 0,
    dev_nd_net: 0,
    net_ns_inum: 0,
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_family: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    netns_inum: 0,
});

/// Slots per CPU of the flow cache (a power of two, sized by user space for the CPUs).
#[unsafe(no_mangle)]
static FLOW_CACHE_SLOTS: Global<u32> = Global::new(tracer_common::FLOW_CACHE_MAX_SLOTS);

/// Records per CPU of the hop log (a power of two, sized by user space for the CPUs).
#[unsafe(no_mangle)]
static HOP_LOG_SLOTS: Global<u32> = Global::new(tracer_common::HOP_LOG_MAX_SLOTS);

/// Non-zero where plain stores become visible to other CPUs in program order (x86-64); see
/// `tracer_common::globals::ORDERED_STORES`. Zero, the safe default: atomic exchanges.
#[unsafe(no_mangle)]
static ORDERED_STORES: Global<u8> = Global::new(0);

#[inline(always)]
pub fn hop_log_slots() -> u32 {
    HOP_LOG_SLOTS.load()
}

#[inline(always)]
pub fn ordered_stores() -> bool {
    ORDERED_STORES.load() != 0
}

#[inline(always)]
pub fn flow_cache_slots() -> u32 {
    FLOW_CACHE_SLOTS.load()
}

#[inline(always)]
pub fn sample_mask() -> u64 {
    SAMPLE_MASK.load()
}

#[inline(always)]
pub fn filter_on() -> bool {
    FILTER_ON.load() != 0
}

#[inline(always)]
pub fn capture_armed() -> bool {
    CAPTURE_ARMED.load() != 0
}

#[inline(always)]
pub fn sighting_max_age_ns() -> u64 {
    SIGHTING_MAX_AGE_NS.load()
}

#[inline(always)]
pub fn layout() -> KernelLayout {
    LAYOUT.load()
}
