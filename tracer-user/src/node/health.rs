//! Health checks of the VPC CNI's datapath on this node, read from its routes, rules,
//! sysctls and NAT rules. Each warning says what is wrong, what it breaks and the command that
//! fixes it.
use std::{collections::BTreeSet, net::IpAddr};

use serde::Serialize;

use super::{
    addr_math::{gateway_of, in_subnet},
    inventory::{
        Eni, Inventory, LOCAL_TABLE, MAIN_TABLE, PREF_FWMARK, PREF_IIF, PREF_LOCAL_MOVED, PREF_TO_POD,
    },
    rules::{Action, Backend, Rule, Ruleset},
};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Warning {
    /// Stable identifier of the check.
    pub check: &'static str,
    pub message: String,
    pub fix: String,
}

/// The ENI whose subnet contains `ip`, when exactly one does (AWS takes secondary IPs from the
/// ENI's own subnet; ENIs sharing a subnet make this unknowable).
fn eni_by_subnet(inv: &Inventory, ip: IpAddr) -> Option<&Eni> {
    let mut found = inv.enis.iter().filter(|e| e.addrs.iter().any(|(a, p)| in_subnet(ip, *a, *p)));
    match (found.next(), found.next()) {
        (Some(e), None) => Some(e),
        _ => None,
    }
}

/// Effective rp_filter of an interface: max(all, iface), as the kernel applies it.
fn rp_filter(ifname: &str) -> Option<u32> {
    let read = |n: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{n}/rp_filter"))
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    };
    Some(read("all").unwrap_or(0).max(read(ifname)?))
}

/// The health checks. Each warning names what is wrong, what it breaks and the command that
/// fixes it.
pub fn health(inv: &Inventory, rules: &Ruleset) -> Vec<Warning> {
    let mut w = Vec::new();
    for (ip, veth) in inv.pod_routes() {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        // Strict Security Groups for Pods routes its pods in the branch table, not main (the
        // branch checks cover them); egress-cni's link-local v4if0 addresses need no rules.
        let in_main = inv.routes.iter().any(|r| r.table == MAIN_TABLE && r.dst == Some((ip, len)));
        let link_local = matches!(ip, IpAddr::V4(v4) if v4.is_link_local());
        if !in_main || link_local {
            continue;
        }
        let has_512 = inv
            .rules
            .iter()
            .any(|r| r.priority == PREF_TO_POD && r.dst == Some((ip, len)) && r.table == MAIN_TABLE);
        if !has_512 {
            w.push(Warning {
                check: "pod-route-without-to-rule",
                message: format!("pod IP {ip} is routed to {} but has no 'to {ip} lookup main' rule (pref 512): traffic for it may be routed by an ENI table", veth.name),
                fix: format!("ip rule add to {ip}/{len} lookup main pref 512"),
            });
        }
        if let Some(owner) = eni_by_subnet(inv, ip)
            && let Some(table) = owner.table.or_else(|| eni_table_from_rules(inv, owner))
            && !owner.primary
            && inv.from_pod_rule(ip).is_none()
        {
            w.push(Warning {
                check: "secondary-pod-without-from-rule",
                message: format!("pod IP {ip} belongs to secondary ENI {} but has no 'from {ip} lookup {table}' rule (pref 1536): its traffic leaves by the primary ENI with a source the VPC drops (source/destination check)", owner.name),
                fix: format!("ip rule add from {ip}/{len} lookup {table} pref 1536"),
            });
        }
    }
    for e in inv.enis.iter().filter(|e| !e.primary) {
        let Some(table) = e.table.or_else(|| eni_table_from_rules(inv, e)) else { continue };
        let has_default = inv.routes.iter().any(|r| r.table == table && r.dst.is_none() && !r.v6);
        if !has_default {
            let gw = e
                .addrs
                .iter()
                .find(|(a, _)| a.is_ipv4())
                .map(|(a, p)| gateway_of(*a, *p).to_string())
                .unwrap_or_else(|| "<gateway>".into());
            w.push(Warning {
                check: "eni-table-without-default",
                message: format!("route table {table} of ENI {} has no default route: pods on {} cannot reach anything outside their subnet", e.name, e.name),
                fix: format!("ip route replace default via {gw} dev {} table {table}", e.name),
            });
        }
    }
    let has_fwmark = inv.rules.iter().any(|r| {
        r.priority == PREF_FWMARK
            && r.fwmark.is_some_and(|(m, k)| m & 0x80 != 0 && k & 0x80 != 0)
            && r.table == MAIN_TABLE
    });
    if !has_fwmark && inv.enis.len() > 1 {
        w.push(Warning {
            check: "fwmark-rule-missing",
            message: "no 'fwmark 0x80/0x80 lookup main' rule (pref 1024): replies of NodePort and off-VPC connections of pods on secondary ENIs leave by the wrong ENI and the VPC drops them".into(),
            fix: "ip rule add fwmark 0x80/0x80 lookup main pref 1024".into(),
        });
    }
    if let Some(primary) = inv.primary_eni()
        && rp_filter(&primary.name) == Some(1)
    {
        w.push(Warning {
            check: "rp-filter-strict-on-primary",
            message: format!("rp_filter is strict (1) on primary ENI {}: replies to pods on secondary ENIs arriving on it are dropped", primary.name),
            fix: format!("sysctl -w net.ipv4.conf.{}.rp_filter=2 (and net.ipv4.conf.all.rp_filter<=2)", primary.name),
        });
    }
    w.extend(branch_checks(inv));
    w.extend(rule_checks(rules, inv));
    w
}

