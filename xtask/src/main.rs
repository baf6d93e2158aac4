//! `cargo xtask <command>`: setup, test, lab, demo, compare, bench.
mod cli_lab;
mod compare;
mod demo;
mod setup;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "podtrace developer and user tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing needs (toolchain parts, bpf-linker, apt packages).
    Setup {
        /// Only the build tools (rust-src, bpf-linker), no system packages (container builds).
        #[arg(long)]
        no_packages: bool,
    },
    /// Run setup, build everything and run every test (unit and end-to-end; needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run setup, build podtrace, bring up the lab and trace web-2 while the brief's traffic
    /// cases run (VPC host, internet, NodePort, pod IP, ClusterIP); tear the lab down.
    Demo,
    /// On the lab: the same load through node-a's NodePort and straight to web-2's pod IP,
    /// measured by `podtrace compare`; report and SVG under target/compare/.
    Compare {
        #[arg(long, value_enum, default_value = "cluster")]
        etp: xtask::lab::Etp,
        /// Requests per mode.
        #[arg(long, default_value_t = 400)]
        requests: u32,
    },
    /// Measure podtrace's overhead on the lab and write BENCHMARKS.md (release builds).
    Bench {
        /// Short runs (< 3 minutes), for CI smoke tests.
        #[arg(long)]
        quick: bool,
        /// Print the report only; leave BENCHMARKS.md alone.
        #[arg(long)]
        no_write: bool,
        /// Exit non-zero when a target is missed by more than the run's own spread.
        #[arg(long)]
        check: bool,
        /// Measure one figure only, print it, write nothing: kernel-cost, capture-cost,
        /// agent or poll-cost.
        #[arg(long, value_name = "FIGURE", value_parser = ["kernel-cost", "capture-cost", "agent", "poll-cost"])]
        only: Option<String>,
    },
    /// The namespace lab: a two-node EKS datapath (see `cargo xtask lab --help`).
    Lab {
        #[command(subcommand)]
        cmd: cli_lab::LabCmd,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Setup { no_packages } => setup::run(!no_packages),
        Cmd::Test { args } => {
            setup::run(true)?;
            test(&args)
        }
        Cmd::Lab { cmd } => cli_lab::run(cmd),
        Cmd::Compare { etp, requests } => {
            setup::run(true)?;
            compare::run(etp, requests)
        }
        Cmd::Bench { quick, no_write, check, only } => {
            setup::run(true)?;
            bench(quick, no_write, check, only.as_deref())
        }
        Cmd::Demo => {
            setup::run(true)?;
            demo::run()
        }
    }
}

/// Runs cargo with the given arguments in the workspace; fails if it fails.
pub fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(env!("CARGO")).args(args).status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the end-to-end tests load eBPF programs and build network namespaces: run as root");
    }
    // The e2e tests run the podtrace binary: build it first.
    cargo(&["build", "--bins"])?;
    // Every test binary runs even when one fails: one run shows every failure.
    let mut args = vec!["test", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}

fn bench(quick: bool, no_write: bool, check: bool, only: Option<&str>) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmarks load eBPF programs and build network namespaces: run as root");
    }
    cargo(&[
        "build",
        "--release",
        "--quiet",
        "-p",
        "tracer-user",
        "--bin",
        "podtrace",
        "-p",
        "tests",
        "--bin",
        "bench",
    ])?;
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let mut cmd = Command::new(target.join("release/bench"));
    cmd.arg("--podtrace").arg(target.join("release/podtrace"));
    if quick {
        cmd.arg("--quick");
    }
    if check {
        cmd.arg("--check");
    }
    match only {
        Some(figure) => {
            cmd.arg(format!("--{figure}-only"));
        }
        None if !no_write => {
            cmd.arg("--out").arg(root.join("BENCHMARKS.md"));
        }
        None => {}
    }
    let status = cmd.status().context("running the benchmarks")?;
    if !status.success() {
        bail!("benchmarks failed");
    }
    Ok(())
}
