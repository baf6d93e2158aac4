//! `podtrace --pod NAME` on the lab: every case of the brief's "Paths" table, checked on the
//! JSON output (issue: core tracer). Each test has its own lab.
use std::time::Duration;

use anyhow::Result;
use nix::sys::signal::Signal;
use serde_json::Value;
use tests::{flows_where, hops, lab, run_podtrace, start_podtrace};
use xtask::lab::{EniNames, Etp, Lab, LabConfig, traffic};

/// Traces `pod` from `node` while `traffic` runs, stops podtrace with SIGINT, returns flows.
fn trace(lab: &Lab, node: &str, pod: &str, traffic: impl FnOnce() -> Result<()>) -> Result<Vec<Value>> {
    let pods_file = lab.pods_file();
    let running = start_podtrace(
        &lab.ns(node),
        &["--pod", pod, "--pods-file", pods_file.to_str().unwrap(), "-o", "json"],
    )?;
    traffic()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = running.signal(Signal::SIGINT)?;
    assert!(out.status.success(), "podtrace failed: {}", out.stderr);
    Ok(out.json())
}

fn one<'a>(flows: &'a [Value], pred: impl Fn(&Value) -> bool, what: &str) -> &'a Value {
    let found = flows_where(flows, pred);
    assert!(!found.is_empty(), "no flow {what} in {flows:#?}");
    found[0]
}

fn veth(lab: &Lab, pod: &str) -> String {
    lab.plan.pod(pod).unwrap().veth.clone()
}

fn ip(lab: &Lab, member: &str) -> String {
    lab.plan.ip_of(member).unwrap().to_string()
}

#[test]
fn pod_on_eth1_to_vpc_host_leaves_by_eth1_without_nat() -> Result<()> {
    let lab = lab("vpc", |_| {})?;
    let to = lab.addr("db", 8080);
    let flows =
        trace(&lab, "node-a", "web-2", || traffic::tcp_request(&lab.ns("web-2"), to, 10).map(|_| ()))?;
    let f = one(&flows, |f| f["dst"] == to.to_string(), "to db");
    assert_eq!(f["direction"], "egress");
    assert_eq!(hops(&f["path"]), [format!("{}/ingress", veth(&lab, "web-2")), "eth1/egress".into()]);
    assert_eq!(f["eni"], "eth1");
    assert_eq!(f["pod_ip_owner_eni"], "eth1");
    assert!(f["snat"].is_null() && f["dnat"].is_null());
    assert_eq!(f["path"][1]["src"].as_str().unwrap().split(':').next(), Some(ip(&lab, "web-2").as_str()));
    Ok(())
}

fn pod_to_internet_is_snated_by_eth0(cfg: impl FnOnce(&mut LabConfig), pod: &str, owner: &str) -> Result<()> {
    let lab = lab("inet", cfg)?;
    let to = lab.addr("inet", 80);
    let flows = trace(&lab, "node-a", pod, || traffic::tcp_request(&lab.ns(pod), to, 10).map(|_| ()))?;
    let f = one(&flows, |f| f["dst"] == to.to_string(), "to inet");
    let eth0 = &lab.plan.node("node-a").unwrap().enis[0];
    assert_eq!(f["eni"], eth0.name.as_str());
    assert_eq!(f["pod_ip_owner_eni"], owner);
    let snat = &f["snat"];
    assert_eq!(snat["to"].as_str().unwrap().split(':').next(), Some(eth0.ip.to_string().as_str()), "{f:#}");
    assert_eq!(snat["from"].as_str().unwrap().split(':').next(), Some(ip(&lab, pod).as_str()));
    assert_eq!(snat["kind"], "pod-egress-snat");
    assert_eq!(snat["after_hop"], format!("{}/ingress", veth(&lab, pod)));
    assert_eq!(snat["before_hop"], format!("{}/egress", eth0.name));
    assert_eq!(
        hops(&f["reply_path"]),
        [format!("{}/ingress", eth0.name), format!("{}/egress", veth(&lab, pod))]
    );
    Ok(())
}

#[test]
fn pod_on_eth1_to_internet_is_snated_and_leaves_by_eth0() -> Result<()> {
    pod_to_internet_is_snated_by_eth0(|_| {}, "web-2", "eth1")
}

