//! Renders the plan into the exact commands the VPC CNI, ipamd, kube-proxy and EC2 would
//! apply (see ../shared/brief/eks-datapath.md; each block names the rule it reproduces).
//! Kept as `ip` batch lines and iptables-restore text so that the lab can be read side by side
//! with the brief, line for line.
use std::fmt::Write as _;

use super::{
    aws_cni,
    nat_config::KubeProxyMode,
    plan::{Plan, Pod},
};

/// Everything to apply to one namespace.
#[derive(Default, Debug)]
pub struct NsConfig {
    pub netns: String,
    pub sysctls: Vec<(String, String)>,
    pub ip: Vec<String>,
    pub iptables: Option<String>,
    pub ip6tables: Option<String>,
    /// Which tool loads `iptables` (nft or legacy backend).
    pub iptables_backend: super::nat_config::IptablesBackend,
    /// Native nftables tables, as `nft -f` input.
    pub nft: Option<String>,
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
        ..NsConfig::default()
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
        iptables_backend: plan.nat.iptables,
        nft: node_nft(plan, node_name),
    }
}

/// iptables of one node: ipamd's SNAT/connmark rules (aws_cni.rs) and, in kube-proxy's
/// iptables mode, kube-proxy's nat rules (kube_proxy_iptables.rs). One text for both iptables
/// backends: only the restore tool differs.
pub fn node_iptables(plan: &Plan, node_name: &str) -> String {
    let node = plan.node(node_name).expect("node in plan");
    let kube = match plan.nat.kube_proxy {
        KubeProxyMode::Iptables => super::kube_proxy_iptables::nat(plan, node_name),
        KubeProxyMode::Nftables => Default::default(),
    };
    let mut s = String::from("*mangle\n:PREROUTING ACCEPT [0:0]\n");
    for r in aws_cni::mangle_rules(plan, node) {
        writeln!(s, "{r}").unwrap();
    }
    s += "COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n";
    let aws_chains = aws_cni::nat_chains(&plan.nat).into_iter().map(str::to_string);
    for chain in aws_chains.chain(kube.chains) {
        writeln!(s, ":{chain} - [0:0]").unwrap();
    }
    // kube-proxy prepends its jumps to the built-in chains; ipamd appends its rules.
    for r in kube.jumps.iter().chain(&aws_cni::nat_rules(plan, node)).chain(&kube.rules) {
        writeln!(s, "{r}").unwrap();
    }
    s += "COMMIT\n";
    s
}

/// Native nftables tables of one node: kube-proxy's `ip kube-proxy` (nftables mode) and the
/// VPC CNI's `ip aws-cni` (nft connmark).
pub fn node_nft(plan: &Plan, node_name: &str) -> Option<String> {
    let mut s = String::new();
    if plan.nat.kube_proxy == KubeProxyMode::Nftables {
        s += &super::kube_proxy_nft::ruleset(plan, node_name);
    }
    if let Some(t) = aws_cni::nft_table(plan) {
        s += &t;
    }
    (!s.is_empty()).then_some(s)
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
