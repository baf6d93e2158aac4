//! The JSON of `-o json --group-by path`: one object per path and line (see README). The
//! per-flow contract (`report::json`) is unchanged; a path lists the ids of its flows so the
//! two can be joined.
use serde::{Deserialize, Serialize};

use super::group::{PathGroup, Percentiles};
use crate::assemble::model::{Direction, HopName, IngressMode, NatKind, Proto};

/// What tells the path from the others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathKeyReport {
    pub pod: String,
    pub namespace: String,
    pub direction: Direction,
    pub proto: Proto,
    /// `"ip:port"`, `"ip:*"` (any client port), `"ip"` (no ports), a service name, or
    /// `"* (N peers)"` for the folded smaller peers of a busy path.
    pub peer: String,
    /// Ingress: the pod's port that was reached.
    pub pod_port: Option<u16>,
    pub eni: Option<String>,
    pub snat: Option<NatKind>,
    pub dnat: Option<NatKind>,
    pub ingress_mode: Option<IngressMode>,
    pub node_crossing: bool,
}

/// A NAT step with the addresses it rewrote, `*` where they vary between connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatStepReport {
    pub kind: NatKind,
    pub from: String,
    pub to: String,
    pub chain: Option<String>,
    pub service: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connections {
    pub active: usize,
    pub total: usize,
    /// TCP connections whose opener never got an answer through this node.
    pub unanswered: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathDropReport {
    pub reason: String,
    pub after_hop: Option<HopName>,
    pub count: u64,
}

/// One path, as printed by `-o json --group-by path`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathReport {
    pub key: PathKeyReport,
    pub veth: Option<String>,
    pub snat: Option<NatStepReport>,
    pub dnat: Option<NatStepReport>,
    pub connections: Connections,
    pub packets: u64,
    pub bytes: u64,
    /// Since the previous report (the start of the trace for the first).
    pub bytes_per_sec: Option<f64>,
    /// From the first to the last hook of the initiating path, over every sampled packet.
    pub in_node_latency_us: Option<Percentiles>,
    pub drops: Vec<PathDropReport>,
    pub retransmits: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub flow_ids: Vec<String>,
}

fn step(s: &super::group::NatStep) -> NatStepReport {
    NatStepReport {
        kind: s.kind,
        from: s.from.to_string(),
        to: s.to.to_string(),
        chain: s.chain.clone(),
        service: s.service.clone(),
    }
}

impl From<&PathGroup> for PathReport {
    fn from(g: &PathGroup) -> PathReport {
        let k = &g.key;
        PathReport {
            key: PathKeyReport {
                pod: k.pod.clone(),
                namespace: k.namespace.clone(),
                direction: k.direction,
                proto: k.proto,
                peer: k.peer.to_string(),
                pod_port: k.pod_port,
                eni: k.eni.clone(),
                snat: k.snat,
                dnat: k.dnat,
                ingress_mode: k.ingress_mode,
                node_crossing: k.node_crossing,
            },
            veth: g.veth.clone(),
            snat: g.snat.as_ref().map(step),
            dnat: g.dnat.as_ref().map(step),
            connections: Connections { active: g.active(), total: g.total(), unanswered: g.unanswered() },
            packets: g.packets,
            bytes: g.bytes,
            bytes_per_sec: g.bytes_per_sec.map(|r| (r * 100.0).round() / 100.0),
            in_node_latency_us: g.latency(),
            drops: g
                .drops
                .iter()
                .map(|(p, n)| PathDropReport {
                    reason: p.reason.clone(),
                    after_hop: p.after_hop.clone(),
                    count: *n,
                })
                .collect(),
            retransmits: g.retransmits,
            first_seen_ms: g.first_seen_ms,
            last_seen_ms: g.last_seen_ms,
            flow_ids: g.flow_ids().map(str::to_string).collect(),
        }
    }
}

/// One object per path and line.
pub fn json_lines(out: &mut impl std::io::Write, groups: &[PathGroup]) -> std::io::Result<()> {
    for g in groups {
        writeln!(out, "{}", serde_json::to_string(&PathReport::from(g)).expect("path serializes"))?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::group::{
        GroupBy, GroupOptions,
        fixtures::{DEMO_WEB_2, RECORDED_NOW_MS, recorded},
        group,
    };

    /// The internet path of the recorded demo traffic, as README documents the fields.
    const GOLDEN: &str = concat!(
        r#"{"key":{"pod":"web-2","namespace":"default","direction":"egress","proto":"tcp","peer":"203.0.113.10:80","#,
        r#""pod_port":null,"eni":"eth0","snat":"pod-egress-snat","dnat":null,"ingress_mode":null,"node_crossing":false},"#,
        r#""veth":"eni9fb0db7f13e","#,
        r#""snat":{"kind":"pod-egress-snat","from":"198.18.2.11:*","to":"198.18.1.10:*","chain":"AWS-SNAT-CHAIN-0","service":null},"#,
        r#""dnat":null,"connections":{"active":0,"total":5,"unanswered":0},"packets":50,"bytes":6074,"#,
        r#""bytes_per_sec":null,"in_node_latency_us":{"p50":9.77,"p90":64.93,"p99":64.93,"samples":6},"#,
        r#""drops":[],"retransmits":0,"first_seen_ms":1796192549741,"last_seen_ms":1796192549743,"#,
        r#""flow_ids":["tcp:198.18.2.11:46408>203.0.113.10:80","tcp:198.18.2.11:46418>203.0.113.10:80","#,
        r#""tcp:198.18.2.11:46386>203.0.113.10:80","tcp:198.18.2.11:46396>203.0.113.10:80","#,
        r#""tcp:198.18.2.11:46402>203.0.113.10:80"]}"#
    );

    #[test]
    fn a_path_prints_its_key_totals_latency_and_flow_ids() {
        let (_, flows) = recorded(DEMO_WEB_2);
        let groups = group(&flows, &GroupOptions::new(GroupBy::Path, RECORDED_NOW_MS));
        let mut out = Vec::new();
        json_lines(&mut out, &groups).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), groups.len());
        let line = text.lines().find(|l| l.contains("203.0.113.10:80")).unwrap();
        assert_eq!(line, GOLDEN);
        let back: PathReport = serde_json::from_str(GOLDEN).unwrap();
        assert_eq!(back.flow_ids.len(), back.connections.total);
        assert_eq!(back.key.snat, Some(NatKind::PodEgressSnat));
    }
}
