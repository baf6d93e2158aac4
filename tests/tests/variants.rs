//! Every pod an EKS node can run is traceable (issue: pod datapath variants): Security Groups
//! for Pods in strict and standard mode, the network policy agent's tc filters, prefix
//! delegation, custom networking, IPv6 pods with IPv4 egress, a non-default veth prefix. Each
//! lab variant is built as the upstream source builds it (see `xtask/src/lab/`).
use std::net::{IpAddr, SocketAddr};

use anyhow::Result;
use podtrace::assemble::model::{Direction, IngressMode, NatKind, Role};
use serde_json::Value;
use tests::{FlowReport, hops, lab, one, run_podtrace, trace_pod};
use xtask::lab::{Lab, LabConfig, Variant, traffic};

use xtask::lab::sgp::SGP_NODE_PORT;

fn with(variants: &[Variant]) -> impl FnOnce(&mut LabConfig) + '_ {
    move |c| c.variants = variants.to_vec()
}

fn veth(lab: &Lab, pod: &str) -> String {
    lab.plan.pod(pod).unwrap().veth.clone()
}

fn node_json(lab: &Lab, node: &str) -> Result<Value> {
    let pods = lab.pods_file();
    let out = run_podtrace(&lab.ns(node), &["node", "-o", "json", "--pods-file", pods.to_str().unwrap()])?;
    assert!(out.status.success(), "{}", out.stderr);
    Ok(serde_json::from_str(out.stdout.trim())?)
}

fn warnings(r: &Value) -> Vec<String> {
    r["warnings"].as_array().unwrap().iter().map(|w| w["check"].as_str().unwrap().to_string()).collect()
}

fn sh(lab: &Lab, node: &str, cmd: &str) -> Result<()> {
    xtask::netns::run("ip", &["netns", "exec", &lab.ns(node), "sh", "-c", cmd])
}

/// The branch ENI of the lab's SGP pod as the lab built it.
struct BranchPlan {
    link: String,
    trunk: String,
    eni_id: String,
    vlan: u16,
    mac: String,
    table: u32,
}

fn branch(lab: &Lab) -> BranchPlan {
    let sgp = lab.plan.sgp.as_ref().expect("an SGP lab");
    let b = &sgp.branches[0];
    BranchPlan {
        link: b.vlan_link.clone(),
        trunk: sgp.trunk.name.clone(),
        eni_id: b.eni_id.clone(),
        vlan: b.vlan_id,
        mac: b.mac.clone(),
        table: b.table,
    }
}

/// The brief's path table for `pod` on `node`: its flows to the VPC (db), the internet and the
/// api ClusterIP, and the ALB's to its IP (direct) and through `node_port` on the node's
/// primary IP (repeated until one lands on `pod`).
fn path_table(lab: &Lab, node: &str, pod: &str, node_port: u16) -> Result<Vec<FlowReport>> {
    trace_pod(lab, node, pod, &[], || {
        traffic::tcp_request(&lab.ns(pod), lab.addr("db", 8080), 10)?;
        traffic::tcp_request(&lab.ns(pod), lab.addr("inet", 80), 10)?;
        assert_eq!(traffic::tcp_request(&lab.ns(pod), lab.addr("api", 80), 10)?.server, "api-1");
        traffic::tcp_request(&lab.ns("alb"), lab.addr(pod, 8080), 10)?;
        let via = lab.addr(node, node_port);
        for _ in 0..64 {
            if traffic::tcp_request(&lab.ns("alb"), via, 10)?.server == pod {
                return Ok(());
            }
        }
        anyhow::bail!("no request through {via} reached {pod}")
    })
}

/// The NodePort flow of a path table: DNATed by kube-proxy, entered by the node's primary ENI.
fn check_nodeport(lab: &Lab, node: &str, flows: &[FlowReport]) {
    let f = one(flows, |f| f.ingress_mode == Some(IngressMode::Nodeport), "through the NodePort");
    let primary = &lab.plan.node(node).unwrap().enis[0];
    assert_eq!(f.eni.as_deref(), Some(primary.name.as_str()), "{f:#?}");
    assert_eq!(f.dnat.as_ref().unwrap().kind, NatKind::NodeportDnat, "{f:#?}");
    assert_eq!(f.dnat.as_ref().unwrap().from.ip(), IpAddr::V4(primary.ip));
}

