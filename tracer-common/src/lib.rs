//! The contract between podtrace's kernel programs (`tracer-ebpf`) and user space (`tracer-user`).
//!
//! Every type here is `#[repr(C)]`, has explicit padding fields and no implicit holes, so that
//! the bytes the kernel writes into a map are exactly the bytes user space reads back.
#![no_std]

/// Which side of an interface a TC program saw the packet on.
pub mod hook {
    pub const INGRESS: u8 = 0;
    pub const EGRESS: u8 = 1;
}

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// A flow's addresses and ports exactly as one packet carried them.
///
/// Addresses are in network byte order; IPv4 uses the first 4 bytes and leaves the rest zero.
/// Ports are in host byte order. For ICMP echo both ports hold the echo identifier (so the
/// request and its reply are mirror images of each other, like TCP/UDP); for other ICMP
/// messages `sport` is the type and `dport` the code. Packets without ports (non-first
/// fragments, other protocols) have both ports zero.
///
/// The types the programs build on their stack are 8-byte aligned and whole 8-byte words long,
/// so that they are zeroed and copied with a few word moves instead of byte loops.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Tuple {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// The programs hash and compare keys as 8-byte words right after building them. A word load
/// that spans several narrower stores made just before cannot take its data from them (no
/// store-to-load forwarding) and waits until they reach the cache, so the builders below write
/// each word with one store.
impl Tuple {
    /// Sets an IPv4 source and destination (`src`/`dst` as they are in the packet): the first
    /// word of each address array, the rest left as it was (zero).
    #[inline(always)]
    pub fn set_v4_addrs(&mut self, src: [u8; 4], dst: [u8; 4]) {
        let word = |a: [u8; 4]| u64::from_ne_bytes([a[0], a[1], a[2], a[3], 0, 0, 0, 0]);
        // SAFETY: Tuple is repr(C, align(8)); `src` and `dst` start at offsets 0 and 16.
        unsafe {
            let w = (self as *mut Tuple).cast::<u64>();
            w.write(word(src));
            w.add(2).write(word(dst));
        }
    }

    /// Sets ports, protocol and family (and clears the padding) with one word store.
    #[inline(always)]
    pub fn set_ports(&mut self, sport: u16, dport: u16, proto: u8, family: u8) {
        let (s, d) = (sport.to_ne_bytes(), dport.to_ne_bytes());
        let word = u64::from_ne_bytes([s[0], s[1], d[0], d[1], proto, family, 0, 0]);
        // SAFETY: Tuple is repr(C, align(8)); `sport` starts at offset 32 and the word covers
        // `sport..=_pad`.
        unsafe { (self as *mut Tuple).cast::<u64>().add(4).write(word) }
    }

    /// The same flow seen from the other end.
    pub const fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

/// Key of the per-hook flow table: one entry per (tuple, interface, hook).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub tuple: Tuple,
    pub ifindex: u32,
    pub hook: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// Sets the interface and hook (and clears the padding) with one word store (see `Tuple`).
    #[inline(always)]
    pub fn set_iface(&mut self, ifindex: u32, hook: u8) {
        let i = ifindex.to_ne_bytes();
        let word = u64::from_ne_bytes([i[0], i[1], i[2], i[3], hook, 0, 0, 0]);
        // SAFETY: FlowKey is repr(C, align(8)); `ifindex` starts at offset 40 and the word
        // covers `ifindex..=_pad`.
        unsafe { (self as *mut FlowKey).cast::<u64>().add(5).write(word) }
    }
}

/// Per-CPU counters of one flow at one hook. User space sums packets/bytes and takes the
/// min of `first_ns` / max of `last_ns` over CPUs. Times are `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// OR of every TCP flag byte seen (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 ...).
    pub tcp_flags: u8,
    pub _pad: [u8; 7],
}

/// Slots per CPU of the flow cache: a power of two between these bounds, from the CPU count
/// and a memory budget (user space decides at load time, `globals::FLOW_CACHE_SLOTS`).
pub const FLOW_CACHE_MAX_SLOTS: u32 = 1024;
pub const FLOW_CACHE_MIN_SLOTS: u32 = 64;
/// Counters per CPU in `COUNTERS`: CPU `c`'s counters are entry `c`, an array of this many.
/// 32 × 8 bytes: each CPU's counters on their own cache lines, which no other CPU writes.
pub const COUNTER_STRIDE: u32 = 32;
/// One CPU's entry in `COUNTERS`.
pub type CpuCounters = [u64; COUNTER_STRIDE as usize];
const _: () = assert!(counter::COUNT <= COUNTER_STRIDE);
/// Slots per CPU in `SIGHTINGS` (a power of two), CPU `c` owning `c * SIGHTING_SLOTS ..`.
pub const SIGHTING_SLOTS: u32 = 8;
/// Slots per word of the flow cache's occupancy bitmap (`FLOW_CACHE_USED`).
pub const FLOW_CACHE_SLOTS_PER_WORD: u32 = 64;

