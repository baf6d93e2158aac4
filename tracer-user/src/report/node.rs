//! `podtrace node`'s report: every ENI with its addresses, table and pods, capacity and the
//! max-pods formula, and the health warnings.
use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use super::table::Style;
use crate::node::{
    addr_math::subnet_of,
    health::{Warning, health},
    inventory::{Inventory, PREF_FROM_POD},
    pods::PodInfo,
};

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

#[derive(Clone, Debug, Serialize)]
pub struct NodeReport {
    pub enis: Vec<EniReport>,
    pub max_pods: Option<MaxPods>,
    pub warnings: Vec<Warning>,
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
