//! `kubectl podtrace compare -l app=web`: NodePort (target-type instance) against pod IP
//! (target-type ip) across the cluster. Every agent reports the service's pods' ingress flows:
//! its own pods', and those of other nodes' pods crossing it. A NodePort request kube-proxy
//! forwarded to another node is joined (on `community_id`) with its half on the serving node,
//! so it counts once, as NodePort, with both nodes' hops and NAT, and its pod is named.
use std::collections::{BTreeMap, HashSet};

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use super::{Cluster, collect_for, now_ms, stitch::Stitcher};
use crate::{
    assemble::model::{IngressMode, Proto},
    cmd::{agent::client::encode, options::parse_duration},
    report::{
        json::FlowReport,
        stitched::{NodeFlow, StitchedFlow, path_line},
        table::{Format, Style},
    },
};

#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    /// The service's pods (`app=web[,tier=x]`).
    #[arg(short = 'l', long = "selector", value_name = "K=V")]
    pub selector: String,
    /// Their namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Collect for this long. Without it: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Serialize)]
pub struct ModeFigures {
    pub mode: String,
    pub flows: usize,
    pub requests: usize,
    pub node_crossings: usize,
    /// Crossings joined with their half on the serving node.
    pub followed_to_pod: usize,
    /// Interfaces a request crossed on every node it crossed.
    pub hops_per_packet: f64,
    pub nat_steps: f64,
    pub client_ip_preserved_share: f64,
    /// Median over requests of the summed per-node in-node p50 latency (µs).
    pub in_node_p50_us: Option<f64>,
    pub paths: Vec<String>,
}

/// Did the serving pod see the client's own address: across nodes, the address that entered
/// the first node against the one the pod saw (the serving node alone would call node-a's
/// masquerading address "preserved").
fn client_ip_preserved(s: &StitchedFlow) -> bool {
    let segments = s.segments();
    match (segments.first(), segments.last()) {
        (Some((_, first)), Some((_, last))) if segments.len() > 1 => {
            first.path.first().is_some_and(|h| h.src.ip() == last.src.ip())
        }
        _ => s.flow.client_ip_preserved == Some(true),
    }
}

fn figures(mode: IngressMode, flows: &[StitchedFlow]) -> ModeFigures {
    let n = flows.len().max(1) as f64;
    let segs =
        |s: &StitchedFlow| -> Vec<FlowReport> { s.segments().into_iter().map(|(_, f)| f.clone()).collect() };
    let mut lat: Vec<f64> = flows
        .iter()
        .filter_map(|s| {
            let v: Vec<f64> = segs(s).iter().filter_map(FlowReport::in_node_latency).collect();
            (!v.is_empty()).then(|| v.iter().sum())
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let mut paths: BTreeMap<String, usize> = BTreeMap::new();
    for s in flows {
        *paths.entry(path_line(s, Style::plain(), false)).or_default() += 1;
    }
    let mut paths: Vec<(String, usize)> = paths.into_iter().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.1));
    let round = |x: f64| (x * 100.0).round() / 100.0;
    ModeFigures {
        mode: mode.as_str().into(),
        flows: flows.len(),
        requests: flows
            .iter()
            .filter(|s| s.flow.proto == Proto::Tcp && s.flow.unanswered_after.is_none() && !s.flow.no_reply)
            .count(),
        node_crossings: flows.iter().filter(|s| s.flow.node_crossing).count(),
        followed_to_pod: flows.iter().filter(|s| !s.peers.is_empty()).count(),
        hops_per_packet: round(
            flows.iter().map(|s| segs(s).iter().map(|f| f.path.len()).sum::<usize>() as f64).sum::<f64>() / n,
        ),
        nat_steps: round(
            flows.iter().map(|s| segs(s).iter().map(|f| f.nat_steps).sum::<u32>() as f64).sum::<f64>() / n,
        ),
        // What the serving pod saw: the last node's half.
        client_ip_preserved_share: round(flows.iter().filter(|s| client_ip_preserved(s)).count() as f64 / n),
        in_node_p50_us: (!lat.is_empty()).then(|| round(lat[lat.len() / 2])),
        paths: paths.into_iter().take(2).map(|(p, c)| format!("{p}  (×{c})")).collect(),
    }
}

