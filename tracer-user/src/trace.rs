//! `podtrace [trace] --pod NAME`: resolve pods to veths and ENIs, attach, follow, report.
use std::{
    collections::HashSet,
    io::{IsTerminal, Write},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{
    addr,
    attach::{AttachMode, Tracer},
    btf::{self, Btf},
    drops::{DropIndex, DropNames},
    ebpf::LoadOptions,
    flows::{self, Clock, FlowReport, Iface, NodeContext, Observations, Role, TracedPod},
    inventory::Inventory,
    nat::NatRules,
    output::{self, Format, Style, Summary},
    pods::{self, PodInfo},
    preflight,
    session::{Session, Snapshot},
};

/// Options shared by `trace` and `compare`.
#[derive(Args, Clone, Debug)]
pub struct TraceArgs {
    /// Pod to trace (repeatable).
    #[arg(long = "pod", value_name = "NAME")]
    pub pods: Vec<String>,
    /// Namespace of the pods (default: any namespace, if the name is unambiguous).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Trace a pod IP directly, without looking the pod up (repeatable).
    #[arg(long = "pod-ip", value_name = "IP")]
    pub pod_ips: Vec<IpAddr>,
    /// Trace every pod whose labels match (`app=web[,tier=x]`).
    #[arg(short = 'l', long = "selector", value_name = "K=V")]
    pub selector: Option<String>,
    /// Pods from a file as printed by `kubectl get pods -A -o json` instead of the API.
    #[arg(long, value_name = "FILE")]
    pub pods_file: Option<PathBuf>,
    /// Stop after this long (500ms, 30s, 2m). Without it: run until Ctrl-C.
    #[arg(long, value_parser = preflight::parse_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    /// Use these interfaces as the node's ENIs instead of discovering them (repeatable).
    #[arg(long = "eni", value_name = "IFACE")]
    pub enis: Vec<String>,
    /// How to attach the TC programs.
    #[arg(long, value_enum, default_value = "auto")]
    pub attach_mode: AttachMode,
    /// Sample one packet in N (a power of two) for per-hop latency; 1 samples every packet.
    #[arg(long, default_value_t = 16, value_parser = parse_sample_rate)]
    pub sample_rate: u64,
    /// Capacity of the kernel flow table (entries are per flow, interface and hook).
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(16..))]
    pub max_flows: u32,
    /// Read flows from a running `podtrace agent` (its unix socket) instead of attaching.
    #[arg(long, value_name = "SOCKET")]
    pub agent: Option<PathBuf>,
    /// With `-o json`: also print all flows every INTERVAL while running (0 = only at the end).
    #[arg(long, default_value = "0", value_parser = preflight::parse_duration_or_zero)]
    pub interval: Duration,
}

fn parse_sample_rate(s: &str) -> std::result::Result<u64, String> {
    let n: u64 = s.parse().map_err(|_| format!("invalid sample rate {s:?}: expected 1, 2, 4, ... 65536"))?;
    if n == 0 || !n.is_power_of_two() || n > 65536 {
        return Err(format!("invalid sample rate {s:?}: expected a power of two between 1 and 65536"));
    }
    Ok(n)
}

/// Pods, interfaces and node facts for one trace.
pub struct Targets {
    pub pods: Vec<TracedPod>,
    pub ctx: NodeContext,
    /// Interfaces to attach to: (ifindex, name).
    pub attach: Vec<(u32, String)>,
    /// Addresses the kernel filter lets through: the pods' and the node's.
    pub filter: Vec<IpAddr>,
}

/// Loads the pods the arguments name (file or API).
pub async fn select_pods(args: &TraceArgs) -> Result<Vec<PodInfo>> {
    let mut out = Vec::new();
    for ip in &args.pod_ips {
        out.push(PodInfo {
            name: ip.to_string(),
            namespace: args.namespace.clone().unwrap_or_default(),
            node: None,
            ips: vec![*ip],
            host_ip: None,
            phase: None,
            labels: Default::default(),
        });
    }
    if args.pods.is_empty() && args.selector.is_none() {
        if out.is_empty() {
            bail!("nothing to trace: give --pod NAME, -l KEY=VALUE or --pod-ip IP");
        }
        return Ok(out);
    }
    let all = match &args.pods_file {
        Some(f) => pods::load_file(f)?,
        None => pods::from_api(args.namespace.as_deref(), None).await?,
    };
    for name in &args.pods {
        out.push(pods::find(&all, name, args.namespace.as_deref())?.clone());
    }
    if let Some(sel) = &args.selector {
        let sel = pods::parse_selector(sel)?;
        let matched: Vec<&PodInfo> = all
            .iter()
            .filter(|p| p.matches(&sel) && args.namespace.as_deref().is_none_or(|n| n == p.namespace))
            .collect();
        if matched.is_empty() {
            bail!("no pod matches -l {}", args.selector.as_deref().unwrap_or_default());
        }
        out.extend(matched.into_iter().cloned());
    }
    Ok(out)
}