/// One slot of the flow cache: a direct-mapped, per-CPU front of the flow table that takes a
/// busy flow's packets with an inlined array access instead of a hash lookup. A flow's counts
/// are its `FLOWS` entry plus every slot holding its key; counts never move between the two,
/// so readers see every counter only grow. An all-zero slot (`key.ifindex == 0`) is free.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CachedFlow {
    pub key: FlowKey,
    pub packets: u64,
    pub bytes: u64,
    pub last_ns: u64,
    /// `jiffies` when `last_ns` was taken: the coarse clock only changes with jiffies, so it
    /// is read once per tick rather than once per packet.
    pub last_jiffies: u64,
    pub tcp_flags: u8,
    pub _pad: [u8; 7],
}

/// Where and when a sampled packet was seen, and with which tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Sighting {
    pub ts_ns: u64,
    pub tuple: Tuple,
    pub ifindex: u32,
    pub hook: u8,
    pub _pad: [u8; 3],
}

/// The same packet (same NAT-invariant signature) seen at two consecutive hooks.
/// Differences between `from.tuple` and `to.tuple` are NAT done by the node in between.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HopEvent {
    pub from: Sighting,
    pub to: Sighting,
}

/// Records per CPU in the hop log (`HOP_LOG`): a power of two between these bounds, from the
/// CPU count and a memory budget (user space decides at load time, `globals::HOP_LOG_SLOTS`).
pub const HOP_LOG_MIN_SLOTS: u32 = 64;
pub const HOP_LOG_MAX_SLOTS: u32 = 4096;
/// Set in `HopRecord::seq` while the kernel writes the record's event.
pub const HOP_RECORD_BUSY: u64 = 1;

/// One record of the hop log: CPU `c` writes its hop events in turn into records
/// `c * slots ..`, overwriting the oldest, and user space reads them in place (the array is
/// mapped into its memory). The sequence word tells user space which event a record holds and
/// whether it is complete: the kernel sets it to `seq << 1 | HOP_RECORD_BUSY` before it writes
/// the event and to `seq << 1` after, in that order as other CPUs see it. Two cache lines.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HopRecord {
    /// The CPU's 1-based hop-event number, shifted left by one, plus the busy bit; 0 for a
    /// record never written.
    pub seq: u64,
    pub event: HopEvent,
    pub _pad: u64,
}

/// Key of the drop table: a packet of a traced flow freed by the kernel with a reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DropKey {
    pub tuple: Tuple,
    /// `enum skb_drop_reason` value; names come from the running kernel's BTF.
    pub reason: u32,
    /// ifindex of `skb->dev` when it was dropped (0 if none).
    pub ifindex: u32,
    /// Kernel text address that freed the packet; user space resolves it via /proc/kallsyms.
    pub location: u64,
}

/// Per-drop-key counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DropStats {
    pub count: u64,
    pub last_ns: u64,
}

/// Byte offsets inside kernel structures, read from the running kernel's BTF at load time
/// (Rust eBPF has no CO-RE relocations). A zero `valid` means the drop program must do nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KernelLayout {
    pub valid: u32,
    /// `struct sk_buff`
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_protocol: u32,
    pub skb_dev: u32,
    /// `struct net_device`
    pub dev_ifindex: u32,
    pub dev_nd_net: u32,
    /// `struct net` -> `ns.inum`
    pub net_ns_inum: u32,
    /// `struct sock_common` (for TCP retransmissions)
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// inode number of the network namespace to watch (0 = all)
    pub netns_inum: u32,
}

