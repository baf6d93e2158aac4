//! `podtrace capture --pod NAME -w FILE`: the pod's packets at every hop of the node (its
//! veth, each ENI), before and after each NAT, in one pcapng file that Wireshark opens.
//!
//! The TC programs are loaded with their capture path (`kernel::capture`): the kernel copies
//! the pod's packets, and only those, into a ring buffer; `report::capture` orders them,
//! applies `--filter`, comments the first packet of each flow with its path and NAT, and writes
//! pcapng. [`CaptureRun`] is shared with the agent's `GET /capture`.
use std::{
    collections::HashSet,
    io::Write,
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use clap::Args;
use tracer_common::Tuple;

use super::{
    targets::{Targets, resolve_targets, select_pods},
    trace_args::TraceArgs,
};
use crate::{
    assemble::{
        capture_filter::Filter,
        context::TracedPod,
        model::Role,
        session::{Session, Wake},
    },
    kernel::{
        addr,
        capture::{self, CaptureRole, CaptureStats, RingFd},
        leftovers,
        load::CaptureLoad,
        preflight,
    },
    node::inventory::Inventory,
    report::{
        capture::{CaptureInterface, CaptureOptions, CaptureWriter, tuple_text},
        json::FlowReport,
        table::{Format, Style, row},
    },
};

#[derive(Args, Clone, Debug)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Write the pcapng capture to FILE; `-` writes it to stdout (`... -w - | wireshark -k -i -`).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: PathBuf,
    /// Bytes kept of each packet; 0 keeps whole packets (at most 65535 bytes, as tcpdump -s 0).
    #[arg(long, default_value_t = 0)]
    pub snaplen: u32,
    /// Stop after writing this many packets.
    #[arg(long, value_name = "N")]
    pub max_packets: Option<u64>,
    /// Only packets matching EXPR: proto (tcp, udp, icmp, icmp6, ip, ip6), [src|dst] host ADDR,
    /// net ADDR/LEN, port N, portrange N-M, combined with and/or/not and parentheses
    /// (`tcp port 443`, `udp or host 10.0.0.1`). A packet matching at one hop (before or after
    /// a NAT) is written at every hop.
    #[arg(long, value_name = "EXPR", value_parser = parse_filter)]
    pub filter: Option<Filter>,
    /// Size of the kernel's copy buffer (bytes; K or M suffix; a power of two, at least 4K).
    #[arg(long, default_value = "8M", value_parser = parse_buffer_size)]
    pub buffer_size: u32,
}

fn parse_filter(s: &str) -> Result<Filter, String> {
    Filter::parse(s)
}

/// `4096`, `64K`, `8M`: a power of two of at least a page.
pub fn parse_buffer_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1024u64),
        Some('M' | 'm') => (&t[..t.len() - 1], 1024 * 1024),
        _ => (t, 1),
    };
    let n = num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult));
    match n {
        Some(n) if n >= 4096 && n.is_power_of_two() && n <= 1 << 30 => Ok(n as u32),
        _ => Err(format!("invalid buffer size {s:?}: a power of two between 4K and 1024M, like 8M")),
    }
}

/// What one capture copies and how.
pub struct CaptureSpec {
    pub snaplen: u32,
    pub filter: Option<Filter>,
    pub max_packets: Option<u64>,
}

/// How long copies wait before they are written (see `report::capture`).
const WINDOW: Duration = Duration::from_millis(500);
/// Flows are assembled (for the comments) and conntrack's NAT'd tuples handed to the kernel
/// this often.
const POLL_EVERY: Duration = Duration::from_millis(500);

fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// The capture's interfaces (ifindex, name, description, MAC) in slot order, with their role.
pub fn capture_interfaces(t: &Targets, inv: &Inventory) -> Vec<(CaptureInterface, CaptureRole)> {
    let trunks: HashSet<&str> = inv.branches.iter().map(|b| b.trunk.as_str()).collect();
    t.attach
        .iter()
        .map(|(ifindex, name)| {
            let pod = t.pods.iter().find(|p| p.is_veth(*ifindex));
            let (desc, role) = match (pod, t.ctx.role(*ifindex)) {
                (Some(p), _) => {
                    (format!("host veth of pod {}/{}", p.namespace, p.name), CaptureRole::PodVeth)
                }
                (None, Role::BranchEni) => (
                    format!("branch ENI on trunk {}", t.ctx.trunk(*ifindex).unwrap_or("?")),
                    CaptureRole::Node,
                ),
                (None, Role::Eni) if trunks.contains(name.as_str()) => {
                    ("trunk ENI".into(), CaptureRole::Node)
                }
                (None, Role::Eni) => {
                    let primary = inv.enis.iter().any(|e| e.ifindex == *ifindex && e.primary);
                    (if primary { "ENI (primary)" } else { "ENI" }.into(), CaptureRole::Node)
                }
                (None, _) => ("node interface".into(), CaptureRole::Node),
            };
            let mac = inv.links.iter().find(|l| l.index == *ifindex).and_then(|l| l.mac);
            ((*ifindex, name.clone(), desc, mac), role)
        })
        .collect()
}

