//! `podtrace node`: the node's ENIs, which pod IPs each carries, IP capacity, and health checks
//! of the VPC CNI's routing (each warning names its fix). Everything is read from the kernel;
//! nothing is changed.
use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use clap::Args;

use super::options::parse_duration;
use crate::{
    node::{inventory::Inventory, pods},
    report::{
        node::{INSTANCE_TYPES, render_table, report},
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
    /// Instance type (e.g. t3.medium) to take ENIs and IPs per ENI from a built-in table.
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

fn read_nat_table() -> Option<String> {
    let o = std::process::Command::new("iptables-save").args(["-t", "nat"]).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn ips_per_eni(args: &NodeArgs, found_enis: u32) -> Result<Option<(u32, u32)>> {
    if let Some(t) = &args.instance_type {
        let Some((_, enis, ips)) = INSTANCE_TYPES.iter().find(|(n, _, _)| n == t) else {
            let known: Vec<&str> = INSTANCE_TYPES.iter().map(|(n, _, _)| *n).collect();
            bail!("unknown instance type {t} (known: {}); give --max-ips-per-eni instead", known.join(", "));
        };
        return Ok(Some((*enis, args.max_ips_per_eni.unwrap_or(*ips))));
    }
    Ok(args.max_ips_per_eni.map(|ips| (found_enis, ips)))
}

pub async fn run(args: NodeArgs) -> Result<()> {
    loop {
        let inv = Inventory::read(&args.enis)?;
        if inv.enis.is_empty() {
            bail!("no ENI found: no interface carries a VPC address on this node (use --eni IFACE)");
        }
        let pods = match &args.pods_file {
            // Only the pods with an address on this node are kept: the file may list a cluster.
            Some(f) => {
                let here: std::collections::HashSet<std::net::IpAddr> =
                    inv.pod_routes().into_iter().map(|(ip, _)| ip).collect();
                pods::read_file(f, |p| p.ips.iter().any(|ip| here.contains(ip)))?
            }
            // Names are a bonus: without a reachable API, pod IPs are shown alone.
            None => tokio::time::timeout(Duration::from_secs(5), pods::from_api(None, None))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
        };
        let capacity = ips_per_eni(&args, inv.enis.len() as u32)?;
        let r = report(&inv, &pods, capacity, read_nat_table().as_deref());
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