pub async fn run(cluster: &Cluster, args: &CompareArgs) -> Result<()> {
    let ns = cluster.namespace(args.namespace.as_deref()).to_string();
    let pods = cluster.pods(Some(&ns), &args.selector).await?;
    if pods.is_empty() {
        bail!("no pod matches -l {} in namespace {ns}", args.selector);
    }
    let agents = cluster.agents().await?;
    for p in &pods {
        let node = p.node.as_deref().unwrap_or_default();
        cluster.check_agent(cluster.agent_on(&agents, node)?).await?;
    }
    let since = now_ms();
    eprintln!(
        "kubectl podtrace: comparing {} pods of -l {} on {} nodes (Ctrl-C to stop)",
        pods.len(),
        args.selector,
        agents.len()
    );
    collect_for(args.duration).await;
    let mut stitcher = Stitcher::new(cluster, &agents, since).await;
    // Every agent: the pods' flows on their own node, and where they cross another.
    let mut seen: Vec<NodeFlow> = Vec::new();
    let mut nodes: Vec<&String> = agents.keys().collect();
    nodes.sort();
    for node in nodes {
        for p in &pods {
            let mut q = format!("pod={}&namespace={}", encode(&p.name), encode(&p.namespace));
            if p.node.as_deref() != Some(node.as_str()) {
                let Some(ip) = p.ips.first() else { continue };
                q += &format!("&ip={ip}");
            }
            let own = p.node.as_deref() == Some(node.as_str());
            for f in stitcher.flows(node, &q).await? {
                // Another node's view of a pod counts only for the NodePort requests that
                // entered there; what arrived for the pod IP is counted by the pod's node.
                let counted = match f.ingress_mode {
                    Some(IngressMode::Nodeport) => true,
                    Some(IngressMode::Direct) => own,
                    None => false,
                };
                if counted {
                    seen.push(NodeFlow { node: node.clone(), flow: f });
                }
            }
        }
    }
    // NodePort flows first: each takes its half on the serving node off the direct ones.
    let mut taken: HashSet<usize> = HashSet::new();
    let mut nodeport = Vec::new();
    for (i, nf) in seen.iter().enumerate() {
        if nf.flow.ingress_mode != Some(IngressMode::Nodeport) {
            continue;
        }
        let mut s = StitchedFlow::alone(nf.node.clone(), nf.flow.clone());
        if nf.flow.node_crossing
            && let Some(cid) = &nf.flow.community_id
            && let Some((j, half)) = seen.iter().enumerate().find(|(j, o)| {
                *j != i
                    && o.node != nf.node
                    && o.flow.community_id.as_ref() == Some(cid)
                    && !taken.contains(j)
            })
        {
            taken.insert(j);
            s.nodes.push(half.node.clone());
            s.peers.push(half.clone());
        }
        nodeport.push(s);
    }
    let direct: Vec<StitchedFlow> = seen
        .iter()
        .enumerate()
        .filter(|(i, nf)| nf.flow.ingress_mode == Some(IngressMode::Direct) && !taken.contains(i))
        .map(|(_, nf)| StitchedFlow::alone(nf.node.clone(), nf.flow.clone()))
        .collect();
    let report = [figures(IngressMode::Nodeport, &nodeport), figures(IngressMode::Direct, &direct)];
    match args.output {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table => print!("{}", table(&report, Style::detect())),
    }
    Ok(())
}

fn table(r: &[ModeFigures; 2], style: Style) -> String {
    let (a, b) = (&r[0], &r[1]);
    let pct = |x: f64| format!("{:.0} %", x * 100.0);
    let lat = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
    let rows: Vec<(&str, String, String)> = vec![
        ("flows", a.flows.to_string(), b.flows.to_string()),
        ("requests answered", a.requests.to_string(), b.requests.to_string()),
        ("node crossings", a.node_crossings.to_string(), b.node_crossings.to_string()),
        ("  followed to their pod", a.followed_to_pod.to_string(), b.followed_to_pod.to_string()),
        (
            "hops per packet (all nodes)",
            format!("{:.2}", a.hops_per_packet),
            format!("{:.2}", b.hops_per_packet),
        ),
        ("NAT steps per flow", format!("{:.2}", a.nat_steps), format!("{:.2}", b.nat_steps)),
        ("client IP preserved", pct(a.client_ip_preserved_share), pct(b.client_ip_preserved_share)),
        ("in-node p50 µs (all nodes)", lat(a.in_node_p50_us), lat(b.in_node_p50_us)),
    ];
    let mut s = format!(
        "{:<32} {:<36} {}\n",
        "",
        style.eni("nodeport (target-type: instance)"),
        style.eni("direct (target-type: ip)")
    );
    for (k, x, y) in rows {
        s += &format!("{k:<32} {x:<36} {y}\n");
    }
    for m in r {
        for p in &m.paths {
            s += &format!("{:<9} {p}\n", m.mode);
        }
    }
    s
}
