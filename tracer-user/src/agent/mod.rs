//! `podtrace agent`: the node agent of the DaemonSet. Traces every pod veth and every ENI,
//! follows pods as they come and go (netlink link events, periodic reconcile), names them from
//! the Kubernetes API or a pods file, and serves flows and metrics on a read-only API.
//!
//! Memory is bounded: flows idle longer than `--idle-timeout` expire (their counts move into
//! per-pod totals), at most `--max-tracked-flows` flows are kept (oldest evicted, counted), the
//! kernel table holds `--max-flows` entries (map-full counted), and the hop-event and conntrack
//! buffers are capped.
pub mod api;
pub mod client;
pub mod links;
pub mod metrics;
pub mod podsource;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use tracer_common::{FlowKey, Tuple};

use crate::{
    attach::{AttachMode, Tracer},
    btf::{self, Btf},
    drops::{DropIndex, DropNames},
    ebpf::LoadOptions,
    flows::{self, Clock, FlowReport, NodeContext, Observations, TracedPod},
    inventory::Inventory,
    maps::{self, Counters},
    nat::NatRules,
    preflight,
    session::{Session, UserCounters},
    trace,
};

#[derive(Args, Clone, Debug)]
pub struct AgentArgs {
    /// Unix socket of the API (mode 0600).
    #[arg(long, default_value = "/run/podtrace/agent.sock")]
    pub socket: PathBuf,
    /// Also serve the API on this TCP address (e.g. 127.0.0.1:9090). Off unless given.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Pods from a `kubectl get pods -A -o json` file (re-read when it changes) instead of the API.
    #[arg(long, value_name = "FILE")]
    pub pods_file: Option<PathBuf>,
    /// This node's name, to watch its pods (the DaemonSet passes it from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Flows without a packet for this long expire.
    #[arg(long, default_value = "5m", value_parser = preflight::parse_duration)]
    pub idle_timeout: Duration,
    /// At most this many flows are tracked; the oldest are evicted (and counted) beyond it.
    #[arg(long, default_value_t = 50_000)]
    pub max_tracked_flows: usize,
    /// Capacity of the kernel flow table (per flow, interface and hook).
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(16..))]
    pub max_flows: u32,
    /// Use these interfaces as ENIs instead of discovering them.
    #[arg(long = "eni", value_name = "IFACE")]
    pub enis: Vec<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub attach_mode: AttachMode,
    /// Sample one packet in N (power of two) for per-hop latency.
    #[arg(long, default_value_t = 64)]
    pub sample_rate: u64,
    /// How often flows are read from the kernel and assembled. Stretched while polls are long
    /// (many flows), so that polling never takes more than 10 % of a core.
    #[arg(long, default_value = "500ms", value_parser = preflight::parse_duration)]
    pub poll_interval: Duration,
    /// Safety net: full re-scan of links and rules this often.
    #[arg(long, default_value = "10s", value_parser = preflight::parse_duration)]
    pub reconcile_interval: Duration,
}

/// What the metrics need of one flow. Built per poll and folded into [`LiveTotals`] at once:
/// the agent keeps per-pod totals, not per-flow records; full reports are built on request
/// (`GET /flows`) from the last snapshot.
struct FlowSummary {
    pod: PodKey,
    /// ENI the flow left or entered by ("none" when it stayed in the node).
    eni: Arc<str>,
    packets: u64,
    bytes: u64,
    last_seen_ms: u64,
    /// NAT kinds of the flow (pod-egress-snat, masquerade, ...).
    nat: Vec<Arc<str>>,
    ingress_mode: Option<Arc<str>>,
    /// (drop reason, packets)
    drops: Vec<(Arc<str>, u64)>,
}

/// Shares the few distinct strings (pod names, ENIs, NAT kinds) between summaries.
#[derive(Default)]
struct Interner(HashSet<Arc<str>>);

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(a.clone());
        a
    }
}