#[test]
fn pod_on_eth0_to_internet_is_snated() -> Result<()> {
    pod_to_internet_is_snated_by_eth0(|_| {}, "web-1", "eth0")
}

#[test]
fn eni_names_do_not_matter_ens5_ens6() -> Result<()> {
    pod_to_internet_is_snated_by_eth0(|c| c.eni_names = EniNames::Ens, "web-2", "ens6")
}

/// Requests to node-a's NodePort until one was served by web-2 (the local endpoint).
fn nodeport_until_local(lab: &Lab) -> Result<()> {
    let to = lab.addr("node-a", 30080);
    for _ in 0..64 {
        if traffic::tcp_request(&lab.ns("alb"), to, 10)?.server == "web-2" {
            return Ok(());
        }
    }
    anyhow::bail!("no NodePort request reached web-2")
}

#[test]
fn nodeport_with_cluster_policy_is_dnated_and_masqueraded() -> Result<()> {
    let lab = lab("npc", |_| {})?;
    let flows = trace(&lab, "node-a", "web-2", || nodeport_until_local(&lab))?;
    let node_ip = ip(&lab, "node-a");
    let f = one(&flows, |f| f["direction"] == "ingress" && f["ingress_mode"] == "nodeport", "via NodePort");
    let dnat = &f["dnat"];
    assert_eq!(dnat["from"], format!("{node_ip}:30080"));
    assert_eq!(dnat["to"], format!("{}:8080", ip(&lab, "web-2")));
    assert_eq!(f["snat"]["kind"], "masquerade", "{f:#}");
    assert_eq!(f["snat"]["to"].as_str().unwrap().split(':').next(), Some(node_ip.as_str()));
    assert_eq!(f["client_ip_preserved"], false);
    assert_eq!(f["eni"], "eth0");
    assert_eq!(hops(&f["path"]), ["eth0/ingress".to_string(), format!("{}/egress", veth(&lab, "web-2"))]);
    // The 0x80 connmark sends the reply back through eth0, not the pod's own ENI.
    assert_eq!(
        hops(&f["reply_path"]),
        [format!("{}/ingress", veth(&lab, "web-2")), "eth0/egress".to_string()]
    );
    Ok(())
}

#[test]
fn nodeport_with_local_policy_keeps_the_client_ip() -> Result<()> {
    let lab = lab("npl", |c| c.etp = Etp::Local)?;
    let flows = trace(&lab, "node-a", "web-2", || nodeport_until_local(&lab))?;
    let f = one(&flows, |f| f["ingress_mode"] == "nodeport", "via NodePort");
    assert_eq!(f["dnat"]["to"], format!("{}:8080", ip(&lab, "web-2")));
    assert!(f["snat"].is_null(), "no MASQUERADE with Local: {f:#}");
    assert_eq!(f["client_ip_preserved"], true);
    assert_eq!(f["src"].as_str().unwrap().split(':').next(), Some(ip(&lab, "alb").as_str()));
    Ok(())
}

#[test]
fn alb_to_pod_ip_arrives_on_the_owning_eni_without_nat() -> Result<()> {
    let lab = lab("direct", |_| {})?;
    let to = lab.addr("web-2", 8080);
    let flows = trace(&lab, "node-a", "web-2", || traffic::tcp_request(&lab.ns("alb"), to, 10).map(|_| ()))?;
    let f = one(&flows, |f| f["direction"] == "ingress", "from alb");
    assert_eq!(f["ingress_mode"], "direct");
    assert_eq!(f["eni"], "eth1");
    assert_eq!(hops(&f["path"]), ["eth1/ingress".to_string(), format!("{}/egress", veth(&lab, "web-2"))]);
    assert_eq!(
        hops(&f["reply_path"]),
        [format!("{}/ingress", veth(&lab, "web-2")), "eth1/egress".to_string()]
    );
    assert!(f["snat"].is_null() && f["dnat"].is_null());
    assert_eq!(f["nat_steps"], 0);
    assert_eq!(f["client_ip_preserved"], true);
    Ok(())
}

