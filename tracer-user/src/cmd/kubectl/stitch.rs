//! Cross-node stitching: a flow that left its node towards another node's address (a NodePort
//! request kube-proxy forwarded, pod to pod across nodes) is the same connection that node's
//! agent saw, with the same Community ID of the tuple on the wire between them. Ask that agent
//! for the flows that can be it, and join on `community_id`.
use std::{collections::HashMap, net::IpAddr};

use anyhow::Result;

use super::cluster::{AgentPod, Cluster};
use crate::{
    assemble::model::Direction,
    cmd::agent::client::encode,
    report::{
        json::FlowReport,
        stitched::{NodeFlow, StitchedFlow},
    },
};

/// The cluster as the stitching needs it, and the agents' answers so far.
pub struct Stitcher<'a> {
    pub cluster: &'a Cluster,
    pub agents: &'a HashMap<String, AgentPod>,
    pub node_of_addr: HashMap<IpAddr, String>,
    pub since_ms: u64,
    answers: HashMap<(String, String), Vec<FlowReport>>,
    pods_by_ip: HashMap<IpAddr, Option<(String, String, Option<String>)>>,
}

/// The address at the far end of the wire: where an ingress flow came from, where an egress
/// flow went (as the ENI saw them, NAT included).
fn wire_peer(f: &FlowReport) -> Option<IpAddr> {
    f.eni.as_ref()?;
    match f.direction {
        Direction::Ingress => f.path.first().map(|h| h.src.ip()),
        Direction::Egress => f.path.last().map(|h| h.dst.ip()),
    }
}

impl<'a> Stitcher<'a> {
    pub async fn new(
        cluster: &'a Cluster,
        agents: &'a HashMap<String, AgentPod>,
        since_ms: u64,
    ) -> Stitcher<'a> {
        let node_of_addr = cluster.node_addresses(agents).await;
        Stitcher {
            cluster,
            agents,
            node_of_addr,
            since_ms,
            answers: HashMap::new(),
            pods_by_ip: HashMap::new(),
        }
    }

    /// An agent's flows for a query, asked once.
    pub async fn flows(&mut self, node: &str, query: &str) -> Result<Vec<FlowReport>> {
        let key = (node.to_string(), query.to_string());
        if let Some(v) = self.answers.get(&key) {
            return Ok(v.clone());
        }
        let agent = self.cluster.agent_on(self.agents, node)?;
        let body = self.cluster.agent_get(agent, &format!("/flows?{query}&since={}", self.since_ms)).await?;
        let mut flows = Vec::new();
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            flows.push(serde_json::from_str::<FlowReport>(line).map_err(|e| {
                anyhow::anyhow!("the podtrace agent on node {node} sent a flow podtrace cannot read: {e}")
            })?);
        }
        self.answers.insert(key, flows.clone());
        Ok(flows)
    }

    async fn pod_by_ip(&mut self, ip: IpAddr) -> Option<(String, String, Option<String>)> {
        if let Some(p) = self.pods_by_ip.get(&ip) {
            return p.clone();
        }
        let p = self.cluster.pod_by_ip(ip).await.map(|p| (p.name, p.namespace, p.node));
        self.pods_by_ip.insert(ip, p.clone());
        p
    }

    /// Which node, and which of its agent's flows, can be the other half of `f` (of a pod on
    /// `node`).
    async fn other_half_query(&mut self, node: &str, f: &FlowReport) -> Option<(String, String)> {
        let peer = wire_peer(f)?;
        if let Some(other) = self.node_of_addr.get(&peer).cloned() {
            if other == node {
                return None;
            }
            return Some(match f.direction {
                // From another node's address: a NodePort request forwarded here; that node
                // reports this pod's flows crossing it.
                Direction::Ingress => (
                    other,
                    format!("ip={}&pod={}&namespace={}", f.pod_ip, encode(&f.pod), encode(&f.namespace)),
                ),
                // To another node's address (its NodePort): any pod of that node may serve it.
                Direction::Egress => (other, String::new()),
            });
        }
        let (name, namespace, pod_node) = self.pod_by_ip(peer).await?;
        let pod_node = pod_node?;
        (pod_node != node)
            .then(|| (pod_node, format!("pod={}&namespace={}", encode(&name), encode(&namespace))))
    }

    /// The flow with the other node's half attached, when there is one.
    pub async fn stitch(&mut self, node: &str, f: FlowReport) -> StitchedFlow {
        let mut s = StitchedFlow::alone(node.to_string(), f);
        let Some(cid) = s.flow.community_id.clone() else { return s };
        let Some((other, query)) = self.other_half_query(node, &s.flow).await else { return s };
        let flows = match self.flows(&other, &query).await {
            Ok(f) => f,
            Err(e) => {
                log::warn!("not stitched to node {other}: {e:#}");
                return s;
            }
        };
        if let Some(half) = flows.into_iter().find(|o| o.community_id.as_deref() == Some(cid.as_str())) {
            s.nodes = match s.flow.direction {
                Direction::Ingress => vec![other.clone(), node.to_string()],
                Direction::Egress => vec![node.to_string(), other.clone()],
            };
            s.peers.push(NodeFlow { node: other, flow: half });
        }
        s
    }
}
