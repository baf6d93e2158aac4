//! `GET /flows` in bounded memory: flows are assembled on a thread of their own from a view of
//! the last poll (shared, immutable), and either streamed as NDJSON through a small bounded
//! channel (the client's reading paces the assembly) or cut into pages in a stable order
//! (`limit`, and `continue` from the `Podtrace-Continue` header of the previous page).
use std::{
    collections::BinaryHeap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{
    assemble::{
        context::{NodeContext, TracedPod},
        model::Flow,
        session::{Frozen, Snapshot},
    },
    report::json::FlowReport,
};

/// Concurrent `/flows` answers, at most: each assembles the whole snapshot once.
pub const MAX_CONCURRENT: usize = 4;
/// Largest page a `limit` may ask for.
pub const MAX_LIMIT: usize = 5000;
/// A streamed answer the client stopped reading is abandoned after this.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of NDJSON per streamed chunk, and chunks in flight: what one stream holds.
const CHUNK: usize = 64 * 1024;
pub const CHUNKS_IN_FLIGHT: usize = 8;
/// Longest `continue` token accepted.
const MAX_TOKEN: usize = 4096;

/// Filters and paging of `GET /flows`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowQuery {
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// Only flows with a packet at or after this Unix time (ms).
    pub since: Option<u64>,
    /// The flows of the pod with this IP: this node's pod, or a pod elsewhere where its flows
    /// cross this node (a NodePort request forwarded to it), named `pod`/`namespace` if given.
    pub ip: Option<std::net::IpAddr>,
    /// At most this many flows, in [`Position`] order.
    pub limit: Option<usize>,
    /// Only flows after this one (a `continue` token).
    pub after: Option<Position>,
}

/// Where a flow stands in the paging order: namespace, pod, first packet, flow id, pod IP (a
/// total order: a pod's flow is one connection, and a connection has one id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    namespace: String,
    pod: String,
    first_seen_ms: u64,
    id: String,
    pod_ip: String,
}

impl Position {
    fn of(f: &Flow) -> Position {
        Position {
            namespace: f.namespace.clone(),
            pod: f.pod.clone(),
            first_seen_ms: f.first_seen_ms,
            id: f.id(),
            pod_ip: f.pod_ip.to_string(),
        }
    }

