//! The capture maps of an object loaded with `LoadOptions::capture`: what to copy (the pod's
//! interfaces and addresses, NAT'd tuples), the switch, the copies' ring and the statistics.
use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
};
use tracer_common::{
    CaptureControl, CaptureHeader, CaptureIface, Tuple,
    capture::{MAX_IFACES, ROLE_NODE, ROLE_POD, SNAP_MAX, STATS_LEN, global, stat},
    names,
};

/// What one interface is to a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureRole {
    /// The pod's own host veth: every frame on it is copied.
    PodVeth,
    /// An ENI, branch ENI or trunk: the pod's flows only.
    Node,
}

/// A packet copy as the ring delivered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    pub header: CaptureHeader,
    pub data: Vec<u8>,
}

/// Splits a ring record into its header and frame bytes; `None` for a record too short for
/// what its header claims (never written by the kernel).
pub fn decode(record: &[u8]) -> Option<Copy> {
    let hdr_len = size_of::<CaptureHeader>();
    if record.len() < hdr_len {
        return None;
    }
    // SAFETY: CaptureHeader is repr(C) plain data and the record holds at least its size;
    // read_unaligned copes with the ring's 8-byte alignment.
    let header = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<CaptureHeader>()) };
    let data = record.get(hdr_len..hdr_len + header.caplen as usize)?.to_vec();
    Some(Copy { header, data })
}

/// The snaplen the kernel uses: 0 means whole packets (tcpdump's `-s 0`), at most `SNAP_MAX`.
pub fn kernel_snaplen(snaplen: u32) -> u32 {
    if snaplen == 0 { SNAP_MAX } else { snaplen.min(SNAP_MAX) }
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or_else(|| anyhow!("{name} map missing"))
}

/// Writes what a capture copies: `ifaces` (ifindex, role) get statistics slots in this order;
/// `addrs` are the pod's addresses. The capture stays off until [`set_active`].
pub fn configure(ebpf: &mut Ebpf, ifaces: &[(u32, CaptureRole)], addrs: &[IpAddr]) -> Result<()> {
    if ifaces.len() > MAX_IFACES as usize {
        bail!("a capture covers at most {MAX_IFACES} interfaces, not {}", ifaces.len());
    }
    let mut map: HashMap<&mut MapData, u32, CaptureIface> =
        HashMap::try_from(map_mut(ebpf, names::MAP_CAPTURE_IFACES)?)?;
    for (slot, (ifindex, role)) in ifaces.iter().enumerate() {
        let role = match role {
            CaptureRole::PodVeth => ROLE_POD,
            CaptureRole::Node => ROLE_NODE,
        };
        let v = CaptureIface { role, _pad: 0, slot: slot as u16, _pad2: 0 };
        map.insert(ifindex, &v, 0).context("writing the capture interfaces")?;
    }
    let mut map: HashMap<&mut MapData, [u8; 16], u8> =
        HashMap::try_from(map_mut(ebpf, names::MAP_CAPTURE_ADDRS)?)?;
    for a in addrs {
        map.insert(&super::addr::to_key(*a), &1, 0).context("writing the capture addresses")?;
    }
    Ok(())
}

/// Forgets the previous capture (the agent runs one after another): its interfaces, addresses,
/// tuples and statistics.
pub fn reset(ebpf: &mut Ebpf) -> Result<()> {
    fn clear<K: aya::Pod + Eq, V: aya::Pod>(ebpf: &mut Ebpf, name: &str) -> Result<()> {
        let mut map: HashMap<&mut MapData, K, V> = HashMap::try_from(map_mut(ebpf, name)?)?;
        let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = map.remove(&k);
        }
        Ok(())
    }
    clear::<u32, CaptureIface>(ebpf, names::MAP_CAPTURE_IFACES)?;
    clear::<[u8; 16], u8>(ebpf, names::MAP_CAPTURE_ADDRS)?;
    clear::<Tuple, u8>(ebpf, names::MAP_CAPTURE_TUPLES)?;
    let cpus = super::maps::possible_cpus()?;
    let mut stats: PerCpuArray<&mut MapData, u64> =
        PerCpuArray::try_from(map_mut(ebpf, names::MAP_CAPTURE_STATS)?)?;
    for i in 0..STATS_LEN {
        let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus])?;
        stats.set(i, zeros, 0).context("clearing the capture statistics")?;
    }
    Ok(())
}

/// Turns copying on (with this snaplen, 0 = whole packets) or off.
pub fn set_active(ebpf: &mut Ebpf, active: bool, snaplen: u32) -> Result<()> {
    let mut map: Array<&mut MapData, CaptureControl> =
        Array::try_from(map_mut(ebpf, names::MAP_CAPTURE_CTL)?)?;
    let ctl = CaptureControl { active: active.into(), snaplen: kernel_snaplen(snaplen) };
    map.set(0, &ctl, 0).context("switching the capture")
}

