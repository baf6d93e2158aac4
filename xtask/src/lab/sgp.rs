//! Security Groups for Pods in the lab (`--variant sgp-strict` / `sgp-standard`): a trunk ENI on
//! node-a and pod `sgp-1` on a branch ENI behind it, rendered as the upstream components do:
//!
//! - EC2 / amazon-vpc-resource-controller-k8s attaches the trunk at the highest free device index
//!   (pkg/aws/ec2/instance.go GetHighestUnusedDeviceIndex) in the instance's own subnet
//!   (pkg/provider/branch/trunk/trunk.go InitTrunk), creates each branch ENI in that same subnet
//!   with a VLAN id, associates it with the trunk (CreateAndAssociateBranchENIs) and annotates the
//!   pod with `vpc.amazonaws.com/pod-eni` (pkg/provider/branch/provider.go, json.Marshal of
//!   trunk.ENIDetails).
//! - ipamd sets the trunk up like any secondary ENI but without the `from <ENI IP>` rule and never
//!   gives its IPs to pods (amazon-vpc-cni-k8s pkg/networkutils/network.go setupENINetwork with
//!   isTrunkENI, pkg/ipamd/datastore/data_store.go GetAllocatableENIs), and in strict mode moves
//!   the local rule from pref 0 to pref 20 (network.go SetupHostNetwork).
//! - The CNI plugin builds the VLAN link, table 100+VLAN, the host veth and the rules
//!   (cmd/routed-eni-cni-plugin/driver/driver.go SetupBranchENIPodNetwork).
//!
//! This kernel has no 802.1Q: `vlan.eth.<id>` is a macvlan (mode vepa) on the trunk with the
//! branch ENI's MAC. It keeps what podtrace reads from a VLAN link (name, MAC, the IFLA_LINK to
//! the trunk, tables and rules); the VPC router delivers the branch IP to that MAC on the trunk's
//! link, as EC2 delivers the branch's VLAN to the trunk.
use std::{fmt::Write as _, net::Ipv4Addr};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Value, json};

use super::{
    plan::{Eni, EniNames, Etp, LabConfig, Plan, Pod, Service, ServicePort},
    render::host_veth_mac,
    variant::{self, SgpMode},
};

/// Node that gets the trunk ENI.
pub const TRUNK_NODE: &str = "node-a";
/// ENIs an instance of the lab's node type can hold (m5.large: 3); the trunk takes the highest
/// free device index.
pub const MAX_ENIS: u8 = 3;
/// Host parts of the trunk's and the branch's IPs in the node's primary subnet.
pub const TRUNK_HOST: u8 = 30;
pub const BRANCH_HOST: u8 = 31;
/// VLAN id of sgp-1's branch ENI.
pub const VLAN_ID: u16 = 7;
pub const SGP_POD: &str = "sgp-1";
/// Service `sgp` (endpoint sgp-1): cluster IP and NodePort.
pub const SGP_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 30);
pub const SGP_NODE_PORT: u16 = 30081;
/// The resource and annotation name of branch ENIs.
pub const POD_ENI: &str = "vpc.amazonaws.com/pod-eni";

#[derive(Clone, Debug, Serialize)]
pub struct Sgp {
    pub mode: SgpMode,
    /// Node holding the trunk.
    pub node: String,
    pub trunk: Trunk,
    pub branches: Vec<Branch>,
}

/// The trunk ENI (also listed in its node's `enis`).
#[derive(Clone, Debug, Serialize)]
pub struct Trunk {
    pub eni_id: String,
    /// Interface name on the node (eth2 / ens7).
    pub name: String,
    pub device: u8,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// Route table ipamd gives it (device number + 1), holding only the gateway routes.
    pub table: u32,
    pub subnet_cidr: String,
    pub vpc_link: String,
}