#[test]
fn sgp_strict_pods_leave_and_arrive_by_their_branch_eni_without_snat() -> Result<()> {
    let lab = lab("sgps", with(&[Variant::SgpStrict]))?;
    let b = branch(&lab);
    let flows = path_table(&lab, "node-a", "sgp-1", SGP_NODE_PORT)?;
    check_nodeport(&lab, "node-a", &flows);
    let pod_veth = veth(&lab, "sgp-1");
    assert!(pod_veth.starts_with("vlan"), "strict mode names the veth vlan…: {pod_veth}");
    for (to, what) in [(lab.addr("db", 8080), "to db"), (lab.addr("inet", 80), "to inet")] {
        let f = one(&flows, |f| f.dst == to, what);
        assert_eq!(f.direction, Direction::Egress);
        assert_eq!(f.eni.as_deref(), Some(b.link.as_str()), "{what}: {f:#?}");
        assert_eq!(f.trunk_eni.as_deref(), Some(b.trunk.as_str()));
        assert_eq!(f.branch_eni_id.as_deref(), Some(b.eni_id.as_str()));
        assert_eq!(f.pod_ip_owner_eni.as_deref(), Some(b.link.as_str()));
        assert_eq!(
            hops(&f.path),
            [format!("{pod_veth}/ingress"), format!("{}/egress", b.link), format!("{}/egress", b.trunk)]
        );
        assert_eq!(f.path[1].role, Role::BranchEni);
        // `! -o vlan+`: the VPC CNI never SNATs what leaves by a branch ENI.
        assert!(f.snat.is_none(), "{what}: {f:#?}");
    }
    let svc = one(&flows, |f| f.dst == lab.addr("api", 80), "to the api ClusterIP");
    assert_eq!(svc.dnat.as_ref().unwrap().kind, NatKind::ServiceDnat);
    assert_eq!(svc.eni.as_deref(), Some(b.link.as_str()));
    // The path table also holds the NodePort flow (ingress too, DNATed): the ALB's direct
    // request is the ingress flow without a DNAT, whichever the report lists first.
    let inbound = one(&flows, |f| f.direction == Direction::Ingress && f.dnat.is_none(), "from the alb");
    assert_eq!(inbound.ingress_mode, Some(IngressMode::Direct));
    assert_eq!(inbound.eni.as_deref(), Some(b.link.as_str()));
    assert_eq!(hops(&inbound.path)[0], format!("{}/ingress", b.trunk));
    assert_eq!(inbound.client_ip_preserved, Some(true));
    Ok(())
}

#[test]
fn sgp_standard_pods_use_their_branch_for_the_vpc_and_are_snated_to_the_internet() -> Result<()> {
    let lab = lab("sgpd", with(&[Variant::SgpStandard]))?;
    let b = branch(&lab);
    let flows = path_table(&lab, "node-a", "sgp-1", SGP_NODE_PORT)?;
    check_nodeport(&lab, "node-a", &flows);
    assert!(veth(&lab, "sgp-1").starts_with("eni"), "standard mode keeps the eni… name");
    let db = one(&flows, |f| f.dst == lab.addr("db", 8080), "to db");
    assert_eq!((db.eni.as_deref(), db.trunk_eni.as_deref()), (Some(b.link.as_str()), Some(b.trunk.as_str())));
    assert!(db.snat.is_none());
    let inet = one(&flows, |f| f.dst == lab.addr("inet", 80), "to inet");
    let eth0 = &lab.plan.node("node-a").unwrap().enis[0];
    assert_eq!(inet.eni.as_deref(), Some(eth0.name.as_str()), "{inet:#?}");
    assert_eq!(inet.trunk_eni, None);
    let snat = inet.snat.as_ref().unwrap();
    assert_eq!((snat.kind, snat.to.ip()), (NatKind::PodEgressSnat, IpAddr::V4(eth0.ip)));
    Ok(())
}

