//! From the pods a command names to what a session traces: the pods' veths and owner ENIs,
//! the interfaces to attach to, the kernel's address filter and the node context.
use std::net::IpAddr;

use anyhow::{Result, bail};

use super::trace_args::TraceArgs;
use crate::{
    assemble::context::{NodeContext, TracedPod},
    node::{
        inventory::Inventory,
        pods::{self, PodInfo},
        rules::Ruleset,
        tc_programs,
    },
};

/// Pods, interfaces and node facts for one trace.
pub struct Targets {
    pub pods: Vec<TracedPod>,
    pub ctx: NodeContext,
    /// Interfaces to attach to: (ifindex, name).
    pub attach: Vec<(u32, String)>,
    /// Addresses the kernel filter lets through: the pods' and the node's.
    pub filter: Vec<IpAddr>,
}

/// Loads the pods the arguments name (file or API).
pub async fn select_pods(args: &TraceArgs) -> Result<Vec<PodInfo>> {
    let mut out = Vec::new();
    for ip in &args.pod_ips {
        out.push(PodInfo {
            name: ip.to_string(),
            namespace: args.namespace.clone().unwrap_or_default(),
            node: None,
            ips: vec![*ip],
            host_ip: None,
            phase: None,
            labels: Default::default(),
            branch_enis: Vec::new(),
        });
    }
    if args.pods.is_empty() && args.selector.is_none() {
        if out.is_empty() {
            bail!("nothing to trace: give --pod NAME, -l KEY=VALUE or --pod-ip IP");
        }
        return Ok(out);
    }
    let selector = args.selector.as_deref().map(pods::parse_selector).transpose()?;
    let all = match &args.pods_file {
        // Only the pods asked for are kept: the file may list a whole cluster.
        Some(f) => pods::read_file(f, |p| {
            args.namespace.as_deref().is_none_or(|n| n == p.namespace)
                && (args.pods.contains(&p.name) || selector.as_ref().is_some_and(|s| p.matches(s)))
        })?,
        None => pods::from_api(args.namespace.as_deref(), None).await?,
    };
    for name in &args.pods {
        out.push(pods::find(&all, name, args.namespace.as_deref())?.clone());
    }
    if let Some(sel) = &selector {
        let matched: Vec<&PodInfo> = all
            .iter()
            .filter(|p| p.matches(sel) && args.namespace.as_deref().is_none_or(|n| n == p.namespace))
            .collect();
        if matched.is_empty() {
            bail!("no pod matches -l {}", args.selector.as_deref().unwrap_or_default());
        }
        out.extend(matched.into_iter().cloned());
    }
    Ok(out)
}

/// Maps pods to this node's veths and ENIs. `allow_remote`: pods on other nodes are traced
/// where their flows cross this node (compare) instead of being an error.
pub fn resolve_targets(inv: &Inventory, pods: &[PodInfo], allow_remote: bool) -> Result<Targets> {
    if inv.enis.is_empty() {
        bail!("no ENI found: no interface carries a VPC address on this node (use --eni IFACE)");
    }
    let node_ips = inv.node_ips();
    let mut traced = Vec::new();
    for p in pods {
        let ips = pods::require_ips(p)?;
        let veth = ips.iter().find_map(|ip| inv.pod_veth(*ip));
        if veth.is_none() && !allow_remote {
            let elsewhere = p.host_ip.is_some_and(|h| !node_ips.contains(&h));
            match (&p.node, elsewhere) {
                (Some(node), true) => bail!("pod {} runs on node {node}, not on this node", p.id()),
                _ => bail!(
                    "no route to pod {} ({}) on this node: no /32 route to a host veth",
                    p.id(),
                    ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        let mut pod = match veth {
            Some(v) => TracedPod::on_node(inv, v, p.name.clone(), p.namespace.clone(), ips.to_vec()),
            None => TracedPod {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                ips: ips.to_vec(),
                ..Default::default()
            },
        };
        pod.branch_eni_id = p.branch_eni_id();
        traced.push(pod);
    }
    let ctx = NodeContext::new(inv, Ruleset::read());
    // Every ENI and branch ENI (the way in and out), and the traced pods' veths.
    let mut attach: Vec<(u32, String)> = inv.enis.iter().map(|e| (e.ifindex, e.name.clone())).collect();
    attach.extend(inv.branches.iter().map(|b| (b.ifindex, b.name.clone())));
    for v in traced.iter().flat_map(|p| &p.veths) {
        attach.push((*v, ctx.ifname(*v)));
    }
    attach.sort();
    attach.dedup();
    let mut ctx = ctx;
    ctx.tc_programs = tc_programs::read(attach.iter().map(|(i, _)| *i));
    let mut filter: Vec<IpAddr> = traced.iter().flat_map(|p| p.ips.iter().copied()).collect();
    filter.extend(node_ips);
    Ok(Targets { pods: traced, ctx, attach, filter })
}
