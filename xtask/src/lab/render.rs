//! Renders the plan into the exact commands the VPC CNI, ipamd, kube-proxy and EC2 would
//! apply (see ../shared/brief/eks-datapath.md; each block names the rule it reproduces).
//! Kept as `ip` batch lines and iptables-restore text so that the lab can be read side by side
//! with the brief, line for line.
use std::fmt::Write as _;

use super::plan::{Etp, Plan, Pod};

/// Everything to apply to one namespace.
#[derive(Default, Debug)]
pub struct NsConfig {
    pub netns: String,
    pub sysctls: Vec<(String, String)>,
    pub ip: Vec<String>,
    pub iptables: Option<String>,
    pub ip6tables: Option<String>,
}

fn sysctl(k: impl Into<String>, v: &str) -> (String, String) {
    (k.into(), v.to_string())
}

/// MAC of a pod's host-side veth (the pod's permanent neighbour entry for 169.254.1.1),
/// derived from the pod IP so it is unique and stable.
pub fn host_veth_mac(pod: &Pod) -> String {
    let o = pod.ip.octets();
    format!("02:ee:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The node side of one pod, as the CNI plugin sets it up: host veth, /32 route, rule 512 and,
/// for a secondary-ENI IP, rule 1536.
pub fn pod_on_node(node: &super::plan::Node, pod: &Pod) -> Vec<String> {
    if pod.is_ipv6_only() {
        return super::egress_cni::pod_on_node(pod);
    }
    let v = &pod.veth;
    let mut ip = vec![
        format!("link add {v} address {} type veth peer name eth0 netns {}", host_veth_mac(pod), pod.netns),
        format!("link set {v} mtu 9001 up"),
        format!("route replace {}/32 dev {v} scope link", pod.ip),
        format!("rule add to {}/32 lookup main pref 512", pod.ip),
    ];
    let eni = node.enis.iter().find(|e| e.name == pod.eni).expect("pod ENI");
    if let Some(t) = eni.table() {
        ip.push(format!("rule add from {}/32 lookup {t} pref 1536", pod.ip));
    }
    if let Some(v6) = pod.ipv6 {
        ip.push(format!("addr add fe80::1/64 dev {v} nodad"));
        ip.push(format!("route add {v6}/128 dev {v}"));
    }
    ip
}

/// The VPC router: one link per ENI (the subnet gateway), per-IP routes to the owning ENI
/// (how EC2 delivers secondary IPs), and the source/destination check.
pub fn vpc(plan: &Plan) -> NsConfig {
    let mut ip = vec!["link set lo up".to_string()];
    let mut check = String::from("*raw\n:PREROUTING ACCEPT [0:0]\n:VPC-SRC-DST-CHECK - [0:0]\n");
    check += "-A PREROUTING -j VPC-SRC-DST-CHECK\n";
    let mut check6 = check.clone();
    for node in &plan.nodes {
        for eni in &node.enis {
            let l = &eni.vpc_link;
            ip.push(format!("link add {l} type veth peer name {} netns {}", eni.name, node.netns));
            ip.push(format!("link set {l} mtu 9001 up"));
            ip.push(format!("addr add {}/32 dev {l}", eni.gateway));
            ip.push(format!("route add {}/32 dev {l}", eni.ip));
            for owned in plan.owned_by(node, eni).into_iter().skip(1) {
                ip.push(format!("route add {owned}/32 via {} dev {l}", eni.ip));
            }
            for owned in plan.owned_by(node, eni) {
                writeln!(check, "-A VPC-SRC-DST-CHECK -i {l} -s {owned}/32 -j RETURN").unwrap();
            }
            super::ipam_variants::vpc_prefixes(eni, &mut ip, &mut check);
            writeln!(
                check,
                "-A VPC-SRC-DST-CHECK -i {l} -m comment --comment \"src/dst check {} {}\" -j DROP",
                node.name, eni.name
            )
            .unwrap();
            if plan.vpc_cidr_v6.is_some() && eni.device == 0 {
                let sub = eni.ip.octets()[2] as u16;
                let node_v6 = super::plan::v6(sub, eni.ip.octets()[3] as u16);
                ip.push(format!("addr add {}/128 dev {l} nodad", super::plan::v6(sub, 1)));
                ip.push(format!("route add {node_v6}/128 dev {l}"));
                writeln!(check6, "-A VPC-SRC-DST-CHECK -i {l} -s {node_v6}/128 -j RETURN").unwrap();
                for p in plan.pods_on(&node.name).filter(|p| p.eni == eni.name) {
                    if let Some(v6) = p.ipv6.filter(|a| !eni.in_ipv6_prefix(*a)) {
                        ip.push(format!("route add {v6}/128 via {node_v6} dev {l}"));
                        writeln!(check6, "-A VPC-SRC-DST-CHECK -i {l} -s {v6}/128 -j RETURN").unwrap();
                    }
                }
                super::ipam_variants::vpc_prefixes_v6(eni, node_v6, &mut ip, &mut check6);
                writeln!(check6, "-A VPC-SRC-DST-CHECK -i {l} -p ipv6-icmp -j RETURN").unwrap();
                writeln!(check6, "-A VPC-SRC-DST-CHECK -i {l} -j DROP").unwrap();
            }
        }
    }
    // Branch ENIs behind a trunk (--variant sgp-*).
    ip.extend(super::sgp::vpc(plan));
    for h in &plan.hosts {
        let l = &h.vpc_link;
        ip.push(format!("link add {l} type veth peer name eth0 netns {}", h.netns));
        ip.push(format!("link set {l} mtu 9001 up"));
        ip.push(format!("addr add {}/{} dev {l}", h.gateway, h.prefix_len));
        if let Some(v6) = h.ipv6 {
            let seg = v6.segments();
            ip.push(format!("addr add {}/64 dev {l} nodad", super::plan::v6(seg[3], 1)));
        }
    }
    check += &super::sgp::vpc_check(plan);
    check += "COMMIT\n";
    check6 += "COMMIT\n";
    NsConfig {
        netns: plan.vpc_netns.clone(),
        sysctls: vec![
            sysctl("net.ipv4.ip_forward", "1"),
            sysctl("net.ipv4.conf.all.proxy_arp", "1"),
            sysctl("net.ipv4.conf.all.rp_filter", "0"),
            sysctl("net.ipv6.conf.all.forwarding", "1"),
        ],
        ip,
        iptables: Some(check),
        ip6tables: plan.vpc_cidr_v6.as_ref().map(|_| check6),
    }
}

/// A node: ipamd's per-ENI setup, the CNI plugin's per-pod setup, ipamd's SNAT/connmark
/// iptables and kube-proxy's service rules.
pub fn node(plan: &Plan, node_name: &str) -> NsConfig {
    let node = plan.node(node_name).expect("node in plan");
    let primary = node.primary();
    let mut ip = vec!["link set lo up".to_string(), super::imds::node_ip_line()];
    let mut sysctls = vec![
        sysctl("net.ipv4.ip_forward", "1"),
        // Amazon Linux defaults to strict reverse path filtering ...
        sysctl("net.ipv4.conf.all.rp_filter", "1"),
        sysctl("net.ipv4.conf.default.rp_filter", "1"),
        sysctl("net.ipv6.conf.all.forwarding", "1"),
    ];
    for eni in &node.enis {
        let (n, gw) = (&eni.name, eni.gateway);
        ip.push(format!("link set {n} address {} mtu 9001 up", eni.mac));
        ip.push(format!("addr add {}/{} dev {n}", eni.ip, eni.prefix_len));
        match eni.table() {
            // ... ipamd loosens it on the primary ENI: sysctl net.ipv4.conf.eth0.rp_filter=2
            None => {
                sysctls.push(sysctl(format!("net.ipv4.conf.{n}.rp_filter"), "2"));
                ip.push(format!("route add default via {gw} dev {n}"));
            }
            // secondary ENI: route table = device number + 1
            Some(t) => {
                sysctls.push(sysctl(format!("net.ipv4.conf.{n}.rp_filter"), "1"));
                ip.push(format!("route replace {gw} dev {n} scope link table {t}"));
                ip.push(format!("route replace default via {gw} dev {n} table {t}"));
                ip.push(format!("route del {} dev {n} table main", eni.subnet()));
                // ... except on a trunk ENI (network.go setupENINetwork: !isTrunkENI).
                if !plan.is_trunk(&node.name, n) {
                    ip.push(format!("rule add from {} lookup {t} pref 32765", eni.ip));
                }
            }
        }
    }
    // NodePort/off-VPC replies marked 0x80 go back by the main table (eth0).
    ip.push("rule add fwmark 0x80/0x80 lookup main pref 1024".into());
    if plan.vpc_cidr_v6.is_some() {
        let o = primary.ip.octets();
        let sub = o[2] as u16;
        ip.push(format!("addr add {}/64 dev {} nodad", super::plan::v6(sub, o[3] as u16), primary.name));
        ip.push(format!("route add default via {} dev {}", super::plan::v6(sub, 1), primary.name));
    }
    for pod in plan.pods_on(&node.name).filter(|p| plan.branch_of(&p.name).is_none()) {
        ip.extend(pod_on_node(node, pod));
    }
    // Security Groups for Pods: local rule move and branch-ENI pods (--variant sgp-*).
    ip.extend(super::sgp::node(plan, &node.name));
    sysctls.extend(super::ipam_variants::node_sysctls(plan, node));
    NsConfig {
        netns: node.netns.clone(),
        sysctls,
        ip,
        iptables: Some(node_iptables(plan, node_name)),
        ip6tables: None,
    }
}

/// iptables of one node: AWS SNAT + CONNMARK chains (ipamd) and kube-proxy (iptables mode).
pub fn node_iptables(plan: &Plan, node_name: &str) -> String {
    let node = plan.node(node_name).expect("node in plan");
    let eth0 = &node.primary().name;
    let veths = format!("{}+", plan.veth_prefix);
    let mut s = String::new();
    s += "*mangle\n:PREROUTING ACCEPT [0:0]\n";
    writeln!(s, "-A PREROUTING -i {eth0} -m comment --comment \"AWS, primary ENI\" -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark 0x80/0x80").unwrap();
    // network.go buildIptablesSNATRules: `-i <AWS_VPC_K8S_CNI_VETHPREFIX>+`.
    writeln!(s, "-A PREROUTING -i {veths} -m comment --comment \"AWS, primary ENI\" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80").unwrap();
    s += "COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n";
    for chain in [
        "AWS-SNAT-CHAIN-0",
        "AWS-CONNMARK-CHAIN-0",
        "KUBE-SERVICES",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
        "KUBE-NODEPORTS",
    ] {
        writeln!(s, ":{chain} - [0:0]").unwrap();
    }
    for svc in &plan.services {
        let up = svc.name.to_uppercase();
        writeln!(s, ":KUBE-SVC-{up} - [0:0]").unwrap();
        if svc.ports.iter().any(|p| p.node_port.is_some()) {
            writeln!(s, ":KUBE-EXT-{up} - [0:0]").unwrap();
            if svc.etp == Etp::Local {
                writeln!(s, ":KUBE-SVL-{up} - [0:0]").unwrap();
            }
        }
        for ep in &svc.endpoints {
            writeln!(s, ":KUBE-SEP-{up}-{} - [0:0]", ep.to_uppercase()).unwrap();
        }
    }
    s += "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
    writeln!(
        s,
        "-A PREROUTING -i {veths} -m comment --comment \"AWS, outbound connections\" -j AWS-CONNMARK-CHAIN-0"
    )
    .unwrap();
    s += "-A PREROUTING -m comment --comment \"AWS, CONNMARK\" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80\n";
    s += "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
    s += "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n";
    s += "-A POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0\n";
    // A RETURN for every VPC CIDR, secondary ones too (network.go buildIptablesSNATRules; ipamd
    // reads them from IMDS vpc-ipv4-cidr-blocks, pkg/awsutils/imds.go GetVPCIPv4CIDRBlocks).
    for vpc in plan.vpc_cidrs() {
        writeln!(s, "-A AWS-SNAT-CHAIN-0 -d {vpc} -m comment --comment \"AWS SNAT CHAIN\" -j RETURN")
            .unwrap();
    }
    writeln!(s, "-A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source {} --random-fully", node.primary_ip()).unwrap();
    // iptables_connmark.go buildRules: a RETURN per VPC CIDR.
    for vpc in plan.vpc_cidrs() {
        writeln!(s, "-A AWS-CONNMARK-CHAIN-0 -d {vpc} -m comment --comment \"AWS CONNMARK CHAIN\" -j RETURN")
            .unwrap();
    }
    s += "-A AWS-CONNMARK-CHAIN-0 -m comment --comment \"AWS, CONNMARK\" -j CONNMARK --set-xmark 0x80/0x80\n";
    s += "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n";
    s += "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n";
    s += "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n";
    s += "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n";
    for svc in &plan.services {
        let up = svc.name.to_uppercase();
        for port in &svc.ports {
            writeln!(s, "-A KUBE-SERVICES -d {}/32 -p {} -m comment --comment \"default/{} cluster IP\" -m {} --dport {} -j KUBE-SVC-{up}", svc.cluster_ip, port.proto, svc.name, port.proto, port.port).unwrap();
            if let Some(np) = port.node_port {
                writeln!(s, "-A KUBE-NODEPORTS -p {} -m comment --comment \"default/{}\" -m {} --dport {np} -j KUBE-EXT-{up}", port.proto, svc.name, port.proto).unwrap();
            }
        }
        let n = svc.endpoints.len();
        for (i, ep) in svc.endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{up}-{}", ep.to_uppercase());
            let remaining = n - i;
            if remaining > 1 {
                let prob = 1.0 / remaining as f64;
                writeln!(s, "-A KUBE-SVC-{up} -m statistic --mode random --probability {prob:.11} -j {sep}")
                    .unwrap();
            } else {
                writeln!(s, "-A KUBE-SVC-{up} -j {sep}").unwrap();
            }
            let pod = plan.pod(ep).expect("endpoint pod");
            writeln!(s, "-A {sep} -s {}/32 -j KUBE-MARK-MASQ", pod.ip).unwrap();
            for port in &svc.ports {
                writeln!(
                    s,
                    "-A {sep} -p {} -m {} -j DNAT --to-destination {}:{}",
                    port.proto, port.proto, pod.ip, port.target_port
                )
                .unwrap();
            }
        }
        if svc.ports.iter().any(|p| p.node_port.is_some()) {
            match svc.etp {
                // Cluster: masquerade so the reply comes back through this node; any endpoint.
                Etp::Cluster => {
                    writeln!(s, "-A KUBE-EXT-{up} -m comment --comment \"masquerade traffic for default/{} external destinations\" -j KUBE-MARK-MASQ", svc.name).unwrap();
                    writeln!(s, "-A KUBE-EXT-{up} -j KUBE-SVC-{up}").unwrap();
                }
                // Local: this node's endpoints only, client IP preserved.
                Etp::Local => {
                    writeln!(s, "-A KUBE-EXT-{up} -j KUBE-SVL-{up}").unwrap();
                    let local: Vec<_> = svc
                        .endpoints
                        .iter()
                        .filter(|e| plan.pod(e).is_some_and(|p| p.node == node.name))
                        .collect();
                    if local.is_empty() {
                        writeln!(s, "-A KUBE-SVL-{up} -m comment --comment \"default/{} has no local endpoints\" -j DROP", svc.name).unwrap();
                    }
                    let n = local.len();
                    for (i, ep) in local.iter().enumerate() {
                        let sep = format!("KUBE-SEP-{up}-{}", ep.to_uppercase());
                        if n - i > 1 {
                            writeln!(
                                s,
                                "-A KUBE-SVL-{up} -m statistic --mode random --probability {:.11} -j {sep}",
                                1.0 / (n - i) as f64
                            )
                            .unwrap();
                        } else {
                            writeln!(s, "-A KUBE-SVL-{up} -j {sep}").unwrap();
                        }
                    }
                }
            }
        }
    }
    s += "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";
    s += "COMMIT\n";
    s
}

/// A pod namespace, exactly as the CNI plugin configures it.
pub fn pod(pod: &Pod) -> NsConfig {
    if pod.is_ipv6_only() {
        return super::egress_cni::pod(pod);
    }
    let mac = host_veth_mac(pod);
    let mut ip = vec![
        "link set lo up".to_string(),
        "link set eth0 mtu 9001 up".to_string(),
        format!("addr add {}/32 dev eth0", pod.ip),
        "route replace 169.254.1.1/32 dev eth0 scope link".to_string(),
        "route add default via 169.254.1.1 dev eth0".to_string(),
        format!("neigh add 169.254.1.1 dev eth0 lladdr {mac} nud permanent"),
    ];
    if let Some(v6) = pod.ipv6 {
        ip.push(format!("addr add {v6}/128 dev eth0 nodad"));
        ip.push("route add default via fe80::1 dev eth0".into());
        ip.push(format!("neigh add fe80::1 dev eth0 lladdr {mac} nud permanent"));
    }
    NsConfig { netns: pod.netns.clone(), ip, ..NsConfig::default() }
}

/// alb / db / inet: a plain host behind the VPC router.
pub fn host(h: &super::plan::Host) -> NsConfig {
    let mut ip = vec![
        "link set lo up".to_string(),
        "link set eth0 mtu 9001 up".to_string(),
        format!("addr add {}/{} dev eth0", h.ip, h.prefix_len),
        format!("route add default via {}", h.gateway),
    ];
    if let Some(v6) = h.ipv6 {
        let seg = v6.segments();
        ip.push(format!("addr add {v6}/64 dev eth0 nodad"));
        ip.push(format!("route add default via {}", super::plan::v6(seg[3], 1)));
    }
    NsConfig { netns: h.netns.clone(), ip, ..NsConfig::default() }
}

/// All namespaces' configuration in the order it must be applied (the VPC router creates the
/// ENI and host links, nodes create the pod links).
pub fn all(plan: &Plan) -> Vec<NsConfig> {
    let mut v = vec![vpc(plan)];
    v.extend(plan.nodes.iter().map(|n| node(plan, &n.name)));
    v.extend(plan.hosts.iter().map(host));
    v.extend(plan.pods.iter().map(pod));
    v
}
