//! Health checks of the VPC CNI's datapath on this node, read from its routes, rules,
//! sysctls and NAT rules. Each warning says what is wrong, what it breaks and the command that
//! fixes it.
use std::net::IpAddr;

use serde::Serialize;

use super::{
    addr_math::{gateway_of, in_subnet},
    inventory::{Eni, Inventory, MAIN_TABLE, PREF_FWMARK, PREF_TO_POD},
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
pub fn health(inv: &Inventory, nat: Option<&str>) -> Vec<Warning> {
    let mut w = Vec::new();
    for (ip, veth) in inv.pod_routes() {
        let len = if ip.is_ipv4() { 32 } else { 128 };
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
    if let Some(nat) = nat {
        w.extend(snat_checks(nat, inv));
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

/// AWS-SNAT-CHAIN checks on `iptables-save -t nat` output.
fn snat_checks(nat: &str, inv: &Inventory) -> Vec<Warning> {
    let mut w = Vec::new();
    let primary_ip = inv
        .primary_eni()
        .and_then(|e| e.primary_ip())
        .map(|i| i.to_string())
        .unwrap_or_else(|| "<primary IP>".into());
    let chains: Vec<&str> = nat
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with("AWS-SNAT-CHAIN"))
        .collect();
    let jumped = nat.lines().any(|l| l.starts_with("-A POSTROUTING") && l.contains("-j AWS-SNAT-CHAIN"));
    if chains.is_empty() || !jumped {
        w.push(Warning {
            check: "snat-chain-missing",
            message: "no AWS-SNAT-CHAIN reached from POSTROUTING: pods' traffic to the internet leaves with their private IPs (no SNAT), unless AWS_VPC_K8S_CNI_EXTERNALSNAT=true is intended".into(),
            fix: format!("iptables -t nat -N AWS-SNAT-CHAIN-0; iptables -t nat -A POSTROUTING -j AWS-SNAT-CHAIN-0; iptables -t nat -A AWS-SNAT-CHAIN-0 -d <VPC CIDR> -j RETURN; iptables -t nat -A AWS-SNAT-CHAIN-0 ! -o vlan+ -m addrtype ! --dst-type LOCAL -j SNAT --to-source {primary_ip} --random-fully (or restart aws-node)"),
        });
        return w;
    }
    let excludes = nat
        .lines()
        .any(|l| l.starts_with("-A AWS-SNAT-CHAIN") && l.contains(" -d ") && l.contains("-j RETURN"));
    if !excludes {
        w.push(Warning {
            check: "snat-chain-excludes-nothing",
            message: "AWS-SNAT-CHAIN has no '-d <VPC CIDR> -j RETURN' rule: traffic between pods and VPC hosts is SNATed to the node IP too, hiding pod IPs".into(),
            fix: "iptables -t nat -I AWS-SNAT-CHAIN-0 -d <VPC CIDR> -j RETURN (or restart aws-node)".into(),
        });
    }
    w
}
