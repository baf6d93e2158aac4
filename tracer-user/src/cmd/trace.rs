//! `podtrace [trace] --pod NAME`: resolve pods to veths and ENIs, attach, follow, report.
use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    targets::{Targets, resolve_targets, select_pods},
    trace_args::TraceArgs,
};
use crate::{
    assemble::session::{Session, Wake},
    kernel::preflight,
    node::inventory::Inventory,
    report::{
        json::FlowReport,
        summary::Summary,
        table::{self, Format, Style},
    },
};

/// The whole `podtrace trace` command.
pub async fn run(args: TraceArgs) -> Result<()> {
    if let Some(sock) = &args.agent {
        return super::via_agent::trace(sock, &args).await;
    }
    preflight::check_privileges()?;
    preflight::check_btf()?;
    let pods = select_pods(&args).await?;
    let inv = Inventory::read(&args.enis)?;
    let targets = resolve_targets(&inv, &pods, false)?;
    let mut session = Session::start(&args.session(&targets.filter), &targets.attach)?;
    for hook in session.blind_hooks() {
        eprintln!("warning: {hook}");
    }
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
    // Signal handlers first: a script that sees the readiness line may send SIGINT at once.
    let mut events = session.events(Some(Duration::from_millis(100)))?;
    // Also the readiness signal for scripts: everything is attached from here on.
    eprintln!("{title} (Ctrl-C to stop)");
    let start = Instant::now();
    let deadline = args.duration.and_then(|d| start.checked_add(d));
    let (mut last_poll, mut last_json) = (start, start);
    let mut vanished = Vec::new();
    let mut stdout = std::io::stdout();
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
    let summary = Summary::new(flows.len(), session, &snap, vanished, &t.ctx.rules);
    match args.output {
        Format::Json => eprintln!("podtrace summary: {}", serde_json::to_string(&summary)?),
        Format::Table => eprintln!("{}", summary.text(style)),
    }
    Ok(())
}
