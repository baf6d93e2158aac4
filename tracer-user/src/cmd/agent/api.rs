//! The agent's read-only HTTP API: `GET /flows`, `GET /node`, `GET /metrics`, `GET /healthz`.
//! Served on a unix socket (mode 0600) and, only when asked, on a TCP address (see
//! `listener` for the connection limits). No endpoint changes anything or attaches programs;
//! only `/capture` (unix socket only, see `capture_route`) reads packet payloads.
use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use axum::{
    Router,
    body::Body,
    extract::{RawQuery, State as AxState},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;

use super::{
    ViewRequest,
    flows::{self, FlowQuery, FlowView, Position},
    listener::ConnCounters,
    state::Shared,
};

/// The header carrying the token of the next page of a `limit`ed `/flows` answer.
pub const CONTINUE_HEADER: &str = "podtrace-continue";

/// What the handlers share: the polled state, the way to ask the agent loop for a view of its
/// flows, what `/node` reads, and the limits on `/flows` answers.
#[derive(Clone)]
pub struct ApiState {
    pub state: Shared,
    pub views: tokio::sync::mpsc::Sender<ViewRequest>,
    pub node: super::node_api::NodeSource,
    /// One permit per `/flows` answer in progress (see [`flows::MAX_CONCURRENT`]).
    pub flow_slots: Arc<tokio::sync::Semaphore>,
    pub counters: Arc<ApiCounters>,
}

impl ApiState {
    pub fn new(
        state: Shared,
        views: tokio::sync::mpsc::Sender<ViewRequest>,
        node: super::node_api::NodeSource,
    ) -> ApiState {
        ApiState {
            state,
            views,
            node,
            flow_slots: Arc::new(tokio::sync::Semaphore::new(flows::MAX_CONCURRENT)),
            counters: Arc::default(),
        }
    }
}

/// What the API refused or cut short, reported in `/metrics`.
#[derive(Default)]
pub struct ApiCounters {
    pub unix: Arc<ConnCounters>,
    pub tcp: Arc<ConnCounters>,
    /// `/flows` requests refused because [`flows::MAX_CONCURRENT`] were in progress.
    pub flows_busy: AtomicU64,
    /// Streamed `/flows` answers abandoned because the client stopped reading.
    pub flows_stalled: Arc<AtomicU64>,
}

impl ApiCounters {
    pub fn values(&self) -> Vec<(&'static str, u64)> {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("api_connections_evicted", n(&self.unix.evicted) + n(&self.tcp.evicted)),
            ("api_connections_refused", n(&self.unix.refused) + n(&self.tcp.refused)),
            ("flows_requests_refused", n(&self.flows_busy)),
            ("flows_answers_stalled", n(&self.flows_stalled)),
        ]
    }
}

fn decode(v: &str) -> Result<String, String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .ok_or("truncated %-escape")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape %{hex}"))?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "query value is not UTF-8".to_string())
}

/// Parses the query string of `GET /flows`; unknown or repeated keys are refused so typos
/// and ambiguous requests are visible.
pub fn parse_flow_query(q: &str) -> Result<FlowQuery, String> {
    let mut out = FlowQuery::default();
    let mut seen: Vec<&str> = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if seen.contains(&k) {
            return Err(format!("{k} given twice"));
        }
        let v = decode(v)?;
        match k {
            "pod" => out.pod = (!v.is_empty()).then_some(v),
            "namespace" => out.namespace = (!v.is_empty()).then_some(v),
            "since" if v.is_empty() => {}
            "since" => {
                out.since = Some(v.parse().map_err(|_| format!("since={v:?} is not a Unix time in ms"))?)
            }
            "limit" => {
                let n: usize = v.parse().map_err(|_| format!("limit={v:?} is not a number"))?;
                if !(1..=flows::MAX_LIMIT).contains(&n) {
                    return Err(format!("limit={n}: between 1 and {}", flows::MAX_LIMIT));
                }
                out.limit = Some(n);
            }
            "continue" => out.after = Some(Position::from_token(&v)?),
            "ip" if v.is_empty() => {}
            "ip" => out.ip = Some(v.parse().map_err(|_| format!("ip={v:?} is not an IP address"))?),
            other => {
                return Err(format!(
                    "unknown query parameter {other:?} (pod, namespace, since, ip, limit, continue)"
                ));
            }
        }
        seen.push(k);
    }
    if out.after.is_some() && out.limit.is_none() {
        return Err("continue needs limit".into());
    }
    Ok(out)
}