/// One capture in progress on a loaded, capture-armed session.
pub struct CaptureRun<W: Write> {
    pub writer: CaptureWriter<W>,
    ring: RingBuf<MapData>,
    pods: Vec<TracedPod>,
    /// Conntrack NAT'd tuples already handed to the kernel.
    nat_tuples: HashSet<Tuple>,
    pub tuples_full: u64,
    last_poll: Instant,
    pub stopped_at_max: bool,
    pub spec_snaplen: u32,
    pub start_mono_ns: u64,
}

impl<W: Write> CaptureRun<W> {
    /// Writes the capture maps (nothing is copied before this), switches the capture on and
    /// writes the pcapng header and interface blocks.
    pub fn start(
        session: &mut Session,
        ring: RingBuf<MapData>,
        t: &Targets,
        inv: &Inventory,
        spec: CaptureSpec,
        out: W,
    ) -> Result<CaptureRun<W>> {
        let ifaces = capture_interfaces(t, inv);
        let roles: Vec<(u32, CaptureRole)> = ifaces.iter().map(|((i, ..), r)| (*i, *r)).collect();
        let addrs: Vec<IpAddr> = t.pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
        capture::configure(session.ebpf_mut(), &roles, &addrs)?;
        let start_mono_ns = monotonic_ns();
        let pods_text =
            t.pods.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect::<Vec<_>>().join(", ");
        let header = format!(
            "podtrace capture of {pods_text} ({}) on every hop of this node; snaplen {}",
            addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
            capture::kernel_snaplen(spec.snaplen)
        );
        let infos: Vec<_> = ifaces.into_iter().map(|(i, _)| i).collect();
        let opts = CaptureOptions { filter: spec.filter, max_packets: spec.max_packets, window: WINDOW };
        let writer = CaptureWriter::new(
            out,
            &infos,
            capture::kernel_snaplen(spec.snaplen),
            &header,
            opts,
            session.clock,
            start_mono_ns,
        )?;
        capture::set_active(session.ebpf_mut(), true, spec.snaplen)?;
        Ok(CaptureRun {
            writer,
            ring,
            pods: t.pods.clone(),
            nat_tuples: HashSet::new(),
            tuples_full: 0,
            last_poll: Instant::now(),
            stopped_at_max: false,
            spec_snaplen: capture::kernel_snaplen(spec.snaplen),
            start_mono_ns,
        })
    }

    pub fn ring_fd(&self) -> RingFd {
        RingFd(self.ring.as_raw_fd())
    }

    /// Moves the copies waiting in the ring to the writer.
    pub fn drain(&mut self) {
        while let Some(item) = self.ring.next() {
            if let Some(c) = capture::decode(&item) {
                self.writer.push(c);
            }
        }
    }

    /// Now and then: assembles the flows (for the comments), hands conntrack's NAT'd tuples of
    /// the pod's flows to the kernel, writes the copies old enough. True when done
    /// (`--max-packets`).
    pub fn tick(&mut self, session: &mut Session, t: &Targets) -> Result<bool> {
        self.drain();
        if self.last_poll.elapsed() >= POLL_EVERY {
            self.last_poll = Instant::now();
            self.refresh(session, t)?;
        }
        let before = monotonic_ns().saturating_sub(WINDOW.as_nanos() as u64);
        self.stopped_at_max = self.writer.flush(Some(before))?;
        self.writer.get_mut().flush()?;
        Ok(self.stopped_at_max)
    }

