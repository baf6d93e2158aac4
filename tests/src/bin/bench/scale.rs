//! Figure 4's scale rows: flows put into the agent's own program (BPF_PROG_TEST_RUN), the agent
//! holding a million tracked flows, and a SYN flood of distinct flows sent through the lab.
use std::{
    os::fd::OwnedFd,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use aya::programs::{SchedClassifier, TcAttachType};
use podtrace::kernel::netlink;
use tests::{bpf, packets::*};
use xtask::netns;

use super::{Active, Bench, CpuUse, metric, podtrace_pid, proc_stat, spawn_agent};

/// The agent's ingress program on web-2's veth, to run packets through it directly.
pub struct Injector {
    prog: OwnedFd,
    ifindex: u32,
    src: [u8; 4],
}

impl Injector {
    pub fn for_agent(b: &Bench) -> Result<Injector> {
        let veth = b.lab.plan.pod("web-2").unwrap().veth.clone();
        let (id, ifindex) = netns::run_in(&b.ns("node-a"), move || {
            let idx = netlink::ifindex(&veth).ok_or_else(|| anyhow!("no veth"))?;
            let (_, progs) =
                SchedClassifier::query_tcx(idx, TcAttachType::Ingress).map_err(|e| anyhow!("{e}"))?;
            let first = progs.first().ok_or_else(|| anyhow!("nothing attached to web-2's veth"))?;
            Ok((first.id(), idx))
        })?;
        Ok(Injector {
            prog: bpf::prog_fd_by_id(id)?,
            ifindex,
            src: b.lab.plan.pod("web-2").unwrap().ip.octets(),
        })
    }

    /// Flows `from..from + count` of web-2, one UDP packet each to a distinct destination.
    pub fn send(&self, b: &Bench, from: u32, count: u32) -> Result<()> {
        netns::run_in(&b.ns("node-a"), || {
            for i in from..from + count {
                let dst = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
                let p = eth(
                    &[],
                    ETH_IPV4,
                    &ipv4(&V4 { src: self.src, dst, proto: 17, ..V4::default() }, &udp(40000, 9, &[])),
                );
                bpf::test_run(&self.prog, &p, self.ifindex)?;
            }
            Ok(())
        })
    }
}

/// Packets the agent's kernel side counted so far (absent is an error).
pub fn packets_seen(sock: &Path) -> Result<f64> {
    let (_, text) = tests::agent_get(sock, "GET", "/metrics")?;
    metric(&text, "podtrace_kernel_events_total", Some(("name", "packets")))
}

/// The agent's metrics once it has counted `target` packets and polled once more (a poll
/// reads the flow table before the counters, so the last packets' flows are in the next one).
pub fn settled(sock: &Path, target: f64, within: Duration) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let (_, text) = tests::agent_get(sock, "GET", "/metrics")?;
        if metric(&text, "podtrace_kernel_events_total", Some(("name", "packets")))? >= target {
            let polls = metric(&text, "podtrace_agent_events_total", Some(("name", "polls")))?;
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let text = tests::agent_get(sock, "GET", "/metrics")?.1;
                if metric(&text, "podtrace_agent_events_total", Some(("name", "polls")))? > polls {
                    return Ok(text);
                }
                if Instant::now() > deadline {
                    bail!("the agent stopped polling");
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the agent did not report {target} packets within {within:?}");
        }
    }
}

pub struct MillionTracked {
    /// `--max-tracked-flows`, and the flows injected.
    pub flows_wanted: u32,
    pub flows: f64,
    pub rss_kb: u64,
    pub hwm_kb: u64,
    /// The agent's CPU while it holds the flows and no packet arrives: its polling.
    pub cpu: CpuUse,
    pub poll_s: f64,
    pub interval_s: f64,
}

