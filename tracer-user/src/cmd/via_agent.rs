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
    client::get(socket, "/healthz")?;
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    eprintln!(
        "podtrace: tracing {} via the agent at {} (Ctrl-C to stop)",
        args.pods.join(", "),
        socket.display()
    );
    let live = args.output == Format::Table && std::io::stdout().is_terminal();
    let style = Style::detect();
    let start = Instant::now();
    let mut stdout = std::io::stdout();
    loop {
        let wait = tokio::time::sleep(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = wait => {}
        }
        if args.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        if live {
            table::live_table(
                &mut stdout,
                "podtrace (via agent)",
                &client::flows(socket, &args.pods, args.namespace.as_deref(), since)?,
                style,
            )?;
        }
    }
    let flows = client::flows(socket, &args.pods, args.namespace.as_deref(), since)?;
    match args.output {
        Format::Json => table::json_lines(&mut stdout, &flows)?,
        Format::Table => table::table(&mut stdout, &flows, style)?,
    }
    stdout.flush()?;
    Ok(())
}
