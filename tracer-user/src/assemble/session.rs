//! One tracing session, the pipeline every command shares: load the programs (with offsets
//! from the kernel's BTF), remove leftovers, attach, drain hop events, follow conntrack, poll
//! the kernel maps and assemble complete flows. `trace`, `compare` and `agent` differ only in
//! what they attach to and what they do with the flows.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tracer_common::{DropKey, DropStats, FlowKey, FlowStats, Tuple};

use super::{
    conntrack_view::{CtView, merge_bounded},
    context::{Clock, NodeContext, TracedPod},
    drops::DropNames,
    flows::{self, Observations},
    hops::{HopPair, HopTable},
    model::Flow,
};
use crate::{
    kernel::{
        addr,
        attach::{AttachMode, Tracer},
        btf::{self, Btf},
        hop_log::HopLog,
        load::{CaptureLoad, LoadOptions, SampleRate},
        maps::{self, Counters},
        preflight,
    },
    node::conntrack::{self, CtEntry},
};

/// Hop pairs kept in memory (stalest dropped first, counted in `hop_events_evicted`).
const MAX_HOP_PAIRS: usize = 100_000;
/// The hop log is drained this often. The kernel does not wake us (that would cost it a
/// wake-up check per event); a CPU's log holds at least `HOP_LOG_MIN_SLOTS` events, and what
/// it overwrites before a drain is counted in `hop_events_lost`.
pub const HOP_DRAIN_EVERY: Duration = Duration::from_millis(20);
/// Conntrack entries are kept this long after they were last seen (flows outlive them).
const CT_RETENTION: Duration = Duration::from_secs(600);
/// Full conntrack dumps this often; NEW/UPDATE events fill the gaps in between.
const CT_DUMP_EVERY: Duration = Duration::from_secs(5);
/// Conntrack entries kept at most (oldest dropped first, counted in `conntrack_evicted`).
const MAX_CONNTRACK: usize = 131_072;

/// How a session loads and filters.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub sample_rate: SampleRate,
    /// Capacity of the kernel flow table.
    pub max_flows: u32,
    pub attach_mode: AttachMode,
    /// Memory budget of the flow cache over all CPUs.
    pub flow_cache_bytes: u64,
    /// Track only packets to or from these addresses (traced pods and node addresses);
    /// `None` tracks everything (the agent).
    pub filter: Option<Vec<IpAddr>>,
    /// Load the programs able to capture (`kernel::capture`).
    pub capture: Option<CaptureLoad>,
}

/// Conntrack event entries waiting for the next poll, at most. A SYN flood makes millions of
/// events between two polls (each new entry, each one early-dropped): beyond this they are
/// dropped and counted, and the next full dump (every `CT_DUMP_EVERY`) reads the table itself.
const MAX_CT_EVENTS_QUEUED: usize = 65_536;

/// Losses that happen in user space, reported next to the kernel counters.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct UserCounters {
    /// Hop events the kernel overwrote in its log before they were read.
    pub hop_events_lost: u64,
    pub hop_events_evicted: u64,
    pub conntrack_evicted: u64,
    pub conntrack_dump_errors: u64,
    /// Conntrack events not queued (beyond `MAX_CT_EVENTS_QUEUED`).
    pub conntrack_events_dropped: u64,
}

/// The conntrack event queue's fill and losses, shared with its reader thread.
#[derive(Default)]
struct CtQueue {
    queued: AtomicUsize,
    dropped: AtomicU64,
}

/// Everything read in one poll.
pub struct Snapshot {
    pub entries: Vec<(FlowKey, FlowStats)>,
    pub counters: Counters,
    pub conntrack: Vec<CtEntry>,
    pub drops: Vec<(DropKey, DropStats)>,
    pub retransmits: Vec<(Tuple, u64)>,
}

