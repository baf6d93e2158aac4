//! The agent's read-only HTTP API: `GET /flows`, `GET /metrics`, `GET /healthz`.
//! Served on a unix socket (mode 0600) and, only when asked, on a TCP address.
//! No endpoint changes anything or attaches programs; only `/capture` (unix socket only, see
//! `capture_route`) reads packet payloads.
use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use axum::{
    Router,
    extract::{RawQuery, State as AxState},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use super::{FlowsRequest, state::Shared};

/// What the handlers share: the polled state, and the way to ask the agent loop for flows.
#[derive(Clone)]
pub struct ApiState {
    pub state: Shared,
    pub flows: tokio::sync::mpsc::Sender<FlowsRequest>,
}

/// Filters of `GET /flows`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowQuery {
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// Only flows with a packet at or after this Unix time (ms).
    pub since: Option<u64>,
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

/// Parses the query string of `GET /flows`; unknown keys are refused so typos are visible.
pub fn parse_flow_query(q: &str) -> Result<FlowQuery, String> {
    let mut out = FlowQuery::default();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v)?;
        match k {
            "pod" => out.pod = (!v.is_empty()).then_some(v),
            "namespace" => out.namespace = (!v.is_empty()).then_some(v),
            "since" if v.is_empty() => {}
            "since" => {
                out.since = Some(v.parse().map_err(|_| format!("since={v:?} is not a Unix time in ms"))?)
            }
            other => return Err(format!("unknown query parameter {other:?} (pod, namespace, since)")),
        }
    }
    Ok(out)
}

async fn flows(AxState(api): AxState<ApiState>, RawQuery(q): RawQuery) -> Response {
    let query = match parse_flow_query(q.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, e + "\n").into_response(),
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if api.flows.send(FlowsRequest { query, reply }).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "agent stopping\n").into_response();
    }
    match answer.await {
        Ok(body) => ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "agent stopping\n").into_response(),
    }
}

async fn metrics(AxState(api): AxState<ApiState>) -> Response {
    let body = super::metrics::render(&api.state.read().expect("agent state lock"));
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
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// Binds the unix socket (0600, its directory 0700), replacing a stale one.
pub async fn serve_unix(path: &Path, state: ApiState) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another podtrace agent is serving {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let app = router(state).merge(super::capture_route::router());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            log::error!("unix API server: {e}");
        }
    });
    Ok(())
}

/// Serves on an explicit TCP address (never chosen by default).
pub async fn serve_tcp(addr: SocketAddr, state: ApiState) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let app = router(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            log::error!("TCP API server: {e}");
        }
    });
    Ok(())
}

/// Removes the socket file on shutdown.
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_queries() {
        assert_eq!(
            parse_flow_query("pod=web-1&namespace=default&since=12").unwrap(),
            FlowQuery { pod: Some("web-1".into()), namespace: Some("default".into()), since: Some(12) }
        );
        assert_eq!(parse_flow_query("pod=a%2Db+c").unwrap().pod.as_deref(), Some("a-b c"));
        assert!(parse_flow_query("since=-1").unwrap_err().contains("since"));
        assert!(parse_flow_query("pods=x").unwrap_err().contains("unknown query parameter"));
        assert!(parse_flow_query("pod=%zz").is_err());
        assert!(parse_flow_query("pod=%e2%28").is_err());
        assert_eq!(parse_flow_query("").unwrap(), FlowQuery::default());
    }
}