/// Indices into the global counter array. Every loss or oddity has its own counter so that
/// nothing is dropped silently; user space prints all of them.
pub mod counter {
    /// Packets the TC programs saw.
    pub const PACKETS: u32 = 0;
    /// Packets recorded in the flow table (passed the address filter).
    pub const TRACKED: u32 = 1;
    /// Not IPv4/IPv6 (ARP, LLDP, ...): counted, passed on, not tracked.
    pub const NON_IP: u32 = 2;
    /// Headers shorter than they claim or cut off (truncated Ethernet/IP/L4, IHL < 5, ...).
    pub const MALFORMED: u32 = 3;
    /// IPv4 fragments other than the first: tracked without ports.
    pub const FRAGMENTS: u32 = 4;
    /// IPv6 extension header chains longer than the parser's bound: tracked without ports.
    pub const IPV6_EXT_LIMIT: u32 = 5;
    /// IP packets of a protocol other than TCP/UDP/ICMP: tracked without ports.
    pub const OTHER_L4: u32 = 6;
    /// A new flow could not be recorded because the flow table is full.
    pub const FLOW_MAP_FULL: u32 = 7;
    /// Sampled packets (latency/NAT correlation) taken.
    pub const SAMPLES: u32 = 8;
    /// Hop events written to the hop log (a sampled packet seen at two consecutive hooks).
    /// User space counts those it could not read before they were overwritten.
    pub const HOP_EVENTS: u32 = 9;
    /// Drops of traced packets recorded.
    pub const DROPS: u32 = 10;
    /// A drop could not be recorded because the drop table is full.
    pub const DROP_MAP_FULL: u32 = 11;
    /// TCP retransmissions of traced flows recorded.
    pub const RETRANSMITS: u32 = 12;
    /// VLAN-tagged packets (802.1Q / 802.1ad) seen.
    pub const VLAN: u32 = 13;
    /// Multicast, broadcast and IPv6 link-local packets (ND, MLD, ...): counted, not tracked.
    pub const LOCAL_SCOPE: u32 = 14;

    pub const COUNT: u32 = 15;

    /// Stable names used in the CLI summary, JSON and Prometheus metrics.
    pub const NAMES: [&str; COUNT as usize] = [
        "packets",
        "tracked",
        "non_ip",
        "malformed",
        "fragments",
        "ipv6_ext_limit",
        "other_l4",
        "flow_map_full",
        "samples",
        "hop_events",
        "drops",
        "drop_map_full",
        "retransmits",
        "vlan",
        "local_scope",
    ];
}

/// Packet capture (`podtrace capture`): the kernel copies the traced pod's packets, at every
/// traced hook, into a ring buffer of [`CaptureHeader`] + frame bytes.
pub mod capture {
    /// Largest copy of one packet (a snaplen of 0 means this).
    pub const SNAP_MAX: u32 = 65535;
    /// Bytes of a packet kept aside at an ENI's ingress until its next hook shows whether it is
    /// the pod's (see `CaptureHeader::flags`, `STASHED`); a power of two.
    pub const STASH_BYTES: u32 = 2048;
    /// Interfaces (each with two hooks) one capture can count statistics for.
    pub const MAX_IFACES: u32 = 256;

    /// `CaptureIface::role`: the pod's own host veth; every frame on it is the pod's.
    pub const ROLE_POD: u8 = 1;
    /// `CaptureIface::role`: an ENI (or branch ENI, trunk): only the pod's flows' tuples.
    pub const ROLE_NODE: u8 = 2;

    /// `CaptureHeader::flags`: the frame parsed; `tuple` and `sig` are set.
    pub const PARSED: u8 = 1;
    /// `CaptureHeader::flags`: copied when it passed (kept aside, not yet known to be the pod's)
    /// and written once its next hook showed it was; `ts_ns` is still when it passed.
    pub const STASHED: u8 = 2;

