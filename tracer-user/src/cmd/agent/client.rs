//! A minimal HTTP/1.0 client of the agent's unix socket: `/healthz` and `/flows`.
use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::report::json::FlowReport;

/// GETs `path` from the agent and returns the body.
pub fn get(socket: &Path, path: &str) -> Result<String> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("cannot reach the podtrace agent at {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: podtrace-agent\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed answer from the agent")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("agent answered {}: {}", status.trim(), body.trim());
    }
    Ok(body.to_string())
}

/// Percent-encodes a query value.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The flows of the named pods known to the agent, with packets since `since_ms`.
pub fn flows(
    socket: &Path,
    pods: &[String],
    namespace: Option<&str>,
    since_ms: u64,
) -> Result<Vec<FlowReport>> {
    let mut out = Vec::new();
    for pod in pods {
        let mut q = format!("/flows?pod={}&since={since_ms}", encode(pod));
        if let Some(ns) = namespace {
            q += &format!("&namespace={}", encode(ns));
        }
        for line in get(socket, &q)?.lines().filter(|l| !l.trim().is_empty()) {
            out.push(serde_json::from_str(line).context("decoding a flow from the agent")?);
        }
    }
    Ok(out)
}
