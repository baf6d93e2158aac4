//! `podtrace node`: the node's ENIs, which pod IPs each carries, IP capacity, and health checks
//! of the VPC CNI's routing (each warning names its fix). Everything is read from the kernel;
//! nothing is changed.
use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use clap::Args;

use super::options::parse_duration;
use crate::{
    node::{imds, inventory::Inventory, pods, rules::Ruleset},
    report::{
        node::{Capacity, INSTANCE_TYPES, NodeFacts, NodeReport, render_table, report},
        table::{Format, Style},
    },
};

#[derive(Args, Clone, Debug)]
pub struct NodeArgs {
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    /// IPv4 addresses per ENI of this instance type (for free capacity and max pods).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..))]
    pub max_ips_per_eni: Option<u32>,
    /// Instance type (e.g. t3.medium) to take ENIs and IPs per ENI from a built-in table
    /// (default: the type the instance metadata reports).
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// Pod names from a `kubectl get pods -A -o json` file (else pod IPs only, unless the
    /// Kubernetes API is reachable).
    #[arg(long, value_name = "FILE")]
    pub pods_file: Option<PathBuf>,
    /// Use these interfaces as ENIs instead of discovering them.
    #[arg(long = "eni", value_name = "IFACE")]
    pub enis: Vec<String>,
    /// Refresh every interval (e.g. 2s) until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub watch: Option<Duration>,
}

/// ENIs and IPs per ENI: from `--instance-type` (or the type IMDS reports) in the built-in
/// table, `--max-ips-per-eni` overriding the IPs.
fn capacity(args: &NodeArgs, instance_type: Option<&str>, found_enis: u32) -> Result<Option<Capacity>> {
    if let Some(t) = instance_type {
        match INSTANCE_TYPES.iter().find(|(n, ..)| *n == t) {
            Some((_, enis, ips, vcpus)) => {
                return Ok(Some(Capacity {
                    enis: *enis,
                    ips_per_eni: args.max_ips_per_eni.unwrap_or(*ips),
                    vcpus: Some(*vcpus),
                }));
            }
            // A type named on the command line must be known; one IMDS reports may not be.
            None if args.instance_type.is_some() => {
                let known: Vec<&str> = INSTANCE_TYPES.iter().map(|(n, ..)| *n).collect();
                bail!(
                    "unknown instance type {t} (known: {}); give --max-ips-per-eni instead",
                    known.join(", ")
                );
            }
            None => {}
        }
    }
    Ok(args.max_ips_per_eni.map(|ips| Capacity { enis: found_enis, ips_per_eni: ips, vcpus: None }))
}

/// The report of this node now, pods named from what `pods` gives for its inventory.
pub fn gather(
    args: &NodeArgs,
    pods: impl FnOnce(&Inventory) -> Result<Vec<pods::PodInfo>>,
) -> Result<NodeReport> {
    let inv = Inventory::read(&args.enis)?;
    if inv.enis.is_empty() {
        bail!("no ENI found: no interface carries a VPC address on this node (use --eni IFACE)");
    }
    let pods = pods(&inv)?;
    let imds = imds::read().map_err(|e| format!("{e:#}"));
    let instance_type =
        args.instance_type.clone().or_else(|| imds.as_ref().ok().and_then(|i| i.instance_type.clone()));
    let capacity = capacity(args, instance_type.as_deref(), inv.enis.len() as u32)?;
    let rules = Ruleset::read();
    Ok(report(&NodeFacts {
        inv: &inv,
        pods: &pods,
        rules: &rules,
        imds: imds.as_ref().map_err(Clone::clone),
        instance_type,
        capacity,
    }))
}

pub async fn run(args: NodeArgs) -> Result<()> {
    loop {
        // Names are a bonus: without a reachable API, pod IPs are shown alone.
        let from_api = match &args.pods_file {
            Some(_) => Vec::new(),
            None => tokio::time::timeout(Duration::from_secs(5), pods::from_api(None, None))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
        };
        let r = gather(&args, |inv| match &args.pods_file {
            // Only the pods with an address on this node are kept: the file may list a cluster.
            Some(f) => {
                let here: std::collections::HashSet<std::net::IpAddr> =
                    inv.pod_routes().into_iter().map(|(ip, _)| ip).collect();
                pods::read_file(f, |p| p.ips.iter().any(|ip| here.contains(ip)))
            }
            None => Ok(from_api),
        })?;
        match args.output {
            Format::Json => println!("{}", serde_json::to_string(&r)?),
            Format::Table => {
                if args.watch.is_some() {
                    print!("\x1b[H\x1b[2J");
                }
                print!("{}", render_table(&r, Style::detect()));
            }
        }
        let Some(every) = args.watch else { return Ok(()) };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}