    /// Per (interface slot, hook) statistics in `CAPTURE_STATS`, `index = (slot * 2 + hook) *
    /// STATS_PER_HOOK + kind`.
    pub mod stat {
        /// Copies written to the ring.
        pub const COPIED: u32 = 0;
        /// The pod's packets lost because the ring was full.
        pub const RING_FULL: u32 = 1;
        /// Copies cut at the snaplen (or, for a stashed copy, at `STASH_BYTES`).
        pub const TRUNCATED: u32 = 2;
        /// The pod's packets seen here but not copied: recognised only at a later hook (after a
        /// NAT that hid them here) when no stashed copy was left.
        pub const MISSED: u32 = 3;
        pub const STATS_PER_HOOK: u32 = 4;
    }
    /// Capture-wide statistics, after the per-hook ones in `CAPTURE_STATS`.
    pub mod global {
        /// Tuples of the pod's flows learned by the kernel (a NAT'd form seen next to the
        /// same packet at the pod's veth).
        pub const LEARNED: u32 = 0;
        /// A learned tuple did not fit in `CAPTURE_TUPLES`.
        pub const TUPLES_FULL: u32 = 1;
        /// Stashed copies taken (first packets of new flows at an ENI's ingress).
        pub const STASHES: u32 = 2;
        pub const COUNT: u32 = 3;
        /// Index of global statistic `k` in `CAPTURE_STATS`.
        pub const fn index(k: u32) -> u32 {
            super::MAX_IFACES * 2 * super::stat::STATS_PER_HOOK + k
        }
    }
    /// Entries of `CAPTURE_STATS`.
    pub const STATS_LEN: u32 = global::index(global::COUNT);
}

/// A packet copy: this header, then `caplen` bytes of the frame from its Ethernet header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CaptureHeader {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the hook saw the packet.
    pub ts_ns: u64,
    /// The packet's NAT-invariant signature (zero when it did not parse).
    pub sig: u64,
    /// The tuple as this hook saw it (zero when it did not parse).
    pub tuple: Tuple,
    pub ifindex: u32,
    /// The packet's length (`skb->len`).
    pub len: u32,
    /// Bytes copied after this header (≤ len).
    pub caplen: u32,
    pub hook: u8,
    /// `capture::PARSED`, `capture::STASHED`.
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// A traced interface of a capture (value of `CAPTURE_IFACES`, keyed by ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CaptureIface {
    /// `capture::ROLE_POD` or `capture::ROLE_NODE`.
    pub role: u8,
    pub _pad: u8,
    /// Where its statistics go in `CAPTURE_STATS` (< `capture::MAX_IFACES`).
    pub slot: u16,
    pub _pad2: u32,
}

/// The capture switch (`CAPTURE_CTL[0]`), written by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CaptureControl {
    /// Non-zero while a capture runs.
    pub active: u32,
    /// Bytes copied of each packet, 1 ..= `capture::SNAP_MAX`.
    pub snaplen: u32,
}

/// Names of the load-time globals in the kernel object (`EbpfLoader::override_global`).
pub mod globals {
    /// `u64`: a packet is sampled when `signature & SAMPLE_MASK == 0` (0 = every packet).
    pub const SAMPLE_MASK: &str = "SAMPLE_MASK";
    /// `u8`: non-zero tracks only packets whose source or destination is in the address filter.
    pub const FILTER_ON: &str = "FILTER_ON";
    /// `u64`: maximum age in ns of a sighting that can still be tied to a later hook.
    pub const SIGHTING_MAX_AGE_NS: &str = "SIGHTING_MAX_AGE_NS";
    /// `KernelLayout`: structure offsets for the tracepoint programs.
    pub const LAYOUT: &str = "LAYOUT";
    /// `u32`: slots per CPU of the flow cache (a power of two).
    pub const FLOW_CACHE_SLOTS: &str = "FLOW_CACHE_SLOTS";
    /// `u32`: records per CPU of the hop log (a power of two).
    pub const HOP_LOG_SLOTS: &str = "HOP_LOG_SLOTS";
    /// `u8`: non-zero when the CPU makes plain stores visible to other CPUs in program order
    /// (x86-64): the hop log's sequence words are then written with plain stores, else with
    /// atomic exchanges, which order them against the event's stores.
    pub const ORDERED_STORES: &str = "ORDERED_STORES";
    /// `u8`: non-zero keeps the capture path in the TC programs (checked against `CAPTURE_CTL`
    /// per packet); zero lets the verifier remove it (no capture possible, no cost).
    pub const CAPTURE_ARMED: &str = "CAPTURE_ARMED";
}