fn unavailable(why: &str) -> Response {
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

const NDJSON: &str = "application/x-ndjson";

async fn flows(AxState(api): AxState<ApiState>, RawQuery(q): RawQuery) -> Response {
    let query = match parse_flow_query(q.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, e + "\n").into_response(),
    };
    let Ok(slot) = api.flow_slots.clone().try_acquire_owned() else {
        api.counters.flows_busy.fetch_add(1, Ordering::Relaxed);
        return unavailable(&format!("{} /flows answers in progress already: retry", flows::MAX_CONCURRENT));
    };
    let (reply, view) = tokio::sync::oneshot::channel();
    if api.views.send(ViewRequest { reply }).await.is_err() {
        return unavailable("agent stopping");
    }
    let Ok(view) = view.await else { return unavailable("agent stopping") };
    match query.limit {
        Some(limit) => page(view, query, limit, slot).await,
        None => stream(view, query, slot, api.counters.flows_stalled.clone()),
    }
}

/// One page, assembled on its own thread (the slot is held until it is done).
async fn page(
    view: FlowView,
    q: FlowQuery,
    limit: usize,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("podtrace-flows".into()).spawn(move || {
        let _slot = slot;
        let _ = tx.send(view.page(&q, limit));
    });
    if spawned.is_err() {
        return unavailable("cannot start a thread for /flows");
    }
    let Ok((body, next)) = rx.await else { return unavailable("/flows failed") };
    let mut r = ([(header::CONTENT_TYPE, NDJSON)], body).into_response();
    if let Some(token) = next.and_then(|t| HeaderValue::from_str(&t).ok()) {
        r.headers_mut().insert(CONTINUE_HEADER, token);
    }
    r
}

/// Every flow, streamed while it is assembled; the client's reading paces the assembly. An
/// answer abandoned half-way ends with an error, so the connection is cut rather than ended
/// as if complete.
fn stream(
    view: FlowView,
    q: FlowQuery,
    slot: tokio::sync::OwnedSemaphorePermit,
    stalled: Arc<AtomicU64>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(flows::CHUNKS_IN_FLIGHT);
    let aborted = Arc::new(AtomicBool::new(false));
    let flag = aborted.clone();
    let spawned = std::thread::Builder::new().name("podtrace-flows".into()).spawn(move || {
        let _slot = slot;
        view.stream(&q, &tx, &flag);
        if flag.load(Ordering::Relaxed) {
            stalled.fetch_add(1, Ordering::Relaxed);
        }
    });
    if spawned.is_err() {
        return unavailable("cannot start a thread for /flows");
    }
    let body = futures::stream::unfold((rx, aborted, false), |(mut rx, aborted, done)| async move {
        if done {
            return None;
        }
        match rx.recv().await {
            Some(chunk) => Some((Ok::<_, std::io::Error>(chunk), (rx, aborted, false))),
            None if aborted.load(Ordering::Relaxed) => {
                Some((Err(std::io::Error::other("/flows answer abandoned")), (rx, aborted, true)))
            }
            None => None,
        }
    });
    ([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(body)).into_response()
}

async fn metrics(AxState(api): AxState<ApiState>) -> Response {
    let body = super::metrics::render(&api.state.read().expect("agent state lock"), &api.counters.values());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}

async fn healthz(AxState(api): AxState<ApiState>) -> Response {
    let st = api.state.read().expect("agent state lock");
    if st.attached.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not attached yet\n").into_response();
    }
    format!("ok: {} interfaces\n", st.attached.len()).into_response()
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/flows", get(flows))
        .route("/node", get(super::node_api::node))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// Why a TCP listener is allowed: its requests are authenticated, or it is reachable only
/// from this node, or the operator explicitly accepted serving every flow to anyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpAccess {
    /// `--authenticate`: TLS, and every request reviewed by the Kubernetes API.
    Authenticated,
    /// Only processes on this node can connect.
    Loopback,
    /// Anyone who can reach the address: the operator said so.
    Insecure,
}

