//! `compare`'s figures: the ingress flows of a service's pods split by how they arrived
//! (NodePort = target-type instance, pod IP = target-type ip) and aggregated side by side.
use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use super::table::Style;
use crate::assemble::model::{Flow, Hook, IngressMode, NatKind, Proto, Role, percentile};

/// Latency percentiles over all sampled packets of a mode, µs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub samples: usize,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Percentiles {
        v.sort_by(f64::total_cmp);
        Percentiles {
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
            samples: v.len(),
        }
    }
}

/// One ingress mode's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ModeStats {
    /// "nodeport" (target-type instance) or "direct" (target-type ip).
    pub mode: String,
    pub flows: usize,
    /// Completed requests: TCP flows whose opener got an answer.
    pub requests: usize,
    /// Network devices a request crosses on nodes: the hooks of its path on this node, plus
    /// the serving node's ENI and pod veth when it was forwarded there (node crossing).
    pub hops_per_packet: f64,
    /// Address rewrites per flow (DNAT, SNAT/MASQUERADE).
    pub nat_steps: f64,
    pub node_crossings: usize,
    pub node_crossing_share: f64,
    pub client_ip_preserved_share: f64,
    /// From the ENI ingress to the last hook of the request path (pod veth egress, or the ENI
    /// egress towards the serving node).
    pub in_node_latency_us: Percentiles,
    /// The way back: pod veth ingress to ENI egress.
    pub reply_latency_us: Percentiles,
    pub bytes: u64,
    pub bytes_per_sec: f64,
    /// The most common path, drawn: `alb ⇒ eth0 → [DNAT, MASQUERADE] → eni… → web-2`.
    pub hop_diagram: Vec<String>,
    #[serde(skip)]
    pub latency_values_us: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    pub duration_s: f64,
    pub modes: Vec<ModeStats>,
}

fn diagram(f: &Flow) -> String {
    let client = f.path.first().map(|h| h.src.ip().to_string()).unwrap_or_default();
    let mut parts = vec![client];
    let mut nat = Vec::new();
    if f.dnat.is_some() {
        nat.push("DNAT");
    }
    if let Some(s) = &f.snat {
        nat.push(if s.kind == NatKind::Masquerade { "MASQUERADE" } else { "SNAT" });
    }
    for (i, h) in f.path.iter().enumerate() {
        let arrow = if h.role == Role::Eni && h.hook == Hook::Ingress { " ⇒ " } else { " → " };
        parts.push(format!("{arrow}{}", h.ifname));
        if i == 0 && !nat.is_empty() {
            parts.push(format!(" → [{}]", nat.join(", ")));
        }
    }
    if f.node_crossing {
        parts.push(format!(" ⇒ other node → {}", f.pod));
    } else {
        parts.push(format!(" → {}", f.pod));
    }
    parts.concat()
}

fn latency_values(f: &Flow, reply: bool) -> Vec<f64> {
    f.end_to_end(reply).map(|l| l.values_us.clone()).unwrap_or_default()
}

/// Aggregates the ingress flows of the traced pods by mode.
pub fn aggregate(flows: &[Flow], duration: Duration) -> CompareReport {
    let secs = duration.as_secs_f64().max(1e-3);
    let mut modes = Vec::new();
    for mode in [IngressMode::Nodeport, IngressMode::Direct] {
        let of_mode: Vec<&Flow> = flows.iter().filter(|f| f.ingress_mode == Some(mode)).collect();
        let n = of_mode.len().max(1) as f64;
        let share = |pred: &dyn Fn(&Flow) -> bool| of_mode.iter().filter(|f| pred(f)).count() as f64 / n;
        let hops: f64 = of_mode
            .iter()
            .map(|f| f.path.len() as f64 + if f.node_crossing { 2.0 } else { 0.0 })
            .sum::<f64>()
            / n;
        let mut diagrams: BTreeMap<String, usize> = BTreeMap::new();
        for f in &of_mode {
            *diagrams.entry(diagram(f)).or_default() += 1;
        }
        let mut diagrams: Vec<(String, usize)> = diagrams.into_iter().collect();
        diagrams.sort_by_key(|d| std::cmp::Reverse(d.1));
        let lat: Vec<f64> = of_mode.iter().flat_map(|f| latency_values(f, false)).collect();
        let bytes = of_mode.iter().map(|f| f.bytes).sum();
        modes.push(ModeStats {
            mode: mode.as_str().into(),
            flows: of_mode.len(),
            requests: of_mode
                .iter()
                .filter(|f| f.proto == Proto::Tcp && f.unanswered_after.is_none() && !f.no_reply)
                .count(),
            hops_per_packet: round2(hops),
            nat_steps: round2(of_mode.iter().map(|f| f.nat_steps() as f64).sum::<f64>() / n),
            node_crossings: of_mode.iter().filter(|f| f.node_crossing).count(),
            node_crossing_share: round2(share(&|f| f.node_crossing)),
            client_ip_preserved_share: round2(share(&|f| f.client_ip_preserved == Some(true))),
            in_node_latency_us: Percentiles::of(lat.clone()),
            reply_latency_us: Percentiles::of(of_mode.iter().flat_map(|f| latency_values(f, true)).collect()),
            bytes,
            bytes_per_sec: round2(bytes as f64 / secs),
            hop_diagram: diagrams.into_iter().take(2).map(|(d, c)| format!("{d}  (×{c})")).collect(),
            latency_values_us: lat,
        });
    }
    CompareReport { duration_s: round2(secs), modes }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The side-by-side table.
pub fn table(r: &CompareReport, style: Style) -> String {
    let (a, b) = (&r.modes[0], &r.modes[1]);
    let pct = |x: f64| format!("{:.0} %", x * 100.0);
    let lat = |p: &Percentiles| {
        if p.samples == 0 {
            "-".to_string()
        } else {
            format!("{:.1} / {:.1} / {:.1}  (n={})", p.p50, p.p90, p.p99, p.samples)
        }
    };
    let rows: Vec<(&str, String, String)> = vec![
        ("flows", a.flows.to_string(), b.flows.to_string()),
        ("requests answered", a.requests.to_string(), b.requests.to_string()),
        ("hops per packet", format!("{:.2}", a.hops_per_packet), format!("{:.2}", b.hops_per_packet)),
        ("NAT steps per flow", format!("{:.2}", a.nat_steps), format!("{:.2}", b.nat_steps)),
        (
            "node crossings",
            format!("{} ({})", a.node_crossings, pct(a.node_crossing_share)),
            format!("{} ({})", b.node_crossings, pct(b.node_crossing_share)),
        ),
        ("client IP preserved", pct(a.client_ip_preserved_share), pct(b.client_ip_preserved_share)),
        ("in-node latency p50/p90/p99 µs", lat(&a.in_node_latency_us), lat(&b.in_node_latency_us)),
        ("reply latency p50/p90/p99 µs", lat(&a.reply_latency_us), lat(&b.reply_latency_us)),
        ("bytes/s", format!("{:.0}", a.bytes_per_sec), format!("{:.0}", b.bytes_per_sec)),
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
    for m in &r.modes {
        for d in &m.hop_diagram {
            s += &format!("{:<9} {d}\n", m.mode);
        }
    }
    s
}
