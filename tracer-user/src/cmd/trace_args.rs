//! The options of `podtrace trace` and `compare`.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::Args;

use super::options::{parse_bytes, parse_duration, parse_duration_or_zero};
use crate::{
    assemble::session::SessionOptions,
    kernel::{attach::AttachMode, load::SampleRate},
    report::{group::GroupBy, table::Format},
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
    /// Memory budget of the kernel's flow cache over all CPUs (fewer slots per CPU on big
    /// nodes): bytes, or with KiB/MiB/GiB.
    #[arg(long, default_value = "16MiB", value_parser = parse_bytes)]
    pub flow_cache_bytes: u64,
    /// Read flows from a running `podtrace agent` (its unix socket) instead of attaching.
    #[arg(long, value_name = "SOCKET")]
    pub agent: Option<PathBuf>,
    /// Without the live view: also print every INTERVAL while running (0 = only at the end).
    #[arg(long, default_value = "0", value_parser = parse_duration_or_zero)]
    pub interval: Duration,
}

impl TraceArgs {
    /// The session options for tracing these addresses only (the traced pods' and the
    /// node's: the kernel filter keeps nothing else).
    pub fn session(&self, filter: &[IpAddr]) -> SessionOptions {
        SessionOptions {
            sample_rate: self.sample_rate,
            max_flows: self.max_flows,
            attach_mode: self.attach_mode,
            flow_cache_bytes: self.flow_cache_bytes,
            filter: Some(filter.to_vec()),
            capture: None,
        }
    }
}

/// How `trace` shows its flows (`compare` draws its own charts).
#[derive(Args, Clone, Debug)]
pub struct ViewArgs {
    /// One row per distinct path through the node, or per flow. Default: path for the table
    /// and live view, flow for `-o json` (its contract).
    #[arg(long, value_enum, value_name = "path|flow")]
    pub group_by: Option<GroupBy>,
    /// When the trace ends, write the path diagram as a self-contained HTML page.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// When the trace ends, write the path diagram as SVG.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

/// `podtrace [trace]`'s arguments.
#[derive(Args, Clone, Debug)]
pub struct TraceCommand {
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub view: ViewArgs,
}