/// Adds NAT'd forms of the pod's flows (user space learns them from conntrack); both
/// directions of each. Returns how many did not fit.
pub fn add_tuples(ebpf: &mut Ebpf, tuples: &[Tuple]) -> Result<u64> {
    let mut map: HashMap<&mut MapData, Tuple, u8> =
        HashMap::try_from(map_mut(ebpf, names::MAP_CAPTURE_TUPLES)?)?;
    let mut full = 0;
    for t in tuples.iter().flat_map(|t| [*t, t.reversed()]) {
        if map.get(&t, 0).is_ok() {
            continue;
        }
        if map.insert(&t, &1, 0).is_err() {
            full += 1;
        }
    }
    Ok(full)
}

/// The copies' ring buffer, taken out of the object so it can be polled on its own.
pub fn take_ring(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>> {
    let map = ebpf.take_map(names::MAP_CAPTURE_RING).ok_or_else(|| anyhow!("capture ring missing"))?;
    RingBuf::try_from(map).context("capture ring buffer")
}

/// The capture ring's descriptor (owned by the capture), for `AsyncFd`.
pub struct RingFd(pub std::os::fd::RawFd);

impl std::os::fd::AsRawFd for RingFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// The kernel's capture statistics of one hook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HookStats {
    pub copied: u64,
    pub ring_full: u64,
    pub truncated: u64,
    pub missed: u64,
}

/// The kernel's capture statistics, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// By (statistics slot, hook).
    pub hooks: BTreeMap<(u16, u8), HookStats>,
    pub learned: u64,
    pub tuples_full: u64,
    pub stashes: u64,
}

pub fn read_stats(ebpf: &Ebpf) -> Result<CaptureStats> {
    let map = ebpf.map(names::MAP_CAPTURE_STATS).ok_or_else(|| anyhow!("CAPTURE_STATS missing"))?;
    let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
    let mut values = vec![0u64; STATS_LEN as usize];
    for (i, v) in values.iter_mut().enumerate() {
        *v = map.get(&(i as u32), 0)?.iter().sum();
    }
    Ok(stats_from(&values))
}

/// Folds the raw statistics array (see `tracer_common::capture::stat`).
pub fn stats_from(values: &[u64]) -> CaptureStats {
    let per = stat::STATS_PER_HOOK as usize;
    let mut out = CaptureStats::default();
    for slot in 0..MAX_IFACES as usize {
        for hook in 0..2 {
            let base = (slot * 2 + hook) * per;
            let v = |k: u32| values.get(base + k as usize).copied().unwrap_or(0);
            let h = HookStats {
                copied: v(stat::COPIED),
                ring_full: v(stat::RING_FULL),
                truncated: v(stat::TRUNCATED),
                missed: v(stat::MISSED),
            };
            if h != HookStats::default() {
                out.hooks.insert((slot as u16, hook as u8), h);
            }
        }
    }
    let g = |k: u32| values.get(global::index(k) as usize).copied().unwrap_or(0);
    out.learned = g(global::LEARNED);
    out.tuples_full = g(global::TUPLES_FULL);
    out.stashes = g(global::STASHES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_and_short_ones_are_refused() {
        let h = CaptureHeader { caplen: 3, len: 60, ifindex: 7, hook: 1, ..Default::default() };
        let mut rec = vec![0u8; size_of::<CaptureHeader>()];
        // SAFETY: rec holds exactly one header.
        unsafe { std::ptr::write_unaligned(rec.as_mut_ptr().cast::<CaptureHeader>(), h) };
        rec.extend([1, 2, 3]);
        let c = decode(&rec).unwrap();
        assert_eq!((c.header, c.data), (h, vec![1, 2, 3]));
        assert!(decode(&rec[..rec.len() - 1]).is_none());
        assert!(decode(&rec[..10]).is_none());
    }

    #[test]
    fn snaplen_zero_is_whole_packets() {
        assert_eq!(kernel_snaplen(0), SNAP_MAX);
        assert_eq!(kernel_snaplen(128), 128);
        assert_eq!(kernel_snaplen(1 << 20), SNAP_MAX);
    }

    #[test]
    fn statistics_fold_by_slot_and_hook() {
        let mut v = vec![0u64; STATS_LEN as usize];
        v[((3 * 2 + 1) * stat::STATS_PER_HOOK + stat::RING_FULL) as usize] = 5;
        v[global::index(global::LEARNED) as usize] = 2;
        let s = stats_from(&v);
        assert_eq!(s.hooks[&(3, 1)], HookStats { ring_full: 5, ..Default::default() });
        assert_eq!(s.hooks.len(), 1);
        assert_eq!(s.learned, 2);
    }
}
