//! kube-proxy in iptables mode: its nat-table chains and rules on one node, in the argument
//! order kube-proxy writes them to iptables-restore.
//!
//! Source: kubernetes `pkg/proxy/iptables/proxier.go` (syncProxyRules,
//! writeServiceToEndpointRules, portProtoHash, servicePortEndpointChainName, iptablesJumpChains)
//! and the expected nat table of `pkg/proxy/iptables/proxier_test.go` (TestOverallIPTablesRules).
//! As on EKS: no cluster CIDR (no `! -s <pod CIDR> -j KUBE-MARK-MASQ` rule), nodePortAddresses
//! unset (NodePorts on every local address via `-m addrtype --dst-type LOCAL`), masquerade bit
//! 14, iptables with --random-fully. Only the nat table is rendered: the filter table's
//! KUBE-FORWARD/KUBE-FIREWALL/... rules and the *-CANARY chains are not needed for services to
//! work in the lab.
use super::kube_proxy_nft::{MASQ_MARK, service_port_name, sha256_base32};
use super::plan::{Etp, Plan, Pod, Service, ServicePort};

/// portProtoHash: first 16 base32 characters of sha256(servicePortName + protocol).
pub fn port_proto_hash(svc_port_name: &str, proto: &str) -> String {
    sha256_base32(&format!("{svc_port_name}{proto}"))[..16].to_string()
}

/// servicePortEndpointChainName: KUBE-SEP- + 16 chars of sha256(name + protocol + "ip:port").
pub fn endpoint_chain(svc_port_name: &str, proto: &str, endpoint: &str) -> String {
    format!("KUBE-SEP-{}", &sha256_base32(&format!("{svc_port_name}{proto}{endpoint}"))[..16])
}

/// kube-proxy's nat table part: chain declarations, the jumps it prepends to the built-in
/// chains, and the rules of its own chains.
#[derive(Debug, Default)]
pub struct KubeNat {
    pub chains: Vec<String>,
    pub jumps: Vec<String>,
    pub rules: Vec<String>,
}

