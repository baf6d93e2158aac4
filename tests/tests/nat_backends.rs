//! NAT named on every rule backend a real EKS node uses (issue: NAT on every backend):
//! kube-proxy in iptables mode through iptables-nft and iptables-legacy, kube-proxy in
//! nftables mode, the VPC CNI's SNAT variants. Every name podtrace prints is checked against
//! the node's own rules as the backends' tools print them (`iptables-nft-save`,
//! `iptables-legacy-save`, `nft list ruleset`), never against podtrace's reader.
use std::net::SocketAddr;

use anyhow::{Result, bail};
use podtrace::assemble::model::{Direction, IngressMode, NatKind};
use serde_json::Value;
use tests::{FlowReport, lab, one, start_podtrace};
use xtask::lab::{CniConnmark, Etp, IptablesBackend, KubeProxyMode, Lab, LabConfig, RandomizeSnat, traffic};

/// The node's rules as the tools print them.
struct Saved {
    iptables: String,
    nft: String,
}

impl Saved {
    fn read(lab: &Lab) -> Result<Saved> {
        let ns = lab.ns("node-a");
        let run = |cmd: &[&str]| xtask::netns::output("ip", &[&["netns", "exec", &ns][..], cmd].concat());
        // Without `-t`, iptables-legacy-save lists only the tables that exist (no side effect).
        let iptables = run(&["iptables-nft-save"])? + &run(&["iptables-legacy-save"])?;
        Ok(Saved { iptables, nft: run(&["nft", "list", "ruleset"])? })
    }

    /// The iptables chain whose rule DNATs to `to` (`-A <chain> ... --to-destination <to>`).
    fn iptables_dnat_chain(&self, to: SocketAddr, proto: &str) -> Option<String> {
        self.iptables
            .lines()
            .find(|l| l.contains(&format!("--to-destination {to}")) && l.contains(&format!("-p {proto}")))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
    }

    /// The `table/chain` of the kube-proxy nft endpoint chain for `to`.
    fn nft_endpoint_chain(&self, to: SocketAddr, proto: &str) -> Option<String> {
        let suffix = format!("__{}/{} {{", to.ip(), to.port());
        self.nft
            .lines()
            .filter_map(|l| l.trim().strip_prefix("chain endpoint-"))
            .find(|c| c.ends_with(&suffix) && c.contains(&format!("/{proto}/")))
            .map(|c| format!("kube-proxy/endpoint-{}", c.trim_end_matches(" {")))
    }

    /// Whether `chain` (as podtrace names it) exists in the node's rules.
    fn has_chain(&self, chain: &str) -> bool {
        match chain.split_once('/') {
            Some((table, name)) => {
                self.nft.contains(&format!("table ip {table} {{"))
                    && self.nft.contains(&format!("chain {name} {{"))
            }
            None => self.iptables.lines().any(|l| l.starts_with(&format!(":{chain} "))),
        }
    }
}

/// Requests to node-a's NodePort until one was served by web-2 (the local endpoint).
fn nodeport_until_local(lab: &Lab) -> Result<()> {
    let to = lab.addr("node-a", 30080);
    for _ in 0..64 {
        if traffic::tcp_request(&lab.ns("alb"), to, 10)?.server == "web-2" {
            return Ok(());
        }
    }
    bail!("no NodePort request reached web-2")
}

/// Traces web-2 on node-a while the brief's NAT cases run; returns its flows and the summary.
fn trace_nat_cases(lab: &Lab) -> Result<(Vec<FlowReport>, Value)> {
    let pods = lab.pods_file();
    let running = start_podtrace(
        &lab.ns("node-a"),
        &["--pod", "web-2", "--pods-file", pods.to_str().unwrap(), "-o", "json"],
    )?;
    nodeport_until_local(lab)?;
    assert_eq!(traffic::tcp_request(&lab.ns("web-2"), lab.addr("api", 80), 10)?.server, "api-1");
    traffic::tcp_request(&lab.ns("web-2"), lab.addr("inet", 80), 10)?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = running.signal(nix::sys::signal::Signal::SIGINT)?;
    assert!(out.status.success(), "{}", out.stderr);
    Ok((out.flows(), out.summary()))
}

