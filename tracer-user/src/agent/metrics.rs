//! `GET /metrics`: Prometheus text exposition built from the agent's state at scrape time.
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tracer_common::counter;

use super::State;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    pod: String,
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodEniLabels {
    pod: String,
    namespace: String,
    eni: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    pod: String,
    namespace: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

fn counter_family<L>(reg: &mut Registry, name: &str, help: &str) -> Family<L, Counter>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge_family<L>(reg: &mut Registry, name: &str, help: &str) -> Family<L, Gauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

pub fn render(state: &State) -> String {
    let mut reg = Registry::with_prefix("podtrace");
    let flows = gauge_family::<PodLabels>(&mut reg, "flows", "Flows currently tracked per pod");
    let packets = counter_family::<PodEniLabels>(
        &mut reg,
        "packets",
        "Packets of the pod's flows, by ENI (none = stayed in the node)",
    );
    let bytes = counter_family::<PodEniLabels>(&mut reg, "bytes", "Bytes of the pod's flows, by ENI");
    let nat = counter_family::<KindLabels>(&mut reg, "nat_flows", "Flows rewritten by the node, by NAT kind");
    let modes =
        counter_family::<KindLabels>(&mut reg, "ingress_flows", "Ingress flows by mode (nodeport, direct)");
    let drops = counter_family::<KindLabels>(
        &mut reg,
        "dropped_packets",
        "Packets of the pod's flows dropped by the kernel, by reason",
    );
    let kernel = counter_family::<NameLabel>(
        &mut reg,
        "kernel_events",
        "Kernel counters, losses included (flow_map_full, ringbuf_full, samples_dropped, ...)",
    );
    let user = counter_family::<NameLabel>(
        &mut reg,
        "agent_events",
        "Agent counters (evicted and expired flows, attach errors, ...)",
    );
    let fill = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    reg.register("flow_table_fill_ratio", "Kernel flow table entries / capacity", fill.clone());
    let attached = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    reg.register("attached_interfaces", "Interfaces with podtrace programs attached", attached.clone());

    let mut per_eni = state.expired_totals.clone();
    for f in &state.summaries {
        let pod = PodLabels { pod: f.pod.to_string(), namespace: f.namespace.to_string() };
        flows.get_or_create(&pod).inc();
        let e = per_eni.entry((f.pod.clone(), f.namespace.clone(), f.eni.clone())).or_default();
        e.0 += f.packets;
        e.1 += f.bytes;
        let kind = |k: &str| KindLabels {
            pod: f.pod.to_string(),
            namespace: f.namespace.to_string(),
            kind: k.to_string(),
        };
        for n in &f.nat {
            nat.get_or_create(&kind(n)).inc();
        }
        if let Some(m) = &f.ingress_mode {
            modes.get_or_create(&kind(m)).inc();
        }
        for (reason, count) in &f.drops {
            drops.get_or_create(&kind(reason)).inc_by(*count);
        }
    }
    for ((pod, namespace, eni), (p, b)) in per_eni {
        let l = PodEniLabels { pod: pod.to_string(), namespace: namespace.to_string(), eni: eni.to_string() };
        packets.get_or_create(&l).inc_by(p);
        bytes.get_or_create(&l).inc_by(b);
    }
    for (i, name) in counter::NAMES.iter().enumerate() {
        kernel.get_or_create(&NameLabel { name: name.to_string() }).inc_by(state.counters[i]);
    }
    for (name, v) in state.agent_counters() {
        user.get_or_create(&NameLabel { name: name.to_string() }).inc_by(v);
    }
    let (used, cap) = state.table_fill;
    fill.set(if cap == 0 { 0.0 } else { used as f64 / cap as f64 });
    attached.set(state.attached.len() as i64);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}
