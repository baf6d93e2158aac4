//! `podtrace --pod NAME --agent SOCKET`: a pod's flows from a running agent, printed as a
//! local trace prints them, without attaching anything.
use std::{
    io::{IsTerminal, Write},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{agent::client, trace_args::TraceArgs};
use crate::report::table::{self, Format, Style};

pub async fn trace(socket: &Path, args: &TraceArgs) -> Result<()> {
    if args.pods.is_empty() {
        bail!("--agent needs --pod NAME");
    }
    // Fail now, not after the duration, when the agent is not there.
    client::get(socket, "/healthz", client::ANSWER_TIMEOUT)?;
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    eprintln!(
        "podtrace: tracing {} via the agent at {} (Ctrl-C to stop)",
        args.pods.join(", "),
        socket.display()
    );
    let live = args.output == Format::Table && std::io::stdout().is_terminal();
    let style = Style::detect();
    let deadline = args.duration.and_then(|d| Instant::now().checked_add(d));
    let fetch =
        || client::flows(socket, &args.pods, args.namespace.as_deref(), since, client::ANSWER_TIMEOUT);
    let mut stdout = std::io::stdout();
    loop {
        // Each fetch is bounded (time and size), so the duration holds within one of them.
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)),
            None => Duration::from_secs(1),
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if live {
            table::live_table(&mut stdout, "podtrace (via agent)", &fetch()?, style)?;
        }
    }
    let flows = fetch()?;
    match args.output {
        Format::Json => table::json_lines(&mut stdout, &flows)?,
        Format::Table => table::table(&mut stdout, &flows, style)?,
    }
    stdout.flush()?;
    Ok(())
}