#[test]
fn node_lists_the_trunk_and_branch_enis_and_checks_the_strict_mode_rules() -> Result<()> {
    let lab = lab("sgpn", with(&[Variant::SgpStrict]))?;
    let b = branch(&lab);
    let r = node_json(&lab, "node-a")?;
    let trunk = r["enis"].as_array().unwrap().iter().find(|e| e["name"] == b.trunk.as_str()).unwrap();
    assert_eq!(trunk["trunk"], true, "{r:#}");
    assert_eq!(trunk["pods"], serde_json::json!([]), "a trunk carries no pod IPs");
    let branches = r["branches"].as_array().unwrap();
    assert_eq!(branches.len(), 1, "{r:#}");
    let got = &branches[0];
    assert_eq!(got["name"], b.link.as_str());
    assert_eq!(got["trunk"], b.trunk.as_str());
    assert_eq!(got["vlan_id"], b.vlan);
    assert_eq!(got["mac"], b.mac.as_str());
    assert_eq!(got["route_table"], b.table);
    assert_eq!(got["eni_id"], b.eni_id.as_str());
    assert_eq!(got["pods"][0]["name"], "sgp-1");
    assert_eq!(got["pods"][0]["ip"], lab.addr("sgp-1", 0).ip().to_string());
    assert_eq!(warnings(&r), Vec::<String>::new(), "{r:#}");

    let (t, link, pod_veth) = (b.table, b.link.clone(), veth(&lab, "sgp-1"));
    let cases = [
        (
            "sgp-iif-rule-missing",
            format!("ip rule del iif {link} lookup {t} pref 10"),
            format!("ip rule add iif {link} lookup {t} pref 10"),
        ),
        (
            "sgp-iif-rule-missing",
            format!("ip rule del iif {pod_veth} lookup {t} pref 10"),
            format!("ip rule add iif {pod_veth} lookup {t} pref 10"),
        ),
        (
            "sgp-local-rule-not-moved",
            "ip rule add lookup local pref 0 && ip rule del lookup local pref 20".into(),
            "ip rule add lookup local pref 20 && ip rule del lookup local pref 0".into(),
        ),
        (
            "branch-table-without-default",
            format!("ip route del default table {t}"),
            format!(
                "ip route add default via {} dev {link} table {t}",
                lab.plan.node("node-a").unwrap().enis[0].gateway
            ),
        ),
    ];
    for (check, break_it, repair) in cases {
        sh(&lab, "node-a", &break_it)?;
        assert_eq!(warnings(&node_json(&lab, "node-a")?), [check], "after `{break_it}`");
        sh(&lab, "node-a", &repair)?;
        assert_eq!(warnings(&node_json(&lab, "node-a")?), Vec::<String>::new(), "after `{repair}`");
    }
    Ok(())
}

