//! `podtrace capture --agent SOCKET --pod NAME -w FILE`: the agent's `GET /capture` stream
//! copied to FILE (or stdout) as it arrives.
use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
};

use anyhow::{Context, Result, bail};

use super::capture::CaptureArgs;

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `/capture` query of these arguments.
pub fn query(args: &CaptureArgs, filter_text: Option<&str>) -> Result<String> {
    let [pod] = args.trace.pods.as_slice() else { bail!("--agent captures one --pod NAME") };
    let mut q = format!("/capture?pod={}", encode(pod));
    if let Some(ns) = &args.trace.namespace {
        q += &format!("&namespace={}", encode(ns));
    }
    if let Some(d) = args.trace.duration {
        q += &format!("&duration={}ms", d.as_millis());
    }
    q += &format!("&snaplen={}", args.snaplen);
    if let Some(n) = args.max_packets {
        q += &format!("&max_packets={n}");
    }
    if let Some(f) = filter_text {
        q += &format!("&filter={}", encode(f));
    }
    Ok(q)
}

pub fn capture(socket: &Path, args: &CaptureArgs) -> Result<()> {
    // The filter travels as text: take it from the command line as given.
    let filter_text = filter_arg();
    let q = query(args, filter_text.as_deref())?;
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("cannot reach the podtrace agent at {}", socket.display()))?;
    write!(s, "GET {q} HTTP/1.0\r\nHost: podtrace-agent\r\n\r\n")?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status)?;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    if !status.contains(" 200 ") {
        let mut body = String::new();
        let _ = r.read_to_string(&mut body);
        bail!("agent answered {}: {}", status.trim(), body.trim());
    }
    eprintln!(
        "podtrace: capturing {} via the agent at {} (Ctrl-C to stop)",
        args.trace.pods.join(", "),
        socket.display()
    );
    let mut out: Box<dyn Write> = if args.write.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            std::fs::File::create(&args.write)
                .with_context(|| format!("creating {}", args.write.display()))?,
        )
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        match out.write_all(&buf[..n]).and_then(|_| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            r => r?,
        }
        total += n as u64;
    }
    eprintln!("podtrace capture: {total} bytes of pcapng from the agent");
    Ok(())
}

/// The `--filter` value exactly as typed (the parsed form has no text).
fn filter_arg() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().enumerate().find_map(|(i, a)| {
        if a == "--filter" {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix("--filter=").map(str::to_string)
        }
    })
}