fn check_backend(kube_proxy: KubeProxyMode, iptables: IptablesBackend, etp: Etp) -> Result<()> {
    let lab = lab("natb", |c: &mut LabConfig| {
        c.etp = etp;
        c.nat.kube_proxy = kube_proxy;
        c.nat.iptables = iptables;
    })?;
    let (flows, summary) = trace_nat_cases(&lab)?;
    let saved = Saved::read(&lab)?;
    let web2 = lab.addr("web-2", 8080);
    let api1 = lab.addr("api-1", 8080);
    let endpoint = |to, proto| match kube_proxy {
        KubeProxyMode::Iptables => saved.iptables_dnat_chain(to, proto),
        KubeProxyMode::Nftables => saved.nft_endpoint_chain(to, proto),
    };

    // NodePort: DNATed by kube-proxy's endpoint rule of default/web.
    let np = one(&flows, |f| f.ingress_mode == Some(IngressMode::Nodeport), "via NodePort");
    let dnat = np.dnat.as_ref().unwrap_or_else(|| panic!("no DNAT: {np:#?}"));
    assert_eq!(dnat.kind, NatKind::NodeportDnat, "{np:#?}");
    assert_eq!(dnat.chain, endpoint(web2, "tcp"), "{np:#?}");
    assert_eq!(dnat.service.as_deref(), Some("default/web"));
    match etp {
        Etp::Cluster => {
            let masq = np.snat.as_ref().unwrap_or_else(|| panic!("no MASQUERADE: {np:#?}"));
            assert_eq!(masq.kind, NatKind::Masquerade);
            let want = match kube_proxy {
                KubeProxyMode::Iptables => "KUBE-POSTROUTING",
                KubeProxyMode::Nftables => "kube-proxy/masquerading",
            };
            assert_eq!(masq.chain.as_deref(), Some(want));
            assert_eq!(masq.service.as_deref(), Some("default/web"));
        }
        Etp::Local => assert!(np.snat.is_none(), "no masquerade with Local: {np:#?}"),
    }

    // ClusterIP: DNATed by the endpoint rule of the TCP port `http` of default/api.
    let svc = lab.addr("api", 80);
    let cip = one(&flows, |f| f.dst == svc, "to the api ClusterIP");
    let dnat = cip.dnat.as_ref().unwrap();
    assert_eq!((dnat.kind, dnat.to), (NatKind::ServiceDnat, api1));
    assert_eq!(dnat.chain, endpoint(api1, "tcp"), "the TCP port's rule, not the UDP one's: {cip:#?}");
    assert_eq!(dnat.service.as_deref(), Some("default/api:http"));

    // The pod's own egress SNAT, the VPC CNI's.
    let out = one(&flows, |f| f.dst == lab.addr("inet", 80), "to inet");
    let snat = out.snat.as_ref().unwrap();
    assert_eq!((snat.kind, snat.chain.as_deref()), (NatKind::PodEgressSnat, Some("AWS-SNAT-CHAIN-0")));

    // Every chain printed exists in the node's rules.
    for f in &flows {
        for nat in [&f.snat, &f.dnat].into_iter().flatten() {
            if let Some(c) = &nat.chain {
                assert!(saved.has_chain(c), "{c} is not in the node's rules");
            }
        }
    }
    // The summary says which backends were read.
    let backends: Vec<(String, Vec<String>)> = summary["rule_backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let tables =
                b["tables"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
            (b["backend"].as_str().unwrap().to_string(), tables)
        })
        .collect();
    let tables_of = |name: &str| backends.iter().find(|(b, _)| b == name).map(|(_, t)| t.clone()).unwrap();
    let iptables_backend = match iptables {
        IptablesBackend::Nft => "iptables-nft",
        IptablesBackend::Legacy => "iptables-legacy",
    };
    assert!(tables_of(iptables_backend).contains(&"ip nat".to_string()), "{summary:#}");
    assert_eq!(
        tables_of("nftables").contains(&"ip kube-proxy".to_string()),
        kube_proxy == KubeProxyMode::Nftables,
        "{summary:#}"
    );
    Ok(())
}

#[test]
fn kube_proxy_iptables_on_iptables_nft_cluster() -> Result<()> {
    check_backend(KubeProxyMode::Iptables, IptablesBackend::Nft, Etp::Cluster)
}

#[test]
fn kube_proxy_iptables_on_iptables_nft_local() -> Result<()> {
    check_backend(KubeProxyMode::Iptables, IptablesBackend::Nft, Etp::Local)
}

#[test]
fn kube_proxy_iptables_on_iptables_legacy_cluster() -> Result<()> {
    check_backend(KubeProxyMode::Iptables, IptablesBackend::Legacy, Etp::Cluster)
}