impl FlowSummary {
    fn of(f: &FlowReport, i: &mut Interner) -> FlowSummary {
        FlowSummary {
            pod: (i.get(&f.pod), i.get(&f.namespace)),
            eni: i.get(f.eni.as_deref().unwrap_or("none")),
            packets: f.packets,
            bytes: f.bytes,
            last_seen_ms: f.last_seen_ms,
            nat: [&f.snat, &f.dnat].into_iter().flatten().map(|n| i.get(&n.kind)).collect(),
            ingress_mode: f.ingress_mode.as_deref().map(|m| i.get(m)),
            drops: f.drops.iter().map(|d| (i.get(&d.reason), d.count)).collect(),
        }
    }
}

/// The live flows as `/metrics` reports them: per pod, never per flow.
#[derive(Default)]
pub struct LiveTotals {
    /// Flows tracked.
    pub flows: BTreeMap<PodKey, u64>,
    /// Packets and bytes by ENI.
    pub traffic: BTreeMap<PodEni, (u64, u64)>,
    /// Flows by NAT kind.
    pub nat: BTreeMap<(PodKey, Arc<str>), u64>,
    /// Ingress flows by mode.
    pub ingress_modes: BTreeMap<(PodKey, Arc<str>), u64>,
    /// Dropped packets by reason.
    pub drops: BTreeMap<(PodKey, Arc<str>), u64>,
}

impl LiveTotals {
    fn add(&mut self, f: &FlowSummary) {
        *self.flows.entry(f.pod.clone()).or_default() += 1;
        let t = self.traffic.entry((f.pod.0.clone(), f.pod.1.clone(), f.eni.clone())).or_default();
        t.0 += f.packets;
        t.1 += f.bytes;
        for kind in &f.nat {
            *self.nat.entry((f.pod.clone(), kind.clone())).or_default() += 1;
        }
        if let Some(m) = &f.ingress_mode {
            *self.ingress_modes.entry((f.pod.clone(), m.clone())).or_default() += 1;
        }
        for (reason, n) in &f.drops {
            *self.drops.entry((f.pod.clone(), reason.clone())).or_default() += n;
        }
    }
}

/// What the API serves besides `/flows`.
#[derive(Default)]
pub struct State {
    pub live: LiveTotals,
    pub counters: Counters,
    pub user: UserCounters,
    /// Packets and bytes of expired flows, per (pod, namespace, eni).
    pub expired_totals: BTreeMap<PodEni, (u64, u64)>,
    pub polls: u64,
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
}

/// (pod, namespace)
pub type PodKey = (Arc<str>, Arc<str>);
/// (pod, namespace, eni)
pub type PodEni = (Arc<str>, Arc<str>, Arc<str>);

/// A `GET /flows` for the agent loop, which owns the data flows are built from.
pub struct FlowsRequest {
    pub query: api::FlowQuery,
    pub reply: tokio::sync::oneshot::Sender<String>,
}

impl State {
    pub fn agent_counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("polls", self.polls),
            ("flows_expired", self.flows_expired),
            ("flows_evicted", self.flows_evicted),
            ("attach_errors", self.attach_errors),
            ("links_attached", self.links_attached),
            ("links_detached", self.links_detached),
            ("hop_events_evicted", self.user.hop_events_evicted),
            ("conntrack_evicted", self.user.conntrack_evicted),
            ("conntrack_dump_errors", self.user.conntrack_dump_errors),
        ]
    }
}

pub type Shared = Arc<RwLock<State>>;

fn is_pod_link(l: &crate::netlink::Link) -> bool {
    l.kind.as_deref() == Some("veth")
}

/// The interfaces the agent traces: every ENI and every veth.
fn wanted_links(inv: &Inventory) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = inv.enis.iter().map(|e| (e.ifindex, e.name.clone())).collect();
    for l in inv.links.iter().filter(|l| is_pod_link(l) && inv.eni(l.index).is_none()) {
        v.push((l.index, l.name.clone()));
    }
    v
}