#[test]
fn prefix_delegation_pods_are_owned_by_the_eni_of_their_prefix() -> Result<()> {
    let lab = lab("pd", with(&[Variant::PrefixDelegation]))?;
    let web2 = lab.plan.pod("web-2").unwrap().clone();
    let flows = path_table(&lab, "node-a", "web-2", 30080)?;
    check_nodeport(&lab, "node-a", &flows);
    let direct = one(&flows, |f| f.ingress_mode == Some(IngressMode::Direct), "from the alb to the pod IP");
    assert_eq!(
        direct.eni.as_deref(),
        Some(web2.eni.as_str()),
        "the VPC routes the prefix to its ENI: {direct:#?}"
    );
    let svc = one(&flows, |f| f.dst == lab.addr("api", 80), "to the api ClusterIP");
    assert_eq!(svc.dnat.as_ref().unwrap().service.as_deref(), Some("default/api:http"));
    let db = one(&flows, |f| f.dst == lab.addr("db", 8080), "to db");
    assert_eq!(
        (db.eni.as_deref(), db.pod_ip_owner_eni.as_deref()),
        (Some(web2.eni.as_str()), Some(web2.eni.as_str()))
    );
    assert!(db.snat.is_none());
    let inet = one(&flows, |f| f.dst == lab.addr("inet", 80), "to inet");
    assert_eq!(inet.eni.as_deref(), Some("eth0"));
    assert_eq!(inet.snat.as_ref().unwrap().chain.as_deref(), Some("AWS-SNAT-CHAIN-0"));

    // `podtrace node`: the prefixes (from IMDS), their pods, and the prefix-delegation formula.
    let r = node_json(&lab, "node-a")?;
    assert_eq!(r["instance_type"], "t3.medium", "from IMDS");
    let node = lab.plan.node("node-a").unwrap();
    for (eni, got) in node.enis.iter().zip(r["enis"].as_array().unwrap()) {
        let want: Vec<String> = eni.ipv4_prefixes.iter().map(|p| p.to_string()).collect();
        let prefixes: Vec<String> = got["prefixes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["prefix"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(prefixes, want, "{r:#}");
        assert_eq!(got["interface_id"], eni.interface_id.as_str());
        for p in got["prefixes"].as_array().unwrap() {
            let pods_in: Vec<String> = lab
                .plan
                .pods_on("node-a")
                .filter(|pod| pod.eni == eni.name)
                .map(|pod| pod.ip.to_string())
                .collect();
            let got_pods: Vec<String> =
                p["pods"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
            assert_eq!(got_pods, pods_in);
            assert_eq!(p["free_ips"], 16 - pods_in.len() as u64);
        }
    }
    assert_eq!(r["max_pods"]["formula"], "min(3 × (6 − 1) × 16 + 2, 110)", "{r:#}");
    assert_eq!(r["max_pods"]["result"], 110);
    assert_eq!(warnings(&r), Vec::<String>::new(), "{r:#}");
    Ok(())
}

#[test]
fn custom_networking_pods_reach_the_vpc_by_their_eni_and_the_internet_by_the_primary() -> Result<()> {
    let lab = lab("cn", with(&[Variant::CustomNetworking]))?;
    let web3 = lab.plan.pod("web-3").unwrap().clone();
    let node_b = lab.plan.node("node-b").unwrap().clone();
    let flows = path_table(&lab, "node-b", "web-3", 30080)?;
    check_nodeport(&lab, "node-b", &flows);
    let direct = one(&flows, |f| f.ingress_mode == Some(IngressMode::Direct), "from the alb to the pod IP");
    assert_eq!(direct.eni.as_deref(), Some(web3.eni.as_str()), "{direct:#?}");
    let svc = one(&flows, |f| f.dst == lab.addr("api", 80), "to the api ClusterIP");
    assert_eq!(svc.dnat.as_ref().unwrap().kind, NatKind::ServiceDnat);
    let db = one(&flows, |f| f.dst == lab.addr("db", 8080), "to db");
    assert_eq!(db.eni.as_deref(), Some(web3.eni.as_str()), "{db:#?}");
    assert!(db.snat.is_none());
    let inet = one(&flows, |f| f.dst == lab.addr("inet", 80), "to inet");
    assert_eq!(
        inet.eni.as_deref(),
        Some(node_b.enis[0].name.as_str()),
        "off-VPC: connmark 0x80 → primary: {inet:#?}"
    );
    let snat = inet.snat.as_ref().unwrap();
    assert_eq!((snat.kind, snat.to.ip()), (NatKind::PodEgressSnat, IpAddr::V4(node_b.primary_ip())));
    // The primary ENI carries no pod and that is healthy.
    let r = node_json(&lab, "node-b")?;
    assert_eq!(r["enis"][0]["pods"], serde_json::json!([]));
    assert_eq!(warnings(&r), Vec::<String>::new(), "{r:#}");
    Ok(())
}

#[test]
fn an_ipv6_pod_is_traced_on_both_interfaces_and_its_ipv4_egress_snat_named() -> Result<()> {
    let lab = lab("v6e", with(&[Variant::Ipv6Egress]))?;
    let pod = lab.plan.pod("v6-1").unwrap().clone();
    let v6 = pod.ipv6.unwrap();
    let db6 = SocketAddr::new(lab.plan.host("db").unwrap().ipv6.unwrap().into(), 8080);
    let inet = lab.addr("inet", 80);
    let flows = trace_pod(&lab, "node-a", "v6-1", &[], || {
        traffic::tcp_request(&lab.ns("v6-1"), inet, 10)?;
        traffic::tcp_request(&lab.ns("v6-1"), db6, 10)?;
        Ok(())
    })?;
    let out4 = one(&flows, |f| f.dst == inet, "IPv4 to inet");
    let egress = pod.v4_egress.as_ref().unwrap();
    assert_eq!(
        hops(&out4.path),
        [format!("{}/ingress", egress.host_veth), "eth0/egress".to_string()],
        "{out4:#?}"
    );
    let snat = out4.snat.as_ref().unwrap();
    assert_eq!(snat.from.ip(), IpAddr::V4(egress.ip));
    assert_eq!(snat.to.ip(), IpAddr::V4(lab.plan.node("node-a").unwrap().primary_ip()));
    assert_eq!(snat.kind, NatKind::PodEgressSnat);
    assert_eq!(snat.chain.as_deref(), Some(egress.snat_chain.as_str()), "{out4:#?}");
    let out6 = one(&flows, |f| f.dst == db6, "IPv6 to db");
    assert_eq!(out6.pod_ip, IpAddr::V6(v6));
    assert_eq!(hops(&out6.path), [format!("{}/ingress", pod.veth), "eth0/egress".to_string()]);
    assert!(out6.snat.is_none());
    Ok(())
}

#[test]
fn a_non_default_veth_prefix_changes_nothing() -> Result<()> {
    let lab = lab("vpfx", |c| c.veth_prefix = "abc".into())?;
    let flows = trace_pod(&lab, "node-a", "web-2", &[], || {
        traffic::tcp_request(&lab.ns("web-2"), lab.addr("inet", 80), 10).map(|_| ())
    })?;
    let f = one(&flows, |f| f.dst == lab.addr("inet", 80), "to inet");
    assert!(f.path[0].ifname.starts_with("abc"), "{f:#?}");
    assert_eq!(f.path[0].role, Role::PodVeth);
    assert_eq!(f.snat.as_ref().unwrap().chain.as_deref(), Some("AWS-SNAT-CHAIN-0"));
    Ok(())
}

/// One filter as `(hook, prio, handle, name, prog id)`.
type FilterId = (String, u16, u32, String, Option<u32>);

/// The policy agent's filters on a veth of node-a.
fn npa_filters(lab: &Lab, pod: &str) -> Result<Vec<FilterId>> {
    let mut v: Vec<_> = xtask::lab::npa::filters(&lab.ns("node-a"), "node-a", &veth(lab, pod))?
        .into_iter()
        .filter(|f| f.name.starts_with("handle_"))
        .map(|f| (f.hook, f.prio, f.handle, f.name, f.prog_id))
        .collect();
    v.sort();
    Ok(v)
}

/// Beside the network policy agent, in tcx mode (ahead of its filters): every hop is seen, and
/// a policy deny is a drop named after the policy program.
#[test]
fn policy_agent_tcx_mode_sees_every_hop_and_names_the_program_that_denied() -> Result<()> {
    let lab = lab("npax", with(&[Variant::Npa]))?;
    let before = npa_filters(&lab, "web-2")?;
    assert_eq!(before.len(), 2, "{before:?}");
    let denied = lab.addr("db", xtask::lab::npa::DENIED_PORT);
    let flows = trace_pod(&lab, "node-a", "web-2", &["--attach-mode", "tcx"], || {
        traffic::tcp_request(&lab.ns("web-2"), lab.addr("db", 8080), 10)?;
        assert!(traffic::tcp_request(&lab.ns("web-2"), denied, 10).is_err(), "the policy denies it");
        Ok(())
    })?;
    let ok = one(&flows, |f| f.dst == lab.addr("db", 8080), "to db:8080");
    assert_eq!(hops(&ok.path), [format!("{}/ingress", veth(&lab, "web-2")), "eth1/egress".to_string()]);
    let f = one(&flows, |f| f.dst == denied, "to the denied port");
    let drop = f.drops.first().unwrap_or_else(|| panic!("no drop: {f:#?}"));
    assert_eq!(drop.reason, "TC_INGRESS", "{f:#?}");
    assert_eq!(drop.program.as_deref(), Some(xtask::lab::npa::EGRESS_PROG));
    assert_eq!(drop.after_hop.as_ref().unwrap().to_string(), format!("{}/ingress", veth(&lab, "web-2")));
    assert!(drop.count >= 1);
    assert_eq!(npa_filters(&lab, "web-2")?, before, "the agent's filters are untouched");
    Ok(())
}

/// In tc mode, behind the policy agent's direct-action filters: one warning per blind hook,
/// never handle 1, and the blindness is real (the veth hop is missing).
#[test]
fn policy_agent_tc_mode_warns_per_blind_hook_and_never_takes_handle_1() -> Result<()> {
    let lab = lab("npat", with(&[Variant::Npa]))?;
    let pods = lab.pods_file();
    let v = veth(&lab, "web-2");
    let running = tests::start_podtrace(
        &lab.ns("node-a"),
        &["--pod", "web-2", "--pods-file", pods.to_str().unwrap(), "--attach-mode", "tc", "-o", "json"],
    )?;
    // podtrace's own filters: never handle 1.
    let ours: Vec<_> = xtask::lab::npa::filters(&lab.ns("node-a"), "node-a", &v)?
        .into_iter()
        .filter(|f| !f.name.starts_with("handle_"))
        .collect();
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert!(ours.iter().all(|f| f.handle != 1), "{ours:?}");
    traffic::tcp_request(&lab.ns("web-2"), lab.addr("db", 8080), 10)?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = running.signal(nix::sys::signal::Signal::SIGINT)?;
    assert!(out.status.success(), "{}", out.stderr);
    let mut warnings: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("warning:")).collect();
    warnings.sort();
    assert_eq!(
        warnings,
        [
            format!(
                "warning: {v} egress: podtrace runs after `handle_ingress` (prio 1), which ends tc classification; this hop is not seen — use tcx (kernel ≥ 6.6)"
            ),
            format!(
                "warning: {v} ingress: podtrace runs after `handle_egress` (prio 1), which ends tc classification; this hop is not seen — use tcx (kernel ≥ 6.6)"
            ),
        ],
        "{}",
        out.stderr
    );
    let flows = out.flows();
    let f = one(&flows, |f| f.dst == lab.addr("db", 8080), "to db");
    assert!(f.path.iter().all(|h| h.ifname != v), "the warned hop is really blind: {f:#?}");
    Ok(())
}

/// Whatever ends podtrace, in either attach mode, the policy agent's filters stay as they were.
#[test]
fn policy_agent_filters_survive_every_way_podtrace_ends() -> Result<()> {
    use nix::sys::signal::Signal;
    let lab = lab("npak", with(&[Variant::Npa]))?;
    let before = npa_filters(&lab, "web-2")?;
    let pods = lab.pods_file();
    for mode in ["tcx", "tc"] {
        for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL] {
            let args = ["--pod", "web-2", "--pods-file", pods.to_str().unwrap(), "--attach-mode", mode];
            let running = tests::start_podtrace(&lab.ns("node-a"), &args)?;
            let _ = running.signal(sig)?;
            assert_eq!(npa_filters(&lab, "web-2")?, before, "{mode} {sig:?}");
        }
    }
    // The next start removes the SIGKILLed run's own tc leftovers, and only those.
    let out = run_podtrace(
        &lab.ns("node-a"),
        &[
            "--pod",
            "web-2",
            "--pods-file",
            pods.to_str().unwrap(),
            "--attach-mode",
            "tc",
            "--duration",
            "300ms",
        ],
    )?;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("removed leftover tc filter"), "{}", out.stderr);
    assert_eq!(npa_filters(&lab, "web-2")?, before);
    let left: Vec<_> = xtask::lab::npa::filters(&lab.ns("node-a"), "node-a", &veth(&lab, "web-2"))?
        .into_iter()
        .filter(|f| !f.name.starts_with("handle_"))
        .collect();
    assert_eq!(left, Vec::new(), "nothing of podtrace's left");
    Ok(())
}

