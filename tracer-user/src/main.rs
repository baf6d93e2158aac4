//! The `podtrace` binary: a thin CLI over the podtrace library.
use clap::Parser;

/// Shows, for every flow of a Kubernetes pod, the path its packets take through this node:
/// pod veth -> which ENI -> out, and where SNAT/DNAT rewrote them.
#[derive(Parser)]
#[command(name = "podtrace", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