/// Pods of this node (from their /32 routes), named from the pod cache when known.
fn node_pods(inv: &Inventory, cache: &podsource::PodCache) -> Vec<TracedPod> {
    let mut by_veth: HashMap<u32, TracedPod> = HashMap::new();
    for (ip, veth) in inv.pod_routes() {
        let meta = cache.get(&ip);
        let p = by_veth.entry(veth.index).or_insert_with(|| TracedPod {
            name: meta.as_ref().map(|m| m.name.clone()).unwrap_or_else(|| ip.to_string()),
            namespace: meta.as_ref().map(|m| m.namespace.clone()).unwrap_or_default(),
            ips: Vec::new(),
            veth: Some(veth.index),
            owner_eni: inv.pod_ip_owner_eni(ip).map(|e| e.name.clone()),
        });
        p.ips.push(ip);
    }
    by_veth.into_values().collect()
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

/// Polls may take at most this share of the agent's time: with many flows, a poll of the
/// kernel tables costs a lot of CPU, so the interval stretches rather than the node's CPU.
const POLL_DUTY_PERCENT: u32 = 10;

/// The durations of the last few polls: the interval follows their median, so that a single
/// slow poll (a first drop site looked up in kallsyms, a burst of link events) does not stall
/// the next ones, while a table that stays large (three slow polls of five) keeps it stretched.
struct PollTimes(std::collections::VecDeque<Duration>);

impl Default for PollTimes {
    /// Starts as if the last polls had been instant: three slow polls in a row stretch it.
    fn default() -> PollTimes {
        PollTimes(std::iter::repeat_n(Duration::ZERO, Self::KEPT).collect())
    }
}

impl PollTimes {
    const KEPT: usize = 5;

    /// Records a poll's duration; returns the wait until the next poll.
    fn next_interval(&mut self, configured: Duration, took: Duration) -> Duration {
        self.0.pop_front();
        self.0.push_back(took);
        let mut sorted: Vec<Duration> = self.0.iter().copied().collect();
        sorted.sort();
        let typical = sorted[Self::KEPT / 2];
        configured.max(typical * (100 / POLL_DUTY_PERCENT - 1))
    }
}

fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

struct Agent {
    args: AgentArgs,
    session: Session,
    cache: podsource::PodCache,
    state: Shared,
    ctx: NodeContext,
    inv: Inventory,
    clock: Clock,
    pods: Vec<TracedPod>,
    interner: Interner,
    /// The last poll's kernel data, to build `/flows` answers from.
    last: Option<crate::session::Snapshot>,
}

impl Agent {
    /// Attaches to the interfaces not attached yet, all at once.
    fn attach(&mut self, links: &[(u32, String)]) {
        let todo: Vec<(u32, String)> =
            links.iter().filter(|(i, _)| !self.session.tracer.is_attached(*i)).cloned().collect();
        if todo.is_empty() {
            return;
        }
        let errors = self.session.tracer.attach_many(&todo);
        for (_, e) in &errors {
            // The link may already be gone again; the reconcile retries otherwise.
            log::warn!("{e:#}");
        }
        log::info!("attached to {} interface(s)", todo.len() - errors.len());
        let mut st = self.state.write().expect("state");
        st.links_attached += (todo.len() - errors.len()) as u64;
        st.attach_errors += errors.len() as u64;
    }

    fn detach(&mut self, ifindex: u32) {
        if self.session.tracer.is_attached(ifindex) {
            let _ = self.session.tracer.detach(ifindex);
            self.state.write().expect("state").links_detached += 1;
        }
    }

    /// A batch of link events: new pod veths are attached together, gone links detached.
    fn on_links(&mut self, events: Vec<links::LinkEvent>) {
        let mut new = Vec::new();
        for ev in events {
            match ev {
                links::LinkEvent::Resync => {
                    log::warn!("link events were lost (burst); re-scanning the node");
                    if let Err(e) = self.reconcile() {
                        log::warn!("reconcile: {e:#}");
                    }
                }
                links::LinkEvent::New(l) if is_pod_link(&l) => {
                    log::debug!("link {} ({}) appeared", l.name, l.index);
                    new.retain(|(i, _)| *i != l.index);
                    new.push((l.index, l.name));
                }
                links::LinkEvent::New(l) => {
                    log::debug!("link {} ({}, kind {:?}) is not a pod veth", l.name, l.index, l.kind)
                }
                links::LinkEvent::Gone(i) => {
                    new.retain(|(n, _)| *n != i);
                    self.detach(i);
                }
            }
        }
        self.attach(&new);
    }

    /// Full re-scan: attach what is missing, detach what is gone, refresh the node context.
    fn reconcile(&mut self) -> Result<()> {
        self.inv = Inventory::read(&self.args.enis)?;
        let want = wanted_links(&self.inv);
        let want_set: HashSet<u32> = want.iter().map(|(i, _)| *i).collect();
        self.attach(&want);
        let stale: Vec<u32> =
            self.session.tracer.attached().map(|(i, _)| i).filter(|i| !want_set.contains(i)).collect();
        for i in stale {
            self.detach(i);
        }
        self.ctx = trace::node_context(&self.inv, NatRules::read());
        Ok(())
    }

    fn poll(&mut self) -> Result<()> {
        let t0 = Instant::now();
        // Routes change with pods: a cheap re-read keeps pod names and roles current.
        self.inv = Inventory::read(&self.args.enis)?;
        self.ctx.ifaces = trace::node_context(&self.inv, NatRules::default()).ifaces;
        self.pods = node_pods(&self.inv, &self.cache);
        let t1 = Instant::now();
        // The previous snapshot goes first: two at once would double the peak memory.
        self.last = None;
        let snap = self.session.poll()?;
        let t2 = Instant::now();
        let mut flows: Vec<(FlowSummary, u32)> = Vec::new();
        let connection_of = {
            let obs =
                Observations { entries: &snap.entries, hops: &self.session.hops, conntrack: &snap.conntrack };
            let index = DropIndex::new(&snap.drops, &snap.retransmits, &self.session.names);
            let interner = &mut self.interner;
            flows::assemble_each(&obs, &self.ctx, &self.pods, self.clock, |mut f, connection| {
                index.attach(&mut f);
                flows.push((FlowSummary::of(&f, interner), connection));
            })
        };
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
        let now_ms = self.clock.unix_ms(mono_ns());
        let idle_ms = self.args.idle_timeout.as_millis() as u64;
        flows.sort_unstable_by_key(|(f, _)| std::cmp::Reverse(f.last_seen_ms));
        let (mut n_expired, mut n_evicted, mut kept) = (0, 0, 0);
        let mut live = LiveTotals::default();
        let mut gone_totals: Vec<(PodEni, u64, u64)> = Vec::new();
        for (f, connection) in flows {
            if now_ms.saturating_sub(f.last_seen_ms) > idle_ms {
                n_expired += 1;
            } else if kept >= self.args.max_tracked_flows {
                n_evicted += 1;
            } else {
                kept += 1;
                live.add(&f);
                fate[connection as usize] |= KEPT;
                continue;
            }
            fate[connection as usize] |= DOOMED;
            gone_totals.push(((f.pod.0, f.pod.1, f.eni), f.packets, f.bytes));
        }
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
        if !delete.is_empty() {
            maps::delete_flows(&self.session.tracer.ebpf, &delete)?;
            let deleted: HashSet<Tuple> = delete.iter().map(|k| k.tuple).collect();
            self.session.forget_hops(|h| !deleted.contains(&h.from.tuple) && !deleted.contains(&h.to.tuple));
        }
        let fill = (snap.entries.len() - delete.len(), maps::flow_table_capacity(&self.session.tracer.ebpf));
        let attached = self.session.tracer.attached().map(|(_, n)| n.to_string()).collect();
        {
            let mut st = self.state.write().expect("state");
            for (key, packets, bytes) in gone_totals {
                let e = st.expired_totals.entry(key).or_default();
                e.0 += packets;
                e.1 += bytes;
            }
            st.polls += 1;
            st.flows_expired += n_expired;
            st.flows_evicted += n_evicted;
            st.live = live;
            st.counters = snap.counters;
            st.user = self.session.user;
            st.table_fill = fill;
            st.attached = attached;
        }
        self.last = Some(snap);
        release_free_memory();
        Ok(())
    }

    /// Builds the reports a `GET /flows` asks for from the last snapshot (NDJSON).
    fn answer(&self, q: &api::FlowQuery) -> String {
        let Some(snap) = &self.last else { return String::new() };
        let pods: Vec<TracedPod> = self
            .pods
            .iter()
            .filter(|p| {
                q.pod.as_ref().is_none_or(|n| &p.name == n)
                    && q.namespace.as_ref().is_none_or(|n| &p.namespace == n)
            })
            .cloned()
            .collect();
        let obs =
            Observations { entries: &snap.entries, hops: &self.session.hops, conntrack: &snap.conntrack };
        let index = DropIndex::new(&snap.drops, &snap.retransmits, &self.session.names);
        let mut flows = Vec::new();
        flows::assemble_each(&obs, &self.ctx, &pods, self.clock, |mut f, _| {
            if q.since.is_none_or(|s| f.last_seen_ms >= s) {
                index.attach(&mut f);
                flows.push(f);
            }
        });
        flows.sort_by(|a, b| (&a.pod, a.first_seen_ms).cmp(&(&b.pod, b.first_seen_ms)));
        let mut body = String::new();
        for f in &flows {
            body += &serde_json::to_string(f).expect("flow serializes");
            body.push('\n');
        }
        body
    }
}

pub async fn run(args: AgentArgs) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    preflight::check_privileges()?;
    // The parsed BTF is large: only what is taken from it is kept.
    let (layout, names) = {
        let btf = Btf::from_file(&preflight::check_btf()?)?;
        (btf::kernel_layout(&btf, btf::own_netns_inum())?, DropNames::load(&btf))
    };
    let inv = Inventory::read(&args.enis)?;
    if inv.enis.is_empty() {
        anyhow::bail!("no ENI found: no interface carries a VPC address on this node (use --eni IFACE)");
    }
    let cache = podsource::PodCache::default();
    match (&args.pods_file, &args.node_name) {
        (Some(f), _) => {
            cache.replace(crate::pods::load_file(f)?);
            tokio::spawn(podsource::follow_file(f.clone(), cache.clone()));
        }
        (None, Some(node)) => {
            let client = kube::Client::try_default().await.context(
                "no --pods-file and no Kubernetes API reachable (in-cluster config or KUBECONFIG)",
            )?;
            let (node, c) = (node.clone(), cache.clone());
            tokio::spawn(async move {
                if let Err(e) = podsource::follow_api(client, node, c).await {
                    log::error!("pod watch ended: {e:#}");
                }
            });
        }
        (None, None) => log::warn!("no --pods-file and no NODE_NAME: pods are named by IP"),
    }

    let opts = LoadOptions {
        sample_mask: args.sample_rate.next_power_of_two().max(1) - 1,
        filter: false,
        max_flows: args.max_flows,
        layout: Some(layout),
    };
    let tracer = Tracer::load(&opts, args.attach_mode)?;
    let want = wanted_links(&inv);
    crate::leftovers::clean(&want);
    let session = Session::new(tracer, None, names)?;
    // Subscribe before the first scan so that no link created in between is missed.
    let (tx, mut link_events) = tokio::sync::mpsc::unbounded_channel();
    links::watch(tx)?;
    let state: Shared = Arc::new(RwLock::new(State::default()));
    let ctx = trace::node_context(&inv, NatRules::read());
    let mut agent = Agent {
        args: args.clone(),
        session,
        cache,
        state: state.clone(),
        ctx,
        inv,
        clock: Clock::now(),
        pods: Vec::new(),
        interner: Interner::default(),
        last: None,
    };
    agent.reconcile()?;
    // A first snapshot before the API answers: /healthz is true from the first request on.
    agent.poll()?;
    state.write().expect("state").poll_interval_seconds = args.poll_interval.as_secs_f64();

    let (flows_tx, mut flows_rx) = tokio::sync::mpsc::channel::<FlowsRequest>(16);
    let api_state = api::ApiState { state: state.clone(), flows: flows_tx };
    api::serve_unix(&args.socket, api_state.clone()).await?;
    let _socket_file = api::SocketFile(args.socket.clone());
    if let Some(addr) = args.listen {
        api::serve_tcp(addr, api_state).await?;
    }
    eprintln!(
        "podtrace: agent tracing {} interfaces, API on {}{}",
        agent.session.tracer.attached().count(),
        args.socket.display(),
        args.listen.map(|a| format!(" and http://{a}")).unwrap_or_default()
    );
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut next_poll = tokio::time::Instant::now() + args.poll_interval;
    let mut poll_times = PollTimes::default();
    let mut last_reconcile = Instant::now();
    let ring = agent.session.watch_ring()?;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            Some(req) = flows_rx.recv() => {
                let _ = req.reply.send(agent.answer(&req.query));
            }
            Some(ev) = link_events.recv() => {
                // Take every event already queued: a burst of new pods is attached together.
                let mut batch = vec![ev];
                while let Ok(more) = link_events.try_recv() {
                    batch.push(more);
                }
                agent.on_links(batch);
            }
            ready = ring.readable() => {
                if let Ok(mut guard) = ready {
                    agent.session.drain_hops();
                    guard.clear_ready();
                }
            }
            _ = tokio::time::sleep_until(next_poll) => {
                if last_reconcile.elapsed() >= args.reconcile_interval {
                    last_reconcile = Instant::now();
                    if let Err(e) = agent.reconcile() {
                        log::warn!("reconcile: {e:#}");
                    }
                }
                let started = Instant::now();
                if let Err(e) = agent.poll() {
                    log::warn!("poll: {e:#}");
                }
                let took = started.elapsed();
                let interval = poll_times.next_interval(args.poll_interval, took);
                next_poll = tokio::time::Instant::now() + interval;
                let mut st = state.write().expect("state");
                st.poll_seconds = took.as_secs_f64();
                st.poll_interval_seconds = interval.as_secs_f64();
            }
        }
    }
    eprintln!("podtrace: agent stopping, detaching");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_polls_stretch_the_interval_to_a_tenth_of_the_time_but_one_slow_poll_does_not() {
        let ms = Duration::from_millis;
        let mut t = PollTimes::default();
        assert_eq!(t.next_interval(ms(500), ms(900)), ms(500), "one slow poll");
        assert_eq!(t.next_interval(ms(500), ms(10)), ms(500));
        assert_eq!(t.next_interval(ms(500), ms(300)), ms(500), "two slow polls in five");
        assert_eq!(t.next_interval(ms(500), ms(300)), ms(2700), "three in five");
        for _ in 0..4 {
            t.next_interval(ms(500), ms(1));
        }
        assert_eq!(t.next_interval(ms(500), ms(1)), ms(500), "only the last five count");
    }

    #[test]
    fn pods_are_grouped_by_veth_and_named_from_the_cache() {
        use crate::netlink::{Link, Route};
        let link = |index, name: &str, kind: Option<&str>| Link {
            index,
            name: name.into(),
            mac: None,
            kind: kind.map(str::to_string),
            up: true,
            mtu: 1500,
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
            vec![crate::netlink::Addr { index: 2, addr: "198.18.1.10".parse().unwrap(), prefix: 24 }],
            vec![
                route("198.18.1.11", 32, 7),
                Route { table: 254, dst: None, gateway: None, oif: Some(2), v6: false },
            ],
            vec![],
        );
        let cache = podsource::PodCache::default();
        cache.replace(crate::pods::parse_pod_list(r#"{"items":[{"metadata":{"name":"web-1","namespace":"default"},"status":{"podIP":"198.18.1.11"}}]}"#).unwrap());
        let pods = node_pods(&inv, &cache);
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].name, "web-1");
        assert_eq!(pods[0].veth, Some(7));
        assert_eq!(wanted_links(&inv), vec![(2, "eth0".to_string()), (7, "enia".to_string())]);
        let _: std::net::IpAddr = pods[0].ips[0];
    }
}
