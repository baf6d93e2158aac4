//! `podtrace node`: the node's ENIs, which pod IPs each carries, IP capacity, and health checks
//! of the VPC CNI's routing (each warning names its fix). Everything is read over netlink and
//! from `iptables-save`; nothing is changed.
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use crate::{
    inventory::{Eni, Inventory, MAIN_TABLE, PREF_FROM_POD, PREF_TO_POD},
    output::{Format, Style},
    pods::{self, PodInfo},
    preflight,
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
    #[arg(long, value_parser = preflight::parse_duration)]
    pub watch: Option<Duration>,
}

/// ENIs and IPv4 addresses per ENI, as `aws ec2 describe-instance-types` reports them.
pub const INSTANCE_TYPES: [(&str, u32, u32); 14] = [
    ("t3.micro", 2, 2),
    ("t3.small", 3, 4),
    ("t3.medium", 3, 6),
    ("t3.large", 3, 12),
    ("t3.xlarge", 4, 15),
    ("m5.large", 3, 10),
    ("m5.xlarge", 4, 15),
    ("m5.2xlarge", 4, 15),
    ("m5.4xlarge", 8, 30),
    ("m6i.large", 3, 10),
    ("m6i.xlarge", 4, 15),
    ("c5.large", 3, 10),
    ("c5.xlarge", 4, 15),
    ("r5.large", 3, 10),
];

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PodRef {
    pub ip: IpAddr,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub veth: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EniReport {
    pub name: String,
    pub mac: Option<String>,
    pub primary: bool,
    pub primary_ip: Option<IpAddr>,
    pub subnet: Option<String>,
    /// "main" for the primary ENI, the table number otherwise.
    pub route_table: String,
    pub pods: Vec<PodRef>,
    /// Secondary IPs still free on this ENI (needs the IPs per ENI).
    pub free_ips: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MaxPods {
    pub enis: u32,
    pub ips_per_eni: u32,
    pub formula: String,
    pub result: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Warning {
    /// Stable identifier of the check.
    pub check: &'static str,
    pub message: String,
    pub fix: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeReport {
    pub enis: Vec<EniReport>,
    pub max_pods: Option<MaxPods>,
    pub warnings: Vec<Warning>,
}

fn subnet_of(ip: IpAddr, prefix: u8) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix as u32) };
            format!("{}/{prefix}", std::net::Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix as u32) };
            format!("{}/{prefix}", std::net::Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

fn in_subnet(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix as u32) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix as u32) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The ENI whose subnet contains `ip`, when exactly one does (AWS takes secondary IPs from the
/// ENI's own subnet; ENIs sharing a subnet make this unknowable).
fn eni_by_subnet(inv: &Inventory, ip: IpAddr) -> Option<&Eni> {
    let mut found = inv.enis.iter().filter(|e| e.addrs.iter().any(|(a, p)| in_subnet(ip, *a, *p)));
    match (found.next(), found.next()) {
        (Some(e), None) => Some(e),
        _ => None,
    }
}

/// Effective rp_filter of an interface: max(all, iface), as the kernel applies it.
fn rp_filter(ifname: &str) -> Option<u32> {
    let read = |n: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{n}/rp_filter"))
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    };
    Some(read("all").unwrap_or(0).max(read(ifname)?))
}

/// Builds the report from a snapshot of the node (and the nat table text, if readable).
pub fn report(
    inv: &Inventory,
    pods: &[PodInfo],
    ips_per_eni: Option<(u32, u32)>,
    nat: Option<&str>,
) -> NodeReport {
    let by_ip: BTreeMap<IpAddr, &PodInfo> =
        pods.iter().flat_map(|p| p.ips.iter().map(move |ip| (*ip, p))).collect();
    let pod_routes = inv.pod_routes();
    let mut enis: Vec<EniReport> = inv
        .enis
        .iter()
        .map(|e| {
            let primary = e.addrs.iter().find(|(a, _)| a.is_ipv4()).or(e.addrs.first());
            EniReport {
                name: e.name.clone(),
                mac: e.mac.clone(),
                primary: e.primary,
                primary_ip: primary.map(|(a, _)| *a),
                subnet: primary.map(|(a, p)| subnet_of(*a, *p)),
                route_table: e.table.map(|t| t.to_string()).unwrap_or_else(|| "main".into()),
                pods: Vec::new(),
                free_ips: None,
            }
        })
        .collect();
    for (ip, veth) in &pod_routes {
        let Some(owner) = inv.pod_ip_owner_eni(*ip) else { continue };
        let Some(r) = enis.iter_mut().find(|r| r.name == owner.name) else { continue };
        let pod = by_ip.get(ip);
        r.pods.push(PodRef {
            ip: *ip,
            name: pod.map(|p| p.name.clone()),
            namespace: pod.map(|p| p.namespace.clone()),
            veth: Some(veth.name.clone()),
        });
    }
    // Pod IPs with a pref-1536 rule but no route (pod gone, rule left behind) still hold an IP.
    for rule in inv.rules.iter().filter(|r| r.priority == PREF_FROM_POD) {
        let Some((ip, _)) = rule.src else { continue };
        if pod_routes.iter().any(|(p, _)| *p == ip) {
            continue;
        }
        if let Some(r) = inv
            .enis
            .iter()
            .find(|e| e.table == Some(rule.table))
            .and_then(|e| enis.iter_mut().find(|r| r.name == e.name))
        {
            r.pods.push(PodRef { ip, name: None, namespace: None, veth: None });
        }
    }
    for r in &mut enis {
        r.pods.sort_by_key(|p| p.ip);
    }
    let max_pods = ips_per_eni.map(|(n_enis, ips)| {
        for r in &mut enis {
            r.free_ips = Some((ips - 1).saturating_sub(r.pods.len() as u32));
        }
        MaxPods {
            enis: n_enis,
            ips_per_eni: ips,
            formula: format!("{n_enis} × ({ips} − 1) + 2"),
            result: n_enis * (ips - 1) + 2,
        }
    });
    NodeReport { enis, max_pods, warnings: health(inv, nat) }
}

/// The health checks. Each warning names what is wrong, what it breaks and the command that
/// fixes it.
pub fn health(inv: &Inventory, nat: Option<&str>) -> Vec<Warning> {
    let mut w = Vec::new();
    for (ip, veth) in inv.pod_routes() {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        let has_512 = inv
            .rules
            .iter()
            .any(|r| r.priority == PREF_TO_POD && r.dst == Some((ip, len)) && r.table == MAIN_TABLE);
        if !has_512 {
            w.push(Warning {
                check: "pod-route-without-to-rule",
                message: format!("pod IP {ip} is routed to {} but has no 'to {ip} lookup main' rule (pref 512): traffic for it may be routed by an ENI table", veth.name),
                fix: format!("ip rule add to {ip}/{len} lookup main pref 512"),
            });
        }
        if let Some(owner) = eni_by_subnet(inv, ip)
            && let Some(table) = owner.table.or_else(|| eni_table_from_rules(inv, owner))
            && !owner.primary
            && inv.from_pod_rule(ip).is_none()
        {
            w.push(Warning {
                check: "secondary-pod-without-from-rule",
                message: format!("pod IP {ip} belongs to secondary ENI {} but has no 'from {ip} lookup {table}' rule (pref 1536): its traffic leaves by the primary ENI with a source the VPC drops (source/destination check)", owner.name),
                fix: format!("ip rule add from {ip}/{len} lookup {table} pref 1536"),
            });
        }
    }
    for e in inv.enis.iter().filter(|e| !e.primary) {
        let Some(table) = e.table.or_else(|| eni_table_from_rules(inv, e)) else { continue };
        let has_default = inv.routes.iter().any(|r| r.table == table && r.dst.is_none() && !r.v6);
        if !has_default {
            let gw = e
                .addrs
                .iter()
                .find(|(a, _)| a.is_ipv4())
                .map(|(a, p)| gateway_of(*a, *p).to_string())
                .unwrap_or_else(|| "<gateway>".into());
            w.push(Warning {
                check: "eni-table-without-default",
                message: format!("route table {table} of ENI {} has no default route: pods on {} cannot reach anything outside their subnet", e.name, e.name),
                fix: format!("ip route replace default via {gw} dev {} table {table}", e.name),
            });
        }
    }
    let has_fwmark = inv.rules.iter().any(|r| {
        r.priority == crate::inventory::PREF_FWMARK
            && r.fwmark.is_some_and(|(m, k)| m & 0x80 != 0 && k & 0x80 != 0)
            && r.table == MAIN_TABLE
    });
    if !has_fwmark && inv.enis.len() > 1 {
        w.push(Warning {
            check: "fwmark-rule-missing",
            message: "no 'fwmark 0x80/0x80 lookup main' rule (pref 1024): replies of NodePort and off-VPC connections of pods on secondary ENIs leave by the wrong ENI and the VPC drops them".into(),
            fix: "ip rule add fwmark 0x80/0x80 lookup main pref 1024".into(),
        });
    }
    if let Some(primary) = inv.primary_eni()
        && rp_filter(&primary.name) == Some(1)
    {
        w.push(Warning {
            check: "rp-filter-strict-on-primary",
            message: format!("rp_filter is strict (1) on primary ENI {}: replies to pods on secondary ENIs arriving on it are dropped", primary.name),
            fix: format!("sysctl -w net.ipv4.conf.{}.rp_filter=2 (and net.ipv4.conf.all.rp_filter<=2)", primary.name),
        });
    }
    if let Some(nat) = nat {
        w.extend(snat_checks(nat, inv));
    }
    w
}

fn eni_table_from_rules(inv: &Inventory, e: &Eni) -> Option<u32> {
    // ipamd: `ip rule add from <ENI IP> lookup <table> pref 32765`.
    inv.rules
        .iter()
        .find(|r| r.src.is_some_and(|(ip, _)| e.addrs.iter().any(|(a, _)| *a == ip)))
        .map(|r| r.table)
}

fn gateway_of(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix as u32) };
            IpAddr::V4(std::net::Ipv4Addr::from((u32::from(v4) & mask) + 1))
        }
        v6 => v6,
    }
}

