//! `kubectl podtrace`: podtrace from a laptop. Finds the pod's node and the podtrace agent on
//! it with the user's kubeconfig and RBAC, asks the agent through the API server's
//! `pods/proxy`, and prints what `podtrace --pod` prints, with flows that crossed nodes
//! stitched into one path.
pub mod cluster;
pub mod compare;
pub mod stitch;

use std::{
    io::Write,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use clap::Args;

use super::options::parse_duration;
use crate::report::{
    stitched,
    table::{Format, Style},
};
use cluster::Cluster;
use stitch::Stitcher;

#[derive(Args, Clone, Debug)]
pub struct PodArgs {
    /// The pod to trace.
    pub pod: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Collect for this long (500ms, 30s, 2m). Without it: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Args, Clone, Debug)]
pub struct NodeArgs {
    /// The node (as `kubectl get nodes` names it).
    pub node: String,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Waits for the duration, or Ctrl-C.
pub async fn collect_for(duration: Option<Duration>) {
    match duration {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub async fn trace(cluster: &Cluster, args: &PodArgs) -> Result<()> {
    let ns = cluster.namespace(args.namespace.as_deref()).to_string();
    let pod = cluster.pod(&ns, &args.pod).await?;
    let node =
        pod.node.clone().with_context(|| format!("pod {ns}/{} is not scheduled on a node yet", args.pod))?;
    let agents = cluster.agents().await?;
    let agent = cluster.agent_on(&agents, &node)?;
    cluster.check_agent(agent).await?;
    let query = format!(
        "pod={}&namespace={}",
        crate::cmd::agent::client::encode(&args.pod),
        crate::cmd::agent::client::encode(&ns)
    );
    // Refused now rather than after the duration: ask for no flow (none is that recent).
    cluster.agent_get(agent, &format!("/flows?{query}&since={}", u64::MAX)).await?;
    let since = now_ms();
    eprintln!(
        "kubectl podtrace: tracing {ns}/{} on node {node} via {} (Ctrl-C to stop)",
        args.pod, agent.name
    );
    collect_for(args.duration).await;
    let mut stitcher = Stitcher::new(cluster, &agents, since).await;
    let mut out = Vec::new();
    for f in stitcher.flows(&node, &query).await? {
        out.push(stitcher.stitch(&node, f).await);
    }
    let mut stdout = std::io::stdout();
    let style = Style::detect();
    for s in &out {
        match args.output {
            Format::Json => writeln!(stdout, "{}", serde_json::to_string(s)?)?,
            Format::Table => writeln!(stdout, "{}", stitched::row(s, style))?,
        }
    }
    if args.output == Format::Table {
        let across = out.iter().filter(|s| !s.peers.is_empty()).count();
        eprintln!("{} flows of {ns}/{} ({across} stitched across nodes)", out.len(), args.pod);
    }
    stdout.flush()?;
    Ok(())
}

pub async fn node(cluster: &Cluster, args: &NodeArgs) -> Result<()> {
    let agents = cluster.agents().await?;
    let agent = cluster.agent_on(&agents, &args.node)?;
    cluster.check_agent(agent).await?;
    let path = match args.output {
        Format::Json => "/node",
        Format::Table => "/node?format=table",
    };
    print!("{}", cluster.agent_get(agent, path).await?);
    Ok(())
}
