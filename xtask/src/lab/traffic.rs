//! Traffic generators run from inside a lab namespace: identity probes, a concurrent TCP
//! request/response load generator (the ALB of `compare`), UDP streams.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::servers::WHO;
use crate::netns;

const TIMEOUT: Duration = Duration::from_secs(3);

/// Who answered a request and which client address it saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reply {
    pub server: String,
    pub seen_peer: SocketAddr,
    /// The local address this request was sent from (before any NAT).
    pub local: SocketAddr,
}

/// Opens a TCP connection from `ns` to `to`, sends `WHO?` + payload, reads the answer.
pub fn tcp_request(ns: &str, to: SocketAddr, payload: usize) -> Result<Reply> {
    netns::run_in(ns, || tcp_request_here(to, payload))
}

/// Like `tcp_request`, from the calling thread's namespace.
pub fn tcp_request_here(to: SocketAddr, payload: usize) -> Result<Reply> {
    let mut s = TcpStream::connect_timeout(&to, TIMEOUT).with_context(|| format!("connect {to}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_nodelay(true)?;
    let local = s.local_addr()?;
    let mut msg = WHO.to_vec();
    msg.resize(WHO.len() + payload, b'x');
    s.write_all(&msg)?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).with_context(|| format!("reading the answer of {to}"))?;
    let mut rest = vec![0u8; payload];
    r.read_exact(&mut rest).with_context(|| format!("reading the echo of {to}"))?;
    parse_identity(&line, local)
}

fn parse_identity(line: &str, local: SocketAddr) -> Result<Reply> {
    let mut it = line.split_whitespace();
    match (it.next(), it.next().and_then(|p| p.parse().ok())) {
        (Some(server), Some(seen_peer)) => Ok(Reply { server: server.into(), seen_peer, local }),
        _ => bail!("unexpected answer {line:?}"),
    }
}

/// Sends `count` UDP datagrams of `size` bytes from one socket; returns how many echoes came
/// back (0 if `wait_replies` is false).
pub fn udp_stream(ns: &str, to: SocketAddr, count: u32, size: usize, wait_replies: bool) -> Result<u32> {
    netns::run_in(ns, || {
        let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
        let s = UdpSocket::bind(bind)?;
        s.connect(to)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let payload = vec![b'u'; size.max(1)];
        let mut replies = 0;
        let mut buf = vec![0u8; size.max(1) + 64];
        for _ in 0..count {
            s.send(&payload)?;
            if wait_replies && s.recv(&mut buf).is_ok() {
                replies += 1;
            }
        }
        Ok(replies)
    })
}

/// Result of a load run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadStats {
    pub ok: u32,
    pub failed: u32,
    /// Request latencies (connect + request + full echo), microseconds, in completion order.
    pub latencies_us: Vec<u64>,
    /// Requests per serving pod.
    pub served_by: BTreeMap<String, u32>,
    /// Requests whose server saw the client's own address (client IP preserved).
    pub client_ip_preserved: u32,
    pub elapsed_ms: u64,
}

/// `count` TCP requests (one connection each, like a load balancer's) with `concurrency`
/// workers, each sending `payload` bytes and reading them back.
pub fn tcp_load(ns: &str, to: SocketAddr, count: u32, concurrency: u32, payload: usize) -> Result<LoadStats> {
    let stats = Arc::new(Mutex::new(LoadStats::default()));
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let mut workers = Vec::new();
        for _ in 0..concurrency.max(1) {
            let (stats, next) = (stats.clone(), next.clone());
            workers.push(s.spawn(move || {
                netns::enter(ns)?;
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                    let t0 = Instant::now();
                    let r = tcp_request_here(to, payload);
                    let us = t0.elapsed().as_micros() as u64;
                    let mut st = stats.lock().expect("stats lock");
                    match r {
                        Ok(reply) => {
                            st.ok += 1;
                            st.latencies_us.push(us);
                            if reply.seen_peer.ip() == reply.local.ip() {
                                st.client_ip_preserved += 1;
                            }
                            *st.served_by.entry(reply.server).or_default() += 1;
                        }
                        Err(_) => st.failed += 1,
                    }
                }
                anyhow::Ok(())
            }));
        }
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("load worker panicked"))??;
        }
        Ok(())
    })?;
    let mut st = Arc::try_unwrap(stats).map_err(|_| anyhow::anyhow!("stats still shared"))?.into_inner()?;
    st.elapsed_ms = start.elapsed().as_millis() as u64;
    Ok(st)
}

/// Restricts the client ports a lab member uses. Two loads from one client to the same pod —
/// one DNATed through a NodePort, one straight to the pod IP — would otherwise reuse a source
/// port while conntrack still holds the other connection (TIME_WAIT) with the same
/// post-NAT tuple; the kernel then remaps the new connection's port (a real rewrite, but
/// not the one a comparison measures).
pub fn client_ports(ns: &str, first: u16, last: u16) -> Result<()> {
    netns::sysctls(ns, &[("net.ipv4.ip_local_port_range".into(), format!("{first} {last}"))])
}
