//! The `podtrace` binary: a thin CLI over the podtrace library.
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use podtrace::cmd::{self, trace, trace_args::TraceCommand};

/// Shows, for every flow of a Kubernetes pod, the path its packets take through this node:
/// pod veth -> which ENI -> out, and where SNAT/DNAT rewrote them.
///
/// `podtrace --pod web-1` is short for `podtrace trace --pod web-1`.
/// Needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN.
#[derive(Parser)]
#[command(name = "podtrace", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    trace: TraceCommand,
    /// Log details to stderr (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Cmd {
    /// Trace the flows of pods on this node (the default command).
    Trace(TraceCommand),
    /// The node's ENIs, the pod IPs each carries, IP capacity and routing health checks.
    Node(cmd::node::NodeArgs),
    /// NodePort (target-type instance) vs pod IP (target-type ip), measured side by side.
    Compare(cmd::compare::CompareArgs),
    /// A pod's packets at every hop (veth, ENIs), before and after each NAT, in one pcapng file.
    Capture(cmd::capture::CaptureArgs),
    /// The node agent (DaemonSet): traces every pod and ENI, serves flows and metrics.
    Agent(cmd::agent::AgentArgs),
    /// Exit 0 if the agent at SOCKET answers /healthz within TIMEOUT (for probes).
    Healthz {
        #[arg(long, default_value = "/run/podtrace/agent.sock")]
        socket: std::path::PathBuf,
        /// Give up after this long (keep it below the probe's timeoutSeconds).
        #[arg(long, default_value = "2s", value_parser = cmd::options::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// `podtrace --agent SOCK capture …` (the agent's socket first, as for `podtrace --agent SOCK
/// --pod …`) is `podtrace capture --agent SOCK …`: the option moves behind the subcommand that
/// takes it, since clap does not let the default command's options precede a subcommand.
fn agent_before_subcommand(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const TAKE_AGENT: [&str; 2] = ["capture", "trace"];
    let is_sub =
        |a: Option<&std::ffi::OsString>| a.and_then(|a| a.to_str()).is_some_and(|a| TAKE_AGENT.contains(&a));
    let width = match args.get(1).and_then(|a| a.to_str()) {
        Some("--agent") if args.len() > 3 => 2,
        Some(a) if a.starts_with("--agent=") => 1,
        _ => return args,
    };
    if is_sub(args.get(1 + width)) {
        let sub = args.remove(1 + width);
        args.insert(1, sub);
    }
    args
}

fn main() -> ExitCode {
    let cli: Cli = match cmd::options::parse_cli(agent_before_subcommand(std::env::args_os().collect())) {
        Ok(c) => c,
        Err(status) => return status,
    };
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new().filter_level(level).format_target(false).format_timestamp_millis().init();
    // The agent serves its API while it polls the kernel: give it worker threads.
    let rt = match &cli.cmd {
        Some(Cmd::Agent(_)) => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
        }
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            Some(Cmd::Trace(args)) => trace::run(args).await,
            Some(Cmd::Node(args)) => cmd::node::run(args).await,
            Some(Cmd::Agent(args)) => cmd::agent::run(args).await,
            Some(Cmd::Compare(args)) => cmd::compare::run(args).await,
            Some(Cmd::Capture(args)) => cmd::capture::run(args).await,
            Some(Cmd::Healthz { socket, timeout }) => {
                cmd::agent::client::get(&socket, "/healthz", timeout).map(|body| print!("{body}"))
            }
            None => trace::run(cli.trace).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined, never a backtrace.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::agent_before_subcommand;

    fn moved(args: &[&str]) -> Vec<String> {
        agent_before_subcommand(args.iter().map(Into::into).collect())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn the_agent_socket_may_come_before_the_capture_subcommand() {
        assert_eq!(
            moved(&["podtrace", "--agent", "/s", "capture", "--pod", "w"]),
            ["podtrace", "capture", "--agent", "/s", "--pod", "w"]
        );
        assert_eq!(
            moved(&["podtrace", "--agent=/s", "capture", "-w", "-"]),
            ["podtrace", "capture", "--agent=/s", "-w", "-"]
        );
        // Left alone: the default command, other subcommands, and a socket named like one.
        for args in [
            &["podtrace", "--agent", "/s", "--pod", "w"][..],
            &["podtrace", "--agent", "/s", "node"],
            &["podtrace", "--agent", "capture"],
            &["podtrace", "capture", "--agent", "/s"],
        ] {
            assert_eq!(moved(args), args, "{args:?}");
        }
    }
}
