//! `GET /metrics`: Prometheus text exposition built from the agent's state at scrape time.
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tracer_common::counter;

use super::state::{PodKey, State};

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
struct ModeLabels {
    pod: String,
    namespace: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    pod: String,
    namespace: String,
    reason: String,
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

/// The exposition of `state`, with the API's own counters (`api`) among the agent events.
pub fn render(state: &State, api: &[(&'static str, u64)]) -> String {
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
        counter_family::<ModeLabels>(&mut reg, "ingress_flows", "Ingress flows by mode (nodeport, direct)");
    let drops = counter_family::<ReasonLabels>(
        &mut reg,
        "dropped_packets",
        "Packets of the pod's flows dropped by the kernel, by reason",
    );
    let kernel = counter_family::<NameLabel>(
        &mut reg,
        "kernel_events",
        "Kernel counters, losses included (flow_map_full, drop_map_full, ...)",
    );
    let user = counter_family::<NameLabel>(
        &mut reg,
        "agent_events",
        "Agent counters (evicted and expired flows, attach errors, ...)",
    );
    let fill = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    reg.register("flow_table_fill_ratio", "Kernel flow table entries / capacity", fill.clone());
    let poll = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    reg.register(
        "poll_seconds",
        "Duration of the last poll (kernel tables, conntrack, assembly)",
        poll.clone(),
    );
    let interval = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    reg.register(
        "poll_interval_seconds",
        "Current poll interval (--poll-interval, stretched while polls are long)",
        interval.clone(),
    );
    let attached = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    reg.register("attached_interfaces", "Interfaces with podtrace programs attached", attached.clone());

    if let Some(c) = &state.export {
        export_metrics(&mut reg, c);
    }
    let pod_labels =
        |(pod, namespace): &PodKey| PodLabels { pod: pod.to_string(), namespace: namespace.to_string() };
    let kind_labels = |(pod, namespace): &PodKey, kind: &str| KindLabels {
        pod: pod.to_string(),
        namespace: namespace.to_string(),
        kind: kind.to_string(),
    };
    for (pod, n) in &state.live_flows {
        flows.get_or_create(&pod_labels(pod)).set(*n as i64);
    }
    let e = &state.exported;
    for ((pod, kind), n) in &e.nat {
        nat.get_or_create(&kind_labels(pod, kind.as_str())).inc_by(*n);
    }
    for (((pod, namespace), mode), n) in &e.ingress_modes {
        let l =
            ModeLabels { pod: pod.to_string(), namespace: namespace.to_string(), mode: mode.as_str().into() };
        modes.get_or_create(&l).inc_by(*n);
    }
    for (((pod, namespace), reason), n) in &e.drops {
        let l = ReasonLabels {
            pod: pod.to_string(),
            namespace: namespace.to_string(),
            reason: reason.to_string(),
        };
        drops.get_or_create(&l).inc_by(*n);
    }
    for ((pod, namespace, eni), (p, b)) in &e.traffic {
        let l = PodEniLabels { pod: pod.to_string(), namespace: namespace.to_string(), eni: eni.to_string() };
        packets.get_or_create(&l).inc_by(*p);
        bytes.get_or_create(&l).inc_by(*b);
    }
    for (i, name) in counter::NAMES.iter().enumerate() {
        kernel.get_or_create(&NameLabel { name: name.to_string() }).inc_by(state.counters[i]);
    }
    for (name, v) in state.agent_counters().into_iter().chain(api.iter().copied()) {
        user.get_or_create(&NameLabel { name: name.to_string() }).inc_by(v);
    }
    let (used, cap) = state.table_fill;
    fill.set(if cap == 0 { 0.0 } else { used as f64 / cap as f64 });
    attached.set(state.attached.len() as i64);
    poll.set(state.poll_seconds);
    interval.set(state.poll_interval_seconds);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: String,
}

/// The OTLP export's accounting: records = exported + dropped + pending.
fn export_metrics(reg: &mut Registry, c: &super::otlp::ExportCounters) {
    use std::sync::atomic::Ordering::Relaxed;
    let records = Counter::<u64>::default();
    reg.register(
        "export_records",
        "OTLP log records made (one per flow and round it changed in)",
        records.clone(),
    );
    records.inc_by(c.records.load(Relaxed));
    let exported = Counter::<u64>::default();
    reg.register("export_exported", "OTLP log records the collector accepted", exported.clone());
    exported.inc_by(c.exported.load(Relaxed));
    let dropped = counter_family::<DropLabels>(
        reg,
        "export_dropped",
        "OTLP log records not delivered: queue_full (the collector is slower than the flows) or export_failed (refused, unreachable or timed out)",
    );
    dropped
        .get_or_create(&DropLabels { reason: "queue_full".into() })
        .inc_by(c.dropped_queue_full.load(Relaxed));
    dropped
        .get_or_create(&DropLabels { reason: "export_failed".into() })
        .inc_by(c.dropped_export_failed.load(Relaxed));
    let pending = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    reg.register("export_pending_records", "OTLP log records queued or being sent", pending.clone());
    pending.set(c.pending.load(Relaxed) as i64);
}