#[test]
fn kube_proxy_iptables_on_iptables_legacy_local() -> Result<()> {
    check_backend(KubeProxyMode::Iptables, IptablesBackend::Legacy, Etp::Local)
}

#[test]
fn kube_proxy_nftables_with_the_cni_on_iptables_nft_cluster() -> Result<()> {
    check_backend(KubeProxyMode::Nftables, IptablesBackend::Nft, Etp::Cluster)
}

#[test]
fn kube_proxy_nftables_with_the_cni_on_iptables_nft_local() -> Result<()> {
    check_backend(KubeProxyMode::Nftables, IptablesBackend::Nft, Etp::Local)
}

#[test]
fn kube_proxy_nftables_with_the_cni_on_iptables_legacy_cluster() -> Result<()> {
    check_backend(KubeProxyMode::Nftables, IptablesBackend::Legacy, Etp::Cluster)
}

#[test]
fn kube_proxy_nftables_with_the_cni_on_iptables_legacy_local() -> Result<()> {
    check_backend(KubeProxyMode::Nftables, IptablesBackend::Legacy, Etp::Local)
}

/// web-2 → inet on a lab with these VPC CNI SNAT options: the flow and the summary.
fn egress(cfg: impl FnOnce(&mut LabConfig)) -> Result<(FlowReport, Value)> {
    let lab = lab("snat", cfg)?;
    let pods = lab.pods_file();
    let running = start_podtrace(
        &lab.ns("node-a"),
        &["--pod", "web-2", "--pods-file", pods.to_str().unwrap(), "-o", "json"],
    )?;
    let to = lab.addr("inet", 80);
    traffic::tcp_request(&lab.ns("web-2"), to, 10)?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = running.signal(nix::sys::signal::Signal::SIGINT)?;
    assert!(out.status.success(), "{}", out.stderr);
    let flows = out.flows();
    let f = one(&flows, |f| f.dst == to && f.direction == Direction::Egress, "to inet").clone();
    Ok((f, out.summary()))
}

#[test]
fn every_snat_randomization_names_the_aws_chain() -> Result<()> {
    for (mode, flag) in [
        (RandomizeSnat::Prng, " fully-random"),
        (RandomizeSnat::Hashrandom, " random"),
        (RandomizeSnat::None, ""),
    ] {
        let (f, summary) = egress(|c| c.nat.randomize_snat = mode)?;
        let snat = f.snat.as_ref().unwrap_or_else(|| panic!("{mode:?}: no SNAT: {f:#?}"));
        assert_eq!((snat.kind, snat.chain.as_deref()), (NatKind::PodEgressSnat, Some("AWS-SNAT-CHAIN-0")));
        let rules = summary["pod_egress_snat"].as_array().unwrap();
        assert_eq!(rules.len(), 1, "{summary:#}");
        let text = rules[0].as_str().unwrap();
        assert!(text.ends_with(&format!("SNAT to 198.18.1.10{flag}")), "{mode:?}: {text}");
    }
    Ok(())
}

#[test]
fn an_excluded_cidr_leaves_by_the_pods_eni_with_its_own_ip() -> Result<()> {
    let (f, _) = egress(|c| c.nat.exclude_snat_cidrs = vec!["203.0.113.0/24".into()])?;
    assert!(f.snat.is_none(), "{f:#?}");
    assert_eq!(f.eni.as_deref(), Some("eth1"), "no connmark either: the pod's own ENI table");
    Ok(())
}

#[test]
fn external_snat_is_said_and_nothing_is_named() -> Result<()> {
    let (f, summary) = egress(|c| c.nat.external_snat = true)?;
    assert!(f.snat.is_none(), "{f:#?}");
    assert_eq!(summary["pod_egress_snat"], serde_json::json!([]));
    Ok(())
}

#[test]
fn the_cni_nft_connmark_table_keeps_internet_replies_on_eth0() -> Result<()> {
    let (f, summary) = egress(|c| c.nat.cni_connmark = CniConnmark::Nft)?;
    assert_eq!(f.eni.as_deref(), Some("eth0"), "connmark 0x80 from the aws-cni table: {f:#?}");
    let snat = f.snat.as_ref().unwrap();
    assert_eq!(snat.chain.as_deref(), Some("AWS-SNAT-CHAIN-0"));
    let nft =
        summary["rule_backends"].as_array().unwrap().iter().find(|b| b["backend"] == "nftables").unwrap();
    assert_eq!(nft["tables"], serde_json::json!(["ip aws-cni"]));
    Ok(())
}
