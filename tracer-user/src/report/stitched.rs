//! One connection across nodes: the flow of the pod asked for, joined (on `community_id`) with
//! the same connection as other nodes' agents saw it. Printed as one path:
//! `198.18.100.10:35750 ⇒ node-a eth0 → [DNAT, MASQUERADE] → eth0 ⇒ node-b eth1 → eni… → web-3`
//! with each node's NAT and in-node latency; in JSON, the pod's flow (the `podtrace -o json`
//! contract) with `node`, `nodes` (wire order) and `peers` (the other nodes' flows).
use serde::{Deserialize, Serialize};

use super::{
    json::FlowReport,
    table::{self, Style},
};
use crate::assemble::model::{NatKind, Role};

/// A flow as one node's agent reported it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeFlow {
    pub node: String,
    #[serde(flatten)]
    pub flow: FlowReport,
}

/// The pod's flow and its halves on other nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StitchedFlow {
    /// The node whose agent saw `flow`.
    pub node: String,
    #[serde(flatten)]
    pub flow: FlowReport,
    /// The nodes the connection crossed, in the order its first packet did.
    pub nodes: Vec<String>,
    /// The same connection on the other nodes (same `community_id`), in wire order.
    pub peers: Vec<NodeFlow>,
}

impl StitchedFlow {
    pub fn alone(node: String, flow: FlowReport) -> StitchedFlow {
        StitchedFlow { nodes: vec![node.clone()], node, flow, peers: Vec::new() }
    }

    /// Every node's flow, in wire order.
    pub fn segments(&self) -> Vec<(&str, &FlowReport)> {
        self.nodes
            .iter()
            .filter_map(|n| {
                if *n == self.node {
                    Some((n.as_str(), &self.flow))
                } else {
                    self.peers.iter().find(|p| &p.node == n).map(|p| (n.as_str(), &p.flow))
                }
            })
            .collect()
    }
}

fn nat_names(f: &FlowReport) -> Vec<&'static str> {
    let mut v = Vec::new();
    if f.dnat.is_some() {
        v.push("DNAT");
    }
    if let Some(s) = &f.snat {
        v.push(if s.kind == NatKind::Masquerade { "MASQUERADE" } else { "SNAT" });
    }
    v
}

/// `eth0 → [DNAT, MASQUERADE] → eth0`: the interfaces in order (repeats folded), the rewrites
/// after the first one.
fn hops(f: &FlowReport, style: Style) -> String {
    let names: Vec<&str> = f.path.iter().map(|h| h.ifname.as_str()).collect();
    let fold = |v: &[&str]| {
        let mut out: Vec<String> = Vec::new();
        for n in v {
            if out.last().map(String::as_str) != Some(*n) {
                out.push(n.to_string());
            }
        }
        out
    };
    let nat = nat_names(f);
    let mut parts = Vec::new();
    match (names.split_first(), nat.is_empty()) {
        (Some((first, rest)), false) => {
            parts.push(first.to_string());
            parts.push(style.nat(&format!("[{}]", nat.join(", "))));
            parts.extend(fold(rest));
        }
        _ => parts.extend(fold(&names)),
    }
    parts.join(" → ")
}

/// `[node-a: DNAT a → b, MASQUERADE → c, p50 in-node 8.6 µs]`
fn node_tag(node: &str, f: &FlowReport, style: Style) -> String {
    let mut t = Vec::new();
    if let Some(d) = &f.dnat {
        t.push(format!("DNAT {} → {}", d.from, d.to));
    }
    if let Some(s) = &f.snat {
        let label = if s.kind == NatKind::Masquerade { "MASQUERADE" } else { "SNAT" };
        t.push(format!("{label} → {}", s.to));
    }
    if let Some(l) = f.in_node_latency() {
        t.push(format!("p50 in-node {} µs", if l >= 100.0 { format!("{l:.0}") } else { format!("{l:.1}") }));
    }
    if t.is_empty() {
        t.push("no rewrite".into());
    }
    style.dim(&format!("[{node}: {}]", t.join(", ")))
}

/// The path across nodes; `ports`: the peer as `ip:port`, else its IP alone (diagrams).
pub fn path_line(s: &StitchedFlow, style: Style, ports: bool) -> String {
    let segments = s.segments();
    let mut line = String::new();
    let peer = |a: std::net::SocketAddr| if ports { a.to_string() } else { a.ip().to_string() };
    for (i, (node, f)) in segments.iter().enumerate() {
        let starts_at_pod = f.path.first().is_some_and(|h| h.role == Role::PodVeth);
        let ends_at_pod = f.path.last().is_some_and(|h| h.role == Role::PodVeth);
        if i == 0 {
            if starts_at_pod {
                line += &format!("{} → ", f.pod);
            } else if let Some(h) = f.path.first() {
                line += &format!("{} ⇒ ", peer(h.src));
            }
        } else {
            line += " ⇒ ";
        }
        line += &format!("{} {}", style.eni(node), hops(f, style));
        if i + 1 == segments.len() {
            if ends_at_pod {
                line += &format!(" → {}", f.pod);
            } else if let Some(h) = f.path.last() {
                line += &format!(" ⇒ {}", peer(h.dst));
            }
        }
    }
    line
}

