//! `podtrace --pod NAME --agent SOCKET`: flows from a running agent, no programs attached.
//! A minimal HTTP/1.0 client over the agent's unix socket.
use std::{
    io::{IsTerminal, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    flows::FlowReport,
    output::{self, Format, Style},
    trace::TraceArgs,
};

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
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The flows of the named pods known to the agent, with packets since `since_ms`.
pub fn flows(socket: &Path, args: &TraceArgs, since_ms: u64) -> Result<Vec<FlowReport>> {
    let mut out = Vec::new();
    for pod in &args.pods {
        let mut q = format!("/flows?pod={}&since={since_ms}", encode(pod));
        if let Some(ns) = &args.namespace {
            q += &format!("&namespace={}", encode(ns));
        }
        for line in get(socket, &q)?.lines().filter(|l| !l.trim().is_empty()) {
            out.push(serde_json::from_str(line).context("decoding a flow from the agent")?);
        }
    }
    Ok(out)
}

pub async fn trace_via_agent(socket: &Path, args: &TraceArgs) -> Result<()> {
    if args.pods.is_empty() {
        bail!("--agent needs --pod NAME");
    }
    // Fail now, not after the duration, when the agent is not there.
    get(socket, "/healthz")?;
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    eprintln!(
        "podtrace: tracing {} via the agent at {} (Ctrl-C to stop)",
        args.pods.join(", "),
        socket.display()
    );
    let live = args.output == Format::Table && std::io::stdout().is_terminal();
    let style = Style::detect();
    let start = Instant::now();
    let mut stdout = std::io::stdout();
    loop {
        let wait = tokio::time::sleep(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = wait => {}
        }
        if args.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        if live {
            output::live_table(&mut stdout, "podtrace (via agent)", &flows(socket, args, since)?, style)?;
        }
    }
    let flows = flows(socket, args, since)?;
    match args.output {
        Format::Json => output::json_lines(&mut stdout, &flows)?,
        Format::Table => output::table(&mut stdout, &flows, style)?,
    }
    stdout.flush()?;
    Ok(())
}