/// One branch ENI and the pod it belongs to.
#[derive(Clone, Debug, Serialize)]
pub struct Branch {
    pub pod: String,
    pub namespace: String,
    pub eni_id: String,
    pub association_id: String,
    pub vlan_id: u16,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub subnet_cidr: String,
    pub gateway: Ipv4Addr,
    /// `vlan.eth.<vlan id>` on the node, whatever the ENI names are.
    pub vlan_link: String,
    /// What stands in for the VLAN link on this kernel.
    pub vlan_link_kind: String,
    /// Its parent: the trunk's interface.
    pub parent: String,
    /// 100 + VLAN id.
    pub table: u32,
    /// The pod's host-side veth (`vlan…` in strict mode, `eni…` in standard mode).
    pub veth: String,
}

/// buildVlanLinkName (driver.go): always "eth", whatever the ENIs are called.
pub fn vlan_link_name(vlan_id: u16) -> String {
    format!("vlan.eth.{vlan_id}")
}

/// The host veth of a branch-ENI pod: cni.go names it with the prefix of
/// pkg/sgpp/utils.go BuildHostVethNamePrefix ("vlan" in strict mode, the normal "eni" in
/// standard mode) + 11 hex chars of sha1("<ns>.<pod>") (pkg/networkutils/names.go).
pub fn host_veth_name(mode: SgpMode, veth_prefix: &str, namespace: &str, pod: &str) -> String {
    match mode {
        SgpMode::Strict => super::plan::host_veth_name("vlan", namespace, pod),
        SgpMode::Standard => super::plan::host_veth_name(veth_prefix, namespace, pod),
    }
}

/// Adds the trunk ENI, the branch pod and its service to a plan when an SGP variant is on.
pub fn extend(plan: &mut Plan, cfg: &LabConfig) {
    let Some(mode) = variant::sgp_mode(&cfg.variants) else {
        return;
    };
    let prefix = cfg.prefix.clone();
    let Some(node) = plan.nodes.iter_mut().find(|n| n.name == TRUNK_NODE) else {
        return;
    };
    let primary = node.primary().clone();
    // GetHighestUnusedDeviceIndex: from the end, since ipamd attaches from the beginning.
    let device = (0..MAX_ENIS).rev().find(|d| node.enis.iter().all(|e| e.device != *d)).unwrap_or(MAX_ENIS);
    let name = match cfg.eni_names {
        EniNames::Eth => format!("eth{device}"),
        EniNames::Ens => format!("ens{}", device + 5),
    };
    let o = primary.ip.octets();
    let in_subnet = |host: u8| Ipv4Addr::new(o[0], o[1], o[2], host);
    // The lab's MACs are 02:00:00:<node>:<device>:01; the node octet comes from the primary's.
    let node_octet = primary.mac.split(':').nth(3).unwrap_or("00").to_string();
    let node_id = u8::from_str_radix(&node_octet, 16).unwrap_or(0);
    let trunk_eni = Eni {
        name: name.clone(),
        device,
        ip: in_subnet(TRUNK_HOST),
        prefix_len: primary.prefix_len,
        gateway: primary.gateway,
        vpc_link: format!("{}-{name}", node.name),
        mac: format!("02:00:00:{node_octet}:{device:02x}:01"),
        interface_id: format!("eni-0{node_id:x}{:015x}", device),
        // The trunk ENI carries branch ENIs, never pod IPs or prefixes.
        ipv4_prefixes: Vec::new(),
        ipv6_prefixes: Vec::new(),
    };
    let trunk = Trunk {
        eni_id: trunk_eni.interface_id.clone(),
        name: name.clone(),
        device,
        ip: trunk_eni.ip,
        mac: trunk_eni.mac.clone(),
        table: device as u32 + 1,
        subnet_cidr: primary.subnet(),
        vpc_link: trunk_eni.vpc_link.clone(),
    };
    node.enis.push(trunk_eni);
    let branch = Branch {
        pod: SGP_POD.into(),
        namespace: "default".into(),
        eni_id: format!("eni-0{node_id:x}{:015x}", 0xb00 + VLAN_ID as u64),
        association_id: format!("trunk-assoc-0{node_id:x}{:015x}", 0xa00 + VLAN_ID as u64),
        vlan_id: VLAN_ID,
        mac: format!("02:00:00:{node_octet}:80:{VLAN_ID:02x}"),
        ip: in_subnet(BRANCH_HOST),
        subnet_cidr: primary.subnet(),
        gateway: primary.gateway,
        vlan_link: vlan_link_name(VLAN_ID),
        vlan_link_kind: "macvlan".into(),
        parent: name,
        table: 100 + VLAN_ID as u32,
        veth: host_veth_name(mode, &cfg.veth_prefix, "default", SGP_POD),
    };
    plan.pods.push(Pod {
        name: branch.pod.clone(),
        namespace: branch.namespace.clone(),
        netns: format!("{prefix}{}", branch.pod),
        node: node.name.clone(),
        ip: branch.ip,
        ipv6: None,
        // The branch ENI owns the IP; on the node it is the VLAN link.
        eni: branch.vlan_link.clone(),
        veth: branch.veth.clone(),
        labels: vec![("app".into(), "sgp".into())],
        v4_egress: None,
    });
    // A service backed by the SGP pod: ClusterIP from other pods, NodePort from the ALB.
    // externalTrafficPolicy Local is not supported for SGP pods in strict mode (the reply leaves
    // by the branch ENI, not the node that did the DNAT), so the service keeps Cluster.
    plan.services.push(Service {
        name: "sgp".into(),
        cluster_ip: SGP_CLUSTER_IP,
        ports: vec![ServicePort {
            name: String::new(),
            proto: "tcp".into(),
            port: 80,
            target_port: 8080,
            node_port: Some(SGP_NODE_PORT),
        }],
        endpoints: vec![branch.pod.clone()],
        etp: Etp::Cluster,
    });
    plan.sgp = Some(Sgp { mode, node: node.name.clone(), trunk, branches: vec![branch] });
}