/// One line: the unstitched table row, or the path across nodes with each node's NAT and
/// latency.
pub fn row(s: &StitchedFlow, style: Style) -> String {
    if s.peers.is_empty() {
        return table::row(&s.flow, style);
    }
    let tags: Vec<String> = s.segments().iter().map(|(n, f)| node_tag(n, f, style)).collect();
    format!(
        "{:<4} {}  {}  {}",
        s.flow.proto.to_string(),
        path_line(s, style, true),
        tags.join("  "),
        style.dim(&format!("{} pkts", s.flow.packets))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(ifname: &str, role: &str, hook: &str, src: &str, dst: &str) -> serde_json::Value {
        serde_json::json!({"ifname": ifname, "role": role, "hook": hook, "src": src, "dst": dst, "packets": 5, "bytes": 500})
    }

    fn flow(pod: &str, direction: &str, path: Vec<serde_json::Value>, nat: serde_json::Value) -> FlowReport {
        let first = path.first().cloned().unwrap();
        let mut f = serde_json::json!({
            "pod": pod, "namespace": "default", "pod_ip": "198.18.2.21", "proto": "tcp", "direction": direction,
            "src": first["src"], "dst": first["dst"], "path": path, "reply_path": [], "eni": "eth0",
            "trunk_eni": null, "branch_eni_id": null, "pod_ip_owner_eni": null, "snat": null, "dnat": null,
            "ingress_mode": null, "hop_latency_us": [], "packets": 10, "bytes": 1000, "nat_steps": 0,
            "client_ip_preserved": null, "node_crossing": false, "unanswered_after": null, "no_reply": false,
            "drops": [], "retransmits": 0, "first_seen_ms": 1, "last_seen_ms": 2, "id": "x", "community_id": "1:abc"
        });
        for (k, v) in nat.as_object().unwrap() {
            f[k] = v.clone();
        }
        serde_json::from_value(f).unwrap()
    }

    #[test]
    fn a_nodeport_bounce_is_one_path_with_each_nodes_nat() {
        let a = flow(
            "web-3",
            "ingress",
            vec![
                hop("eth0", "eni", "ingress", "198.18.100.10:40000", "198.18.1.10:30080"),
                hop("eth0", "eni", "egress", "198.18.1.10:2000", "198.18.2.21:8080"),
            ],
            serde_json::json!({
                "dnat": {"from": "198.18.1.10:30080", "to": "198.18.2.21:8080", "after_hop": "eth0/ingress", "before_hop": "eth0/egress", "kind": "nodeport-dnat", "chain": null, "service": null},
                "snat": {"from": "198.18.100.10:40000", "to": "198.18.1.10:2000", "after_hop": "eth0/ingress", "before_hop": "eth0/egress", "kind": "masquerade", "chain": null, "service": null}
            }),
        );
        let b = flow(
            "web-3",
            "ingress",
            vec![
                hop("eth1", "eni", "ingress", "198.18.1.10:2000", "198.18.2.21:8080"),
                hop("eniabc", "pod-veth", "egress", "198.18.1.10:2000", "198.18.2.21:8080"),
            ],
            serde_json::json!({}),
        );
        let s = StitchedFlow {
            node: "node-b".into(),
            flow: b.clone(),
            nodes: vec!["node-a".into(), "node-b".into()],
            peers: vec![NodeFlow { node: "node-a".into(), flow: a }],
        };
        assert_eq!(
            row(&s, Style::plain()),
            "tcp  198.18.100.10:40000 ⇒ node-a eth0 → [DNAT, MASQUERADE] → eth0 ⇒ node-b eth1 → eniabc → web-3  \
             [node-a: DNAT 198.18.1.10:30080 → 198.18.2.21:8080, MASQUERADE → 198.18.1.10:2000]  [node-b: no rewrite]  10 pkts"
        );
        assert_eq!(
            path_line(&s, Style::plain(), false),
            "198.18.100.10 ⇒ node-a eth0 → [DNAT, MASQUERADE] → eth0 ⇒ node-b eth1 → eniabc → web-3"
        );
        // The JSON is the flow of the contract plus node, nodes and peers: it reads back, and
        // as a plain flow too.
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<StitchedFlow>(&text).unwrap(), s);
        assert_eq!(serde_json::from_str::<FlowReport>(&text).unwrap(), b);
        // Alone, it is the table's row.
        let alone = StitchedFlow::alone("node-b".into(), b.clone());
        assert_eq!(row(&alone, Style::plain()), table::row(&b, Style::plain()));
    }
}
