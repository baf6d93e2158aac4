//! The counters `/metrics` exports, monotonic by construction: each poll adds what every flow
//! gained since the previous one, and nothing is ever subtracted. A flow that expires, is
//! evicted or whose pod disappears keeps what it contributed; a pod's counters stay at their
//! last value until it has been gone for [`RETIRE_AFTER`], then leave the exposition (so the
//! label sets of pods long gone do not accumulate).
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tracer_common::Tuple;

use super::state::{FlowSummary, PodEni, PodKey};
use crate::assemble::model::{IngressMode, NatKind};

/// A pod without flows and no longer on the node leaves the exposition after this.
pub const RETIRE_AFTER: Duration = Duration::from_secs(3600);

/// A flow: its initiating tuple and the traced pod's address (independent of pod names).
pub type FlowId = (Tuple, IpAddr);

/// What was already counted of one flow.
#[derive(Default)]
struct Counted {
    packets: u64,
    bytes: u64,
    nat: Vec<NatKind>,
    ingress: bool,
    drops: Vec<(Arc<str>, u64)>,
    seen: u64,
}

/// The exported counters, by pod.
#[derive(Clone, Default)]
pub struct Exported {
    /// Packets and bytes by ENI.
    pub traffic: BTreeMap<PodEni, (u64, u64)>,
    /// Flows by NAT kind.
    pub nat: BTreeMap<(PodKey, NatKind), u64>,
    /// Ingress flows by mode.
    pub ingress_modes: BTreeMap<(PodKey, IngressMode), u64>,
    /// Dropped packets by reason.
    pub drops: BTreeMap<(PodKey, Arc<str>), u64>,
}

#[derive(Default)]
pub struct Totals {
    pub exported: Exported,
    flows: HashMap<FlowId, Counted>,
    pods: HashMap<PodKey, Instant>,
    poll: u64,
}

impl Totals {
    /// Starts a poll.
    pub fn begin(&mut self) {
        self.poll += 1;
    }

    /// Adds what the flow gained since it was last observed. A flow's counts can shrink when
    /// some of its kernel entries were deleted; the next gain is counted from there.
    pub fn observe(&mut self, f: &FlowSummary, now: Instant) {
        let c = self.flows.entry(f.id).or_default();
        c.seen = self.poll;
        let e = &mut self.exported;
        let t = e.traffic.entry((f.pod.0.clone(), f.pod.1.clone(), f.eni.clone())).or_default();
        t.0 += f.packets.saturating_sub(c.packets);
        t.1 += f.bytes.saturating_sub(c.bytes);
        (c.packets, c.bytes) = (f.packets, f.bytes);
        for kind in &f.nat {
            if !c.nat.contains(kind) {
                c.nat.push(*kind);
                *e.nat.entry((f.pod.clone(), *kind)).or_default() += 1;
            }
        }
        if let Some(m) = f.ingress_mode
            && !c.ingress
        {
            c.ingress = true;
            *e.ingress_modes.entry((f.pod.clone(), m)).or_default() += 1;
        }
        for (reason, n) in &f.drops {
            let before = match c.drops.iter_mut().find(|(r, _)| r == reason) {
                Some((_, seen)) => std::mem::replace(seen, *n),
                None => {
                    c.drops.push((reason.clone(), *n));
                    0
                }
            };
            *e.drops.entry((f.pod.clone(), reason.clone())).or_default() += n.saturating_sub(before);
        }
        self.pods.insert(f.pod.clone(), now);
    }

    /// Forgets a flow whose kernel entries are deleted: if its tuple comes back, it is a new
    /// flow counted from zero.
    pub fn forget(&mut self, id: &FlowId) {
        self.flows.remove(id);
    }

