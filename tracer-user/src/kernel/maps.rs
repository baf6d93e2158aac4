//! Reading podtrace's kernel maps: flow table, counters, drops, retransmissions.
use anyhow::{Context, Result, anyhow};
use std::os::fd::AsFd;

use aya::{
    Ebpf, Pod,
    maps::{HashMap, Map, MapData},
};
use tracer_common::{CachedFlow, DropKey, DropStats, FlowKey, FlowStats, Tuple, counter, names};

use super::{batch, flow_cache::FlowCache};

/// Counter values summed over CPUs, indexed like `tracer_common::counter`.
pub type Counters = [u64; counter::COUNT as usize];

/// The possible CPUs (per-CPU maps hold one value for each), read once.
pub fn possible_cpus() -> Result<usize> {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if let Some(n) = CPUS.get() {
        return Ok(*n);
    }
    let n = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
    Ok(*CPUS.get_or_init(|| n.get() as usize))
}

fn per_cpu_hash<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a MapData> {
    match ebpf.map(name) {
        Some(Map::PerCpuHashMap(d)) => Ok(d),
        _ => Err(anyhow!("{name} map missing")),
    }
}

/// Every entry of a per-CPU hash map with its values folded over CPUs. (Batch operations
/// exist since Linux 5.6.)
fn read_per_cpu<K: Pod, V: Pod, T>(ebpf: &Ebpf, name: &str, fold: impl Fn(&[V]) -> T) -> Result<Vec<(K, T)>> {
    let data = per_cpu_hash(ebpf, name)?;
    let mut out = Vec::new();
    batch::entries::<K, V>(data.fd().as_fd(), possible_cpus()?, |k, v| out.push((*k, fold(v))))
        .with_context(|| format!("reading the {name} map"))?;
    Ok(out)
}

/// Folds one flow's per-CPU values into one.
pub fn merge(values: &[FlowStats]) -> FlowStats {
    let mut out = FlowStats::default();
    for v in values.iter().filter(|v| v.packets > 0) {
        out.packets += v.packets;
        out.bytes += v.bytes;
        out.tcp_flags |= v.tcp_flags;
        out.last_ns = out.last_ns.max(v.last_ns);
        // Zero: not dated here (a flow-cache slot only dates a flow's latest packet).
        if v.first_ns != 0 {
            out.first_ns = if out.first_ns == 0 { v.first_ns } else { out.first_ns.min(v.first_ns) };
        }
    }
    out
}

/// Every (flow, interface, hook) entry with its counters merged over CPUs and with the counts
/// its flow-cache slots hold. Counts never move between the table and the slots, so no order
/// of the two reads can count a packet twice or lose it.
pub fn read_flows(ebpf: &Ebpf) -> Result<Vec<(FlowKey, FlowStats)>> {
    let mut flows = read_per_cpu(ebpf, names::MAP_FLOWS, merge)?;
    let mut cached: std::collections::HashMap<FlowKey, FlowStats> = std::collections::HashMap::new();
    for (_, slot) in read_flow_cache(ebpf)? {
        let s = cached.entry(slot.key).or_default();
        // A slot dates only its flow's latest packet: no first time.
        let counts = FlowStats {
            packets: slot.packets,
            bytes: slot.bytes,
            first_ns: 0,
            last_ns: slot.last_ns,
            tcp_flags: slot.tcp_flags,
            _pad: [0; 7],
        };
        *s = merge(&[*s, counts]);
    }
    if cached.is_empty() {
        return Ok(flows);
    }
    for (key, stats) in flows.iter_mut() {
        if let Some(c) = cached.remove(key) {
            *stats = merge(&[*stats, c]);
        }
    }
    // A slot whose table entry was deleted under it (a packet racing the flow's expiry).
    flows.extend(cached.into_iter().map(|(k, mut s)| {
        s.first_ns = s.last_ns;
        (k, s)
    }));
    Ok(flows)
}

/// The taken flow-cache slots with their indexes.
pub fn read_flow_cache(ebpf: &Ebpf) -> Result<Vec<(u32, CachedFlow)>> {
    Ok(FlowCache::map(ebpf)?.occupied().0)
}

