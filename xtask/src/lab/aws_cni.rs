//! The VPC CNI's (ipamd's) NAT rules on one node: SNAT for traffic leaving the VPC, the
//! connection marks that send NodePort and off-VPC replies back through the primary ENI, in
//! iptables or in the native `ip aws-cni` table.
//!
//! Source: amazon-vpc-cni-k8s v1.23.1, `pkg/networkutils/network.go` (buildIptablesSNATRules,
//! updateIptablesRules, UpdateHostSNATRules, typeOfSNAT), `pkg/networkutils/iptables_connmark.go`
//! (iptablesConnmark.buildRules/applyRules) and `pkg/networkutils/nftables_connmark.go`
//! (nftConnmark.Setup, ensureBaseChainRules, ensureConnmarkChainRules).
//! Defaults as on EKS: AWS_VPC_CNI_NODE_PORT_SUPPORT=true, connmark 0x80, veth prefix `eni`.
use std::fmt::Write as _;

use super::nat_config::{CniConnmark, NatOptions, RandomizeSnat};
use super::plan::{Node, Plan};

/// AWS_VPC_K8S_CNI_CONNMARK's default.
pub const CONNMARK: &str = "0x80";
const SNAT_CHAIN: &str = "AWS-SNAT-CHAIN-0";
const CONNMARK_CHAIN: &str = "AWS-CONNMARK-CHAIN-0";
const DEFAULT_ROUTE: &str = "0.0.0.0/0";

fn iptables_connmark(o: &NatOptions) -> bool {
    !o.external_snat && o.cni_connmark == CniConnmark::Iptables
}

/// mangle PREROUTING (network.go buildIptablesSNATRules, "connmark for primary ENI",
/// "connmark restore for primary ENI", "... from vlan"). They follow node port support, not
/// external SNAT, so they stay with AWS_VPC_K8S_CNI_EXTERNALSNAT=true.
pub fn mangle_rules(plan: &Plan, node: &Node) -> Vec<String> {
    let eth0 = &node.primary().name;
    // `-i <AWS_VPC_K8S_CNI_VETHPREFIX>+` (network.go buildIptablesSNATRules).
    let veths = &plan.veth_prefix;
    vec![
        format!(
            "-A PREROUTING -m comment --comment \"AWS, primary ENI\" -i {eth0} -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-mark {CONNMARK}/{CONNMARK}"
        ),
        format!(
            "-A PREROUTING -m comment --comment \"AWS, primary ENI\" -i {veths}+ -j CONNMARK --restore-mark --mask {CONNMARK}"
        ),
        format!(
            "-A PREROUTING -m comment --comment \"AWS, primary ENI\" -i vlan+ -j CONNMARK --restore-mark --mask {CONNMARK}"
        ),
    ]
}

/// nat chains ipamd creates. AWS-SNAT-CHAIN-0 is created even with external SNAT (it stays
/// empty and unreferenced); AWS-CONNMARK-CHAIN-0 only with the iptables connmark.
pub fn nat_chains(o: &NatOptions) -> Vec<&'static str> {
    let mut v = vec![SNAT_CHAIN];
    if iptables_connmark(o) {
        v.push(CONNMARK_CHAIN);
    }
    v
}

