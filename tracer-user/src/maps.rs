//! Reading podtrace's kernel maps: flow table, counters, drops, retransmissions.
use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tracer_common::{DropKey, DropStats, FlowKey, FlowStats, Tuple, counter, names};

/// Counter values summed over CPUs, indexed like `tracer_common::counter`.
pub type Counters = [u64; counter::COUNT as usize];

fn per_cpu_flows(ebpf: &Ebpf) -> Result<PerCpuHashMap<&MapData, FlowKey, FlowStats>> {
    let map = ebpf.map(names::MAP_FLOWS).ok_or_else(|| anyhow!("FLOWS map missing"))?;
    PerCpuHashMap::try_from(map).context("FLOWS map")
}

/// Folds one flow's per-CPU values into one.
pub fn merge(values: &[FlowStats]) -> FlowStats {
    let mut out = FlowStats::default();
    for v in values.iter().filter(|v| v.packets > 0) {
        out.packets += v.packets;
        out.bytes += v.bytes;
        out.tcp_flags |= v.tcp_flags;
        out.last_ns = out.last_ns.max(v.last_ns);
        out.first_ns = if out.first_ns == 0 { v.first_ns } else { out.first_ns.min(v.first_ns) };
    }
    out
}

/// Every (flow, interface, hook) entry with its counters merged over CPUs.
pub fn read_flows(ebpf: &Ebpf) -> Result<Vec<(FlowKey, FlowStats)>> {
    let map = per_cpu_flows(ebpf)?;
    let mut out = Vec::new();
    // Entries can disappear while we walk the table (expiry): skip those.
    for (key, values) in map.iter().flatten() {
        out.push((key, merge(&values)));
    }
    Ok(out)
}

/// Number of entries in the flow table and its capacity.
pub fn flow_table_fill(ebpf: &Ebpf) -> Result<(usize, u32)> {
    let map = per_cpu_flows(ebpf)?;
    let capacity = ebpf
        .map(names::MAP_FLOWS)
        .and_then(|m| match m {
            aya::maps::Map::PerCpuHashMap(d) => d.info().ok().map(|i| i.max_entries()),
            _ => None,
        })
        .unwrap_or(0);
    Ok((map.keys().flatten().count(), capacity))
}

/// Removes entries from the flow table (idle expiry).
pub fn delete_flows(ebpf: &mut Ebpf, keys: &[FlowKey]) -> Result<()> {
    let map = ebpf.map_mut(names::MAP_FLOWS).ok_or_else(|| anyhow!("FLOWS map missing"))?;
    let mut map: PerCpuHashMap<&mut MapData, FlowKey, FlowStats> = PerCpuHashMap::try_from(map)?;
    for k in keys {
        let _ = map.remove(k);
    }
    Ok(())
}

pub fn read_counters(ebpf: &Ebpf) -> Result<Counters> {
    let map = ebpf.map(names::MAP_COUNTERS).ok_or_else(|| anyhow!("COUNTERS map missing"))?;
    let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
    let mut out = [0u64; counter::COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = map.get(&(i as u32), 0)?.iter().sum();
    }
    Ok(out)
}

pub fn read_drops(ebpf: &Ebpf) -> Result<Vec<(DropKey, DropStats)>> {
    let map = ebpf.map(names::MAP_DROPS).ok_or_else(|| anyhow!("DROPS map missing"))?;
    let map: PerCpuHashMap<&MapData, DropKey, DropStats> = PerCpuHashMap::try_from(map)?;
    Ok(map
        .iter()
        .flatten()
        .map(|(k, v)| {
            let count = v.iter().map(|s| s.count).sum();
            let last_ns = v.iter().map(|s| s.last_ns).max().unwrap_or(0);
            (k, DropStats { count, last_ns })
        })
        .collect())
}

pub fn read_retransmits(ebpf: &Ebpf) -> Result<Vec<(Tuple, u64)>> {
    let map = ebpf.map(names::MAP_RETRANS).ok_or_else(|| anyhow!("RETRANS map missing"))?;
    let map: PerCpuHashMap<&MapData, Tuple, u64> = PerCpuHashMap::try_from(map)?;
    Ok(map.iter().flatten().map(|(k, v)| (k, v.iter().sum())).collect())
}

/// Writes the address filter (traced pod IPs and node addresses).
pub fn set_addr_filter(ebpf: &mut Ebpf, addrs: &[std::net::IpAddr]) -> Result<()> {
    let map = ebpf.map_mut(names::MAP_ADDR_FILTER).ok_or_else(|| anyhow!("ADDR_FILTER missing"))?;
    let mut map: HashMap<&mut MapData, [u8; 16], u8> = HashMap::try_from(map)?;
    for a in addrs {
        map.insert(&crate::addr::to_key(*a), &1, 0).context("writing the address filter")?;
    }
    Ok(())
}

/// The hop-event ring buffer, taken out of the object so it can be polled on its own.
pub fn take_hops(ebpf: &mut Ebpf) -> Result<RingBuf<aya::maps::MapData>> {
    let map = ebpf.take_map(names::MAP_HOPS).ok_or_else(|| anyhow!("HOPS map missing"))?;
    RingBuf::try_from(map).context("HOPS ring buffer")
}