    /// The `continue` token for the flows after this one: hex of its JSON (opaque to clients,
    /// safe in a header and a query string).
    pub fn token(&self) -> String {
        let json = serde_json::to_vec(self).expect("a position serializes");
        json.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_token(t: &str) -> Result<Position, String> {
        let bad = || format!("continue={t:.40?} is not a token from a Podtrace-Continue header");
        if t.len() > MAX_TOKEN || !t.len().is_multiple_of(2) {
            return Err(bad());
        }
        let bytes: Vec<u8> = (0..t.len())
            .step_by(2)
            .map(|i| t.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        serde_json::from_slice(&bytes).map_err(|_| bad())
    }
}

/// What `/flows` answers are built from: the last poll's kernel data and the session's hop
/// pairs, node context and pods at the time of the request.
pub struct FlowView {
    pub snap: Option<Arc<Snapshot>>,
    pub frozen: Frozen,
    pub ctx: Arc<NodeContext>,
    pub pods: Vec<TracedPod>,
}

impl FlowView {
    /// Hands every flow the query selects to `sink` (in assembly order).
    fn each(&self, q: &FlowQuery, mut sink: impl FnMut(Flow)) {
        let Some(snap) = &self.snap else { return };
        let mut pods: Vec<TracedPod> = self
            .pods
            .iter()
            .filter(|p| {
                q.pod.as_ref().is_none_or(|n| &p.name == n)
                    && q.namespace.as_ref().is_none_or(|n| &p.namespace == n)
                    && q.ip.is_none_or(|ip| p.ips.contains(&ip))
            })
            .cloned()
            .collect();
        // A pod of another node: its flows where they cross this node (as `compare` traces
        // remote endpoints), named as the caller named it.
        if let Some(ip) = q.ip
            && !self.pods.iter().any(|p| p.ips.contains(&ip))
        {
            pods.push(TracedPod {
                name: q.pod.clone().unwrap_or_else(|| ip.to_string()),
                namespace: q.namespace.clone().unwrap_or_default(),
                ips: vec![ip],
                ..Default::default()
            });
        }
        if pods.is_empty() {
            return;
        }
        self.frozen.each_flow(snap, &self.ctx, &pods, |f, _| {
            if q.since.is_none_or(|s| f.last_seen_ms >= s) {
                sink(f);
            }
        });
    }

    /// The first `limit` selected flows after `q.after` in [`Position`] order, as NDJSON, and
    /// the token for the next page if there are more. Holds at most `limit + 1` flows' lines.
    pub fn page(&self, q: &FlowQuery, limit: usize) -> (String, Option<String>) {
        let mut best: BinaryHeap<(Position, String)> = BinaryHeap::new();
        self.each(q, |f| {
            let pos = Position::of(&f);
            if q.after.as_ref().is_some_and(|a| &pos <= a) {
                return;
            }
            if best.len() > limit {
                if best.peek().is_some_and(|(worst, _)| &pos >= worst) {
                    return;
                }
                best.pop();
            }
            best.push((pos, line(&f)));
        });
        let mut page = best.into_sorted_vec();
        let more = page.len() > limit;
        page.truncate(limit);
        let next = more.then(|| page.last().map(|(p, _)| p.token())).flatten();
        (page.into_iter().map(|(_, l)| l).collect(), next)
    }

    /// Streams every selected flow as NDJSON chunks into `out`, waiting while the client
    /// reads (at most [`STALL_TIMEOUT`] for one chunk). Sets `aborted` if it gave up.
    pub fn stream(&self, q: &FlowQuery, out: &mpsc::Sender<Bytes>, aborted: &AtomicBool) {
        let mut buf = String::with_capacity(CHUNK);
        let mut gone = false;
        self.each(q, |f| {
            if gone {
                return;
            }
            buf += &line(&f);
            if buf.len() >= CHUNK {
                gone = !send(out, Bytes::from(std::mem::replace(&mut buf, String::with_capacity(CHUNK))));
            }
        });
        if !gone && !buf.is_empty() {
            gone = !send(out, Bytes::from(buf));
        }
        if gone {
            aborted.store(true, Ordering::Relaxed);
        }
    }
}

fn line(f: &Flow) -> String {
    let mut l = serde_json::to_string(&FlowReport::from(f)).expect("a flow serializes");
    l.push('\n');
    l
}

/// Sends one chunk, waiting while the channel is full; false if the client went away or did
/// not read for [`STALL_TIMEOUT`]. (Polls the channel: this runs on a plain thread.)
fn send(out: &mpsc::Sender<Bytes>, mut chunk: Bytes) -> bool {
    let deadline = Instant::now() + STALL_TIMEOUT;
    loop {
        match out.try_send(chunk) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(c)) => {
                if Instant::now() >= deadline {
                    return false;
                }
                chunk = c;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let p = Position {
            namespace: "default".into(),
            pod: "web-1".into(),
            first_seen_ms: 17,
            id: "udp:198.18.1.11:1000>198.18.3.10:8080".into(),
            pod_ip: "198.18.1.11".into(),
        };
        assert_eq!(Position::from_token(&p.token()).unwrap(), p);
        for bad in ["", "zz", "0", "7b7d", &"00".repeat(3000), "é"] {
            assert!(Position::from_token(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn positions_order_by_pod_then_time_then_id() {
        let at = |pod: &str, t: u64, id: &str| Position {
            namespace: "default".into(),
            pod: pod.into(),
            first_seen_ms: t,
            id: id.into(),
            pod_ip: String::new(),
        };
        let mut v = vec![at("b", 1, "x"), at("a", 2, "x"), at("a", 1, "y"), at("a", 1, "x")];
        v.sort();
        assert_eq!(v, [at("a", 1, "x"), at("a", 1, "y"), at("a", 2, "x"), at("b", 1, "x")]);
    }
}
