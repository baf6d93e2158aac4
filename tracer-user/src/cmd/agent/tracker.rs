//! The agent's work between wake-ups: follow the node's links (attach new pod veths, detach
//! gone ones), poll the session into per-pod totals, expire and evict flows, and build `/flows`
//! answers from the last snapshot.
use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Instant,
};

use anyhow::Result;
use tracer_common::FlowKey;

use super::{
    AgentArgs,
    export_rounds::ExportRounds,
    flows::FlowView,
    state::{FlowSummary, Interner, PodKey, Shared},
    totals::{FlowId, Totals},
};
use crate::{
    assemble::{
        context::{NodeContext, TracedPod},
        session::{Session, Snapshot},
    },
    node::{
        inventory::Inventory, link_events::LinkEvent, links::Link, pod_source::PodCache, rules::Ruleset,
        tc_programs,
    },
};

fn is_pod_link(l: &Link) -> bool {
    l.kind.as_deref() == Some("veth")
}

/// The interfaces the agent traces: every ENI, every branch ENI and every veth.
pub fn wanted_links(inv: &Inventory) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = inv.enis.iter().map(|e| (e.ifindex, e.name.clone())).collect();
    v.extend(inv.branches.iter().map(|b| (b.ifindex, b.name.clone())));
    for l in inv.links.iter().filter(|l| is_pod_link(l) && inv.eni(l.index).is_none()) {
        v.push((l.index, l.name.clone()));
    }
    v
}

/// Pods of this node (from their /32 routes, one per set of sibling veths), named from the
/// pod cache when known.
pub fn node_pods(inv: &Inventory, cache: &PodCache) -> Vec<TracedPod> {
    let mut seen: HashSet<u32> = HashSet::new();
    let mut out = Vec::new();
    for (_, veth) in inv.pod_routes() {
        if seen.contains(&veth.index) {
            continue;
        }
        let mut pod = TracedPod::on_node(inv, veth, String::new(), String::new(), Vec::new());
        seen.extend(pod.veths.iter().copied());
        // Link-local addresses (egress-cni's 169.254.172.x) come last: not the pod's name.
        pod.ips.sort_by_key(|ip| match ip {
            std::net::IpAddr::V4(v4) => v4.is_link_local(),
            std::net::IpAddr::V6(_) => false,
        });
        match pod.ips.iter().find_map(|ip| cache.get(ip)) {
            Some(meta) => {
                pod.branch_eni_id = meta.branch_eni_id;
                (pod.name, pod.namespace) = (meta.name, meta.namespace);
            }
            None => pod.name = pod.ips.first().map(|ip| ip.to_string()).unwrap_or_default(),
        }
        out.push(pod);
    }
    out
}

/// Gives the pages a large poll freed back to the system (glibc keeps them otherwise, and the
/// agent's RSS would stay at its peak).
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

pub struct Agent {
    pub args: AgentArgs,
    pub session: Session,
    pub cache: PodCache,
    pub state: Shared,
    /// Shared with the `/flows` answers in progress (copied on write while they hold it).
    pub ctx: Arc<NodeContext>,
    pub inv: Inventory,
    pub pods: Vec<TracedPod>,
    pub interner: Interner,
    /// The last poll's kernel data, to build `/flows` answers from.
    pub last: Option<Arc<Snapshot>>,
    pub totals: Totals,
    /// Blind hooks already warned about (tc mode beside another tool's filters).
    pub blind: HashSet<String>,
    /// OTLP export, when configured.
    pub export: Option<ExportRounds>,
}

impl Agent {
    /// Attaches to the interfaces not attached yet, all at once.
    fn attach(&mut self, links: &[(u32, String)]) {
        let todo = links.iter().filter(|(i, _)| !self.session.attached().any(|(a, _)| a == *i)).count();
        if todo == 0 {
            return;
        }
        let errors = self.session.attach(links);
        for (_, e) in &errors {
            // The link may already be gone again; the reconcile retries otherwise.
            log::warn!("{e:#}");
        }
        log::info!("attached to {} interface(s)", todo - errors.len());
        let mut st = self.state.write().expect("state");
        st.links_attached += (todo - errors.len()) as u64;
        st.attach_errors += errors.len() as u64;
    }

    fn detach(&mut self, ifindex: u32) {
        if self.session.detach(ifindex) {
            self.state.write().expect("state").links_detached += 1;
        }
    }