impl Plan {
    /// The branch ENI of a pod, if it has one.
    pub fn branch_of(&self, pod: &str) -> Option<&Branch> {
        self.sgp.as_ref()?.branches.iter().find(|b| b.pod == pod)
    }

    /// Whether this ENI of this node is the trunk.
    pub fn is_trunk(&self, node: &str, eni: &str) -> bool {
        self.sgp.as_ref().is_some_and(|s| s.node == node && s.trunk.name == eni)
    }
}

/// The SGP part of a node: ipamd's local-rule move (strict mode, every node: ENABLE_POD_ENI is
/// a DaemonSet setting) and, for each branch pod, what the CNI plugin does.
pub fn node(plan: &Plan, node: &str) -> Vec<String> {
    let Some(sgp) = &plan.sgp else {
        return Vec::new();
    };
    let mut ip = Vec::new();
    if sgp.mode == SgpMode::Strict {
        // amazon-vpc-cni-k8s pkg/networkutils/network.go SetupHostNetwork (enablePodENI and
        // strict): add `lookup local` at localRulePriority 20, then delete the pref 0 one, so
        // the VLAN rules at pref 10 come first.
        ip.push("rule add pref 20 lookup local".into());
        ip.push("rule del pref 0 lookup local".into());
    }
    for b in &sgp.branches {
        let Some(pod) = plan.pod(&b.pod).filter(|p| p.node == node) else {
            continue;
        };
        ip.extend(branch_pod(sgp.mode, b, pod));
    }
    ip
}