    /// Ends a poll: forgets flows no longer seen (their pod went away) and retires pods gone
    /// for [`RETIRE_AFTER`]. `present`: the pods on the node now.
    pub fn end(&mut self, present: impl Iterator<Item = PodKey>, now: Instant) {
        let poll = self.poll;
        self.flows.retain(|_, c| c.seen == poll);
        for p in present {
            self.pods.insert(p, now);
        }
        let retired: Vec<PodKey> = self
            .pods
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) >= RETIRE_AFTER)
            .map(|(p, _)| p.clone())
            .collect();
        if retired.is_empty() {
            return;
        }
        for p in &retired {
            self.pods.remove(p);
        }
        let gone = |p: &PodKey| retired.contains(p);
        let e = &mut self.exported;
        e.traffic.retain(|(pod, ns, _), _| !gone(&(pod.clone(), ns.clone())));
        e.nat.retain(|(p, _), _| !gone(p));
        e.ingress_modes.retain(|(p, _), _| !gone(p));
        e.drops.retain(|(p, _), _| !gone(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(port: u16, pod: &str, eni: &str, packets: u64, drops: u64) -> FlowSummary {
        FlowSummary {
            id: id(port),
            pod: (Arc::from(pod), Arc::from("default")),
            eni: Arc::from(eni),
            packets,
            bytes: packets * 100,
            last_seen_ms: 0,
            nat: vec![NatKind::PodEgressSnat],
            ingress_mode: None,
            drops: vec![(Arc::from("NETFILTER_DROP"), drops)],
        }
    }

    fn id(port: u16) -> FlowId {
        (Tuple { sport: port, ..Tuple::default() }, "198.18.1.11".parse().unwrap())
    }

    fn packets(t: &Totals, pod: &str) -> u64 {
        t.exported.traffic.iter().filter(|((p, _, _), _)| &**p == pod).map(|(_, (n, _))| n).sum()
    }

    #[test]
    fn counters_only_grow_whatever_happens_to_flows_and_pods() {
        let now = Instant::now();
        let mut t = Totals::default();
        t.begin();
        t.observe(&flow(1, "web-1", "eth0", 10, 1), now);
        t.observe(&flow(2, "web-1", "none", 5, 0), now);
        t.end(std::iter::empty(), now);
        assert_eq!(packets(&t, "web-1"), 15);
        // Flow 1 grows and moves to another ENI label; flow 2's pod vanished (not observed).
        t.begin();
        t.observe(&flow(1, "web-1", "eth1", 12, 3), now);
        t.end(std::iter::empty(), now);
        assert_eq!(packets(&t, "web-1"), 17, "15 + 2 more, nothing subtracted");
        assert_eq!(t.exported.nat.values().sum::<u64>(), 2, "each flow counted once per kind");
        assert_eq!(t.exported.drops.values().sum::<u64>(), 3);
        // Entries deleted under a flow: it shrinks, then grows again from there.
        t.begin();
        t.observe(&flow(1, "web-1", "eth1", 2, 3), now);
        t.observe(&flow(1, "web-1", "eth1", 4, 3), now);
        t.end(std::iter::empty(), now);
        assert_eq!(packets(&t, "web-1"), 19);
        // Expired and forgotten: the same tuple later is a new flow, counted from zero.
        t.forget(&id(1));
        t.begin();
        t.observe(&flow(1, "web-1", "eth1", 1, 0), now);
        t.end(std::iter::empty(), now);
        assert_eq!(packets(&t, "web-1"), 20);
        // An hour without the pod: it leaves the exposition.
        t.begin();
        t.end(std::iter::empty(), now + RETIRE_AFTER);
        assert_eq!(packets(&t, "web-1"), 0);
        assert!(t.exported.nat.is_empty() && t.exported.drops.is_empty());
    }

    #[test]
    fn a_pod_still_on_the_node_is_not_retired() {
        let now = Instant::now();
        let mut t = Totals::default();
        t.begin();
        t.observe(&flow(1, "web-1", "eth0", 10, 0), now);
        t.end(std::iter::empty(), now);
        let pod: PodKey = (Arc::from("web-1"), Arc::from("default"));
        t.begin();
        t.end(std::iter::once(pod), now + RETIRE_AFTER);
        assert_eq!(packets(&t, "web-1"), 10);
    }
}
