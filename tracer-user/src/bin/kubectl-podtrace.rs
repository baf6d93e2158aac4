//! `kubectl podtrace`: the krew-style kubectl plugin (kubectl runs `kubectl-podtrace` from the
//! PATH for `kubectl podtrace ...`). A thin CLI over `podtrace::cmd::kubectl`.
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use podtrace::cmd::kubectl::{self, cluster::Cluster, cluster::ClusterArgs, compare::CompareArgs};

/// podtrace for a whole cluster, from your kubeconfig: a pod's flows from the podtrace agent on
/// its node (through the API server), paths across nodes stitched into one.
///
///   kubectl podtrace web-1 [-n NS] [--duration 30s] [-o table|json]
///   kubectl podtrace node NODE [-o table|json]
///   kubectl podtrace compare -l app=web [--duration 60s]
#[derive(Parser)]
#[command(
    name = "kubectl podtrace",
    bin_name = "kubectl podtrace",
    version,
    about,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    pod: Option<kubectl::PodArgs>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Log details to stderr (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Cmd {
    /// A node's ENIs, pod IPs, capacity and routing health, from its podtrace agent.
    Node(kubectl::NodeArgs),
    /// NodePort (target-type instance) against pod IP (target-type ip), across nodes.
    Compare(CompareArgs),
}

fn main() -> ExitCode {
    let cli: Cli = match podtrace::cmd::options::parse_cli(std::env::args_os()) {
        Ok(c) => c,
        Err(status) => return status,
    };
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new().filter_level(level).format_target(false).format_timestamp_millis().init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let cluster = Cluster::connect(&cli.cluster).await?;
        match (&cli.cmd, &cli.pod) {
            (Some(Cmd::Node(a)), _) => kubectl::node(&cluster, a).await,
            (Some(Cmd::Compare(a)), _) => kubectl::compare::run(&cluster, a).await,
            (None, Some(a)) => kubectl::trace(&cluster, a).await,
            (None, None) => anyhow::bail!(
                "name a pod: kubectl podtrace POD [-n NAMESPACE] (or node NODE, compare -l K=V)"
            ),
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