    fn refresh(&mut self, session: &mut Session, t: &Targets) -> Result<()> {
        let snap = session.poll()?;
        let pod_keys: Vec<[u8; 16]> =
            self.pods.iter().flat_map(|p| p.ips.iter().map(|ip| addr::to_key(*ip))).collect();
        let mut fresh = Vec::new();
        for c in &snap.conntrack {
            let natted = c.orig != c.reply.reversed();
            let ours =
                [c.orig.src, c.orig.dst, c.reply.src, c.reply.dst].iter().any(|a| pod_keys.contains(a));
            if natted && ours {
                for tuple in [c.orig, c.reply] {
                    if self.nat_tuples.insert(tuple) {
                        fresh.push(tuple);
                    }
                }
            }
        }
        if !fresh.is_empty() {
            self.tuples_full += capture::add_tuples(session.ebpf_mut(), &fresh)?;
        }
        let flows = session.flows(&snap, &t.ctx, &t.pods);
        self.writer.set_flows(&flows);
        Ok(())
    }

    /// Ends the capture: the kernel stops copying, the last copies are written with the final
    /// flows' comments, then the statistics blocks. Call after detaching, so that the flow
    /// counters and the copies stop together.
    /// The ring comes back whatever happened to the output (a client that went away must not
    /// turn captures off for good).
    pub fn finish(
        mut self,
        session: &mut Session,
        t: &Targets,
    ) -> (Result<(W, CaptureSummary)>, RingBuf<MapData>) {
        let ended = self.end(session, t);
        let CaptureRun { writer, ring, .. } = self;
        let out = ended.and_then(|(kernel, summary)| Ok((writer.finish(&kernel, monotonic_ns())?, summary)));
        (out, ring)
    }

    fn end(&mut self, session: &mut Session, t: &Targets) -> Result<(CaptureStats, CaptureSummary)> {
        capture::set_active(session.ebpf_mut(), false, 0)?;
        self.drain();
        let snap = session.poll()?;
        let flows = session.flows(&snap, &t.ctx, &t.pods);
        self.writer.set_flows(&flows);
        if !self.stopped_at_max {
            self.stopped_at_max = self.writer.flush(None)?;
        }
        let kernel = capture::read_stats(session.ebpf_mut())?;
        let summary = CaptureSummary::new(self, &kernel, &flows);
        Ok((kernel, summary))
    }
}

/// Packets of one hook of a flow: written to the capture, and counted by the flow table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HopCount {
    pub hop: String,
    pub tuple: String,
    pub captured: u64,
    pub counted: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct FlowCount {
    pub id: String,
    pub community_id: Option<String>,
    pub flow: String,
    pub hops: Vec<HopCount>,
}

/// What a capture wrote and lost, for stderr.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaptureSummary {
    pub packets: u64,
    pub snaplen: u32,
    pub ring_full: u64,
    pub missed: u64,
    /// Packets written shorter than they were (the snaplen).
    pub truncated: u64,
    pub filtered_out: u64,
    pub stopped_at_max_packets: bool,
    /// NAT'd tuples the kernel learned, and those (learned or from conntrack) that did not fit.
    pub learned_tuples: u64,
    pub tuples_full: u64,
    /// First packets of new flows kept aside at an ENI's ingress (see README).
    pub stashed: u64,
    pub flows: Vec<FlowCount>,
}

impl CaptureSummary {
    fn new<W: Write>(run: &CaptureRun<W>, k: &CaptureStats, flows: &[crate::assemble::model::Flow]) -> Self {
        let sum = |f: fn(&capture::HookStats) -> u64| k.hooks.values().map(f).sum::<u64>();
        let blocks = run.writer.interface_names().len() as u32 * 2;
        let filtered_out = (0..blocks).map(|id| run.writer.counts(id).filtered_out).sum();
        let truncated = (0..blocks).map(|id| run.writer.counts(id).truncated).sum();
        let flows = flows
            .iter()
            .map(|f| FlowCount {
                id: f.id(),
                community_id: f.community_id.clone(),
                flow: row(&FlowReport::from(f), Style::plain()),
                hops: f
                    .path
                    .iter()
                    .chain(&f.reply_path)
                    .map(|h| {
                        let key = tracer_common::FlowKey {
                            tuple: h.tuple,
                            ifindex: h.ifindex,
                            hook: h.hook as u8,
                            _pad: [0; 3],
                        };
                        HopCount {
                            hop: h.name().to_string(),
                            tuple: tuple_text(&h.tuple),
                            captured: run.writer.per_key.get(&key).copied().unwrap_or(0),
                            counted: h.packets,
                        }
                    })
                    .collect(),
            })
            .collect();
        CaptureSummary {
            packets: run.writer.written,
            snaplen: run.spec_snaplen,
            ring_full: sum(|h| h.ring_full),
            missed: sum(|h| h.missed),
            truncated,
            filtered_out,
            stopped_at_max_packets: run.stopped_at_max,
            learned_tuples: k.learned,
            tuples_full: k.tuples_full + run.tuples_full,
            stashed: k.stashes,
            flows,
        }
    }