/// Names of the kernel objects, shared so user space never spells them twice.
pub mod names {
    pub const PROG_TC_INGRESS: &str = "podtrace_ingress";
    pub const PROG_TC_EGRESS: &str = "podtrace_egress";
    /// An empty classifier, the benchmarks' floor.
    pub const PROG_TC_NOOP: &str = "podtrace_noop";
    pub const PROG_DROP: &str = "podtrace_drop";
    pub const PROG_RETRANSMIT: &str = "podtrace_retrans";
    pub const MAP_FLOWS: &str = "FLOWS";
    pub const MAP_FLOW_CACHE: &str = "FLOW_CACHE";
    pub const MAP_FLOW_CACHE_USED: &str = "FLOW_CACHE_USED";
    pub const MAP_HOP_LOG: &str = "HOP_LOG";
    pub const MAP_COUNTERS: &str = "COUNTERS";
    pub const MAP_SIGHTINGS: &str = "SIGHTINGS";
    pub const MAP_ADDR_FILTER: &str = "ADDR_FILTER";
    pub const MAP_DROPS: &str = "DROPS";
    pub const MAP_RETRANS: &str = "RETRANS";
    pub const MAP_CAPTURE_CTL: &str = "CAPTURE_CTL";
    pub const MAP_CAPTURE_IFACES: &str = "CAPTURE_IFACES";
    pub const MAP_CAPTURE_ADDRS: &str = "CAPTURE_ADDRS";
    pub const MAP_CAPTURE_TUPLES: &str = "CAPTURE_TUPLES";
    pub const MAP_CAPTURE_RING: &str = "CAPTURE_RING";
    pub const MAP_CAPTURE_STATS: &str = "CAPTURE_STATS";
    pub const MAP_CAPTURE_SCRATCH: &str = "CAPTURE_SCRATCH";
    pub const MAP_CAPTURE_SIGHTINGS: &str = "CAPTURE_SIGHTINGS";
    pub const MAP_CAPTURE_STASH: &str = "CAPTURE_STASH";
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all types are repr(C), Copy, and have no implicit padding (explicit _pad fields).
    unsafe impl aya::Pod for Tuple {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowStats {}
    unsafe impl aya::Pod for CachedFlow {}
    unsafe impl aya::Pod for Sighting {}
    unsafe impl aya::Pod for HopEvent {}
    unsafe impl aya::Pod for HopRecord {}
    unsafe impl aya::Pod for DropKey {}
    unsafe impl aya::Pod for DropStats {}
    unsafe impl aya::Pod for KernelLayout {}
    unsafe impl aya::Pod for CaptureHeader {}
    unsafe impl aya::Pod for CaptureIface {}
    unsafe impl aya::Pod for CaptureControl {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<Tuple>(), 40);
        assert_eq!(size_of::<FlowKey>(), 48);
        assert_eq!(size_of::<FlowStats>(), 40);
        assert_eq!(size_of::<CachedFlow>(), 88);
        assert_eq!(size_of::<Sighting>(), 56);
        assert_eq!(size_of::<HopEvent>(), 112);
        assert_eq!(size_of::<HopRecord>(), 128);
        assert_eq!(size_of::<DropKey>(), 56);
        assert_eq!(size_of::<KernelLayout>(), 16 * 4);
        assert_eq!(size_of::<CaptureHeader>(), 72);
        assert_eq!(size_of::<CaptureIface>(), 8);
        assert_eq!(size_of::<CaptureControl>(), 8);
    }

    #[test]
    fn reversed_twice_is_identity() {
        let t = Tuple {
            src: [1; 16],
            dst: [2; 16],
            sport: 3,
            dport: 4,
            proto: PROTO_TCP,
            family: FAMILY_V6,
            _pad: [0; 2],
        };
        assert_eq!(t.reversed().reversed(), t);
        assert_eq!(t.reversed().sport, 4);
    }

    /// The one-store setters write exactly what assigning the fields does (and zero padding).
    #[test]
    fn word_setters_match_field_assignment() {
        let mut by_words =
            FlowKey { tuple: Tuple { _pad: [9; 2], ..Tuple::default() }, _pad: [7; 3], ..FlowKey::default() };
        by_words.tuple.set_v4_addrs([198, 18, 1, 10], [203, 0, 113, 9]);
        by_words.tuple.set_ports(40000, 443, 6, FAMILY_V4);
        by_words.set_iface(0x0102_0304, 1);
        let mut by_fields = FlowKey::default();
        by_fields.tuple.src[..4].copy_from_slice(&[198, 18, 1, 10]);
        by_fields.tuple.dst[..4].copy_from_slice(&[203, 0, 113, 9]);
        by_fields.tuple.sport = 40000;
        by_fields.tuple.dport = 443;
        by_fields.tuple.proto = 6;
        by_fields.tuple.family = FAMILY_V4;
        by_fields.ifindex = 0x0102_0304;
        by_fields.hook = 1;
        assert_eq!(by_words, by_fields);
    }
}