/// Maps pods to this node's veths and ENIs. `allow_remote`: pods on other nodes are traced
/// where their flows cross this node (compare) instead of being an error.
pub fn resolve_targets(inv: &Inventory, pods: &[PodInfo], allow_remote: bool) -> Result<Targets> {
    if inv.enis.is_empty() {
        bail!("no ENI found: no interface carries a VPC address on this node (use --eni IFACE)");
    }
    let node_ips = inv.node_ips();
    let mut traced = Vec::new();
    for p in pods {
        let ips = pods::require_ips(p)?;
        let veth = ips.iter().find_map(|ip| inv.pod_veth(*ip));
        if veth.is_none() && !allow_remote {
            let elsewhere = p.host_ip.is_some_and(|h| !node_ips.contains(&h));
            match (&p.node, elsewhere) {
                (Some(node), true) => bail!("pod {} runs on node {node}, not on this node", p.id()),
                _ => bail!(
                    "no route to pod {} ({}) on this node: no /32 route to a host veth",
                    p.id(),
                    ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        traced.push(TracedPod {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            ips: ips.to_vec(),
            veth: veth.map(|l| l.index),
            owner_eni: veth.and_then(|_| inv.pod_ip_owner_eni(ips[0])).map(|e| e.name.clone()),
        });
    }
    let ctx = node_context(inv, NatRules::read());
    let mut attach: Vec<(u32, String)> = inv.enis.iter().map(|e| (e.ifindex, e.name.clone())).collect();
    for p in &traced {
        if let Some(v) = p.veth {
            attach.push((v, ctx.ifname(v)));
        }
    }
    attach.dedup();
    let mut filter: Vec<IpAddr> = traced.iter().flat_map(|p| p.ips.iter().copied()).collect();
    filter.extend(node_ips);
    Ok(Targets { pods: traced, ctx, attach, filter })
}

/// Names and roles of the node's interfaces, its addresses and NAT rules.
pub fn node_context(inv: &Inventory, nat_rules: NatRules) -> NodeContext {
    let mut ctx =
        NodeContext { node_ips: inv.node_ips().into_iter().collect(), nat_rules, ..Default::default() };
    for l in &inv.links {
        ctx.ifaces.insert(l.index, Iface { name: l.name.clone(), role: Role::Other });
    }
    for (_, l) in inv.pod_routes() {
        ctx.ifaces.insert(l.index, Iface { name: l.name.clone(), role: Role::PodVeth });
    }
    for e in &inv.enis {
        ctx.ifaces.insert(e.ifindex, Iface { name: e.name.clone(), role: Role::Eni });
    }
    ctx
}

/// Loads the programs, attaches them to the targets' interfaces and starts a session.
pub fn start_session(t: &Targets, args: &TraceArgs, filter: bool) -> Result<Session> {
    let btf = Btf::from_file(&preflight::check_btf()?)?;
    let layout = btf::kernel_layout(&btf, btf::own_netns_inum())?;
    let names = DropNames::load(&btf);
    let opts = LoadOptions {
        sample_mask: args.sample_rate - 1,
        filter,
        max_flows: args.max_flows,
        layout: Some(layout),
    };
    let mut tracer = Tracer::load(&opts, args.attach_mode)?;
    crate::leftovers::clean(&t.attach);
    if filter {
        crate::maps::set_addr_filter(&mut tracer.ebpf, &t.filter)?;
    }
    if let Some((_, e)) = tracer.attach_many(&t.attach).into_iter().next() {
        return Err(e);
    }
    let interesting: HashSet<[u8; 16]> = t.filter.iter().map(|ip| addr::to_key(*ip)).collect();
    Session::new(tracer, filter.then_some(interesting), names)
}

/// Builds the reports of one snapshot.
pub fn reports(session: &Session, snap: &Snapshot, t: &Targets, clock: Clock) -> Vec<FlowReport> {
    let obs = Observations { entries: &snap.entries, hops: &session.hops, conntrack: &snap.conntrack };
    let mut flows = flows::assemble(&obs, &t.ctx, &t.pods, clock);
    let index = DropIndex::new(&snap.drops, &snap.retransmits, &session.names);
    flows.iter_mut().for_each(|f| index.attach(f));
    flows
}

/// Detaches from interfaces that disappeared; returns their names.
pub fn prune_vanished(session: &mut Session) -> Vec<String> {
    let gone: Vec<(u32, String)> = session
        .tracer
        .attached()
        .filter(|(i, _)| !crate::netlink::link_exists(*i))
        .map(|(i, n)| (i, n.to_string()))
        .collect();
    for (i, name) in &gone {
        let _ = session.tracer.detach(*i);
        eprintln!("warning: interface {name} disappeared; still tracing the others");
    }
    gone.into_iter().map(|(_, n)| n).collect()
}

/// The whole `podtrace trace` command.
pub async fn run(args: TraceArgs) -> Result<()> {
    if let Some(sock) = &args.agent {
        return crate::agent::client::trace_via_agent(sock, &args).await;
    }
    preflight::check_privileges()?;
    preflight::check_btf()?;
    let pods = select_pods(&args).await?;
    let inv = Inventory::read(&args.enis)?;
    let targets = resolve_targets(&inv, &pods, false)?;
    let mut session = start_session(&targets, &args, true)?;
    let kept = preflight::drop_capabilities().context("dropping capabilities after attaching")?;
    log::debug!("capabilities kept after attaching: {kept:?}");
    follow(&mut session, &targets, &args).await
}

async fn follow(session: &mut Session, t: &Targets, args: &TraceArgs) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let clock = Clock::now();
    let style = Style::detect();
    let live = args.output == Format::Table && std::io::stdout().is_terminal();
    let title = format!(
        "podtrace: tracing {} on {}",
        t.pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
        t.attach.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ")
    );
    // Also the readiness signal for scripts: everything is attached from here on.
    eprintln!("{title} (Ctrl-C to stop)");
    let start = Instant::now();
    let deadline = args.duration.map(|d| start + d);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (mut last_poll, mut last_json) = (start, start);
    let mut vanished = Vec::new();
    let mut stdout = std::io::stdout();
    let ring = session.watch_ring()?;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            // Hop events are drained as soon as the kernel signals them, not on a timer.
            ready = ring.readable() => {
                if let Ok(mut guard) = ready {
                    session.drain_hops();
                    guard.clear_ready();
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        session.drain_hops();
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        if now.duration_since(last_poll) >= Duration::from_secs(1) {
            last_poll = now;
            vanished.extend(prune_vanished(session));
            let periodic_json = args.output == Format::Json
                && !args.interval.is_zero()
                && now.duration_since(last_json) >= args.interval;
            if live || periodic_json {
                let snap = session.poll()?;
                let flows = reports(session, &snap, t, clock);
                if live {
                    output::live_table(&mut stdout, &title, &flows, style)?;
                } else {
                    last_json = now;
                    output::json_lines(&mut stdout, &flows)?;
                }
            }
        }
    }
    // Final report.
    let snap = session.poll()?;
    let flows = reports(session, &snap, t, clock);
    match args.output {
        Format::Json => output::json_lines(&mut stdout, &flows)?,
        Format::Table => {
            if live {
                output::live_table(&mut stdout, &title, &flows, style)?;
            } else {
                output::table(&mut stdout, &flows, style)?;
            }
        }
    }
    stdout.flush()?;
    let names = session.tracer.attached().map(|(_, n)| n.to_string()).collect();
    let summary = Summary::new(flows.len(), names, &snap.counters, session.user, vanished);
    match args.output {
        Format::Json => eprintln!("podtrace summary: {}", serde_json::to_string(&summary)?),
        Format::Table => eprintln!("{}", summary.text(style)),
    }
    Ok(())
}
