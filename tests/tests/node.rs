//! `podtrace node` on the lab: the inventory equals the lab's own allocation, and every health
//! check fires when the lab is broken on purpose and goes quiet when it is repaired.
use anyhow::Result;
use serde_json::Value;
use tests::{lab, run_podtrace};
use xtask::{
    lab::{EniNames, Lab},
    netns,
};

fn node_json(lab: &Lab, node: &str) -> Result<Value> {
    let pods_file = lab.pods_file();
    let out = run_podtrace(
        &lab.ns(node),
        &["node", "-o", "json", "--pods-file", pods_file.to_str().unwrap(), "--instance-type", "t3.medium"],
    )?;
    assert!(out.status.success(), "podtrace node failed: {}", out.stderr);
    Ok(serde_json::from_str(out.stdout.trim())?)
}

fn inventory_matches_allocation(names: EniNames) -> Result<()> {
    let lab = lab("inv", |c| c.eni_names = names)?;
    // What `cargo xtask lab status --json` prints.
    let status = xtask::lab::status(lab.prefix())?;
    assert!(status.up);
    for node in &status.plan.nodes {
        let got = node_json(&lab, &node.name)?;
        let enis = got["enis"].as_array().unwrap();
        assert_eq!(enis.len(), node.enis.len(), "{got:#}");
        for (want, got) in node.enis.iter().zip(enis) {
            assert_eq!(got["name"], want.name.as_str());
            assert_eq!(got["mac"], want.mac.as_str());
            assert_eq!(got["primary_ip"], want.ip.to_string());
            assert_eq!(got["subnet"], want.subnet());
            assert_eq!(got["primary"], want.device == 0);
            let table = want.table().map(|t| t.to_string()).unwrap_or_else(|| "main".into());
            assert_eq!(got["route_table"], table.as_str());
            let mut want_pods: Vec<(String, String)> = status
                .plan
                .pods_on(&node.name)
                .filter(|p| p.eni == want.name)
                .map(|p| (p.ip.to_string(), p.name.clone()))
                .collect();
            want_pods.sort();
            let got_pods: Vec<(String, String)> = got["pods"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (p["ip"].as_str().unwrap().to_string(), p["name"].as_str().unwrap_or("?").to_string())
                })
                .collect();
            assert_eq!(got_pods, want_pods, "pods on {} of {}", want.name, node.name);
            // t3.medium: 6 IPs per ENI, one is the ENI's own.
            assert_eq!(got["free_ips"], 5 - want_pods.len() as u64);
        }
        assert_eq!(got["max_pods"]["result"], 17);
        assert_eq!(got["max_pods"]["formula"], "3 × (6 − 1) + 2");
        assert_eq!(got["warnings"], Value::Array(vec![]), "a healthy lab has no warnings");
    }
    Ok(())
}

#[test]
fn inventory_matches_the_lab_allocation() -> Result<()> {
    inventory_matches_allocation(EniNames::Eth)
}

#[test]
fn inventory_matches_the_lab_allocation_with_al2023_names() -> Result<()> {
    inventory_matches_allocation(EniNames::Ens)
}

fn checks(lab: &Lab) -> Result<Vec<String>> {
    let r = node_json(lab, "node-a")?;
    Ok(r["warnings"].as_array().unwrap().iter().map(|w| w["check"].as_str().unwrap().to_string()).collect())
}