/// Decides whether `--listen ADDR` may be served (see [`TcpAccess`]).
pub fn tcp_access(
    addr: std::net::SocketAddr,
    insecure: bool,
    authenticated: bool,
) -> anyhow::Result<TcpAccess> {
    if authenticated {
        return Ok(TcpAccess::Authenticated);
    }
    if addr.ip().to_canonical().is_loopback() {
        return Ok(TcpAccess::Loopback);
    }
    if !insecure {
        anyhow::bail!(
            "--listen {addr} would serve every flow unauthenticated to anyone who can reach it: \
             add --authenticate, listen on a loopback address (127.0.0.1:PORT), or add --insecure-listen"
        );
    }
    Ok(TcpAccess::Insecure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_queries() {
        assert_eq!(
            parse_flow_query("pod=web-1&namespace=default&since=12").unwrap(),
            FlowQuery {
                pod: Some("web-1".into()),
                namespace: Some("default".into()),
                since: Some(12),
                ..Default::default()
            }
        );
        assert_eq!(parse_flow_query("pod=a%2Db+c").unwrap().pod.as_deref(), Some("a-b c"));
        assert!(parse_flow_query("since=-1").unwrap_err().contains("since"));
        assert!(parse_flow_query("pods=x").unwrap_err().contains("unknown query parameter"));
        assert!(parse_flow_query("pod=%zz").is_err());
        assert!(parse_flow_query("pod=%e2%28").is_err());
        assert_eq!(parse_flow_query("").unwrap(), FlowQuery::default());
        assert_eq!(parse_flow_query("ip=198.18.2.11").unwrap().ip, Some("198.18.2.11".parse().unwrap()));
        assert!(parse_flow_query("ip=web").unwrap_err().contains("not an IP"));
    }

    #[test]
    fn repeated_keys_and_bad_pages_are_refused() {
        assert_eq!(parse_flow_query("pod=a&pod=b").unwrap_err(), "pod given twice");
        assert!(parse_flow_query("limit=10&limit=10").is_err());
        assert_eq!(parse_flow_query("limit=10").unwrap().limit, Some(10));
        for bad in ["limit=0", "limit=-1", "limit=5001", "limit=x", "continue=zz&limit=1", "continue=00"] {
            assert!(parse_flow_query(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn only_loopback_listens_without_insecure_listen() {
        let ok = |a: &str, insecure| tcp_access(a.parse().unwrap(), insecure, false);
        assert_eq!(ok("127.0.0.1:9090", false).unwrap(), TcpAccess::Loopback);
        assert_eq!(ok("[::1]:9090", false).unwrap(), TcpAccess::Loopback);
        assert_eq!(ok("[::ffff:127.0.0.1]:9090", false).unwrap(), TcpAccess::Loopback);
        for remote in ["0.0.0.0:9090", "[::]:9090", "10.0.0.5:9090"] {
            assert!(ok(remote, false).unwrap_err().to_string().contains("--insecure-listen"));
            assert_eq!(ok(remote, true).unwrap(), TcpAccess::Insecure);
            assert_eq!(tcp_access(remote.parse().unwrap(), false, true).unwrap(), TcpAccess::Authenticated);
        }
    }
}