/// One branch-ENI pod on its node, in the order of driver.go SetupBranchENIPodNetwork.
pub fn branch_pod(mode: SgpMode, b: &Branch, pod: &Pod) -> Vec<String> {
    let (v, l, t, gw) = (&b.veth, &b.vlan_link, b.table, b.gateway);
    let mut ip = vec![
        // driver.go setupVeth (index 0: the pod side is wired like any pod's, see render::pod)
        format!("link add {v} address {} type veth peer name eth0 netns {}", host_veth_mac(pod), pod.netns),
        format!("link set {v} mtu 9001 up"),
        // driver.go setupVlan + buildVlanLink: vlan.eth.N on the trunk (ParentIndex) with the
        // branch ENI's MAC; the MTU is inherited from the trunk. Stand-in: macvlan, see above.
        format!("link add link {} name {l} address {} type macvlan mode vepa", b.parent, b.mac),
        format!("link set {l} up"),
        // driver.go buildRoutesForVlan: table 100 + vlanID
        format!("route replace {gw} dev {l} scope link table {t}"),
        format!("route replace default via {gw} dev {l} table {t}"),
    ];
    match mode {
        // driver.go setupIIFBasedContainerRouteRules: the pod route only in the VLAN table,
        // both directions selected by input interface at VlanRulePriority 10.
        SgpMode::Strict => {
            ip.push(format!("route replace {}/32 dev {v} scope link table {t}", b.ip));
            ip.push(format!("rule add iif {l} lookup {t} pref 10"));
            ip.push(format!("rule add iif {v} lookup {t} pref 10"));
        }
        // driver.go setupIPBasedContainerRouteRules with rtTable = 100 + vlanID: pod route in
        // main, `to pod` at 512 -> main, `from pod` at 1536 -> the VLAN table.
        SgpMode::Standard => {
            ip.push(format!("route replace {}/32 dev {v} scope link", b.ip));
            ip.push(format!("rule add to {}/32 lookup main pref 512", b.ip));
            ip.push(format!("rule add from {}/32 lookup {t} pref 1536", b.ip));
        }
    }
    ip
}

/// The VLAN link's IPv6 sysctls (driver.go setupVlan step 3), as (netns, /proc/sys path, value).
/// Interface names with dots need the slash form, which the generic sysctl helper cannot take.
pub fn link_sysctls(plan: &Plan) -> Vec<(String, String, &'static str)> {
    let Some(sgp) = &plan.sgp else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for b in &sgp.branches {
        let Some(node) = plan.pod(&b.pod).and_then(|p| plan.node(&p.node)) else {
            continue;
        };
        for (k, val) in [("accept_ra", "0"), ("accept_redirects", "1"), ("forwarding", "0")] {
            v.push((node.netns.clone(), format!("/proc/sys/net/ipv6/conf/{}/{k}", b.vlan_link), val));
        }
    }
    v
}

/// Applies `link_sysctls`.
pub fn apply_link_sysctls(plan: &Plan) -> Result<()> {
    for (ns, path, val) in link_sysctls(plan) {
        crate::netns::run_in(&ns, || {
            std::fs::write(&path, val).with_context(|| format!("{path}={val} in {ns}"))
        })?;
    }
    Ok(())
}

/// The VPC router's side: EC2 knows every ENI's MAC and delivers a branch ENI's traffic to the
/// trunk tagged with its VLAN; here, to the branch MAC on the trunk's link.
pub fn vpc(plan: &Plan) -> Vec<String> {
    let Some(sgp) = &plan.sgp else {
        return Vec::new();
    };
    let l = &sgp.trunk.vpc_link;
    let mut ip =
        vec![format!("neigh replace {} lladdr {} dev {l} nud permanent", sgp.trunk.ip, sgp.trunk.mac)];
    for b in &sgp.branches {
        ip.push(format!("neigh replace {} lladdr {} dev {l} nud permanent", b.ip, b.mac));
        ip.push(format!("route add {}/32 dev {l}", b.ip));
    }
    ip
}

