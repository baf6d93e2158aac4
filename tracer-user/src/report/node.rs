//! `podtrace node`'s report: every ENI with its addresses, table and pods, capacity and the
//! max-pods formula, and the health warnings.
use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use super::table::Style;
use crate::node::{
    addr_math::{in_subnet, subnet_of},
    health::{Warning, health},
    imds::Imds,
    inventory::{Branch, Inventory, Owner, PREF_FROM_POD},
    pods::PodInfo,
    rules::{BackendRead, Ruleset, backends_text},
};

/// ENIs, IPv4 addresses per ENI and vCPUs, as `aws ec2 describe-instance-types` reports them.
pub const INSTANCE_TYPES: [(&str, u32, u32, u32); 14] = [
    ("t3.micro", 2, 2, 2),
    ("t3.small", 3, 4, 2),
    ("t3.medium", 3, 6, 2),
    ("t3.large", 3, 12, 2),
    ("t3.xlarge", 4, 15, 4),
    ("m5.large", 3, 10, 2),
    ("m5.xlarge", 4, 15, 4),
    ("m5.2xlarge", 4, 15, 8),
    ("m5.4xlarge", 8, 30, 16),
    ("m6i.large", 3, 10, 2),
    ("m6i.xlarge", 4, 15, 4),
    ("c5.large", 3, 10, 2),
    ("c5.xlarge", 4, 15, 4),
    ("r5.large", 3, 10, 2),
];

/// IPs per /28 prefix (prefix delegation).
const PREFIX_IPS: u32 = 16;

/// What bounds the node's pods: ENIs and IPv4 addresses per ENI (and vCPUs, for the EKS cap
/// on prefix delegation).
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub enis: u32,
    pub ips_per_eni: u32,
    pub vcpus: Option<u32>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PodRef {
    pub ip: IpAddr,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub veth: Option<String>,
}