    /// A batch of link events: new pod veths are attached together, gone links detached.
    pub fn on_links(&mut self, events: Vec<LinkEvent>) {
        let mut new = Vec::new();
        for ev in events {
            match ev {
                LinkEvent::Resync => {
                    log::warn!("link events were lost (burst); re-scanning the node");
                    if let Err(e) = self.reconcile() {
                        log::warn!("reconcile: {e:#}");
                    }
                }
                // A pod's veth, or a branch ENI's VLAN link on one of our ENIs.
                LinkEvent::New(l)
                    if is_pod_link(&l) || l.parent.is_some_and(|p| self.inv.eni(p).is_some()) =>
                {
                    log::debug!("link {} ({}) appeared", l.name, l.index);
                    new.retain(|(i, _)| *i != l.index);
                    new.push((l.index, l.name));
                }
                LinkEvent::New(l) => {
                    log::debug!("link {} ({}, kind {:?}) is not a pod veth", l.name, l.index, l.kind)
                }
                LinkEvent::Gone(i) => {
                    new.retain(|(n, _)| *n != i);
                    self.detach(i);
                }
            }
        }
        self.attach(&new);
    }

    /// Full re-scan: attach what is missing, detach what is gone, refresh the node context.
    pub fn reconcile(&mut self) -> Result<()> {
        self.inv = Inventory::read(&self.args.enis)?;
        let want = wanted_links(&self.inv);
        let want_set: HashSet<u32> = want.iter().map(|(i, _)| *i).collect();
        self.attach(&want);
        let stale: Vec<u32> =
            self.session.attached().map(|(i, _)| i).filter(|i| !want_set.contains(i)).collect();
        for i in stale {
            self.detach(i);
        }
        let mut ctx = NodeContext::new(&self.inv, Ruleset::read());
        ctx.tc_programs = tc_programs::read(want.iter().map(|(i, _)| *i));
        self.ctx = Arc::new(ctx);
        for hook in self.session.blind_hooks() {
            if self.blind.insert(hook.clone()) {
                log::warn!("{hook}");
            }
        }
        Ok(())
    }

    pub fn poll(&mut self) -> Result<()> {
        let t0 = Instant::now();
        // Routes change with pods: a cheap re-read keeps pod names and roles current.
        self.inv = Inventory::read(&self.args.enis)?;
        Arc::make_mut(&mut self.ctx).set_interfaces(&self.inv);
        self.pods = node_pods(&self.inv, &self.cache);
        let t1 = Instant::now();
        // The previous snapshot goes first: two at once would double the peak memory.
        self.last = None;
        let snap = self.session.poll()?;
        let t2 = Instant::now();
        // Every flow's gain is counted as it is assembled, whatever becomes of it below; only
        // what expiry and the cap need is kept of each, not its whole summary.
        let wall = Instant::now();
        self.totals.begin();
        let mut flows: Vec<Ranked> = Vec::new();
        let (interner, totals) = (&mut self.interner, &mut self.totals);
        let mut round = self.export.as_mut().and_then(ExportRounds::begin);
        let export = &self.export;
        let connection_of = self.session.each_flow(&snap, &self.ctx, &self.pods, |f, connection| {
            if let (Some(e), Some(r)) = (export, round.as_mut()) {
                e.offer(r, &f);
            }
            let summary = FlowSummary::of(&f, interner);
            totals.observe(&summary, wall);
            let FlowSummary { id, pod, last_seen_ms, .. } = summary;
            flows.push(Ranked { id, pod, last_seen_ms, connection });
        });
        if let (Some(e), Some(r)) = (self.export.as_mut(), round) {
            e.end(r);
        }
        log::debug!(
            "poll: inventory {:?}, kernel+conntrack {:?}, assembly {:?} ({} entries, {} flows)",
            t1 - t0,
            t2 - t1,
            t2.elapsed(),
            snap.entries.len(),
            flows.len()
        );

        // Expiry and the hard cap: newest first, beyond the cap or idle too long goes. A
        // connection's kernel entries go with it, and idle entries of no kept flow too.
        const KEPT: u8 = 1;
        const DOOMED: u8 = 2;
        let mut fate =
            vec![0u8; connection_of.iter().filter(|c| **c != u32::MAX).max().map_or(0, |m| *m as usize + 1)];
        let now_ms = self.session.clock.unix_ms(mono_ns());
        let idle_ms = self.args.idle_timeout.as_millis() as u64;
        flows.sort_unstable_by_key(|f| std::cmp::Reverse(f.last_seen_ms));
        let (mut n_expired, mut n_evicted, mut kept) = (0, 0, 0);
        // Every pod of the node has a flow count, zero included (absent would mean unknown).
        let present: Vec<_> =
            self.pods.iter().map(|p| (self.interner.get(&p.name), self.interner.get(&p.namespace))).collect();
        let mut live_flows: BTreeMap<_, u64> = present.iter().map(|p| (p.clone(), 0)).collect();
        for f in &flows {
            if now_ms.saturating_sub(f.last_seen_ms) > idle_ms {
                n_expired += 1;
            } else if kept >= self.args.max_tracked_flows {
                n_evicted += 1;
            } else {
                kept += 1;
                *live_flows.entry(f.pod.clone()).or_default() += 1;
                fate[f.connection as usize] |= KEPT;
                continue;
            }
            fate[f.connection as usize] |= DOOMED;
        }
        // A doomed connection's entries go, for all its flows: those start again from zero.
        for f in flows {
            if fate[f.connection as usize] & DOOMED != 0 {
                self.totals.forget(&f.id);
            }
        }
        self.totals.end(present.into_iter(), wall);
        self.interner.prune();
        let idle_ns = self.args.idle_timeout.as_nanos() as u64;
        let now = mono_ns();
        let delete: Vec<FlowKey> = snap
            .entries
            .iter()
            .zip(&connection_of)
            .filter(|((_, s), c)| {
                let fate = fate.get(**c as usize).copied().unwrap_or(0);
                fate & DOOMED != 0 || (fate & KEPT == 0 && now.saturating_sub(s.last_ns) > idle_ns)
            })
            .map(|((k, _), _)| *k)
            .collect();
        drop(connection_of);
        self.session.delete_flows(&delete)?;
        let fill = (snap.entries.len() - delete.len(), self.session.flow_table_capacity());
        {
            let exported = self.totals.exported.clone();
            let mut st = self.state.write().expect("state");
            st.polls += 1;
            st.pods_file_errors = self.cache.errors();
            st.flows_expired += n_expired;
            st.flows_evicted += n_evicted;
            st.live_flows = live_flows;
            st.exported = exported;
            st.counters = snap.counters;
            st.user = self.session.user;
            st.table_fill = fill;
            st.attached = self.session.attached_names();
        }
        self.last = Some(Arc::new(snap));
        release_free_memory();
        Ok(())
    }

