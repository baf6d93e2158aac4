//! Serving the API on a listener without letting clients exhaust the agent: a cap on open
//! connections (the oldest idle one makes room for a new one), a deadline for request
//! headers (slowloris), and connections that make no progress are closed. The descriptor
//! limit is raised at start and the connection caps keep a reserve of descriptors for
//! polling (netlink sockets, BPF links, the pods file).
use std::{
    collections::BTreeMap,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, body::Body};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::ServiceExt;

/// Open connections per listener, at most.
pub const MAX_CONNECTIONS: usize = 64;
/// Descriptors kept for everything but the API, whatever the clients do.
pub const FDS_RESERVED: u64 = 1024;
/// A request's headers must arrive within this (also the keep-alive idle time).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that neither reads nor writes a byte for this long is closed (a client that
/// stopped reading its answer).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Request head buffer (hyper's minimum is 8 KiB): bounds each connection's memory.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Raises the soft open-file limit to the hard one; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Connections each of `listeners` may hold so that [`FDS_RESERVED`] descriptors stay free.
pub fn connection_cap(fd_limit: u64, listeners: usize) -> usize {
    let spare = fd_limit.saturating_sub(FDS_RESERVED) / listeners.max(1) as u64;
    if spare < MAX_CONNECTIONS as u64 {
        log::warn!(
            "open-file limit {fd_limit} is low: at most {} API connections per listener",
            spare.max(4)
        );
    }
    (spare as usize).clamp(4, MAX_CONNECTIONS)
}

/// What the caps did, for `/metrics`.
#[derive(Default)]
pub struct ConnCounters {
    /// Idle connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// New connections closed at once: every slot was busy with a request.
    pub refused: AtomicU64,
}

/// Something that accepts connections (TCP or unix).
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// One open connection: requests in progress (their answers included), and how to close it.
struct Conn {
    busy: AtomicUsize,
    close: tokio::sync::Notify,
}

/// The open connections of one listener, oldest first.
struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    cap: usize,
}

impl Registry {
    /// Makes room for a connection: closes the oldest one not serving a request if at the
    /// cap. False if every connection is busy.
    fn admit(&self, id: u64, conn: Arc<Conn>, counters: &ConnCounters) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() >= self.cap {
            let idle = conns.iter().find(|(_, c)| c.busy.load(Ordering::Relaxed) == 0).map(|(id, _)| *id);
            match idle.and_then(|id| conns.remove(&id)) {
                Some(victim) => {
                    victim.close.notify_one();
                    counters.evicted.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
        }
        conns.insert(id, conn);
        true
    }

    fn remove(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

/// Accepts connections forever and serves `app` on each, within the caps.
pub async fn serve<L: Listener>(listener: L, app: Router, cap: usize, counters: Arc<ConnCounters>) {
    let registry = Arc::new(Registry { conns: Mutex::default(), cap });
    let mut next_id = 0u64;
    loop {
        let io = match listener.accept().await {
            Ok(io) => io,
            Err(e) => {
                // Out of descriptors or memory: wait instead of spinning; the caps make this rare.
                log::debug!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        let conn = Arc::new(Conn { busy: AtomicUsize::new(0), close: tokio::sync::Notify::new() });
        if !registry.admit(id, conn.clone(), &counters) {
            drop(io);
            continue;
        }
        let (registry, app) = (registry.clone(), app.clone());
        tokio::spawn(async move {
            serve_one(io, app, conn).await;
            registry.remove(id);
        });
    }
}

async fn serve_one<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: I, app: Router, conn: Arc<Conn>) {
    let progress = Arc::new(Progress::new());
    let io = Watched { inner: io, progress: progress.clone() };
    let svc_conn = conn.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let guard = Busy::enter(svc_conn.clone());
        let app = app.clone();
        async move {
            let resp = app.oneshot(req.map(Body::new)).await?;
            // The request stays busy until its answer has been sent (or dropped).
            Ok::<_, std::convert::Infallible>(resp.map(|b| Body::new(GuardedBody { inner: b, _busy: guard })))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).max_buf_size(MAX_HEAD_BYTES);
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::select! {
        _ = served => {}
        _ = conn.close.notified() => {}
        _ = progress.stalled(STALL_TIMEOUT) => {}
    }
}

/// Marks a connection busy while a request and its answer are in progress.
struct Busy(Arc<Conn>);

impl Busy {
    fn enter(conn: Arc<Conn>) -> Busy {
        conn.busy.fetch_add(1, Ordering::Relaxed);
        Busy(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body that keeps its connection marked busy until it is done.
struct GuardedBody {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// When a connection last moved a byte.
struct Progress {
    start: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Progress {
        Progress { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `limit`.
    async fn stalled(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let idle = self.start.elapsed().saturating_sub(last);
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// A connection's stream that records progress.
struct Watched<I> {
    inner: I,
    progress: Arc<Progress>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.progress.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_keep_a_reserve_of_descriptors() {
        assert_eq!(connection_cap(1 << 20, 2), MAX_CONNECTIONS);
        assert_eq!(connection_cap(FDS_RESERVED + 20, 2), 10);
        assert_eq!(connection_cap(256, 2), 4, "never below a handful");
    }

    #[test]
    fn the_oldest_idle_connection_makes_room() {
        let reg = Registry { conns: Mutex::default(), cap: 2 };
        let counters = ConnCounters::default();
        let conn = || Arc::new(Conn { busy: AtomicUsize::new(0), close: tokio::sync::Notify::new() });
        let (a, b, c) = (conn(), conn(), conn());
        a.busy.store(1, Ordering::Relaxed);
        assert!(reg.admit(1, a.clone(), &counters));
        assert!(reg.admit(2, b.clone(), &counters));
        assert!(reg.admit(3, c.clone(), &counters), "b (idle) is closed, a (busy) kept");
        let ids: Vec<u64> = reg.conns.lock().unwrap().keys().copied().collect();
        assert_eq!(ids, [1, 3]);
        c.busy.store(1, Ordering::Relaxed);
        assert!(!reg.admit(4, conn(), &counters), "all busy: refused");
        assert_eq!(counters.evicted.load(Ordering::Relaxed), 1);
        assert_eq!(counters.refused.load(Ordering::Relaxed), 1);
    }
}
