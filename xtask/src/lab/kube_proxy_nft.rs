//! kube-proxy in nftables mode: the `ip kube-proxy` table of one node, rendered as the `nft -f`
//! transaction kube-proxy itself sends (knftables writes `add table/chain/rule/element` lines).
//!
//! Source: kubernetes `pkg/proxy/nftables/proxier.go` (setupNFTables, syncProxyRules,
//! writeServiceToEndpointRules, hashAndTruncate, servicePortChainNameBase,
//! servicePortEndpointChainNameBase) and the expected rulesets in
//! `pkg/proxy/nftables/proxier_test.go` (baseRules, TestOverallNFTablesRules; commit 81810de6).
//! The node is configured as kube-proxy runs on EKS: no cluster CIDR (so no local-traffic
//! detector: no `ip saddr != <pod CIDR>` masquerade rule, no "short-circuit pod traffic" rule),
//! `nodePortAddresses` unset (nftables mode then defaults to `primary`: the set `nodeport-ips`
//! holds the node's primary IP only), masquerade bit 14 (0x4000).
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use super::plan::{Etp, Plan, Service, ServicePort};

/// The masquerade mark, `1 << masqueradeBit` with EKS's masqueradeBit 14.
pub const MASQ_MARK: &str = "0x4000";
/// The lab's service CIDR (kube-proxy learns it from the ServiceCIDR objects): a /24, so that
/// custom networking's secondary VPC CIDR 198.19.128.0/17 stays outside it.
pub const SERVICE_CIDR: &str = "198.19.0.0/24";

