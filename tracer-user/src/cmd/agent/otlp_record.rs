//! One flow as one OTLP log record (event `podtrace.flow`).
//!
//! Why logs, not spans: a flow is observed again and again while it lives (cumulative counters
//! every round), and a span is immutable once ended and claims a place in a trace that a flow
//! does not have; netobserv and Hubble export flows as log records too. Collectors route log
//! records to the stores people query flows in (Loki, ClickHouse, Elasticsearch), and the
//! OpenTelemetry semantic conventions for network attributes apply to them unchanged.
//!
//! Attributes: semantic conventions where one exists (`k8s.*`, `network.*`, `source.*`,
//! `destination.*`), ECS's `network.community_id` for the Community ID (OpenTelemetry has none),
//! and `podtrace.*` for the path, ENIs, NAT and counters (same meaning as the JSON contract).
use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
use opentelemetry_sdk::logs::{SdkLogRecord, SdkLogger};

use crate::{
    assemble::model::Direction,
    report::{
        json::{FlowReport, HopReport, NatReport},
        table::{Style, row},
    },
};

fn hops(path: &[HopReport]) -> AnyValue {
    AnyValue::ListAny(Box::new(path.iter().map(|h| AnyValue::from(h.name().to_string())).collect()))
}

fn nat(r: &mut SdkLogRecord, which: &'static str, n: &NatReport) {
    let key = |field: &str| format!("podtrace.{which}.{field}");
    r.add_attribute(key("kind"), n.kind.as_str().to_string());
    r.add_attribute(key("from"), n.from.to_string());
    r.add_attribute(key("to"), n.to.to_string());
    if let Some(c) = &n.chain {
        r.add_attribute(key("chain"), c.clone());
    }
    if let Some(s) = &n.service {
        r.add_attribute(key("service"), s.clone());
    }
}

pub fn flow_record(logger: &SdkLogger, f: &FlowReport, node: Option<&str>) -> SdkLogRecord {
    let mut r = logger.create_log_record();
    r.set_event_name("podtrace.flow");
    r.set_timestamp(UNIX_EPOCH + Duration::from_millis(f.last_seen_ms));
    r.set_observed_timestamp(std::time::SystemTime::now());
    r.set_severity_number(Severity::Info);
    r.set_severity_text("INFO");
    r.set_body(AnyValue::from(row(f, Style::plain())));
    r.add_attribute("k8s.pod.name", f.pod.clone());
    r.add_attribute("k8s.namespace.name", f.namespace.clone());
    if let Some(n) = node {
        r.add_attribute("k8s.node.name", n.to_string());
    }
    r.add_attribute("network.transport", f.proto.to_string());
    r.add_attribute("network.type", if f.pod_ip.is_ipv4() { "ipv4" } else { "ipv6" });
    r.add_attribute("source.address", f.src.ip().to_string());
    r.add_attribute("source.port", i64::from(f.src.port()));
    r.add_attribute("destination.address", f.dst.ip().to_string());
    r.add_attribute("destination.port", i64::from(f.dst.port()));
    if let Some(c) = &f.community_id {
        r.add_attribute("network.community_id", c.clone());
    }
    r.add_attribute("podtrace.flow.id", f.id.clone());
    let direction = match f.direction {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
    };
    r.add_attribute("podtrace.direction", direction);
    r.add_attribute("podtrace.path", hops(&f.path));
    r.add_attribute("podtrace.reply_path", hops(&f.reply_path));
    for (key, v) in [
        ("podtrace.eni", &f.eni),
        ("podtrace.trunk_eni", &f.trunk_eni),
        ("podtrace.pod_ip_owner_eni", &f.pod_ip_owner_eni),
    ] {
        if let Some(v) = v {
            r.add_attribute(key, v.clone());
        }
    }
    if let Some(s) = &f.snat {
        nat(&mut r, "snat", s);
    }
    if let Some(d) = &f.dnat {
        nat(&mut r, "dnat", d);
    }
    if let Some(m) = f.ingress_mode {
        r.add_attribute("podtrace.ingress_mode", m.as_str());
    }
    if let Some(p) = f.client_ip_preserved {
        r.add_attribute("podtrace.client_ip_preserved", p);
    }
    if let Some(l) = f.in_node_latency() {
        r.add_attribute("podtrace.in_node_latency_p50_us", l);
    }
    r.add_attribute("podtrace.node_crossing", f.node_crossing);
    r.add_attribute("podtrace.nat_steps", i64::from(f.nat_steps));
    r.add_attribute("podtrace.packets", f.packets as i64);
    r.add_attribute("podtrace.bytes", f.bytes as i64);
    r.add_attribute("podtrace.retransmits", f.retransmits as i64);
    r.add_attribute("podtrace.dropped_packets", f.drops.iter().map(|d| d.count).sum::<u64>() as i64);
    r.add_attribute("podtrace.first_seen_unix_ms", f.first_seen_ms as i64);
    r
}

