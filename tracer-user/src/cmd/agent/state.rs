//! What the agent keeps between polls and serves: per-pod totals (never per-flow records),
//! counters, and the facts `/metrics` and `/healthz` report.
use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, RwLock},
};

use super::totals::{Exported, FlowId};
use crate::{
    assemble::{
        model::{Flow, IngressMode, NatKind},
        session::UserCounters,
    },
    kernel::maps::Counters,
};

/// (pod, namespace)
pub type PodKey = (Arc<str>, Arc<str>);
/// (pod, namespace, eni)
pub type PodEni = (Arc<str>, Arc<str>, Arc<str>);

/// What the metrics need of one flow. Built per poll and folded into the totals at once;
/// full flows are built on request (`GET /flows`) from the last snapshot.
pub struct FlowSummary {
    pub id: FlowId,
    pub pod: PodKey,
    /// ENI the flow left or entered by ("none" when it stayed in the node).
    pub eni: Arc<str>,
    pub packets: u64,
    pub bytes: u64,
    pub last_seen_ms: u64,
    pub nat: Vec<NatKind>,
    pub ingress_mode: Option<IngressMode>,
    /// (drop reason, packets)
    pub drops: Vec<(Arc<str>, u64)>,
}

/// Shares the few distinct strings (pod names, ENIs, drop reasons) between summaries.
#[derive(Default)]
pub struct Interner(HashSet<Arc<str>>);

impl Interner {
    /// Forgets the strings nothing else holds any more (pods long gone).
    pub fn prune(&mut self) {
        self.0.retain(|a| Arc::strong_count(a) > 1);
    }

    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(a.clone());
        a
    }
}

impl FlowSummary {
    pub fn of(f: &Flow, i: &mut Interner) -> FlowSummary {
        FlowSummary {
            id: (f.id_tuple, f.pod_ip),
            pod: (i.get(&f.pod), i.get(&f.namespace)),
            eni: i.get(f.eni.as_deref().unwrap_or("none")),
            packets: f.packets,
            bytes: f.bytes,
            last_seen_ms: f.last_seen_ms,
            nat: [&f.snat, &f.dnat].into_iter().flatten().map(|n| n.kind).collect(),
            ingress_mode: f.ingress_mode,
            drops: f.drops.iter().map(|d| (i.get(&d.reason), d.count)).collect(),
        }
    }
}

/// What the API serves besides `/flows`.
#[derive(Default)]
pub struct State {
    /// Flows tracked per pod (every pod of the node, zero included).
    pub live_flows: BTreeMap<PodKey, u64>,
    /// The monotonic counters (see `totals`).
    pub exported: Exported,
    pub counters: Counters,
    pub user: UserCounters,
    pub polls: u64,
    /// Pods files that could not be read (each version of the file counted once).
    pub pods_file_errors: u64,
    pub flows_expired: u64,
    pub flows_evicted: u64,
    pub attach_errors: u64,
    pub links_attached: u64,
    pub links_detached: u64,
    pub table_fill: (usize, u32),
    pub attached: Vec<String>,
    /// How long the last poll took, and the interval it sets (stretched when polls are long).
    pub poll_seconds: f64,
    pub poll_interval_seconds: f64,
    /// What became of the OTLP records, when exporting.
    pub export: Option<Arc<super::otlp::ExportCounters>>,
}

impl State {
    pub fn agent_counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("polls", self.polls),
            ("pods_file_errors", self.pods_file_errors),
            ("flows_expired", self.flows_expired),
            ("flows_evicted", self.flows_evicted),
            ("attach_errors", self.attach_errors),
            ("links_attached", self.links_attached),
            ("links_detached", self.links_detached),
            ("hop_events_lost", self.user.hop_events_lost),
            ("hop_events_evicted", self.user.hop_events_evicted),
            ("conntrack_evicted", self.user.conntrack_evicted),
            ("conntrack_dump_errors", self.user.conntrack_dump_errors),
            ("conntrack_events_dropped", self.user.conntrack_events_dropped),
        ]
    }
}

pub type Shared = Arc<RwLock<State>>;
