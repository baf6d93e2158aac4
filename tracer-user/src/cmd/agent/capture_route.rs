//! The agent's `GET /capture?pod=NAME[&namespace=NS][&duration=30s][&snaplen=N]
//! [&max_packets=N][&max_bytes=N][&filter=EXPR]`: one pod's packets at every hop, streamed as
//! pcapng while the capture runs. Unix socket only (packet payloads never go to the TCP
//! listener), one capture at a time, bounded in duration and size.
use std::{
    io::Write,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use axum::{
    Router,
    body::Body,
    extract::RawQuery,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use aya::maps::{MapData, RingBuf};
use tokio::sync::{mpsc, oneshot};

use super::tracker::Agent;
use crate::{
    assemble::capture_filter::Filter,
    cmd::{
        capture::{CaptureRun, CaptureSpec},
        options::parse_duration,
        targets::Targets,
    },
    kernel::capture,
};

/// Longest capture the agent runs.
pub const MAX_DURATION: Duration = Duration::from_secs(300);
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Most bytes one capture streams.
pub const MAX_BYTES: u64 = 1 << 30;
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Most bytes written but not yet taken by the client: a client reading slower than the pod's
/// traffic ends its capture rather than growing the agent's memory.
pub const MAX_QUEUED_BYTES: u64 = 16 << 20;

/// A parsed `/capture` query.
#[derive(Clone, Debug)]
pub struct CaptureQuery {
    pub pod: String,
    pub namespace: Option<String>,
    pub duration: Duration,
    pub snaplen: u32,
    pub max_packets: Option<u64>,
    pub max_bytes: u64,
    pub filter: Option<Filter>,
}

pub fn parse_query(q: &str) -> Result<CaptureQuery, String> {
    let mut out = CaptureQuery {
        pod: String::new(),
        namespace: None,
        duration: DEFAULT_DURATION,
        snaplen: 0,
        max_packets: None,
        max_bytes: DEFAULT_MAX_BYTES,
        filter: None,
    };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = super::api::parse_flow_query(&format!("pod={v}"))?.pod.unwrap_or_default();
        let num = |what: &str| v.parse::<u64>().map_err(|_| format!("{what}={v:?} is not a number"));
        match k {
            "pod" => out.pod = v,
            "namespace" => out.namespace = (!v.is_empty()).then_some(v),
            "duration" => {
                out.duration = parse_duration(&v)?;
                if out.duration > MAX_DURATION {
                    return Err(format!(
                        "duration {v} is longer than the agent's limit of {}s",
                        MAX_DURATION.as_secs()
                    ));
                }
            }
            "snaplen" => out.snaplen = num("snaplen")?.min(u32::MAX as u64) as u32,
            "max_packets" => out.max_packets = Some(num("max_packets")?),
            "max_bytes" => {
                out.max_bytes = num("max_bytes")?;
                if out.max_bytes > MAX_BYTES {
                    return Err(format!("max_bytes {v} is more than the agent's limit of {MAX_BYTES}"));
                }
            }
            "filter" => out.filter = Some(Filter::parse(&v).map_err(|e| format!("invalid filter: {e}"))?),
            other => {
                return Err(format!(
                    "unknown query parameter {other:?} (pod, namespace, duration, snaplen, max_packets, max_bytes, filter)"
                ));
            }
        }
    }
    if out.pod.is_empty() {
        return Err("pod=NAME is required".into());
    }
    Ok(out)
}

/// The answer to a `/capture` request: the stream's chunks, or the HTTP error.
pub type CaptureReply = Result<(mpsc::UnboundedReceiver<Vec<u8>>, Arc<AtomicU64>), (StatusCode, String)>;

/// A `/capture` request for the agent loop, which owns the session.
pub struct CaptureRequest {
    pub query: CaptureQuery,
    pub reply: oneshot::Sender<CaptureReply>,
}

static REQUESTS: OnceLock<mpsc::Sender<CaptureRequest>> = OnceLock::new();

/// The route, for the unix socket's router.
pub fn router() -> Router {
    Router::new().route("/capture", get(handle))
}

async fn handle(RawQuery(q): RawQuery) -> Response {
    let query = match parse_query(q.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, e + "\n").into_response(),
    };
    let Some(tx) = REQUESTS.get() else {
        return (StatusCode::NOT_FOUND, "capture is off in this agent (--no-capture)\n").into_response();
    };
    let (reply, answer) = oneshot::channel();
    if tx.send(CaptureRequest { query, reply }).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "agent stopping\n").into_response();
    }
    match answer.await {
        Ok(Ok((rx, queued))) => {
            let stream = futures::stream::unfold((rx, queued), |(mut rx, queued)| async move {
                let chunk = rx.recv().await?;
                queued.fetch_sub(chunk.len() as u64, Ordering::Relaxed);
                Some((Ok::<_, std::io::Error>(chunk), (rx, queued)))
            });
            ([(header::CONTENT_TYPE, "application/x-pcapng")], Body::from_stream(stream)).into_response()
        }
        Ok(Err((code, e))) => (code, e + "\n").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "agent stopping\n").into_response(),
    }
}