/// The source/destination check for branch ENIs: a branch's IP may come in on the trunk's link,
/// from the branch's MAC only. Inserted ahead of the link's DROP.
pub fn vpc_check(plan: &Plan) -> String {
    let mut s = String::new();
    if let Some(sgp) = &plan.sgp {
        for b in &sgp.branches {
            writeln!(
                s,
                "-I VPC-SRC-DST-CHECK -i {} -s {}/32 -m mac --mac-source {} -m comment --comment \"branch {} vlan {}\" -j RETURN",
                sgp.trunk.vpc_link, b.ip, b.mac, b.eni_id, b.vlan_id
            )
            .unwrap();
        }
    }
    s
}

/// The `vpc.amazonaws.com/pod-eni` annotation as the VPC resource controller writes it:
/// json.Marshal of []trunk.ENIDetails (fields in declaration order, none omitted when empty).
pub fn pod_eni_annotation(b: &Branch) -> String {
    #[derive(Serialize)]
    struct EniDetails<'a> {
        #[serde(rename = "eniId")]
        id: &'a str,
        #[serde(rename = "ifAddress")]
        mac: &'a str,
        #[serde(rename = "privateIp")]
        ipv4: String,
        #[serde(rename = "ipv6Addr")]
        ipv6: &'a str,
        #[serde(rename = "vlanId")]
        vlan_id: u16,
        #[serde(rename = "subnetCidr")]
        subnet_cidr: &'a str,
        #[serde(rename = "subnetV6Cidr")]
        subnet_v6_cidr: &'a str,
        #[serde(rename = "associationID")]
        association_id: &'a str,
    }
    let d = EniDetails {
        id: &b.eni_id,
        mac: &b.mac,
        ipv4: b.ip.to_string(),
        ipv6: "",
        vlan_id: b.vlan_id,
        subnet_cidr: &b.subnet_cidr,
        subnet_v6_cidr: "",
        association_id: &b.association_id,
    };
    serde_json::to_string(&[d]).expect("serializable")
}