/// A delegated /28 prefix of an ENI (from IMDS) and the pods it carries.
#[derive(Clone, Debug, Serialize)]
pub struct PrefixReport {
    pub prefix: String,
    pub pods: Vec<IpAddr>,
    pub free_ips: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct EniReport {
    pub name: String,
    pub mac: Option<String>,
    pub primary: bool,
    /// Carries branch ENIs (Security Groups for Pods), never pod IPs.
    pub trunk: bool,
    /// The ENI's AWS id (IMDS).
    pub interface_id: Option<String>,
    pub primary_ip: Option<IpAddr>,
    pub subnet: Option<String>,
    /// "main" for the primary ENI, the table number otherwise.
    pub route_table: String,
    pub pods: Vec<PodRef>,
    /// Delegated prefixes (prefix delegation, from IMDS).
    pub prefixes: Vec<PrefixReport>,
    /// Pod IPs still free on this ENI (needs the IPs per ENI, or the prefixes).
    pub free_ips: Option<u32>,
}

/// A branch ENI (Security Groups for Pods) and its pods.
#[derive(Clone, Debug, Serialize)]
pub struct BranchReport {
    pub name: String,
    /// From the VLAN link, else from the pod's `vpc.amazonaws.com/pod-eni` annotation.
    pub vlan_id: Option<u16>,
    pub mac: Option<String>,
    pub trunk: String,
    pub route_table: Option<u32>,
    /// The branch ENI's AWS id (pod annotation).
    pub eni_id: Option<String>,
    pub pods: Vec<PodRef>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MaxPods {
    pub enis: u32,
    pub ips_per_eni: u32,
    pub prefix_delegation: bool,
    pub formula: String,
    pub result: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeReport {
    pub instance_type: Option<String>,
    pub enis: Vec<EniReport>,
    pub branches: Vec<BranchReport>,
    pub max_pods: Option<MaxPods>,
    pub warnings: Vec<Warning>,
    /// Which rule backends were read (and why one could not be).
    pub rule_backends: Vec<BackendRead>,
    /// Why the instance metadata could not be read, when it could not.
    pub imds_error: Option<String>,
}

/// Everything the report is built from.
pub struct NodeFacts<'a> {
    pub inv: &'a Inventory,
    pub pods: &'a [PodInfo],
    pub rules: &'a Ruleset,
    pub imds: Result<&'a Imds, String>,
    pub instance_type: Option<String>,
    pub capacity: Option<Capacity>,
}

fn in_prefix(ip: IpAddr, prefix: &str) -> bool {
    let Some((net, len)) = prefix.split_once('/') else { return false };
    match (net.parse(), len.parse()) {
        (Ok(net), Ok(len)) => in_subnet(ip, net, len),
        _ => false,
    }
}

/// Builds the report from a snapshot of the node, its rules and its metadata.
pub fn report(f: &NodeFacts) -> NodeReport {
    let inv = f.inv;
    let by_ip: BTreeMap<IpAddr, &PodInfo> =
        f.pods.iter().flat_map(|p| p.ips.iter().map(move |ip| (*ip, p))).collect();
    let imds_eni = |mac: &Option<String>| {
        f.imds.as_ref().ok().and_then(|i| i.enis.iter().find(|e| Some(&e.mac) == mac.as_ref()))
    };
    let pod_ref = |ip: IpAddr, veth: Option<String>| {
        let pod = by_ip.get(&ip);
        PodRef { ip, name: pod.map(|p| p.name.clone()), namespace: pod.map(|p| p.namespace.clone()), veth }
    };
    let mut enis: Vec<EniReport> = inv
        .enis
        .iter()
        .map(|e| {
            let primary = e.addrs.iter().find(|(a, _)| a.is_ipv4()).or(e.addrs.first());
            let meta = imds_eni(&e.mac);
            EniReport {
                name: e.name.clone(),
                mac: e.mac.clone(),
                primary: e.primary,
                trunk: inv.is_trunk(e),
                interface_id: meta.and_then(|m| m.interface_id.clone()),
                primary_ip: primary.map(|(a, _)| *a),
                subnet: primary.map(|(a, p)| subnet_of(*a, *p)),
                route_table: e.table.map(|t| t.to_string()).unwrap_or_else(|| "main".into()),
                pods: Vec::new(),
                prefixes: meta
                    .map(|m| {
                        m.ipv4_prefixes
                            .iter()
                            .map(|p| PrefixReport { prefix: p.clone(), pods: Vec::new(), free_ips: 0 })
                            .collect()
                    })
                    .unwrap_or_default(),
                free_ips: None,
            }
        })
        .collect();
    let annotation = |b: &Branch| {
        f.pods
            .iter()
            .flat_map(|p| &p.branch_enis)
            .find(|a| a.if_address.as_deref().is_some_and(|m| Some(m.to_lowercase()) == b.mac))
    };
    let mut branches: Vec<BranchReport> = inv
        .branches
        .iter()
        .map(|b| BranchReport {
            name: b.name.clone(),
            vlan_id: b.vlan_id.or_else(|| annotation(b).and_then(|a| a.vlan_id)),
            mac: b.mac.clone(),
            trunk: b.trunk.clone(),
            route_table: b.table,
            eni_id: annotation(b).map(|a| a.eni_id.clone()),
            pods: Vec::new(),
        })
        .collect();
    let pod_routes = inv.pod_routes();
    for (ip, veth) in &pod_routes {
        match inv.pod_ip_owner(*ip) {
            Some(Owner::Eni(e)) => {
                if let Some(r) = enis.iter_mut().find(|r| r.name == e.name) {
                    r.pods.push(pod_ref(*ip, Some(veth.name.clone())));
                }
            }
            Some(Owner::Branch(b)) => {
                if let Some(r) = branches.iter_mut().find(|r| r.name == b.name) {
                    r.pods.push(pod_ref(*ip, Some(veth.name.clone())));
                }
            }
            None => {}
        }
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
        for p in &mut r.prefixes {
            p.pods = r.pods.iter().map(|pod| pod.ip).filter(|ip| in_prefix(*ip, &p.prefix)).collect();
            p.free_ips = PREFIX_IPS.saturating_sub(p.pods.len() as u32);
        }
    }
    let prefix_delegation = enis.iter().any(|e| !e.prefixes.is_empty());
    let max_pods = f.capacity.map(|c| {
        for r in enis.iter_mut().filter(|r| !r.trunk) {
            r.free_ips = Some(if prefix_delegation {
                r.prefixes.iter().map(|p| p.free_ips).sum()
            } else {
                (c.ips_per_eni - 1).saturating_sub(r.pods.len() as u32)
            });
        }
        let (n, ips) = (c.enis, c.ips_per_eni);
        if prefix_delegation {
            // EKS caps prefix-delegation nodes at 110 pods below 30 vCPUs, else at 250.
            let cap = if c.vcpus.is_some_and(|v| v >= 30) { 250 } else { 110 };
            MaxPods {
                enis: n,
                ips_per_eni: ips,
                prefix_delegation,
                formula: format!("min({n} × ({ips} − 1) × {PREFIX_IPS} + 2, {cap})"),
                result: (n * (ips - 1) * PREFIX_IPS + 2).min(cap),
            }
        } else {
            MaxPods {
                enis: n,
                ips_per_eni: ips,
                prefix_delegation,
                formula: format!("{n} × ({ips} − 1) + 2"),
                result: n * (ips - 1) + 2,
            }
        }
    });
    NodeReport {
        instance_type: f.instance_type.clone(),
        enis,
        branches,
        max_pods,
        warnings: health(inv, f.rules),
        rule_backends: f.rules.backends.clone(),
        imds_error: f.imds.as_ref().err().cloned(),
    }
}

fn pod_line(p: &PodRef) -> String {
    let name = match (&p.namespace, &p.name) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        _ => "(unknown pod)".into(),
    };
    format!("    {:<16} {:<28} {}\n", p.ip, name, p.veth.as_deref().unwrap_or("(no route)"))
}

pub fn render_table(r: &NodeReport, style: Style) -> String {
    let mut s = String::new();
    if let Some(t) = &r.instance_type {
        s += &format!("instance type {t}\n");
    }
    for e in &r.enis {
        let free = e.free_ips.map(|f| format!("  {f} IPs free")).unwrap_or_default();
        let id = e.interface_id.as_ref().map(|i| format!("  {i}")).unwrap_or_default();
        s += &format!(
            "{}{}{}{id}  {}  {}  {}  table {}{}\n",
            style.eni(&e.name),
            if e.primary { " (primary)" } else { "" },
            if e.trunk { " (trunk)" } else { "" },
            e.mac.as_deref().unwrap_or("-"),
            e.primary_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            e.subnet.as_deref().unwrap_or("-"),
            e.route_table,
            free
        );
        for p in &e.prefixes {
            s += &format!("  prefix {}  {} pods, {} IPs free\n", p.prefix, p.pods.len(), p.free_ips);
        }
        for p in &e.pods {
            s += &pod_line(p);
        }
    }
    for b in &r.branches {
        s += &format!(
            "{} (branch on {}){}  vlan {}  {}  table {}\n",
            style.eni(&b.name),
            b.trunk,
            b.eni_id.as_ref().map(|i| format!("  {i}")).unwrap_or_default(),
            b.vlan_id.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            b.mac.as_deref().unwrap_or("-"),
            b.route_table.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
        );
        for p in &b.pods {
            s += &pod_line(p);
        }
    }
    if let Some(m) = &r.max_pods {
        s += &format!("max pods: {} = {}\n", m.formula, m.result);
    }
    s += &format!("rules: {}\n", backends_text(&r.rule_backends));
    if let Some(e) = &r.imds_error {
        s += &format!("instance metadata: {e}\n");
    }
    if r.warnings.is_empty() {
        s += "health: ok\n";
    }
    for w in &r.warnings {
        s += &format!("{} {}\n    fix: {}\n", style.bad("warning:"), w.message, w.fix);
    }
    s
}