/// kubernetes pkg/proxy/iptables/proxier.go: syncProxyRules' fixed KUBE-POSTROUTING and
/// KUBE-MARK-MASQ rules, iptablesJumpChains' nat jumps, then every service port.
pub fn nat(plan: &Plan, node_name: &str) -> KubeNat {
    let mut k = KubeNat::default();
    for c in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        k.chains.push(c.into());
    }
    // iptablesJumpChains (nat), each EnsureRule(Prepend, ...).
    k.jumps.push("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into());
    k.jumps.push("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into());
    k.jumps.push(
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING".into(),
    );
    // The MASQUERADE of kube-proxy's iptables mode: only packets marked by KUBE-MARK-MASQ.
    k.rules.push(format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"));
    k.rules.push(format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"));
    k.rules.push(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
            .into(),
    );
    k.rules.push(format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"));
    for svc in &plan.services {
        for port in &svc.ports {
            service_port(plan, node_name, svc, port, &mut k);
        }
    }
    // Last rule of KUBE-SERVICES (nodePortAddresses match all, localhost NodePorts allowed).
    k.rules.push("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".into());
    k
}

/// One service port, as kubernetes pkg/proxy/iptables/proxier.go syncProxyRules writes it:
/// KUBE-SERVICES "<name> cluster IP", KUBE-NODEPORTS "<name>", KUBE-EXT (ETP Cluster:
/// "masquerade traffic for …"; ETP Local: the two "… LOCAL traffic …" rules then KUBE-SVL),
/// KUBE-SVC/KUBE-SVL (writeServiceToEndpointRules) and KUBE-SEP (hairpin mark + DNAT).
fn service_port(plan: &Plan, node_name: &str, svc: &Service, port: &ServicePort, k: &mut KubeNat) {
    let proto = &port.proto;
    let name = service_port_name(svc, port);
    let hash = port_proto_hash(&name, proto);
    let (svc_chain, svl_chain, ext_chain) =
        (format!("KUBE-SVC-{hash}"), format!("KUBE-SVL-{hash}"), format!("KUBE-EXT-{hash}"));
    let pods: Vec<&Pod> = svc.endpoints.iter().filter_map(|e| plan.pod(e)).collect();
    let local: Vec<&Pod> = pods.iter().copied().filter(|p| p.node == node_name).collect();
    let external = port.node_port.is_some();
    let etp_local = external && svc.etp == Etp::Local;
    let ep = |p: &Pod| format!("{}:{}", p.ip, port.target_port);

    k.rules.push(format!(
        "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {} --dport {} -j {svc_chain}",
        svc.cluster_ip, port.port
    ));
    if let Some(np) = port.node_port {
        k.rules.push(format!(
            "-A KUBE-NODEPORTS -m comment --comment {name} -m {proto} -p {proto} --dport {np} -j {ext_chain}"
        ));
    }
    if external {
        k.chains.push(ext_chain.clone());
        if !etp_local {
            k.rules.push(format!("-A {ext_chain} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"));
        } else {
            k.rules.push(format!("-A {ext_chain} -m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"));
            k.rules.push(format!("-A {ext_chain} -m comment --comment \"route LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j {svc_chain}"));
        }
        // With ETP Local and no local endpoint kube-proxy adds no jump here; the packet falls
        // through to a DROP in the filter table's KUBE-EXTERNAL-SERVICES (not rendered).
        if !etp_local {
            k.rules.push(format!("-A {ext_chain} -j {svc_chain}"));
        } else if !local.is_empty() {
            k.rules.push(format!("-A {ext_chain} -j {svl_chain}"));
        }
    }
    k.chains.push(svc_chain.clone());
    balance(k, &svc_chain, &name, proto, &pods, &ep);
    if etp_local && !local.is_empty() {
        k.chains.push(svl_chain.clone());
        balance(k, &svl_chain, &name, proto, &local, &ep);
    }
    for p in &pods {
        let sep = endpoint_chain(&name, proto, &ep(p));
        k.chains.push(sep.clone());
        k.rules.push(format!("-A {sep} -m comment --comment {name} -s {} -j KUBE-MARK-MASQ", p.ip));
        k.rules.push(format!(
            "-A {sep} -m comment --comment {name} -m {proto} -p {proto} -j DNAT --to-destination {}",
            ep(p)
        ));
    }
}

/// writeServiceToEndpointRules: probabilistic jumps, the last one unconditional.
fn balance(k: &mut KubeNat, chain: &str, name: &str, proto: &str, eps: &[&Pod], ep: &dyn Fn(&Pod) -> String) {
    let n = eps.len();
    for (i, p) in eps.iter().enumerate() {
        let sep = endpoint_chain(name, proto, &ep(p));
        let stat = if i < n - 1 {
            format!(" -m statistic --mode random --probability {:.10}", 1.0 / (n - i) as f64)
        } else {
            String::new()
        };
        k.rules.push(format!("-A {chain} -m comment --comment \"{name} -> {}\"{stat} -j {sep}", ep(p)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::LabConfig;

    #[test]
    fn chain_names_match_upstream_test_vectors() {
        // pkg/proxy/iptables/proxier_test.go, TestOverallIPTablesRules.
        assert_eq!(port_proto_hash("ns1/svc1:p80", "tcp"), "XPGD46QRK7WJZT7O");
        assert_eq!(port_proto_hash("ns2/svc2:p80", "tcp"), "GNZBNJ2PO5MGZ6GT");
        assert_eq!(endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80"), "KUBE-SEP-SXIVWICOYRO3J4NJ");
    }

    #[test]
    fn comments_carry_the_service_port_name() {
        let plan = Plan::new(&LabConfig { etp: Etp::Local, ..LabConfig::default() });
        let k = nat(&plan, "node-a");
        let text = k.rules.join("\n");
        assert!(
            text.contains(
                "--comment \"default/api:http cluster IP\" -m tcp -p tcp -d 198.19.0.10 --dport 80"
            )
        );
        assert!(text.contains("--comment \"default/api:udp cluster IP\" -m udp -p udp"));
        assert!(
            text.contains("-A KUBE-NODEPORTS -m comment --comment default/web -m tcp -p tcp --dport 30080")
        );
        assert!(text.contains(
            "\"default/web -> 198.18.2.11:8080\" -m statistic --mode random --probability 0.5000000000"
        ));
        // ETP Local: the EXT chain marks only node-local sources.
        let web = port_proto_hash("default/web", "tcp");
        let ext: Vec<_> = k.rules.iter().filter(|r| r.starts_with(&format!("-A KUBE-EXT-{web}"))).collect();
        assert!(ext.iter().filter(|r| r.contains("KUBE-MARK-MASQ")).all(|r| r.contains("--src-type LOCAL")));
        assert!(ext.last().unwrap().ends_with(&format!("-j KUBE-SVL-{web}")));
    }
}
