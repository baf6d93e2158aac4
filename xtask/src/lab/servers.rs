//! The lab's TCP/UDP echo servers: one per pod, db and inet host, on every `SERVER_PORTS` port.
//!
//! A message that starts with `WHO?` is answered with `<server name> <peer ip:port>\n` followed
//! by the rest of the message echoed back: tests learn who served a request and which client
//! address the server saw (is the client IP preserved?). Anything else is echoed as is.
//!
//! Servers are threads whose sockets were opened inside the target namespace; they stop within
//! `POLL` of `Servers::stop` (or drop).
use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::netns;

pub(crate) const POLL: Duration = Duration::from_millis(200);
pub const WHO: &[u8] = b"WHO?";

/// Running servers; stopping (or dropping) joins every thread.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Runs another server loop (e.g. the IMDS stand-in) on its own thread; it must return
    /// within `POLL` of `stop` turning true.
    pub fn spawn(&mut self, f: impl FnOnce(&AtomicBool) + Send + 'static) {
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || f(&stop)));
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts servers named `name` in `ns` on each port (TCP and UDP, IPv4 and IPv6).
pub fn start(targets: &[(String, String)], ports: &[u16]) -> Result<Servers> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Servers { stop: stop.clone(), threads: Vec::new() };
    for (name, ns) in targets {
        for &port in ports {
            let (tcp, udp) = netns::run_in(ns, || {
                let any = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port);
                let tcp = TcpListener::bind(any).with_context(|| format!("tcp {port} in {ns}"))?;
                let udp = UdpSocket::bind(any).with_context(|| format!("udp {port} in {ns}"))?;
                Ok((tcp, udp))
            })?;
            set_accept_timeout(&tcp)?;
            udp.set_read_timeout(Some(POLL))?;
            let (n1, s1) = (name.clone(), stop.clone());
            servers.threads.push(std::thread::spawn(move || serve_tcp(tcp, &n1, &s1)));
            let (n2, s2) = (name.clone(), stop.clone());
            servers.threads.push(std::thread::spawn(move || serve_udp(udp, &n2, &s2)));
        }
    }
    Ok(servers)
}

/// accept(2) honours SO_RCVTIMEO: the accept loop wakes up to notice `stop`.
pub(crate) fn set_accept_timeout(l: &TcpListener) -> Result<()> {
    let tv = libc::timeval { tv_sec: 0, tv_usec: POLL.as_micros() as libc::suseconds_t };
    // SAFETY: valid fd and a correctly sized timeval.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_RCVTIMEO");
    }
    Ok(())
}

/// The answer to one message: identity line for `WHO?` messages, then the echo.
pub fn answer(name: &str, peer: SocketAddr, msg: &[u8]) -> Vec<u8> {
    match msg.strip_prefix(WHO) {
        Some(rest) => {
            let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
            let mut out = format!("{name} {peer}\n").into_bytes();
            out.extend_from_slice(rest);
            out
        }
        None => msg.to_vec(),
    }
}

fn serve_tcp(l: TcpListener, name: &str, stop: &Arc<AtomicBool>) {
    let mut conns = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, peer)) => {
                let (n, st) = (name.to_string(), stop.clone());
                conns.push(std::thread::spawn(move || serve_conn(s, peer, &n, &st)));
                conns.retain(|c: &JoinHandle<()>| !c.is_finished());
            }
            Err(_) => continue,
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

fn serve_conn(mut s: TcpStream, peer: SocketAddr, name: &str, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(POLL));
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                // Only the first segment of a connection can carry WHO?.
                let out = if first { answer(name, peer, &buf[..n]) } else { buf[..n].to_vec() };
                first = false;
                if s.write_all(&out).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn serve_udp(s: UdpSocket, name: &str, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&answer(name, peer, &buf[..n]), peer);
        }
    }
}
