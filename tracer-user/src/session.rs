//! One tracing session: the loaded programs, the hop-event stream and the conntrack view,
//! polled into snapshots. Shared by `podtrace trace`, `compare` and `agent`.
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tracer_common::{DropKey, DropStats, FlowKey, FlowStats, HopEvent, Tuple};

use crate::hops::{HopPair, HopTable};

use crate::{
    attach::Tracer,
    conntrack::{self, CtEntry},
    drops::DropNames,
    maps::{self, Counters},
};

/// Hop pairs kept in memory (stalest dropped first, counted in `hop_events_evicted`).
const MAX_HOP_PAIRS: usize = 100_000;
/// Conntrack entries are kept this long after they were last seen (flows outlive them).
const CT_RETENTION: Duration = Duration::from_secs(600);
/// Full conntrack dumps this often; NEW/UPDATE events fill the gaps in between.
const CT_DUMP_EVERY: Duration = Duration::from_secs(5);
/// Conntrack entries kept at most (oldest dropped first, counted in `conntrack_evicted`).
const MAX_CONNTRACK: usize = 131_072;

/// The hop-event ring buffer's descriptor (owned by the session), for `tokio::io::unix::AsyncFd`.
pub struct RingFd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for RingFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// Losses that happen in user space, reported next to the kernel counters.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct UserCounters {
    pub hop_events_evicted: u64,
    pub conntrack_evicted: u64,
    pub conntrack_dump_errors: u64,
}

pub struct Session {
    pub tracer: Tracer,
    ring: RingBuf<MapData>,
    pub hops: HopTable,
    conntrack: HashMap<Tuple, (CtEntry, Instant)>,
    ct_rx: mpsc::Receiver<Vec<CtEntry>>,
    ct_stop: Arc<AtomicBool>,
    ct_thread: Option<JoinHandle<()>>,
    last_ct_dump: Option<Instant>,
    /// Addresses whose conntrack entries are kept (None = all).
    interesting: Option<HashSet<[u8; 16]>>,
    pub user: UserCounters,
    /// Names for drop reasons and locations (read while still privileged).
    pub names: DropNames,
}

/// Everything read in one poll.
pub struct Snapshot {
    pub entries: Vec<(FlowKey, FlowStats)>,
    pub counters: Counters,
    pub conntrack: Vec<CtEntry>,
    pub drops: Vec<(DropKey, DropStats)>,
    pub retransmits: Vec<(Tuple, u64)>,
}

impl Session {
    /// Takes over a tracer whose programs are attached, and starts following conntrack.
    pub fn new(
        mut tracer: Tracer,
        interesting: Option<HashSet<[u8; 16]>>,
        names: DropNames,
    ) -> Result<Session> {
        let ring = maps::take_hops(&mut tracer.ebpf)?;
        let (tx, ct_rx) = mpsc::channel();
        let ct_stop = Arc::new(AtomicBool::new(false));
        let stop = ct_stop.clone();
        // Conntrack events: connections that live shorter than one poll interval are still
        // seen. Not fatal when unavailable (dumps still work).
        let ct_thread = match conntrack::Events::subscribe() {
            Ok(events) => Some(std::thread::spawn(move || {
                let _ = events.set_timeout(Duration::from_millis(200));
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(batch) = events.next()
                        && !batch.is_empty()
                        && tx.send(batch).is_err()
                    {
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
            ring,
            hops: HopTable::new(MAX_HOP_PAIRS),
            conntrack: HashMap::new(),
            ct_rx,
            ct_stop,
            ct_thread,
            last_ct_dump: None,
            interesting,
            user: UserCounters::default(),
            names,
        })
    }

    /// Registers the ring buffer with the tokio reactor, to wait for hop events (epoll)
    /// instead of polling on a timer. Drop the returned handle before the session.
    pub fn watch_ring(&self) -> Result<tokio::io::unix::AsyncFd<RingFd>> {
        use std::os::fd::AsRawFd;
        let fd = RingFd(self.ring.as_raw_fd());
        // SAFETY: the fd belongs to `self.ring`, which stays open for the session's lifetime;
        // callers keep the AsyncFd shorter-lived than the session (it lives in their loop).
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watching the hop ring buffer: {}", e.into_parts().1))
    }

    /// Moves every pending hop event from the ring buffer into memory.
    pub fn drain_hops(&mut self) {
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<HopEvent>() {
                // SAFETY: the kernel wrote a HopEvent (repr(C), plain data) at this address;
                // read_unaligned copes with the ring buffer's 8-byte alignment.
                let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<HopEvent>()) };
                self.hops.add(&ev);
            }
        }
        self.user.hop_events_evicted = self.hops.evicted;
    }

    fn keep(&self, c: &CtEntry) -> bool {
        match &self.interesting {
            None => true,
            Some(set) => [c.orig.src, c.orig.dst, c.reply.src, c.reply.dst].iter().any(|a| set.contains(a)),
        }
    }

    /// Merges conntrack events, and now and then a full dump, into the conntrack view.
    pub fn refresh_conntrack(&mut self) {
        let now = Instant::now();
        let mut fresh: Vec<CtEntry> = self.ct_rx.try_iter().flatten().collect();
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
        for c in fresh {
            if self.keep(&c) {
                self.conntrack.insert(c.orig, (c, now));
            }
        }
        self.conntrack.retain(|_, (_, seen)| now.duration_since(*seen) < CT_RETENTION);
        if self.conntrack.len() > MAX_CONNTRACK {
            let mut by_age: Vec<(Instant, Tuple)> =
                self.conntrack.iter().map(|(k, (_, t))| (*t, *k)).collect();
            by_age.sort();
            let excess = self.conntrack.len() - MAX_CONNTRACK;
            for (_, k) in by_age.into_iter().take(excess) {
                self.conntrack.remove(&k);
            }
            self.user.conntrack_evicted += excess as u64;
        }
    }

    /// Reads the flow table and counters, drains hop events, refreshes conntrack.
    pub fn poll(&mut self) -> Result<Snapshot> {
        self.drain_hops();
        self.refresh_conntrack();
        Ok(Snapshot {
            entries: maps::read_flows(&self.tracer.ebpf)?,
            counters: maps::read_counters(&self.tracer.ebpf)?,
            conntrack: self.conntrack.values().map(|(c, _)| *c).collect(),
            drops: maps::read_drops(&self.tracer.ebpf)?,
            retransmits: maps::read_retransmits(&self.tracer.ebpf)?,
        })
    }

    /// Forgets hop pairs that only concern expired flows (agent idle expiry).
    pub fn forget_hops(&mut self, keep: impl Fn(&HopPair) -> bool) {
        self.hops.retain(keep);
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