/// Adds what a branch-ENI pod carries in the API to its pod object: the annotation and the
/// `vpc.amazonaws.com/pod-eni: 1` request and limit the resource controller's webhook injects
/// into the first container (webhooks/core/pod_webhook.go HandleLinuxPod).
pub fn annotate_pod(plan: &Plan, pod: &mut Value) {
    let Some(b) = pod["metadata"]["name"].as_str().and_then(|n| plan.branch_of(n)) else {
        return;
    };
    pod["metadata"]["annotations"] = json!({ POD_ENI: pod_eni_annotation(b) });
    pod["spec"]["containers"][0]["resources"] =
        json!({ "limits": { POD_ENI: "1" }, "requests": { POD_ENI: "1" } });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{render, variant::Variant};

    fn plan(v: &[Variant]) -> Plan {
        Plan::new(&LabConfig { variants: v.to_vec(), ..LabConfig::default() })
    }

    #[test]
    fn no_variant_no_trunk() {
        let p = plan(&[Variant::Npa]);
        assert!(p.sgp.is_none());
        assert!(p.pod(SGP_POD).is_none());
        assert_eq!(p.node("node-a").unwrap().enis.len(), 2);
        assert!(node(&p, "node-a").is_empty() && vpc(&p).is_empty() && vpc_check(&p).is_empty());
    }

    #[test]
    fn trunk_and_branch_follow_upstream() {
        let p = plan(&[Variant::SgpStrict]);
        let s = p.sgp.as_ref().unwrap();
        let a = p.node("node-a").unwrap();
        // Third ENI, highest free device index of a 3-ENI instance, table device + 1, primary subnet.
        let t = a.enis.iter().find(|e| e.name == "eth2").unwrap();
        assert_eq!((t.device, t.table(), t.ip), (2, Some(3), Ipv4Addr::new(198, 18, 1, 30)));
        assert_eq!((s.trunk.table, s.trunk.subnet_cidr.as_str()), (3, "198.18.1.0/24"));
        assert_eq!(p.node("node-b").unwrap().enis.len(), 2);
        let b = &s.branches[0];
        assert_eq!((b.vlan_link.as_str(), b.table, b.parent.as_str()), ("vlan.eth.7", 107, "eth2"));
        assert_eq!((b.ip, b.gateway), (Ipv4Addr::new(198, 18, 1, 31), Ipv4Addr::new(198, 18, 1, 1)));
        assert_eq!(b.eni_id.len(), "eni-".len() + 17);
        let pod = p.pod(SGP_POD).unwrap();
        assert_eq!((pod.eni.as_str(), pod.veth.as_str()), ("vlan.eth.7", b.veth.as_str()));
        assert_eq!(p.service("sgp").unwrap().endpoints, vec![SGP_POD.to_string()]);
        assert!(
            p.is_trunk("node-a", "eth2") && !p.is_trunk("node-a", "eth1") && !p.is_trunk("node-b", "eth2")
        );
        // The trunk owns no pod IPs.
        assert_eq!(p.owned_by(a, t), vec![t.ip]);
        // AL2023 names: the trunk is ens7, the VLAN link keeps "eth".
        let ens = Plan::new(&LabConfig {
            variants: vec![Variant::SgpStandard],
            eni_names: EniNames::Ens,
            ..LabConfig::default()
        });
        let b = &ens.sgp.as_ref().unwrap().branches[0];
        assert_eq!((b.parent.as_str(), b.vlan_link.as_str()), ("ens7", "vlan.eth.7"));
    }

    #[test]
    fn veth_names_per_mode() {
        let strict = host_veth_name(SgpMode::Strict, "eni", "default", "sgp-1");
        let standard = host_veth_name(SgpMode::Standard, "eni", "default", "sgp-1");
        assert!(strict.starts_with("vlan") && strict.len() == 15, "{strict}");
        assert_eq!(standard, super::super::plan::veth_name("default", "sgp-1"));
        assert_eq!(strict[4..], standard[3..]);
        // sha1("default.sgp-1"), first 11 hex chars.
        assert_eq!(standard, "eniec248c5eb6e");
    }

    #[test]
    fn strict_mode_renders_iif_rules_and_no_main_route() {
        let p = plan(&[Variant::SgpStrict]);
        let b = &p.sgp.as_ref().unwrap().branches[0];
        let lines = node(&p, "node-a");
        let v = &b.veth;
        for want in [
            "rule add pref 20 lookup local".to_string(),
            "rule del pref 0 lookup local".to_string(),
            "link add link eth2 name vlan.eth.7 address 02:00:00:0a:80:07 type macvlan mode vepa".to_string(),
            "route replace 198.18.1.1 dev vlan.eth.7 scope link table 107".to_string(),
            "route replace default via 198.18.1.1 dev vlan.eth.7 table 107".to_string(),
            format!("route replace 198.18.1.31/32 dev {v} scope link table 107"),
            "rule add iif vlan.eth.7 lookup 107 pref 10".to_string(),
            format!("rule add iif {v} lookup 107 pref 10"),
        ] {
            assert!(lines.contains(&want), "missing {want:?} in {lines:#?}");
        }
        assert!(!lines.iter().any(|l| l.contains("pref 512") || l.contains("pref 1536")));
        assert!(!lines.iter().any(|l| l.starts_with("route replace 198.18.1.31/32") && !l.contains("table")));
        // node-b: only the local rule move.
        assert_eq!(node(&p, "node-b").len(), 2);
        // The whole node: the SGP pod is not rendered as a normal pod, the trunk has no 32765 rule.
        let all = render::node(&p, "node-a").ip;
        assert!(!all.iter().any(|l| l.contains("198.18.1.30 lookup")), "{all:#?}");
        assert!(!all.iter().any(|l| l.contains("198.18.1.31/32 lookup main")));
        assert!(all.contains(&"route del 198.18.1.0/24 dev eth2 table main".to_string()));
        assert!(all.contains(&"route replace default via 198.18.1.1 dev eth2 table 3".to_string()));
    }

    #[test]
    fn standard_mode_renders_ip_rules_to_the_vlan_table() {
        let p = plan(&[Variant::SgpStandard]);
        let b = &p.sgp.as_ref().unwrap().branches[0];
        assert!(b.veth.starts_with("eni"));
        let lines = node(&p, "node-a");
        let v = &b.veth;
        for want in [
            format!("route replace 198.18.1.31/32 dev {v} scope link"),
            "rule add to 198.18.1.31/32 lookup main pref 512".to_string(),
            "rule add from 198.18.1.31/32 lookup 107 pref 1536".to_string(),
            "route replace default via 198.18.1.1 dev vlan.eth.7 table 107".to_string(),
        ] {
            assert!(lines.contains(&want), "missing {want:?} in {lines:#?}");
        }
        assert!(!lines.iter().any(|l| l.contains("pref 10") || l.contains("lookup local")));
        assert!(node(&p, "node-b").is_empty());
    }

    #[test]
    fn vpc_delivers_the_branch_to_its_mac_on_the_trunk_link() {
        let p = plan(&[Variant::SgpStrict]);
        let lines = vpc(&p);
        assert!(lines.contains(
            &"neigh replace 198.18.1.31 lladdr 02:00:00:0a:80:07 dev node-a-eth2 nud permanent".into()
        ));
        assert!(lines.contains(&"route add 198.18.1.31/32 dev node-a-eth2".into()));
        let check = vpc_check(&p);
        assert!(check.starts_with(
            "-I VPC-SRC-DST-CHECK -i node-a-eth2 -s 198.18.1.31/32 -m mac --mac-source 02:00:00:0a:80:07"
        ));
        let full = render::vpc(&p);
        let rules = full.iptables.unwrap();
        assert!(rules.contains("-A VPC-SRC-DST-CHECK -i node-a-eth2 -s 198.18.1.30/32 -j RETURN"));
        assert!(rules.find("-I VPC-SRC-DST-CHECK").unwrap() < rules.find("COMMIT").unwrap());
    }

    #[test]
    fn annotation_is_the_controllers_json() {
        let p = plan(&[Variant::SgpStrict]);
        let b = &p.sgp.as_ref().unwrap().branches[0];
        let a = pod_eni_annotation(b);
        assert_eq!(
            a,
            format!(
                r#"[{{"eniId":"{}","ifAddress":"02:00:00:0a:80:07","privateIp":"198.18.1.31","ipv6Addr":"","vlanId":7,"subnetCidr":"198.18.1.0/24","subnetV6Cidr":"","associationID":"{}"}}]"#,
                b.eni_id, b.association_id
            )
        );
        let pods = crate::lab::podlist::render(&p);
        let sgp =
            pods["items"].as_array().unwrap().iter().find(|i| i["metadata"]["name"] == SGP_POD).unwrap();
        assert_eq!(sgp["metadata"]["annotations"][POD_ENI], a);
        assert_eq!(sgp["spec"]["containers"][0]["resources"]["limits"][POD_ENI], "1");
        assert_eq!(sgp["spec"]["containers"][0]["resources"]["requests"][POD_ENI], "1");
        assert_eq!(sgp["metadata"]["labels"]["app"], "sgp");
        let web =
            pods["items"].as_array().unwrap().iter().find(|i| i["metadata"]["name"] == "web-1").unwrap();
        assert!(web["metadata"].get("annotations").is_none());
    }

    #[test]
    fn vlan_sysctls_use_slash_paths() {
        let p = plan(&[Variant::SgpStrict]);
        let s = link_sysctls(&p);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].1, "/proc/sys/net/ipv6/conf/vlan.eth.7/accept_ra");
        assert_eq!(s[0].0, "pt-node-a");
    }
}