/// nat rules, appended after kube-proxy's (which kube-proxy prepends to the built-in chains).
pub fn nat_rules(plan: &Plan, node: &Node) -> Vec<String> {
    let o = &plan.nat;
    let mut v = Vec::new();
    let veths = &plan.veth_prefix;
    // A RETURN for every VPC CIDR, secondary ones too (ipamd reads them from IMDS
    // vpc-ipv4-cidr-blocks, pkg/awsutils/imds.go GetVPCIPv4CIDRBlocks).
    let vpc = plan.vpc_cidrs();
    // iptables_connmark.go buildRules: jump (appended), CIDR RETURNs (each inserted at position
    // 1, so they end up in reverse order: the exclusions first), restore-mark (appended after
    // the jump), set-mark (appended last).
    if iptables_connmark(o) {
        v.push(format!(
            "-A PREROUTING -i {veths}+ -m comment --comment \"AWS, outbound connections\" -j {CONNMARK_CHAIN}"
        ));
        v.push(format!(
            "-A PREROUTING -m comment --comment \"AWS, CONNMARK\" -j CONNMARK --restore-mark --mask {CONNMARK}"
        ));
        for cidr in vpc.iter().chain(&o.exclude_snat_cidrs).rev() {
            let dst = if cidr == DEFAULT_ROUTE { String::new() } else { format!("-d {cidr} ") };
            v.push(format!("-A {CONNMARK_CHAIN} {dst}-m comment --comment \"AWS CONNMARK CHAIN\" -j RETURN"));
        }
        v.push(format!(
            "-A {CONNMARK_CHAIN} -m comment --comment \"AWS, CONNMARK\" -j CONNMARK --set-xmark {CONNMARK}/{CONNMARK}"
        ));
    }
    // network.go buildIptablesSNATRules + updateIptablesRules: the POSTROUTING jump
    // (appended), one RETURN per VPC CIDR then per excluded CIDR (each inserted at position 1:
    // reverse order in the chain), the SNAT rule (appended last). With external SNAT none of
    // them exists.
    if !o.external_snat {
        v.push(format!("-A POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j {SNAT_CHAIN}"));
        let cidrs = vpc.iter().map(|c| (c, false)).chain(o.exclude_snat_cidrs.iter().map(|c| (c, true)));
        let cidrs: Vec<_> = cidrs.collect();
        for (cidr, exclusion) in cidrs.into_iter().rev() {
            let comment = if exclusion { "AWS SNAT CHAIN EXCLUSION" } else { "AWS SNAT CHAIN" };
            let dst = if exclusion && cidr == DEFAULT_ROUTE { String::new() } else { format!("-d {cidr} ") };
            v.push(format!("-A {SNAT_CHAIN} {dst}-m comment --comment \"{comment}\" -j RETURN"));
        }
        let random = match o.randomize_snat {
            RandomizeSnat::Prng => " --random-fully",
            RandomizeSnat::Hashrandom => " --random",
            RandomizeSnat::None => "",
        };
        v.push(format!(
            "-A {SNAT_CHAIN} ! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source {}{random}",
            node.primary_ip()
        ));
    }
    v
}