/// Security Groups for Pods: each branch ENI's table and, for strict-mode pods (their /32
/// route lives in the branch table, not in main), the pref-10 `iif` rules and the local rule
/// moved to pref 20 (amazon-vpc-cni-k8s driver.go, setupIIFBasedContainerRouteRules).
fn branch_checks(inv: &Inventory) -> Vec<Warning> {
    let mut w = Vec::new();
    for b in &inv.branches {
        let Some(table) = b.table else {
            w.push(Warning {
                check: "branch-table-without-default",
                message: format!("branch ENI {} (on trunk {}) has no route table with a default route: its pods cannot reach anything outside their subnet", b.name, b.trunk),
                fix: format!("ip route replace default via <subnet gateway> dev {} table <100 + VLAN id>", b.name),
            });
            continue;
        };
        let strict: Vec<(IpAddr, &str)> = inv
            .routes
            .iter()
            .filter(|r| r.table == table)
            .filter_map(|r| {
                let (ip, len) = r.dst?;
                let veth = inv.pod_veth(ip)?;
                (len == if ip.is_ipv4() { 32 } else { 128 } && r.oif == Some(veth.index))
                    .then_some((ip, veth.name.as_str()))
            })
            .collect();
        for name in std::iter::once(b.name.as_str()).chain(strict.iter().map(|(_, v)| *v)) {
            if !strict.is_empty() && inv.iif_rule(name).is_none_or(|r| r.table != table) {
                w.push(Warning {
                    check: "sgp-iif-rule-missing",
                    message: format!("no 'iif {name} lookup {table}' rule (pref {PREF_IIF}): strict-mode pods of branch ENI {} lose their way in or out", b.name),
                    fix: format!("ip rule add iif {name} lookup {table} pref {PREF_IIF}"),
                });
            }
        }
        if !strict.is_empty()
            && !inv
                .rules
                .iter()
                .any(|r| r.priority == PREF_LOCAL_MOVED && r.table == LOCAL_TABLE && r.src.is_none())
        {
            w.push(Warning {
                check: "sgp-local-rule-not-moved",
                message: format!("strict-mode pods on branch ENI {} but the local table's rule is not at pref {PREF_LOCAL_MOVED} (the VPC CNI moves it there, behind the pref-{PREF_IIF} iif rules)", b.name),
                fix: format!("ip rule add from all lookup local pref {PREF_LOCAL_MOVED}; ip rule del from all lookup local pref 0"),
            });
        }
    }
    w
}

fn eni_table_from_rules(inv: &Inventory, e: &Eni) -> Option<u32> {
    // ipamd: `ip rule add from <ENI IP> lookup <table> pref 32765`.
    inv.rules
        .iter()
        .find(|r| r.src.is_some_and(|(ip, _)| e.addrs.iter().any(|(a, _)| *a == ip)))
        .map(|r| r.table)
}

/// The iptables backends (the VPC CNI writes its SNAT and connmark rules with iptables).
fn iptables(r: &Rule) -> bool {
    r.backend != Backend::Nftables
}