#[cfg(test)]
mod tests {
    use opentelemetry::logs::LoggerProvider as _;
    use opentelemetry_sdk::logs::SdkLoggerProvider;

    use super::*;

    #[test]
    fn a_flow_becomes_a_record_with_semantic_convention_attributes() {
        let f: FlowReport = serde_json::from_value(serde_json::json!({
            "pod": "web-1", "namespace": "default", "pod_ip": "198.18.1.11", "proto": "tcp", "direction": "egress",
            "src": "198.18.1.11:40000", "dst": "203.0.113.10:80",
            "path": [{"ifname": "enia", "role": "pod-veth", "hook": "ingress", "src": "198.18.1.11:40000", "dst": "203.0.113.10:80", "packets": 3, "bytes": 300},
                     {"ifname": "eth0", "role": "eni", "hook": "egress", "src": "198.18.1.10:61000", "dst": "203.0.113.10:80", "packets": 3, "bytes": 300}],
            "reply_path": [], "eni": "eth0", "trunk_eni": null, "branch_eni_id": null, "pod_ip_owner_eni": "eth0",
            "snat": {"from": "198.18.1.11:40000", "to": "198.18.1.10:61000", "after_hop": "enia/ingress", "before_hop": "eth0/egress", "kind": "pod-egress-snat", "chain": "AWS-SNAT-CHAIN-0", "service": null},
            "dnat": null, "ingress_mode": null, "hop_latency_us": [], "packets": 6, "bytes": 600, "nat_steps": 1,
            "client_ip_preserved": null, "node_crossing": false, "unanswered_after": null, "no_reply": false,
            "drops": [], "retransmits": 0, "first_seen_ms": 1000, "last_seen_ms": 2000, "id": "tcp:x", "community_id": "1:abc="
        }))
        .unwrap();
        let provider = SdkLoggerProvider::builder().build();
        let r = flow_record(&provider.logger("t"), &f, Some("node-a"));
        let attrs: std::collections::BTreeMap<String, String> = r
            .attributes_iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    match v {
                        AnyValue::String(s) => s.to_string(),
                        AnyValue::Int(i) => i.to_string(),
                        AnyValue::Boolean(b) => b.to_string(),
                        AnyValue::ListAny(l) => format!("{}", l.len()),
                        other => format!("{other:?}"),
                    },
                )
            })
            .collect();
        let want = [
            ("k8s.pod.name", "web-1"),
            ("k8s.namespace.name", "default"),
            ("k8s.node.name", "node-a"),
            ("network.transport", "tcp"),
            ("network.type", "ipv4"),
            ("source.address", "198.18.1.11"),
            ("source.port", "40000"),
            ("destination.address", "203.0.113.10"),
            ("destination.port", "80"),
            ("network.community_id", "1:abc="),
            ("podtrace.direction", "egress"),
            ("podtrace.eni", "eth0"),
            ("podtrace.path", "2"),
            ("podtrace.snat.kind", "pod-egress-snat"),
            ("podtrace.snat.to", "198.18.1.10:61000"),
            ("podtrace.snat.chain", "AWS-SNAT-CHAIN-0"),
            ("podtrace.packets", "6"),
        ];
        for (k, v) in want {
            assert_eq!(attrs.get(k).map(String::as_str), Some(v), "{k}: {attrs:?}");
        }
        assert!(!attrs.contains_key("podtrace.dnat.kind"));
        assert_eq!(r.event_name(), Some("podtrace.flow"));
    }
}
