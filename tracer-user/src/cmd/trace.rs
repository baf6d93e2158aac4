//! `podtrace [trace] --pod NAME`: resolve pods to veths and ENIs, attach, follow, report.
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use super::{
    targets::{Targets, resolve_targets, select_pods},
    trace_args::{TraceArgs, TraceCommand, ViewArgs},
};
use crate::{
    assemble::{
        model::Flow,
        session::{Session, Snapshot, Wake},
    },
    kernel::{load, preflight},
    node::inventory::Inventory,
    report::{
        diagram::NodePicture,
        group::GroupBy,
        live::{DiagramFiles, LiveOptions, LiveOutput},
        summary::Summary,
        table::{Format, Style},
        tui::{self, Control},
    },
};

/// The whole `podtrace trace` command.
pub async fn run(cmd: TraceCommand) -> Result<()> {
    let TraceCommand { trace: args, view } = cmd;
    if let Some(sock) = &args.agent {
        if view.group_by == Some(GroupBy::Path) || view.html.is_some() || view.svg.is_some() {
            bail!("--group-by path, --html and --svg need a local trace (not --agent)");
        }
        return super::via_agent::trace(sock, &args).await;
    }
    load::check_flow_table(args.max_flows)?;
    preflight::check_privileges()?;
    preflight::check_btf()?;
    let pods = select_pods(&args).await?;
    let inv = Inventory::read(&args.enis)?;
    let targets = resolve_targets(&inv, &pods, false)?;
    let picture = NodePicture::read(&inv, &targets.pods);
    let mut session = Session::start(&args.session(&targets.filter), &targets.attach)?;
    for hook in session.blind_hooks() {
        eprintln!("warning: {hook}");
    }
    let kept = preflight::drop_capabilities().context("dropping capabilities after attaching")?;
    log::debug!("capabilities kept after attaching: {kept:?}");
    let diagram = DiagramFiles { html: view.html.clone(), svg: view.svg.clone(), node: picture };
    follow(&mut session, &targets, &args, &view, diagram).await
}

/// Every flow of the targets' pods in a fresh snapshot.
fn snapshot(session: &mut Session, t: &Targets) -> Result<(Vec<Flow>, Snapshot)> {
    let snap = session.poll()?;
    let flows = session.flows(&snap, &t.ctx, &t.pods);
    Ok((flows, snap))
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

async fn follow(
    session: &mut Session,
    t: &Targets,
    args: &TraceArgs,
    view: &ViewArgs,
    diagram: DiagramFiles,
) -> Result<()> {
    let pods = t.pods.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect::<Vec<_>>().join(", ");
    let interfaces = t.attach.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ");
    let names = t.pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
    // Signals are handled from here on: the readiness line below must not race them.
    let mut events = session.events(Some(Duration::from_millis(100)))?;
    // Also the readiness signal for scripts: everything is attached from here on.
    eprintln!("podtrace: tracing {names} on {interfaces} (Ctrl-C to stop)");
    let group_by = view.group_by.unwrap_or(match args.output {
        Format::Json => GroupBy::Flow,
        Format::Table => GroupBy::Path,
    });
    let mut out = LiveOutput::start(LiveOptions {
        format: args.output,
        group_by,
        interval: args.interval,
        pods,
        interfaces,
        start_ms: unix_ms(),
        diagram,
    })?;
    let start = Instant::now();
    let deadline = args.duration.and_then(|d| start.checked_add(d));
    let mut last_poll = start;
    let mut vanished = Vec::new();
    loop {
        let wake = tokio::select! {
            wake = events.next() => wake,
            input = out.next_input() => match input? {
                Control::Quit => Wake::Stop,
                Control::Continue => continue,
            },
        };
        match wake {
            Wake::Stop => break,
            // The hop log is drained on its own timer (`HOP_DRAIN_EVERY`), without a redraw.
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
                out.note(format!("warning: interface {name} disappeared; still tracing the others"))?;
                vanished.push(name);
            }
            if out.due(now) {
                let (flows, snap) = snapshot(session, t)?;
                out.refresh(&flows, tui::losses(&snap.counters, &session.user), unix_ms())?;
            }
        }
    }
    drop(events);
    let (flows, snap) = snapshot(session, t)?;
    out.finish(&flows, unix_ms())?;
    let summary = Summary::new(flows.len(), session, &snap, vanished, &t.ctx.rules);
    match args.output {
        Format::Json => eprintln!("podtrace summary: {}", serde_json::to_string(&summary)?),
        Format::Table => eprintln!("{}", summary.text(Style::detect())),
    }
    Ok(())
}