/// The SNAT, connmark and backend checks, on the rules of every backend.
fn rule_checks(rules: &Ruleset, inv: &Inventory) -> Vec<Warning> {
    let mut w = Vec::new();
    let primary_ip = inv
        .primary_eni()
        .and_then(|e| e.primary_ip())
        .map(|i| i.to_string())
        .unwrap_or_else(|| "<primary IP>".into());
    let aws_snat = |c: &str| c.starts_with("AWS-SNAT-CHAIN");
    let snat = rules
        .rules
        .iter()
        .filter(|r| iptables(r) && aws_snat(&r.chain) && matches!(r.action, Action::Snat(_)));
    let reached = |b: Backend| {
        rules.rules.iter().any(|r| {
            r.backend == b
                && r.table == "nat"
                && r.chain == "POSTROUTING"
                && matches!(&r.action, Action::Jump(c) if aws_snat(c))
        })
    };
    let snat_backends: BTreeSet<Backend> = snat.filter(|r| reached(r.backend)).map(|r| r.backend).collect();
    let read: Vec<&str> = rules
        .backends
        .iter()
        .filter(|b| b.error.is_none() && b.backend != Backend::Nftables)
        .map(|b| b.backend.as_str())
        .collect();
    if snat_backends.is_empty() {
        w.push(Warning {
            check: "snat-chain-missing",
            message: format!("no SNAT rule in an AWS-SNAT-CHAIN reached from POSTROUTING (read: {}): pods' traffic to the internet leaves with their private IPs (no SNAT), unless AWS_VPC_K8S_CNI_EXTERNALSNAT=true is intended", read.join(", ")),
            fix: format!("iptables -t nat -N AWS-SNAT-CHAIN-0; iptables -t nat -A POSTROUTING -j AWS-SNAT-CHAIN-0; iptables -t nat -A AWS-SNAT-CHAIN-0 -d <VPC CIDR> -j RETURN; iptables -t nat -A AWS-SNAT-CHAIN-0 ! -o vlan+ -m addrtype ! --dst-type LOCAL -j SNAT --to-source {primary_ip} --random-fully (or restart aws-node)"),
        });
    } else {
        let excludes = rules.rules.iter().any(|r| {
            snat_backends.contains(&r.backend)
                && aws_snat(&r.chain)
                && r.action == Action::Return
                && r.dst.is_some()
        });
        if !excludes {
            w.push(Warning {
                check: "snat-chain-excludes-nothing",
                message: "AWS-SNAT-CHAIN has no '-d <VPC CIDR> -j RETURN' rule: traffic between pods and VPC hosts is SNATed to the node IP too, hiding pod IPs".into(),
                fix: "iptables -t nat -I AWS-SNAT-CHAIN-0 -d <VPC CIDR> -j RETURN (or restart aws-node)".into(),
            });
        }
        // The 0x80 connmark sends replies of pods' off-VPC connections back by the main
        // table: AWS-CONNMARK-CHAIN in iptables, or the `aws-cni` nft table (CNI >= 1.23).
        let connmark = rules.rules.iter().any(|r| {
            r.action == Action::SetConnmark
                && ((iptables(r) && r.chain.starts_with("AWS-CONNMARK-CHAIN"))
                    || (r.backend == Backend::Nftables && r.table == "aws-cni"))
        });
        if !connmark && inv.enis.len() > 1 {
            w.push(Warning {
                check: "connmark-rules-missing",
                message: "no rule sets connmark 0x80 on pods' off-VPC connections (neither AWS-CONNMARK-CHAIN in iptables nor the aws-cni nft table): traffic of pods on secondary ENIs to the internet leaves by their own ENI with the primary ENI's address, and the VPC drops it".into(),
                fix: "restart aws-node (ipamd rewrites its connmark rules)".into(),
            });
        }
    }
    // The same rules written through both iptables backends (amazon-vpc-cni-k8s #3559): the
    // kernel runs both, so the stale copy keeps acting.
    let owned = |c: &str| c.starts_with("AWS-") || c.starts_with("KUBE-");
    let chains_of = |b: Backend| -> BTreeSet<&str> {
        rules.rules.iter().filter(|r| r.backend == b && owned(&r.chain)).map(|r| r.chain.as_str()).collect()
    };
    let (nft, legacy) = (chains_of(Backend::IptablesNft), chains_of(Backend::IptablesLegacy));
    if !nft.is_empty() && !legacy.is_empty() {
        let list = |s: &BTreeSet<&str>| s.iter().copied().collect::<Vec<_>>().join(", ");
        w.push(Warning {
            check: "rules-in-both-iptables-backends",
            message: format!("AWS and kube-proxy rules sit in both iptables backends (iptables-nft: {}; iptables-legacy: {}): the kernel runs both, so a stale copy keeps rewriting and dropping traffic", list(&nft), list(&legacy)),
            fix: "compare iptables-nft-save with iptables-legacy-save, flush the tables of the backend aws-node and kube-proxy no longer use (iptables-legacy -t nat -F; -X), then restart aws-node and kube-proxy".into(),
        });
    }
    w
}