/// An agent sized for a million tracked flows (`--max-tracked-flows 1000000`), given that many
/// distinct flows; its memory, and its CPU while it keeps polling them.
pub fn million_tracked(b: &Bench, sock: &Path, n: u32) -> Result<MillionTracked> {
    let table = (n + n / 8).next_power_of_two().to_string();
    let agent = spawn_agent(
        b,
        sock,
        &["--max-tracked-flows", &n.to_string(), "--max-flows", &table, "--idle-timeout", "30m"],
    )?;
    let pid = podtrace_pid(&agent)?;
    let _guard = Active::Process(vec![agent]);
    let inject = Injector::for_agent(b)?;
    let before = packets_seen(sock)?;
    inject.send(b, 0, n)?;
    settled(sock, before + n as f64, Duration::from_secs(600))?;
    // Over whole poll periods (the interval stretches to ~9× a poll's duration): from one poll
    // to the second after it.
    let polls = |text: &str| metric(text, "podtrace_agent_events_total", Some(("name", "polls")));
    let wait_poll = |after: f64| -> Result<f64> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let n = polls(&tests::agent_get(sock, "GET", "/metrics")?.1)?;
            if n > after {
                return Ok(n);
            }
            if Instant::now() > deadline {
                bail!("the agent holding {n} polls stopped polling");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let first = wait_poll(polls(&tests::agent_get(sock, "GET", "/metrics")?.1)?)?;
    let (ticks0, _, _) = proc_stat(pid)?;
    let start = Instant::now();
    wait_poll(first + 1.0)?;
    let (ticks1, rss_kb, hwm_kb) = proc_stat(pid)?;
    let cpu = CpuUse { ticks: ticks1 - ticks0, seconds: start.elapsed().as_secs_f64() };
    let text = tests::agent_get(sock, "GET", "/metrics")?.1;
    Ok(MillionTracked {
        flows_wanted: n,
        flows: metric(&text, "podtrace_flows", Some(("pod", "web-2")))?,
        rss_kb,
        hwm_kb,
        cpu,
        poll_s: metric(&text, "podtrace_poll_seconds", None)?,
        interval_s: metric(&text, "podtrace_poll_interval_seconds", None)?,
    })
}

pub struct SynFlood {
    pub sent: u64,
    pub seconds: f64,
    pub alive: bool,
    pub hwm_kb: u64,
    pub map_full: f64,
    pub evicted: f64,
    /// Packets the agent's programs counted during the flood (a SYN at web-2's veth and eth1,
    /// db's answer at eth1 and the veth).
    pub counted: f64,
}

/// A SYN flood of `n` distinct flows through the lab while the agent runs with the DaemonSet's
/// bounds: it must stay alive and bounded, and count what it could not keep.
pub fn syn_flood(b: &Bench, sock: &Path, pid: u32, n: u32) -> Result<SynFlood> {
    let before = packets_seen(sock)?;
    let (web2, db) = (b.lab.plan.pod("web-2").unwrap().ip, b.lab.plan.host("db").unwrap().ip);
    let seconds = tests::flood::send_syns(&b.ns("web-2"), web2, db, n)?;
    // Each SYN crosses web-2's veth ingress before anything on the node can drop it (then
    // eth1's egress, unless node-a's conntrack table is full).
    let text = settled(sock, before + n as f64, Duration::from_secs(300))?;
    let counted = metric(&text, "podtrace_kernel_events_total", Some(("name", "packets")))? - before;
    // An agent that does not answer is this figure ("alive: NO"), not a failed run.
    let (code, _) = tests::agent_get(sock, "GET", "/healthz").unwrap_or((0, String::new()));
    let (_, _, hwm_kb) = proc_stat(pid)?;
    Ok(SynFlood {
        sent: n as u64,
        seconds,
        alive: code == 200,
        hwm_kb,
        map_full: metric(&text, "podtrace_kernel_events_total", Some(("name", "flow_map_full")))?,
        evicted: metric(&text, "podtrace_agent_events_total", Some(("name", "flows_evicted")))?,
        counted,
    })
}