/// The agent traces branch ENIs and `vlan…` veths like the rest, and counts policy denies.
#[test]
fn the_agent_follows_sgp_pods_and_counts_policy_denies() -> Result<()> {
    let lab = lab("npag", with(&[Variant::SgpStrict, Variant::Npa]))?;
    let (_agent, sock) = tests::start_agent(&lab, &[])?;
    let b = branch(&lab);
    traffic::tcp_request(&lab.ns("sgp-1"), lab.addr("db", 8080), 10)?;
    let denied = lab.addr("db", xtask::lab::npa::DENIED_PORT);
    assert!(traffic::tcp_request(&lab.ns("sgp-1"), denied, 10).is_err());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, body) = tests::agent_get(&sock, "GET", "/flows?pod=sgp-1")?;
        let flows: Vec<FlowReport> = body.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
        let (_, metrics) = tests::agent_get(&sock, "GET", "/metrics")?;
        let dropped = tests::metric(
            &metrics,
            "podtrace_dropped_packets_total",
            &[("pod", "sgp-1"), ("reason", "TC_INGRESS")],
        );
        let to_db = flows.iter().find(|f| f.dst == lab.addr("db", 8080));
        let denied_flow = flows.iter().find(|f| f.dst == denied);
        if let (Some(f), Some(d), Ok(n)) = (to_db, denied_flow, dropped)
            && n >= 1.0
        {
            assert_eq!(f.eni.as_deref(), Some(b.link.as_str()), "{f:#?}");
            assert_eq!(f.trunk_eni.as_deref(), Some(b.trunk.as_str()));
            assert_eq!(d.drops[0].program.as_deref(), Some(xtask::lab::npa::EGRESS_PROG), "{d:#?}");
            return Ok(());
        }
        assert!(std::time::Instant::now() < deadline, "flows {flows:#?}, metrics {metrics}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