pub struct Session {
    tracer: Tracer,
    hop_log: HopLog,
    /// Shared with the views `/flows` answers stream from; copied on write only while one
    /// of them holds it.
    hops: Arc<HopTable>,
    conntrack: CtView,
    ct_rx: mpsc::Receiver<Vec<CtEntry>>,
    ct_queue: Arc<CtQueue>,
    ct_stop: Arc<AtomicBool>,
    ct_thread: Option<JoinHandle<()>>,
    last_ct_dump: Option<Instant>,
    /// Addresses whose conntrack entries are kept (None = all).
    interesting: Option<HashSet<[u8; 16]>>,
    pub user: UserCounters,
    /// Names for drop reasons and locations (read while still privileged).
    names: Arc<DropNames>,
    pub clock: Clock,
}

impl Session {
    /// Loads the programs, removes leftovers of killed runs from `ifaces`, attaches to every
    /// one of them (the first failure is the error; nothing stays attached) and starts
    /// following conntrack.
    pub fn start(opts: &SessionOptions, ifaces: &[(u32, String)]) -> Result<Session> {
        let mut session = Session::load(opts)?;
        crate::kernel::leftovers::clean(ifaces);
        if let Some((_, e)) = session.attach(ifaces).into_iter().next() {
            return Err(e);
        }
        Ok(session)
    }

    /// Loads the programs without attaching them anywhere yet.
    pub fn load(opts: &SessionOptions) -> Result<Session> {
        // The parsed BTF is large: only what is taken from it is kept.
        let (layout, names) = {
            let btf = Btf::from_file(&preflight::check_btf()?)?;
            (btf::kernel_layout(&btf, btf::own_netns_inum())?, DropNames::load(&btf))
        };
        let load = LoadOptions {
            sample_rate: opts.sample_rate,
            filter: opts.filter.is_some(),
            max_flows: opts.max_flows,
            layout: Some(layout),
            flow_cache_bytes: opts.flow_cache_bytes,
            cpus: None,
            capture: opts.capture,
            ..LoadOptions::default()
        };
        let mut tracer = Tracer::load(&load, opts.attach_mode)?;
        if let Some(filter) = &opts.filter {
            maps::set_addr_filter(&mut tracer.ebpf, filter)?;
        }
        let interesting = opts.filter.as_ref().map(|f| f.iter().map(|ip| addr::to_key(*ip)).collect());
        let hop_log = HopLog::map(&tracer.ebpf)?;
        let (tx, ct_rx) = mpsc::channel();
        let ct_queue = Arc::new(CtQueue::default());
        let queue = ct_queue.clone();
        let ct_stop = Arc::new(AtomicBool::new(false));
        let stop = ct_stop.clone();
        // Conntrack events: connections that live shorter than one poll interval are still
        // seen. Not fatal when unavailable (dumps still work).
        let ct_thread = match conntrack::Events::subscribe() {
            Ok(events) => Some(std::thread::spawn(move || {
                let _ = events.set_timeout(Duration::from_millis(200));
                while !stop.load(Ordering::Relaxed) {
                    let Ok(batch) = events.next() else { continue };
                    let n = batch.len();
                    if n == 0 {
                        continue;
                    }
                    if queue.queued.load(Ordering::Relaxed) + n > MAX_CT_EVENTS_QUEUED {
                        queue.dropped.fetch_add(n as u64, Ordering::Relaxed);
                        continue;
                    }
                    queue.queued.fetch_add(n, Ordering::Relaxed);
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            })),
            Err(e) => {
                log::warn!("conntrack events unavailable ({e:#}); using periodic dumps only");
                None
            }
        };
        Ok(Session {
            tracer,
            hop_log,
            hops: Arc::new(HopTable::new(MAX_HOP_PAIRS)),
            conntrack: HashMap::new(),
            ct_rx,
            ct_queue,
            ct_stop,
            ct_thread,
            last_ct_dump: None,
            interesting,
            user: UserCounters::default(),
            names: Arc::new(names),
            clock: Clock::now(),
        })
    }

    /// Attaches to the interfaces not attached yet; returns the failures by interface name.
    pub fn attach(&mut self, ifaces: &[(u32, String)]) -> Vec<(String, anyhow::Error)> {
        let todo: Vec<(u32, String)> =
            ifaces.iter().filter(|(i, _)| !self.tracer.is_attached(*i)).cloned().collect();
        self.tracer.attach_many(&todo)
    }

    /// Detaches from one interface; false if it was not attached.
    pub fn detach(&mut self, ifindex: u32) -> bool {
        let was = self.tracer.is_attached(ifindex);
        if let Err(e) = self.tracer.detach(ifindex) {
            log::warn!("{e:#}");
        }
        was
    }

    pub fn attached(&self) -> impl Iterator<Item = (u32, &str)> {
        self.tracer.attached()
    }

    pub fn attached_names(&self) -> Vec<String> {
        self.attached().map(|(_, n)| n.to_string()).collect()
    }

    pub fn attach_mode(&self) -> AttachMode {
        self.tracer.mode
    }

    /// Hooks another tool's tc filter hides from us (tc mode only), one line each.
    pub fn blind_hooks(&self) -> Vec<String> {
        self.tracer.blind_hooks()
    }

    /// Detaches from interfaces that disappeared; returns their names.
    pub fn prune_vanished(&mut self) -> Vec<String> {
        let gone: Vec<(u32, String)> = self
            .attached()
            .filter(|(i, _)| !crate::kernel::netlink::link_exists(*i))
            .map(|(i, n)| (i, n.to_string()))
            .collect();
        for (i, _) in &gone {
            self.detach(*i);
        }
        gone.into_iter().map(|(_, n)| n).collect()
    }

    /// The wake-ups of a session's loop: signals, hop-log drains, and a tick when given.
    pub fn events(&self, tick: Option<Duration>) -> Result<Events> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut drain = tokio::time::interval(HOP_DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Events {
            drain,
            sigint: signal(SignalKind::interrupt())?,
            sigterm: signal(SignalKind::terminate())?,
            tick: tick.map(tokio::time::interval),
        })
    }