/// Runs a command (given as words) inside the namespace.
fn run_in(ns: &str, words: &[String]) -> Result<()> {
    let mut args = vec!["netns", "exec", ns];
    args.extend(words.iter().map(String::as_str));
    netns::run("ip", &args)
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// An iptables command on the AWS SNAT rules (their comment has spaces).
fn snat_rule(op: &str, chain: &str, spec: &str, target: &str) -> Vec<String> {
    let mut v = words(&format!("iptables -t nat {op} {chain} {spec}"));
    v.extend(["-m", "comment", "--comment", "AWS SNAT CHAIN", "-j", target].map(str::to_string));
    v
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// The VPC CNI's rule that sets connmark 0x80 on pods' off-VPC connections.
fn connmark_rule(op: &str) -> Vec<String> {
    let mut v = words(&format!("iptables -t nat {op} AWS-CONNMARK-CHAIN-0"));
    v.extend(["-m", "comment", "--comment", "AWS, CONNMARK"].map(str::to_string));
    v.extend(words("-j CONNMARK --set-xmark 0x80/0x80"));
    v
}

#[test]
fn each_health_check_fires_when_broken_and_clears_when_repaired() -> Result<()> {
    let lab = lab("health", |_| {})?;
    let ns = lab.ns("node-a");
    let web2 = lab.plan.pod("web-2").unwrap().ip;
    let vpc = format!("-d {}", lab.plan.vpc_cidr);
    let cases = [
        (
            "pod-route-without-to-rule",
            words(&format!("ip rule del to {web2}/32 lookup main pref 512")),
            words(&format!("ip rule add to {web2}/32 lookup main pref 512")),
        ),
        (
            "secondary-pod-without-from-rule",
            words(&format!("ip rule del from {web2}/32 lookup 2 pref 1536")),
            words(&format!("ip rule add from {web2}/32 lookup 2 pref 1536")),
        ),
        (
            "eni-table-without-default",
            words("ip route del default table 2"),
            words("ip route add default via 198.18.2.1 dev eth1 table 2"),
        ),
        (
            "fwmark-rule-missing",
            words("ip rule del fwmark 0x80/0x80 lookup main pref 1024"),
            words("ip rule add fwmark 0x80/0x80 lookup main pref 1024"),
        ),
        (
            "rp-filter-strict-on-primary",
            words("sysctl -qw net.ipv4.conf.eth0.rp_filter=1"),
            words("sysctl -qw net.ipv4.conf.eth0.rp_filter=2"),
        ),
        (
            "snat-chain-missing",
            snat_rule("-D", "POSTROUTING", "", "AWS-SNAT-CHAIN-0"),
            snat_rule("-A", "POSTROUTING", "", "AWS-SNAT-CHAIN-0"),
        ),
        (
            "snat-chain-excludes-nothing",
            snat_rule("-D", "AWS-SNAT-CHAIN-0", &vpc, "RETURN"),
            snat_rule("-I", "AWS-SNAT-CHAIN-0", &vpc, "RETURN"),
        ),
        ("connmark-rules-missing", connmark_rule("-D"), connmark_rule("-A")),
        (
            // A stale copy of kube-proxy's rules in the other iptables backend (CNI #3559).
            "rules-in-both-iptables-backends",
            sh(
                "iptables-legacy -t nat -N KUBE-SERVICES && iptables-legacy -t nat -A KUBE-SERVICES -j RETURN",
            ),
            sh("iptables-legacy -t nat -F KUBE-SERVICES && iptables-legacy -t nat -X KUBE-SERVICES"),
        ),
    ];
    assert_eq!(checks(&lab)?, Vec::<String>::new());
    for (check, break_it, repair) in cases {
        run_in(&ns, &break_it)?;
        let found = checks(&lab)?;
        assert_eq!(found, [check], "after `{}`", break_it.join(" "));
        run_in(&ns, &repair)?;
        assert_eq!(
            checks(&lab)?,
            Vec::<String>::new(),
            "{check} still reported after `{}`",
            repair.join(" ")
        );
    }
    Ok(())
}

/// A healthy node is healthy whatever backend holds its rules, and the report says which
/// backends were read.
#[test]
fn healthy_nodes_on_every_rule_backend_have_no_warnings() -> Result<()> {
    use xtask::lab::{CniConnmark, IptablesBackend, KubeProxyMode};
    let legacy = lab("hlegacy", |c| c.nat.iptables = IptablesBackend::Legacy)?;
    let nft = lab("hnft", |c| {
        c.nat.kube_proxy = KubeProxyMode::Nftables;
        c.nat.cni_connmark = CniConnmark::Nft;
    })?;
    for (lab, backend, tables) in [
        (&legacy, "iptables-legacy", vec!["ip mangle", "ip nat"]),
        (&nft, "nftables", vec!["ip aws-cni", "ip kube-proxy"]),
    ] {
        let r = node_json(lab, "node-a")?;
        assert_eq!(r["warnings"], Value::Array(vec![]), "{backend}: {r:#}");
        let read = r["rule_backends"].as_array().unwrap().iter().find(|b| b["backend"] == backend).unwrap();
        assert_eq!(read["tables"], serde_json::json!(tables), "{r:#}");
        assert!(read["rules"].as_u64().unwrap() > 0);
        assert!(read.get("error").is_none());
    }
    Ok(())
}