/// RFC 4648 base32 (Go's `base32.StdEncoding`) of the SHA-256 of `s`, without padding.
pub fn sha256_base32(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(s.as_bytes());
    let (mut out, mut buf, mut bits) = (String::new(), 0u32, 0u32);
    for b in digest.iter() {
        buf = (buf << 8) | *b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// proxier.go hashAndTruncate: "<first 8 base32 chars of sha256(name)>-<name>", cut to 240.
pub fn hash_and_truncate(name: &str) -> String {
    // knftables.NameLengthMax (256) - chainNamePrefixLengthMax (16)
    const BASE_MAX: usize = 240;
    let mut s = format!("{}-{name}", &sha256_base32(name)[..8]);
    if s.len() > BASE_MAX {
        s.truncate(BASE_MAX - 3);
        s += "...";
    }
    s
}

/// `proxy.ServicePortName.String()`: `default/web` for an unnamed port, `default/api:http`.
pub fn service_port_name(svc: &Service, port: &ServicePort) -> String {
    if port.name.is_empty() {
        format!("default/{}", svc.name)
    } else {
        format!("default/{}:{}", svc.name, port.name)
    }
}

/// servicePortChainNameBase: `HASH-<ns>/<svc>/<proto>/<port name>` (empty port name kept).
pub fn chain_base(svc: &Service, port: &ServicePort) -> String {
    hash_and_truncate(&format!("default/{}/{}/{}", svc.name, port.proto, port.name))
}

/// servicePortEndpointChainNameBase: `HASH-<ns>/<svc>/<proto>/<port name>__<ip>/<port>`.
pub fn endpoint_chain_base(svc: &Service, port: &ServicePort, ip: &str, target_port: u16) -> String {
    let ip = ip.replace(':', ".");
    hash_and_truncate(&format!("default/{}/{}/{}__{ip}/{target_port}", svc.name, port.proto, port.name))
}

const T: &str = "ip kube-proxy";

/// The whole `nft -f` input for one node's IPv4 table.
pub fn ruleset(plan: &Plan, node_name: &str) -> String {
    let node = plan.node(node_name).expect("node in plan");
    let mut chains = Vec::new();
    let mut rules = Vec::new();
    let mut elements = Vec::new();
    let mut s = String::new();

    // setupNFTables: table, sets and maps, base chains, jump chains, fixed rules.
    writeln!(s, "add table {T} {{ comment \"rules for kube-proxy\" ; }}").unwrap();
    for (name, ty, comment) in [
        ("cluster-ips", "ipv4_addr", "Active ClusterIPs"),
        ("nodeport-ips", "ipv4_addr", "IPs that accept NodePort traffic"),
    ] {
        writeln!(s, "add set {T} {name} {{ type {ty} ; comment \"{comment}\" ; }}").unwrap();
    }
    let vmap = "ipv4_addr . inet_proto . inet_service : verdict";
    let portmap = "inet_proto . inet_service : verdict";
    for (name, ty, comment) in [
        ("no-endpoint-services", vmap, "vmap to drop or reject packets to services with no endpoints"),
        (
            "no-endpoint-nodeports",
            portmap,
            "vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        ("firewall-ips", vmap, "destinations that are subject to LoadBalancerSourceRanges"),
        ("service-ips", vmap, "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
        ("service-nodeports", portmap, "NodePort traffic"),
    ] {
        writeln!(s, "add map {T} {name} {{ type {ty} ; comment \"{comment}\" ; }}").unwrap();
    }
    // nftablesBaseChains: filter chains before DNAT (-110) and at filter priority, nat chains
    // at dstnat (-100) and srcnat (100).
    for (name, ty, hook, prio) in [
        ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
        ("filter-output-pre-dnat", "filter", "output", -110),
        ("filter-input", "filter", "input", 0),
        ("filter-forward", "filter", "forward", 0),
        ("filter-output", "filter", "output", 0),
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
    ] {
        writeln!(s, "add chain {T} {name} {{ type {ty} hook {hook} priority {prio} ; }}").unwrap();
    }
    // nftablesJumpChains
    for (dst, src, extra) in [
        ("nodeport-endpoints-check", "filter-input", "ct state new "),
        ("service-endpoints-check", "filter-input", "ct state new "),
        ("service-endpoints-check", "filter-forward", "ct state new "),
        ("service-endpoints-check", "filter-output", "ct state new "),
        ("firewall-check", "filter-prerouting-pre-dnat", "ct state new "),
        ("firewall-check", "filter-output-pre-dnat", "ct state new "),
        ("services", "nat-output", ""),
        ("services", "nat-prerouting", ""),
        ("masquerading", "nat-postrouting", ""),
        ("cluster-ips-check", "filter-forward", "ct state new "),
        ("cluster-ips-check", "filter-output", "ct state new "),
    ] {
        if !chains.contains(&dst.to_string()) {
            chains.push(dst.to_string());
        }
        rules.push(format!("{src} {extra}jump {dst}"));
    }
    for c in ["mark-for-masquerade", "reject-chain"] {
        chains.push(c.to_string());
    }
    rules.push(format!("mark-for-masquerade mark set mark or {MASQ_MARK}"));
    // The MASQUERADE of kube-proxy's nftables mode: clears the mark, then masquerades.
    rules.push(format!("masquerading mark and {MASQ_MARK} == 0 return"));
    rules.push(format!("masquerading mark set mark xor {MASQ_MARK}"));
    rules.push("masquerading masquerade fully-random".into());
    rules.push(
        "cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
            .into(),
    );
    rules.push(format!(
        "cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\""
    ));
    elements.push(format!("nodeport-ips {{ {} }}", node.primary_ip()));
    rules.push("reject-chain reject".into());
    rules
        .push("service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services".into());
    rules.push(
        "nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"
            .into(),
    );
    rules.push("firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips".into());
    rules.push("services ip daddr . meta l4proto . th dport vmap @service-ips".into());
    rules.push("services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports".into());

    // syncProxyRules, per service port.
    for svc in &plan.services {
        for port in &svc.ports {
            service_port(plan, node_name, svc, port, &mut chains, &mut rules, &mut elements);
        }
    }

    for c in &chains {
        // Chain names with a comment are written with it, like reject-chain.
        if c == "reject-chain" {
            writeln!(s, "add chain {T} {c} {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}").unwrap();
        } else {
            writeln!(s, "add chain {T} {c}").unwrap();
        }
    }
    for r in &rules {
        writeln!(s, "add rule {T} {r}").unwrap();
    }
    for e in &elements {
        writeln!(s, "add element {T} {e}").unwrap();
    }
    s
}

/// One service port, as kubernetes pkg/proxy/nftables/proxier.go syncProxyRules writes it:
/// cluster-ips/service-ips/service-nodeports elements, the external chain (ETP Cluster:
/// unconditional masquerade mark; ETP Local: only `fib saddr type local`), the service and local
/// chains (writeServiceToEndpointRules: numgen vmap) and one endpoint chain per endpoint
/// (hairpin mark + `dnat to`).
fn service_port(
    plan: &Plan,
    node_name: &str,
    svc: &Service,
    port: &ServicePort,
    chains: &mut Vec<String>,
    rules: &mut Vec<String>,
    elements: &mut Vec<String>,
) {
    let proto = &port.proto;
    let base = chain_base(svc, port);
    let cluster_chain = format!("service-{base}");
    let local_chain = format!("local-{base}");
    let external_chain = format!("external-{base}");
    let pods: Vec<_> = svc.endpoints.iter().filter_map(|e| plan.pod(e)).collect();
    let endpoint_chain =
        |ip: &str| format!("endpoint-{}", endpoint_chain_base(svc, port, ip, port.target_port));
    let local: Vec<_> = pods.iter().filter(|p| p.node == node_name).collect();
    let external = port.node_port.is_some();
    let etp_local = external && svc.etp == Etp::Local;
    let has_external_endpoints = !etp_local || !local.is_empty();
    let pname = service_port_name(svc, port);

    // Every endpoint is reachable (internal traffic policy Cluster): one chain each.
    for p in &pods {
        chains.push(endpoint_chain(&p.ip.to_string()));
    }
    chains.push(cluster_chain.clone());
    if etp_local && !local.is_empty() {
        chains.push(local_chain.clone());
    }
    if external {
        chains.push(external_chain.clone());
    }

    elements.push(format!("cluster-ips {{ {} }}", svc.cluster_ip));
    elements.push(format!(
        "service-ips {{ {} . {proto} . {} : goto {cluster_chain} }}",
        svc.cluster_ip, port.port
    ));
    if let Some(np) = port.node_port {
        elements.push(format!("service-nodeports {{ {proto} . {np} : goto {external_chain} }}"));
        if !has_external_endpoints {
            elements.push(format!("no-endpoint-nodeports {{ {proto} . {np} comment \"{pname}\" : drop }}"));
        }
    }

    if external {
        if !etp_local {
            // ETP Cluster: the endpoint may be on another node, so masquerade.
            rules.push(format!("{external_chain} jump mark-for-masquerade"));
        } else {
            // ETP Local: only traffic from the node itself is masqueraded (and sent to any
            // endpoint); everything else keeps its client IP and goes to local endpoints.
            rules.push(format!(
                "{external_chain} fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\""
            ));
            rules.push(format!(
                "{external_chain} fib saddr type local goto {cluster_chain} comment \"short-circuit local traffic\""
            ));
        }
        if has_external_endpoints {
            let policy = if etp_local { &local_chain } else { &cluster_chain };
            rules.push(format!("{external_chain} goto {policy}"));
        }
    }

    let balance = |chain: &str, eps: &[&&super::plan::Pod]| {
        let arms: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{i} : goto {}", endpoint_chain(&p.ip.to_string())))
            .collect();
        format!("{chain} numgen random mod {} vmap {{ {} }}", eps.len(), arms.join(" , "))
    };
    let all: Vec<_> = pods.iter().collect();
    rules.push(balance(&cluster_chain, &all));
    if etp_local && !local.is_empty() {
        let local: Vec<_> = local.to_vec();
        rules.push(balance(&local_chain, &local));
    }
    for p in &pods {
        let ec = endpoint_chain(&p.ip.to_string());
        // Hairpin: a pod reaching itself through the service is masqueraded.
        rules.push(format!("{ec} ip saddr {} jump mark-for-masquerade", p.ip));
        rules.push(format!("{ec} meta l4proto {proto} dnat to {}:{}", p.ip, port.target_port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{LabConfig, plan::Plan};

    #[test]
    fn chain_hashes_match_upstream_test_vectors() {
        // pkg/proxy/nftables/proxier_test.go, TestOverallNFTablesRules.
        assert_eq!(hash_and_truncate("ns1/svc1/tcp/p80"), "ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(hash_and_truncate("ns2/svc2/tcp/p80"), "42NFTM6N-ns2/svc2/tcp/p80");
        assert_eq!(
            hash_and_truncate("ns1/svc1/tcp/p80__10.180.0.1/80"),
            "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
        assert_eq!(
            hash_and_truncate("ns2/svc2/tcp/p80__10.180.0.2/80"),
            "SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80"
        );
        let long = "x".repeat(300);
        assert_eq!(hash_and_truncate(&long).len(), 240);
        assert!(hash_and_truncate(&long).ends_with("..."));
    }

    fn plan(etp: Etp) -> Plan {
        Plan::new(&LabConfig { etp, ..LabConfig::default() })
    }

    fn chain_rules<'a>(text: &'a str, chain_prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(&format!("add rule {T} {chain_prefix}"))).collect()
    }

    #[test]
    fn names_carry_namespace_service_protocol_and_port_name() {
        let text = ruleset(&plan(Etp::Cluster), "node-a");
        // Unnamed port: empty last component (a trailing slash), as upstream formats it.
        assert!(text.contains("add chain ip kube-proxy service-"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("add chain") && l.ends_with("-default/web/tcp/")));
        assert!(text.lines().any(|l| l.starts_with("add chain") && l.ends_with("-default/api/udp/udp")));
        assert!(text.contains("-default/web/tcp/__198.18.2.11/8080"));
        assert!(text.contains("meta l4proto udp dnat to 198.18.1.21:8080"));
        assert!(text.contains("add element ip kube-proxy nodeport-ips { 198.18.1.10 }"));
        assert!(text.contains("numgen random mod 2 vmap { 0 : goto endpoint-"));
    }

    #[test]
    fn etp_cluster_marks_every_external_packet() {
        let text = ruleset(&plan(Etp::Cluster), "node-a");
        let ext = chain_rules(&text, "external-");
        assert_eq!(ext.len(), 2, "{ext:?}");
        assert!(ext[0].ends_with(" jump mark-for-masquerade"), "{ext:?}");
        assert!(!ext[0].contains("fib saddr"));
        assert!(ext[1].contains("goto service-"));
    }

    #[test]
    fn etp_local_masquerades_only_node_local_sources() {
        let text = ruleset(&plan(Etp::Local), "node-a");
        let ext = chain_rules(&text, "external-");
        // No unconditional mark: only `fib saddr type local` traffic is marked.
        for r in &ext {
            if r.contains("mark-for-masquerade") {
                assert!(r.contains("fib saddr type local"), "{r}");
            }
        }
        assert!(ext.last().unwrap().contains("goto local-"), "{ext:?}");
        // The local chain balances over this node's endpoint only (web-2).
        let local = chain_rules(&text, "local-");
        assert_eq!(local.len(), 1);
        assert!(local[0].contains("numgen random mod 1") && local[0].contains("198.18.2.11/8080"));
    }
}