    /// What a `GET /flows` answer is built from, to take to another thread.
    pub fn view(&self) -> FlowView {
        FlowView {
            snap: self.last.clone(),
            frozen: self.session.frozen(),
            ctx: self.ctx.clone(),
            pods: self.pods.clone(),
        }
    }
}

/// What a poll keeps of each flow to apply expiry and the tracked-flow cap.
struct Ranked {
    id: FlowId,
    pod: PodKey,
    last_seen_ms: u64,
    /// Index of the flow's connection in the poll's `connection_of`.
    connection: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_grouped_by_veth_and_named_from_the_cache() {
        use crate::node::links::Route;
        let link = |index, name: &str, kind: Option<&str>| Link {
            index,
            name: name.into(),
            mac: None,
            kind: kind.map(str::to_string),
            up: true,
            mtu: 1500,
            parent: None,
            peer_netns: None,
            vlan_id: None,
        };
        let route = |dst: &str, len, oif| Route {
            table: 254,
            dst: Some((dst.parse().unwrap(), len)),
            gateway: None,
            oif: Some(oif),
            v6: false,
        };
        let inv = Inventory::from_parts(
            vec![link(2, "eth0", None), link(7, "enia", Some("veth"))],
            vec![crate::node::links::Addr { index: 2, addr: "198.18.1.10".parse().unwrap(), prefix: 24 }],
            vec![
                route("198.18.1.11", 32, 7),
                Route { table: 254, dst: None, gateway: None, oif: Some(2), v6: false },
            ],
            vec![],
        );
        let cache = PodCache::default();
        cache.replace(crate::node::pods::parse_pod_list(r#"{"items":[{"metadata":{"name":"web-1","namespace":"default"},"status":{"podIP":"198.18.1.11"}}]}"#).unwrap());
        let pods = node_pods(&inv, &cache);
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].name, "web-1");
        assert_eq!(pods[0].veths, vec![7]);
        assert_eq!(pods[0].ips, vec!["198.18.1.11".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(wanted_links(&inv), vec![(2, "eth0".to_string()), (7, "enia".to_string())]);
    }
}
