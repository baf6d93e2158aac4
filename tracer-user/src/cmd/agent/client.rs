//! A minimal HTTP/1.0 client of the agent's unix socket: `/healthz` and `/flows`. Whatever
//! answers on the socket is not trusted: every exchange has a deadline and a size cap, and
//! nothing it sends reaches the terminal unescaped.
use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::report::json::FlowReport;

/// Most bytes one answer may have (a page of [`PAGE`] flows is a few MB).
pub const MAX_ANSWER_BYTES: usize = 32 << 20;
/// Flows asked for per request.
pub const PAGE: usize = 1000;
/// Most flows taken for one trace (every page together).
pub const MAX_FLOWS: usize = 250_000;
/// Most time one exchange may take.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One answer: status code, headers (lower-case names), body.
pub struct Answer {
    pub code: u16,
    pub status: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Text from the socket made safe to print: control characters (terminal escapes included)
/// shown as `\u{1b}`, at most `max` characters.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out += "…";
            break;
        }
        if c.is_control() {
            out += &c.escape_unicode().to_string();
        } else {
            out.push(c);
        }
    }
    out
}

/// Connects within the deadline. A listener with a full backlog makes a blocking connect wait
/// forever: connect without blocking and retry instead.
fn connect(socket: &Path, deadline: Instant) -> Result<UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket as new_socket};
    let cannot = || format!("cannot reach the podtrace agent at {}", socket.display());
    let addr = UnixAddr::new(socket).with_context(cannot)?;
    loop {
        let fd = new_socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
            Ok(()) => {
                let s = UnixStream::from(fd);
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(std::io::Error::from(e)).with_context(cannot),
        }
    }
}

/// GETs `path` from the agent: the whole answer within `timeout` and [`MAX_ANSWER_BYTES`].
pub fn request(socket: &Path, path: &str, timeout: Duration) -> Result<Answer> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut s = connect(socket, deadline)?;
    s.set_write_timeout(Some(left()))?;
    // One write; a server may answer (an error) and close before reading all of it, so a
    // failed write is only reported when no answer follows.
    let sent = s.write_all(format!("GET {path} HTTP/1.0\r\nHost: podtrace-agent\r\n\r\n").as_bytes());
    let mut resp = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if Instant::now() >= deadline {
            bail!("the agent did not answer {path} within {}s", timeout.as_secs());
        }
        s.set_read_timeout(Some(left()))?;
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                bail!("the agent did not answer {path} within {}s", timeout.as_secs())
            }
            Err(e) => {
                sent.context("sending the request to the agent")?;
                return Err(e).context("reading the agent's answer");
            }
        };
        if n == 0 {
            if resp.is_empty() {
                sent.context("sending the request to the agent")?;
            }
            break;
        }
        if resp.len() + n > MAX_ANSWER_BYTES {
            bail!("the answer from the agent exceeds {} MiB: refusing it", MAX_ANSWER_BYTES >> 20);
        }
        resp.extend_from_slice(&buf[..n]);
    }
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").context("malformed answer from the agent")?;
    let head = String::from_utf8_lossy(&resp[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_string();
    let code = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Answer { code, status, headers, body: resp[end + 4..].to_vec() })
}

/// GETs `path` and returns the body of a 200 answer; anything else is an error (printable).
pub fn get(socket: &Path, path: &str, timeout: Duration) -> Result<String> {
    let a = request(socket, path, timeout)?;
    let body = String::from_utf8_lossy(&a.body);
    if a.code != 200 {
        bail!("agent answered {}: {}", printable(a.status.trim(), 80), printable(body.trim(), 200));
    }
    Ok(printable(&body, usize::MAX))
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

/// Replaces control characters in every string of a JSON value (see [`printable`]).
fn sanitize(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.chars().any(char::is_control) => *s = printable(s, usize::MAX),
        serde_json::Value::Array(a) => a.iter_mut().for_each(sanitize),
        serde_json::Value::Object(o) => o.values_mut().for_each(sanitize),
        _ => {}
    }
}

/// One flow line from the agent, its strings made printable.
fn decode_flow(line: &str) -> Result<FlowReport> {
    let mut v: serde_json::Value = serde_json::from_str(line).context("decoding a flow from the agent")?;
    sanitize(&mut v);
    serde_json::from_value(v).context("decoding a flow from the agent")
}

/// The flows of the named pods known to the agent, with packets since `since_ms`, page by
/// page. A busy agent (503) is asked again until `timeout` has passed.
pub fn flows(
    socket: &Path,
    pods: &[String],
    namespace: Option<&str>,
    since_ms: u64,
    timeout: Duration,
) -> Result<Vec<FlowReport>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    for pod in pods {
        let mut query = format!("/flows?pod={}&since={since_ms}&limit={PAGE}", encode(pod));
        if let Some(ns) = namespace {
            query += &format!("&namespace={}", encode(ns));
        }
        let mut next: Option<String> = None;
        loop {
            let path = match &next {
                Some(t) => format!("{query}&continue={}", encode(t)),
                None => query.clone(),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the agent did not answer /flows within {}s", timeout.as_secs());
            }
            let a = request(socket, &path, left)?;
            if a.code == 503 && Instant::now() + Duration::from_secs(1) < deadline {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            if a.code != 200 {
                let body = String::from_utf8_lossy(&a.body);
                bail!("agent answered {}: {}", printable(a.status.trim(), 80), printable(body.trim(), 200));
            }
            for line in String::from_utf8_lossy(&a.body).lines().filter(|l| !l.trim().is_empty()) {
                out.push(decode_flow(line)?);
                if out.len() > MAX_FLOWS {
                    bail!("the agent sent more than {MAX_FLOWS} flows: refusing them");
                }
            }
            match a.header(super::api::CONTINUE_HEADER) {
                Some(t) if Some(t) != next.as_deref() => next = Some(t.to_string()),
                Some(_) => bail!("the agent sent the same page twice"),
                None => break,
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(printable("a\u{1b}[2Jb\u{9b}\u{7}", 100), "a\\u{1b}[2Jb\\u{9b}\\u{7}");
        assert_eq!(printable("abcdef", 3), "abc…");
        let f = decode_flow(r#"{"pod":"x\u001b]0;t\u0007","namespace":"d","pod_ip":"198.18.1.11","proto":"udp","direction":"egress","src":"198.18.1.11:1","dst":"198.18.3.10:2","path":[],"reply_path":[],"eni":null,"pod_ip_owner_eni":null,"snat":null,"dnat":null,"ingress_mode":null,"hop_latency_us":[],"packets":1,"bytes":1,"nat_steps":0,"client_ip_preserved":null,"node_crossing":false,"unanswered_after":null,"no_reply":false,"drops":[],"retransmits":0,"first_seen_ms":1,"last_seen_ms":1,"id":"i"}"#).unwrap();
        assert_eq!(f.pod, "x\\u{1b}]0;t\\u{7}");
    }
}