/// AWS-SNAT-CHAIN checks on `iptables-save -t nat` output.
fn snat_checks(nat: &str, inv: &Inventory) -> Vec<Warning> {
    let mut w = Vec::new();
    let primary_ip = inv
        .primary_eni()
        .and_then(|e| e.primary_ip())
        .map(|i| i.to_string())
        .unwrap_or_else(|| "<primary IP>".into());
    let chains: Vec<&str> = nat
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with("AWS-SNAT-CHAIN"))
        .collect();
    let jumped = nat.lines().any(|l| l.starts_with("-A POSTROUTING") && l.contains("-j AWS-SNAT-CHAIN"));
    if chains.is_empty() || !jumped {
        w.push(Warning {
            check: "snat-chain-missing",
            message: "no AWS-SNAT-CHAIN reached from POSTROUTING: pods' traffic to the internet leaves with their private IPs (no SNAT), unless AWS_VPC_K8S_CNI_EXTERNALSNAT=true is intended".into(),
            fix: format!("iptables -t nat -N AWS-SNAT-CHAIN-0; iptables -t nat -A POSTROUTING -j AWS-SNAT-CHAIN-0; iptables -t nat -A AWS-SNAT-CHAIN-0 -d <VPC CIDR> -j RETURN; iptables -t nat -A AWS-SNAT-CHAIN-0 ! -o vlan+ -m addrtype ! --dst-type LOCAL -j SNAT --to-source {primary_ip} --random-fully (or restart aws-node)"),
        });
        return w;
    }
    let excludes = nat
        .lines()
        .any(|l| l.starts_with("-A AWS-SNAT-CHAIN") && l.contains(" -d ") && l.contains("-j RETURN"));
    if !excludes {
        w.push(Warning {
            check: "snat-chain-excludes-nothing",
            message: "AWS-SNAT-CHAIN has no '-d <VPC CIDR> -j RETURN' rule: traffic between pods and VPC hosts is SNATed to the node IP too, hiding pod IPs".into(),
            fix: "iptables -t nat -I AWS-SNAT-CHAIN-0 -d <VPC CIDR> -j RETURN (or restart aws-node)".into(),
        });
    }
    w
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