/// The native connmark table (amazon-vpc-cni-k8s pkg/networkutils/nftables_connmark.go:
/// nftConnmark.Setup, ensureBaseChain, ensureBaseChainRules, ensureConnmarkChainRules; CNI >=
/// v1.23 on iptables-nft hosts): it
/// replaces nat PREROUTING's connmark jump and restore and AWS-CONNMARK-CHAIN-0. The SNAT
/// itself and the mangle rules stay in iptables. Written as `nft -f` input.
pub fn nft_table(plan: &Plan) -> Option<String> {
    let o = &plan.nat;
    if o.external_snat || o.cni_connmark != CniConnmark::Nft {
        return None;
    }
    let t = "ip aws-cni";
    let mut s = String::new();
    writeln!(s, "add table {t}").unwrap();
    // nftBasePriority: dstnat (-100) + 10.
    writeln!(s, "add chain {t} nat-prerouting {{ type nat hook prerouting priority -90 ; policy accept ; }}")
        .unwrap();
    writeln!(s, "add chain {t} snat-mark").unwrap();
    writeln!(s, "add rule {t} nat-prerouting fib daddr type local return").unwrap();
    writeln!(s, "add rule {t} nat-prerouting iifname \"{}*\" counter jump snat-mark", plan.veth_prefix)
        .unwrap();
    writeln!(s, "add rule {t} nat-prerouting counter meta mark set ct mark & {CONNMARK}").unwrap();
    // Setup(append(vpcCIDRs, excludeSNATCIDRs...)): each missing CIDR is inserted at the top
    // (upstream iterates a Go map, so the order varies between nodes; here: reverse order,
    // as the iptables backend ends up).
    let vpc = plan.vpc_cidrs();
    for cidr in vpc.iter().chain(&o.exclude_snat_cidrs).rev() {
        writeln!(s, "add rule {t} snat-mark counter ip daddr {cidr} return").unwrap();
    }
    writeln!(s, "add rule {t} snat-mark counter ct mark set ct mark | {CONNMARK}").unwrap();
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{LabConfig, nat_config::NatOptions};

    fn rules(nat: NatOptions) -> Vec<String> {
        let plan = Plan::new(&LabConfig { nat, ..LabConfig::default() });
        nat_rules(&plan, plan.node("node-a").unwrap())
    }

    #[test]
    fn snat_flag_follows_randomizesnat() {
        let last = |r: RandomizeSnat| {
            rules(NatOptions { randomize_snat: r, ..NatOptions::default() })
                .into_iter()
                .find(|l| l.contains("-j SNAT"))
                .unwrap()
        };
        assert!(last(RandomizeSnat::Prng).ends_with("--to-source 198.18.1.10 --random-fully"));
        assert!(last(RandomizeSnat::Hashrandom).ends_with("--to-source 198.18.1.10 --random"));
        assert!(last(RandomizeSnat::None).ends_with("--to-source 198.18.1.10"));
    }

    #[test]
    fn exclusions_come_first_in_reverse_order() {
        let r = rules(NatOptions {
            exclude_snat_cidrs: vec!["203.0.113.0/24".into(), "192.0.2.0/24".into()],
            ..NatOptions::default()
        });
        let snat: Vec<_> = r.iter().filter(|l| l.starts_with("-A AWS-SNAT-CHAIN-0")).collect();
        assert!(snat[0].contains("-d 192.0.2.0/24 -m comment --comment \"AWS SNAT CHAIN EXCLUSION\""));
        assert!(snat[1].contains("-d 203.0.113.0/24 -m comment --comment \"AWS SNAT CHAIN EXCLUSION\""));
        assert!(snat[2].contains("-d 198.18.0.0/16 -m comment --comment \"AWS SNAT CHAIN\" -j RETURN"));
        assert!(snat[3].contains("-j SNAT"));
        let cm: Vec<_> = r.iter().filter(|l| l.starts_with("-A AWS-CONNMARK-CHAIN-0")).collect();
        assert!(cm[0].contains("192.0.2.0/24") && cm[2].contains("198.18.0.0/16"));
    }

    #[test]
    fn external_snat_drops_snat_and_connmark() {
        let o = NatOptions { external_snat: true, ..NatOptions::default() };
        assert!(rules(o.clone()).is_empty());
        assert_eq!(nat_chains(&o), vec!["AWS-SNAT-CHAIN-0"]);
        let plan = Plan::new(&LabConfig {
            nat: NatOptions { cni_connmark: CniConnmark::Nft, ..o },
            ..LabConfig::default()
        });
        assert!(nft_table(&plan).is_none());
    }

    #[test]
    fn nft_connmark_moves_only_the_connmark_rules() {
        let o = NatOptions { cni_connmark: CniConnmark::Nft, ..NatOptions::default() };
        let r = rules(o.clone());
        assert!(r.iter().all(|l| !l.contains("CONNMARK")), "{r:?}");
        assert!(r.iter().any(|l| l.contains("-j SNAT")));
        assert_eq!(nat_chains(&o), vec!["AWS-SNAT-CHAIN-0"]);
        let plan = Plan::new(&LabConfig { nat: o, ..LabConfig::default() });
        let t = nft_table(&plan).unwrap();
        assert!(t.contains("priority -90"));
        assert!(t.contains("snat-mark counter ip daddr 198.18.0.0/16 return"));
    }
}