/// pcapng bytes into the response stream; fails once the client is gone or has left
/// [`MAX_QUEUED_BYTES`] unread.
pub struct ChannelWriter {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    buf: Vec<u8>,
    pub sent: u64,
    /// Sent but not yet taken by the response stream.
    queued: Arc<AtomicU64>,
}

impl Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let len = self.buf.len() as u64;
        if self.queued.load(Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "capture client reads slower than the traffic",
            ));
        }
        self.sent += len;
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.tx
            .send(std::mem::take(&mut self.buf))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "capture client gone"))
    }
}

struct Running {
    run: CaptureRun<ChannelWriter>,
    targets: Targets,
    deadline: Instant,
    max_bytes: u64,
}

/// The agent's captures: the copies' ring (taken once) and the capture running, if any.
pub struct Captures {
    ring: Option<RingBuf<MapData>>,
    running: Option<Running>,
}

impl Captures {
    /// Takes the ring of a capture-armed session and starts serving `/capture`; `None` for a
    /// session without the capture path.
    pub fn new(agent: &mut Agent, armed: bool) -> Result<(Captures, mpsc::Receiver<CaptureRequest>)> {
        let (tx, rx) = mpsc::channel(4);
        let ring = if armed {
            let _ = REQUESTS.set(tx);
            Some(capture::take_ring(agent.session.ebpf_mut())?)
        } else {
            None
        };
        Ok((Captures { ring, running: None }, rx))
    }

    pub fn running(&self) -> bool {
        self.running.is_some()
    }

    /// Starts a capture for a request, or answers why not.
    pub fn start(&mut self, agent: &mut Agent, req: CaptureRequest) {
        let answer = self.try_start(agent, &req.query);
        let _ = req.reply.send(answer);
    }

    fn try_start(&mut self, agent: &mut Agent, q: &CaptureQuery) -> CaptureReply {
        if self.running.is_some() {
            return Err((StatusCode::CONFLICT, "a capture is already running; one at a time".into()));
        }
        let pod = agent
            .pods
            .iter()
            .find(|p| p.name == q.pod && q.namespace.as_ref().is_none_or(|n| *n == p.namespace))
            .cloned()
            .ok_or((StatusCode::NOT_FOUND, format!("no pod {} on this node", q.pod)))?;
        let mut attach: Vec<(u32, String)> =
            agent.inv.enis.iter().map(|e| (e.ifindex, e.name.clone())).collect();
        attach.extend(agent.inv.branches.iter().map(|b| (b.ifindex, b.name.clone())));
        attach.extend(pod.veths.iter().map(|v| (*v, agent.ctx.ifname(*v))));
        let targets = Targets { pods: vec![pod], ctx: (*agent.ctx).clone(), attach, filter: Vec::new() };
        let ring =
            self.ring.take().ok_or((StatusCode::NOT_FOUND, "capture is off in this agent".to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicU64::new(0));
        let out = ChannelWriter { tx, buf: Vec::new(), sent: 0, queued: queued.clone() };
        let spec = CaptureSpec { snaplen: q.snaplen, filter: q.filter.clone(), max_packets: q.max_packets };
        let internal = |e: anyhow::Error| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"));
        capture::reset(agent.session.ebpf_mut()).map_err(internal)?;
        let run =
            CaptureRun::start(&mut agent.session, ring, &targets, &agent.inv, spec, out).map_err(internal)?;
        self.running =
            Some(Running { run, targets, deadline: Instant::now() + q.duration, max_bytes: q.max_bytes });
        Ok((rx, queued))
    }

    /// While a capture runs: writes what is ready, ends it at its bounds or when its client left.
    pub fn tick(&mut self, agent: &mut Agent) {
        let Some(r) = self.running.as_mut() else { return };
        let done = match r.run.tick(&mut agent.session, &r.targets) {
            Ok(done) => done,
            Err(e) => {
                log::debug!("capture: {e:#}");
                true
            }
        };
        let out = r.run.writer.get_mut();
        // A client that left ends its capture at once, traffic or not.
        if done || Instant::now() >= r.deadline || out.sent >= r.max_bytes || out.tx.is_closed() {
            self.stop(agent);
        }
    }

    fn stop(&mut self, agent: &mut Agent) {
        let Some(r) = self.running.take() else { return };
        let (ended, ring) = r.run.finish(&mut agent.session, &r.targets);
        self.ring = Some(ring);
        match ended {
            Ok((mut out, summary)) => {
                let _ = out.flush();
                log::info!(
                    "capture of {} ended: {} packets, {} lost to a full ring, {} missed",
                    r.targets.pods[0].name,
                    summary.packets,
                    summary.ring_full,
                    summary.missed
                );
            }
            Err(e) => log::info!("capture of {} ended: {e:#}", r.targets.pods[0].name),
        }
    }
}
