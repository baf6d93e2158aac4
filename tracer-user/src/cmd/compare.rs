//! `podtrace compare`: ALB/NLB `target-type: instance` (NodePort + iptables) against
//! `target-type: ip` (straight to the pod IP), measured on this node from the same traced
//! flows: hops, NAT steps, node crossings, client IP, in-node latency, throughput.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::{
    targets::{resolve_targets, select_pods},
    trace_args::TraceArgs,
};
use crate::{
    assemble::session::{Session, Wake},
    kernel::{load, preflight},
    node::inventory::Inventory,
    report::{
        compare::{aggregate, table},
        summary::Summary,
        svg,
        table::{Format, Style},
    },
};

#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Write an SVG chart (latency distributions and the hop diagram of each mode).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write an HTML page with the table and the chart.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Also write the JSON report to a file (whatever `-o` prints).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

pub async fn run(args: CompareArgs) -> Result<()> {
    let t = &args.trace;
    if t.pods.is_empty() && t.selector.is_none() && t.pod_ips.is_empty() {
        bail!("compare needs pods: --pod NAME (repeatable) or -l app=web");
    }
    load::check_flow_table(t.max_flows)?;
    preflight::check_privileges()?;
    preflight::check_btf()?;
    let pods = select_pods(t).await?;
    let inv = Inventory::read(&t.enis)?;
    // Endpoints on other nodes are traced where their flows cross this node.
    let targets = resolve_targets(&inv, &pods, true)?;
    let mut session = Session::start(&t.session(&targets.filter), &targets.attach)?;
    for hook in session.blind_hooks() {
        eprintln!("warning: {hook}");
    }
    preflight::drop_capabilities().context("dropping capabilities after attaching")?;
    // Signals are handled from here on: the readiness line below must not race them.
    let mut events = session.events(Some(Duration::from_millis(100)))?;
    eprintln!(
        "podtrace: tracing {} for compare on {} (Ctrl-C to stop)",
        targets.pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
        targets.attach.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ")
    );
    let start = Instant::now();
    let deadline = t.duration.and_then(|d| start.checked_add(d));
    let mut vanished = Vec::new();
    loop {
        match events.next().await {
            Wake::Stop => break,
            Wake::Hops | Wake::Tick => session.drain_hops(),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        for name in session.prune_vanished() {
            eprintln!("warning: interface {name} disappeared; still tracing the others");
            vanished.push(name);
        }
    }
    drop(events);
    let snap = session.poll()?;
    let flows = session.flows(&snap, &targets.ctx, &targets.pods);
    let report = aggregate(&flows, start.elapsed());
    let summary = Summary::new(flows.len(), &session, &snap, vanished, &targets.ctx.rules);
    eprintln!("{}", summary.text(Style::plain()));
    match t.output {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table => print!("{}", table(&report, Style::detect())),
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, svg::chart(&report)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, svg::page(&report, &table(&report, Style::plain())))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