    /// Moves every hop event written since the last drain into memory.
    pub fn drain_hops(&mut self) {
        let hops = &mut self.hops;
        let drained = self.hop_log.drain(|ev| Arc::make_mut(hops).add(ev));
        self.user.hop_events_lost += drained.lost;
        self.user.hop_events_evicted = self.hops.evicted;
    }

    fn keep(&self, c: &CtEntry) -> bool {
        match &self.interesting {
            None => true,
            Some(set) => [c.orig.src, c.orig.dst, c.reply.src, c.reply.dst].iter().any(|a| set.contains(a)),
        }
    }

    /// Merges conntrack events, and now and then a full dump, into the conntrack view.
    fn refresh_conntrack(&mut self) {
        let now = Instant::now();
        let mut fresh: Vec<CtEntry> = self.ct_rx.try_iter().flatten().collect();
        self.ct_queue.queued.fetch_sub(fresh.len(), Ordering::Relaxed);
        self.user.conntrack_events_dropped = self.ct_queue.dropped.load(Ordering::Relaxed);
        // Without an event subscription every refresh is a full dump.
        let due = self.ct_thread.is_none()
            || self.last_ct_dump.is_none_or(|t| now.duration_since(t) >= CT_DUMP_EVERY);
        if due {
            self.last_ct_dump = Some(now);
            match conntrack::dump() {
                Ok(d) => fresh.extend(d),
                Err(e) => {
                    self.user.conntrack_dump_errors += 1;
                    log::debug!("conntrack dump: {e:#}");
                }
            }
        }
        // Expired entries go first, so that they make room before live ones would.
        self.conntrack.retain(|_, (_, seen)| now.duration_since(*seen) < CT_RETENTION);
        fresh.retain(|c| self.keep(c));
        self.user.conntrack_evicted += merge_bounded(&mut self.conntrack, fresh, now, MAX_CONNTRACK);
    }

    /// Reads the flow table and counters, drains hop events, refreshes conntrack.
    pub fn poll(&mut self) -> Result<Snapshot> {
        self.drain_hops();
        self.refresh_conntrack();
        let ebpf = &self.tracer.ebpf;
        Ok(Snapshot {
            entries: maps::read_flows(ebpf)?,
            counters: maps::read_counters(ebpf)?,
            conntrack: self.conntrack.values().map(|(c, _)| *c).collect(),
            drops: maps::read_drops(ebpf)?,
            retransmits: maps::read_retransmits(ebpf)?,
        })
    }

