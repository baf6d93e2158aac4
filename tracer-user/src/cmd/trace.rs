//! `podtrace [trace] --pod NAME`: resolve pods to veths and ENIs, attach, follow, report.
use std::{
    io::{IsTerminal, Write},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;

use super::{
    options::{parse_duration, parse_duration_or_zero},
    targets::{Targets, resolve_targets, select_pods},
};
use crate::{
    assemble::session::{Session, SessionOptions, Wake},
    kernel::{
        attach::AttachMode,
        load::{self, SampleRate},
        preflight,
    },
    node::inventory::Inventory,
    report::{
        json::FlowReport,
        summary::Summary,
        table::{self, Format, Style},
    },
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
    /// Stop after this long (500ms, 30s, 2m; at most a year). Without it: run until Ctrl-C.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
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
    #[arg(long, default_value = "16")]
    pub sample_rate: SampleRate,
    /// Capacity of the kernel flow table (entries are per flow, interface and hook).
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(16..))]
    pub max_flows: u32,
    /// Read flows from a running `podtrace agent` (its unix socket) instead of attaching.
    #[arg(long, value_name = "SOCKET")]
    pub agent: Option<PathBuf>,
    /// With `-o json`: also print all flows every INTERVAL while running (0 = only at the end).
    #[arg(long, default_value = "0", value_parser = parse_duration_or_zero)]
    pub interval: Duration,
}

impl TraceArgs {
    /// The session options for these targets (the kernel filter keeps their addresses only).
    pub fn session(&self, t: &Targets) -> SessionOptions {
        SessionOptions {
            sample_rate: self.sample_rate,
            max_flows: self.max_flows,
            attach_mode: self.attach_mode,
            filter: Some(t.filter.clone()),
        }
    }
}

/// The whole `podtrace trace` command.
pub async fn run(args: TraceArgs) -> Result<()> {
    if let Some(sock) = &args.agent {
        return super::via_agent::trace(sock, &args).await;
    }
    load::check_flow_table(args.max_flows)?;
    preflight::check_privileges()?;
    preflight::check_btf()?;
    let pods = select_pods(&args).await?;
    let inv = Inventory::read(&args.enis)?;
    let targets = resolve_targets(&inv, &pods, false)?;
    let mut session = Session::start(&args.session(&targets), &targets.attach)?;
    let kept = preflight::drop_capabilities().context("dropping capabilities after attaching")?;
    log::debug!("capabilities kept after attaching: {kept:?}");
    follow(&mut session, &targets, &args).await
}

/// Reports of every flow of the targets' pods in this snapshot.
fn reports(
    session: &mut Session,
    t: &Targets,
) -> Result<(Vec<FlowReport>, crate::assemble::session::Snapshot)> {
    let snap = session.poll()?;
    let flows = session.flows(&snap, &t.ctx, &t.pods);
    Ok((flows.iter().map(FlowReport::from).collect(), snap))
}

async fn follow(session: &mut Session, t: &Targets, args: &TraceArgs) -> Result<()> {
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
    let deadline = args.duration.and_then(|d| start.checked_add(d));
    let (mut last_poll, mut last_json) = (start, start);
    let mut vanished = Vec::new();
    let mut stdout = std::io::stdout();
    let mut events = session.events(Some(Duration::from_millis(100)))?;
    loop {
        match events.next().await {
            Wake::Stop => break,
            // Hop events are drained as soon as the kernel signals them, not on a timer.
            Wake::Hops => {
                session.drain_hops();
                continue;
            }
            Wake::Tick => session.drain_hops(),
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        if now.duration_since(last_poll) >= Duration::from_secs(1) {
            last_poll = now;
            for name in session.prune_vanished() {
                eprintln!("warning: interface {name} disappeared; still tracing the others");
                vanished.push(name);
            }
            let periodic_json = args.output == Format::Json
                && !args.interval.is_zero()
                && now.duration_since(last_json) >= args.interval;
            if live || periodic_json {
                let (flows, _) = reports(session, t)?;
                if live {
                    table::live_table(&mut stdout, &title, &flows, style)?;
                } else {
                    last_json = now;
                    table::json_lines(&mut stdout, &flows)?;
                }
            }
        }
    }
    drop(events);
    let (flows, snap) = reports(session, t)?;
    match args.output {
        Format::Json => table::json_lines(&mut stdout, &flows)?,
        Format::Table if live => table::live_table(&mut stdout, &title, &flows, style)?,
        Format::Table => table::table(&mut stdout, &flows, style)?,
    }
    stdout.flush()?;
    let summary = Summary::new(flows.len(), session.attached_names(), &snap.counters, session.user, vanished);
    match args.output {
        Format::Json => eprintln!("podtrace summary: {}", serde_json::to_string(&summary)?),
        Format::Table => eprintln!("{}", summary.text(style)),
    }
    Ok(())
}