pub fn render_table(r: &NodeReport, style: Style) -> String {
    let mut s = String::new();
    for e in &r.enis {
        let free = e.free_ips.map(|f| format!("  {f} IPs free")).unwrap_or_default();
        s += &format!(
            "{}{}  {}  {}  {}  table {}{}\n",
            style.eni(&e.name),
            if e.primary { " (primary)" } else { "" },
            e.mac.as_deref().unwrap_or("-"),
            e.primary_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            e.subnet.as_deref().unwrap_or("-"),
            e.route_table,
            free
        );
        for p in &e.pods {
            let name = match (&p.namespace, &p.name) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                _ => "(unknown pod)".into(),
            };
            s += &format!("    {:<16} {:<28} {}\n", p.ip, name, p.veth.as_deref().unwrap_or("(no route)"));
        }
    }
    if let Some(m) = &r.max_pods {
        s += &format!("max pods: {} = {}\n", m.formula, m.result);
    }
    if r.warnings.is_empty() {
        s += "health: ok\n";
    }
    for w in &r.warnings {
        s += &format!("{} {}\n    fix: {}\n", style.bad("warning:"), w.message, w.fix);
    }
    s
}

pub async fn run(args: NodeArgs) -> Result<()> {
    loop {
        let inv = Inventory::read(&args.enis)?;
        if inv.enis.is_empty() {
            bail!("no ENI found: no interface carries a VPC address on this node (use --eni IFACE)");
        }
        let pods = match &args.pods_file {
            Some(f) => pods::load_file(f)?,
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