#[test]
fn pod_to_cluster_ip_with_remote_endpoint_is_dnated_and_leaves_by_its_eni() -> Result<()> {
    let lab = lab("cip", |_| {})?;
    let svc = lab.addr("api", 80);
    let flows = trace(&lab, "node-a", "web-2", || {
        let r = traffic::tcp_request(&lab.ns("web-2"), svc, 10)?;
        assert_eq!(r.server, "api-1");
        Ok(())
    })?;
    let f = one(&flows, |f| f["dst"] == svc.to_string(), "to the api ClusterIP");
    assert_eq!(f["dnat"]["from"], svc.to_string());
    assert_eq!(f["dnat"]["to"], format!("{}:8080", ip(&lab, "api-1")));
    assert_eq!(f["dnat"]["kind"], "service-dnat");
    assert!(f["dnat"]["chain"].as_str().unwrap().starts_with("KUBE-SEP-"), "{f:#}");
    assert_eq!(f["eni"], "eth1");
    assert!(f["snat"].is_null());
    Ok(())
}

#[test]
fn per_hop_latency_has_samples_for_a_long_flow() -> Result<()> {
    let lab = lab("lat", |_| {})?;
    let to = lab.addr("db", 8080);
    let flows = trace(&lab, "node-a", "web-2", || {
        let echoed = traffic::udp_stream(&lab.ns("web-2"), to, 300, 100, true)?;
        assert!(echoed >= 290);
        Ok(())
    })?;
    let f = one(&flows, |f| f["proto"] == "udp" && f["dst"] == to.to_string(), "UDP to db");
    assert!(f["packets"].as_u64().unwrap() >= 500, "{f:#}");
    let lat = f["hop_latency_us"].as_array().unwrap();
    let out = lat
        .iter()
        .find(|l| l["from"] == format!("{}/ingress", veth(&lab, "web-2")) && l["to"] == "eth1/egress");
    let out = out.unwrap_or_else(|| panic!("no latency for the outbound hop: {lat:#?}"));
    assert!(out["samples"].as_u64().unwrap() > 1);
    assert!(out["p50"].as_f64().unwrap() > 0.0);
    assert!(out["p99"].as_f64().unwrap() >= out["p50"].as_f64().unwrap());
    Ok(())
}

#[test]
fn unknown_pods_and_pods_on_other_nodes_are_one_line_errors() -> Result<()> {
    let lab = lab("err", |_| {})?;
    let pods_file = lab.pods_file();
    let pf = pods_file.to_str().unwrap();
    let ns = lab.ns("node-a");
    let out = run_podtrace(&ns, &["--pod", "nope", "--pods-file", pf, "--duration", "1s"])?;
    assert!(!out.status.success());
    assert_eq!(out.stderr.trim(), "error: pod nope not found");
    let out = run_podtrace(&ns, &["--pod", "api-1", "--pods-file", pf, "--duration", "1s"])?;
    assert!(!out.status.success());
    assert_eq!(out.stderr.trim(), "error: pod default/api-1 runs on node node-b, not on this node");
    // Nothing was attached by the failed runs.
    let links = xtask::netns::output("ip", &["netns", "exec", &ns, "bpftool", "link", "show"])?;
    assert!(!links.contains("tcx"), "{links}");
    Ok(())
}

#[test]
fn ipv6_pod_to_vpc_host_shows_its_path() -> Result<()> {
    let lab = lab("v6", |c| c.ipv6 = true)?;
    let db6 = lab.plan.host("db").unwrap().ipv6.unwrap();
    let to = std::net::SocketAddr::new(db6.into(), 8080);
    let flows =
        trace(&lab, "node-a", "web-1", || traffic::tcp_request(&lab.ns("web-1"), to, 10).map(|_| ()))?;
    let f = one(&flows, |f| f["dst"] == to.to_string(), "IPv6 to db");
    assert_eq!(f["pod_ip"], lab.plan.pod("web-1").unwrap().ipv6.unwrap().to_string());
    assert_eq!(hops(&f["path"]), [format!("{}/ingress", veth(&lab, "web-1")), "eth0/egress".to_string()]);
    assert_eq!(
        hops(&f["reply_path"]),
        ["eth0/ingress".to_string(), format!("{}/egress", veth(&lab, "web-1"))]
    );
    assert_eq!(f["eni"], "eth0");
    Ok(())
}
