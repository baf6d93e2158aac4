//! The lab's pods as `kubectl get pods -A -o json` prints them: podtrace's `--pods-file` input.
use serde_json::{Value, json};

use super::plan::Plan;

pub fn render(plan: &Plan) -> Value {
    let items: Vec<Value> = plan
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let node = plan.node(&p.node).expect("pod node");
            let labels: serde_json::Map<String, Value> =
                p.labels.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
            let mut pod_ips = vec![json!({ "ip": p.ip.to_string() })];
            if let Some(v6) = p.ipv6 {
                pod_ips.push(json!({ "ip": v6.to_string() }));
            }
            // An IPv6 pod (IPv6 cluster): podIP and podIPs carry the IPv6 address only (its
            // v4if0 address is not the API's business).
            if p.is_ipv6_only() {
                pod_ips.remove(0);
            }
            let pod_ip = pod_ips[0]["ip"].clone();
            let mut pod = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": p.name,
                    "namespace": p.namespace,
                    "uid": format!("00000000-0000-4000-8000-{:012x}", i + 1),
                    "labels": labels,
                    "creationTimestamp": "2026-01-01T00:00:00Z",
                },
                "spec": {
                    "nodeName": p.node,
                    "containers": [{
                        "name": "echo",
                        "image": "podtrace-lab/echo",
                        "ports": [{ "containerPort": 8080, "protocol": "TCP" }],
                    }],
                },
                "status": {
                    "phase": "Running",
                    "hostIP": node.primary_ip().to_string(),
                    "hostIPs": [{ "ip": node.primary_ip().to_string() }],
                    "podIP": pod_ip,
                    "podIPs": pod_ips,
                },
            });
            super::sgp::annotate_pod(plan, &mut pod);
            pod
        })
        .collect();
    json!({ "apiVersion": "v1", "items": items, "kind": "List", "metadata": { "resourceVersion": "" } })
}