/// Capacity of the flow table.
pub fn flow_table_capacity(ebpf: &Ebpf) -> u32 {
    per_cpu_hash(ebpf, names::MAP_FLOWS).ok().and_then(|d| d.info().ok()).map_or(0, |i| i.max_entries())
}

/// Removes entries from the flow table (idle expiry, eviction) and frees the cache slots
/// holding them; returns how many table entries went. As with the table entry, a packet
/// counted in a slot between the last read and its freeing is not reported.
pub fn delete_flows(ebpf: &Ebpf, keys: &[FlowKey]) -> Result<usize> {
    let data = per_cpu_hash(ebpf, names::MAP_FLOWS)?;
    let deleted = batch::delete(data.fd().as_fd(), keys).context("deleting from the FLOWS map")?;
    let doomed: std::collections::HashSet<&FlowKey> = keys.iter().collect();
    let cache = FlowCache::map(ebpf)?;
    let held: Vec<u32> =
        cache.held().0.into_iter().filter(|(_, s)| doomed.contains(&s.key)).map(|(i, _)| i).collect();
    // Only those slots: a slot of the same index on another CPU may be busy with another flow.
    cache.free(&held);
    Ok(deleted)
}

/// The counters summed over CPUs (`COUNTERS` holds one entry per CPU), in one batched read.
pub fn read_counters(ebpf: &Ebpf) -> Result<Counters> {
    let Some(Map::Array(data)) = ebpf.map(names::MAP_COUNTERS) else {
        return Err(anyhow!("COUNTERS map missing"));
    };
    let mut out = [0u64; counter::COUNT as usize];
    batch::entries(data.fd().as_fd(), 1, |_: &u32, v: &[tracer_common::CpuCounters]| {
        // A CPU's entries past `COUNT` are the kernel's own (its sighting sequence).
        for (sum, n) in out.iter_mut().zip(v[0]) {
            *sum += n;
        }
    })
    .context("reading the COUNTERS map")?;
    Ok(out)
}

pub fn read_drops(ebpf: &Ebpf) -> Result<Vec<(DropKey, DropStats)>> {
    read_per_cpu(ebpf, names::MAP_DROPS, |v: &[DropStats]| DropStats {
        count: v.iter().map(|s| s.count).sum(),
        last_ns: v.iter().map(|s| s.last_ns).max().unwrap_or(0),
    })
}

pub fn read_retransmits(ebpf: &Ebpf) -> Result<Vec<(Tuple, u64)>> {
    read_per_cpu(ebpf, names::MAP_RETRANS, |v: &[u64]| v.iter().sum())
}

/// Writes the address filter (traced pod IPs and node addresses).
pub fn set_addr_filter(ebpf: &mut Ebpf, addrs: &[std::net::IpAddr]) -> Result<()> {
    let map = ebpf.map_mut(names::MAP_ADDR_FILTER).ok_or_else(|| anyhow!("ADDR_FILTER missing"))?;
    let mut map: HashMap<&mut MapData, [u8; 16], u8> = HashMap::try_from(map)?;
    for a in addrs {
        map.insert(&super::addr::to_key(*a), &1, 0).context("writing the address filter")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_counts_and_dates_only_from_dated_values() {
        let table = FlowStats {
            packets: 1,
            bytes: 60,
            first_ns: 1_000,
            last_ns: 1_000,
            tcp_flags: 0x02,
            _pad: [0; 7],
        };
        // A cache slot: later packets, a coarse (earlier-looking) latest time, no first time.
        let slot =
            FlowStats { packets: 9, bytes: 540, first_ns: 0, last_ns: 900, tcp_flags: 0x10, _pad: [0; 7] };
        let idle = FlowStats::default();
        let m = merge(&[slot, idle, table]);
        assert_eq!((m.packets, m.bytes, m.tcp_flags), (10, 600, 0x12));
        assert_eq!((m.first_ns, m.last_ns), (1_000, 1_000));
    }
}