    pub fn text(&self, target: &str) -> String {
        let mut s = format!(
            "podtrace capture: {} packets written to {target}; lost: {} (ring full) + {} missed; {} cut at the snaplen ({} bytes); {} left out by the filter{}",
            self.packets,
            self.ring_full,
            self.missed,
            self.truncated,
            self.snaplen,
            self.filtered_out,
            if self.stopped_at_max_packets { "; stopped at --max-packets" } else { "" }
        );
        for f in &self.flows {
            let hops: Vec<String> =
                f.hops.iter().map(|h| format!("{} {}/{}", h.hop, h.captured, h.counted)).collect();
            s += &format!("\n  {}   captured/counted: {}", f.flow, hops.join(", "));
        }
        s
    }
}

/// The output: a file (created now, before anything is attached) or stdout.
fn open_output(path: &Path) -> Result<Box<dyn Write + Send>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::BufWriter::new(std::io::stdout())));
    }
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(Box::new(std::io::BufWriter::new(f)))
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub async fn run(args: CaptureArgs) -> Result<()> {
    if let Some(sock) = &args.trace.agent {
        return super::capture_via_agent::capture(sock, &args);
    }
    preflight::check_privileges()?;
    preflight::check_btf()?;
    let pods = select_pods(&args.trace).await?;
    let inv = Inventory::read(&args.trace.enis)?;
    let targets = resolve_targets(&inv, &pods, false)?;
    let out = open_output(&args.write)?;
    let mut opts = args.trace.session(&targets.filter);
    opts.capture = Some(CaptureLoad { ring_bytes: args.buffer_size });
    let mut session = Session::load(&opts)?;
    let ring = capture::take_ring(session.ebpf_mut())?;
    let spec =
        CaptureSpec { snaplen: args.snaplen, filter: args.filter.clone(), max_packets: args.max_packets };
    // The capture is on before the programs are attached: every packet they count is copied.
    let mut run = CaptureRun::start(&mut session, ring, &targets, &inv, spec, out)?;
    leftovers::clean(&targets.attach);
    if let Some((_, e)) = session.attach(&targets.attach).into_iter().next() {
        return Err(e);
    }
    for hook in session.blind_hooks() {
        eprintln!("warning: {hook}");
    }
    preflight::drop_capabilities().context("dropping capabilities after attaching")?;
    // Signal handlers before the readiness line (a script may signal at once).
    let mut events = session.events(Some(Duration::from_millis(100)))?;
    let target =
        if args.write.as_os_str() == "-" { "stdout".to_string() } else { args.write.display().to_string() };
    eprintln!(
        "podtrace: capture of {}: tracing {} into {target} (Ctrl-C to stop)",
        targets.pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
        targets.attach.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ")
    );
    let deadline = args.trace.duration.and_then(|d| Instant::now().checked_add(d));
    // SAFETY: the fd belongs to the capture's ring buffer, which outlives this AsyncFd (dropped
    // before `run.finish`).
    let ring_fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(run.ring_fd(), tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("watching the capture ring buffer: {}", e.into_parts().1))?;
    let mut closed = false;
    loop {
        tokio::select! {
            wake = events.next() => match wake {
                Wake::Stop => break,
                Wake::Hops => session.drain_hops(),
                Wake::Tick => {}
            },
            ready = ring_fd.readable() => {
                if let Ok(mut g) = ready {
                    g.clear_ready();
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        match run.tick(&mut session, &targets) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) if broken_pipe(&e) => {
                closed = true;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    drop(ring_fd);
    drop(events);
    // Detach first: the flow counters and the copies stop at the same packet.
    let attached: Vec<u32> = session.attached().map(|(i, _)| i).collect();
    for i in attached {
        session.detach(i);
    }
    let (mut out, summary) = match run.finish(&mut session, &targets).0 {
        Ok(r) => r,
        Err(e) if broken_pipe(&e) || closed => {
            eprintln!("podtrace capture: the reader of {target} went away");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.with_context(|| format!("writing {target}"))?,
    }
    if closed {
        eprintln!("podtrace capture: the reader of {target} went away");
    }
    match args.trace.output {
        Format::Json => eprintln!("podtrace capture summary: {}", serde_json::to_string(&summary)?),
        Format::Table => eprintln!("{}", summary.text(&target)),
    }
    Ok(())
}