    fn observations<'a>(&'a self, snap: &'a Snapshot) -> Observations<'a> {
        Observations {
            entries: &snap.entries,
            hops: &self.hops,
            conntrack: &snap.conntrack,
            drops: &snap.drops,
            retransmits: &snap.retransmits,
        }
    }

    /// The complete flows of a snapshot, sorted by pod and first packet.
    pub fn flows(&self, snap: &Snapshot, ctx: &NodeContext, pods: &[TracedPod]) -> Vec<Flow> {
        flows::assemble(&self.observations(snap), ctx, &self.names, pods, self.clock)
    }

    /// Hands each flow of a snapshot to `sink` as it is built (see [`flows::assemble_each`]);
    /// returns the connection number of each of the snapshot's entries.
    pub fn each_flow(
        &self,
        snap: &Snapshot,
        ctx: &NodeContext,
        pods: &[TracedPod],
        sink: impl FnMut(Flow, u32),
    ) -> Vec<u32> {
        flows::assemble_each(&self.observations(snap), ctx, &self.names, pods, self.clock, sink)
    }

    /// What assembling needs besides a snapshot, detached from the session: it can build
    /// flows on another thread while the session goes on polling.
    pub fn frozen(&self) -> Frozen {
        Frozen { hops: self.hops.clone(), names: self.names.clone(), clock: self.clock }
    }

    /// Forgets flows: deletes their kernel entries and the hop pairs that only concern them.
    pub fn delete_flows(&mut self, keys: &[FlowKey]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        maps::delete_flows(&self.tracer.ebpf, keys).context("deleting expired flows")?;
        let deleted: HashSet<Tuple> = keys.iter().map(|k| k.tuple).collect();
        Arc::make_mut(&mut self.hops)
            .retain(|h: &HopPair| !deleted.contains(&h.from.tuple) && !deleted.contains(&h.to.tuple));
        Ok(())
    }

    /// The loaded object, for the capture maps (`kernel::capture`).
    pub fn ebpf_mut(&mut self) -> &mut aya::Ebpf {
        &mut self.tracer.ebpf
    }

    /// Capacity of the kernel flow table.
    pub fn flow_table_capacity(&self) -> u32 {
        maps::flow_table_capacity(&self.tracer.ebpf)
    }
}

/// The hop pairs, drop names and clock of a session at one moment (see [`Session::frozen`]).
#[derive(Clone)]
pub struct Frozen {
    hops: Arc<HopTable>,
    names: Arc<DropNames>,
    clock: Clock,
}

impl Frozen {
    /// As [`Session::each_flow`].
    pub fn each_flow(
        &self,
        snap: &Snapshot,
        ctx: &NodeContext,
        pods: &[TracedPod],
        sink: impl FnMut(Flow, u32),
    ) -> Vec<u32> {
        let obs = Observations {
            entries: &snap.entries,
            hops: &self.hops,
            conntrack: &snap.conntrack,
            drops: &snap.drops,
            retransmits: &snap.retransmits,
        };
        flows::assemble_each(&obs, ctx, &self.names, pods, self.clock, sink)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.ct_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ct_thread.take() {
            let _ = t.join();
        }
    }
}

/// Why a session's loop woke up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// SIGINT or SIGTERM: finish up.
    Stop,
    /// Time to drain the hop log: call [`Session::drain_hops`].
    Hops,
    Tick,
}

/// Signals, the hop-log drain timer and an optional tick.
pub struct Events {
    drain: tokio::time::Interval,
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    tick: Option<tokio::time::Interval>,
}

impl Events {
    pub async fn next(&mut self) -> Wake {
        let Events { drain, sigint, sigterm, tick } = self;
        let tick = async {
            match tick {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = sigint.recv() => Wake::Stop,
            _ = sigterm.recv() => Wake::Stop,
            _ = drain.tick() => Wake::Hops,
            _ = tick => Wake::Tick,
        }
    }
}
