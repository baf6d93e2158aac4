//! `podtrace --pod NAME` on the lab: every case of the brief's "Paths" table, checked on the
//! JSON contract (issue: core tracer). Each test has its own lab.
use std::net::{IpAddr, SocketAddr};

use anyhow::Result;
use podtrace::assemble::model::{Direction, IngressMode, NatKind, Proto};
use tests::{FlowReport, hops, lab, one, run_podtrace, trace_pod};
use xtask::lab::{EniNames, Etp, Lab, LabConfig, traffic};

fn trace(lab: &Lab, node: &str, pod: &str, traffic: impl FnOnce() -> Result<()>) -> Result<Vec<FlowReport>> {
    trace_pod(lab, node, pod, &[], traffic)
}

fn veth(lab: &Lab, pod: &str) -> String {
    lab.plan.pod(pod).unwrap().veth.clone()
}

fn ip(lab: &Lab, member: &str) -> IpAddr {
    lab.plan.ip_of(member).unwrap()
}

fn at(lab: &Lab, member: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(lab, member), port)
}

#[test]
fn pod_on_eth1_to_vpc_host_leaves_by_eth1_without_nat() -> Result<()> {
    let lab = lab("vpc", |_| {})?;
    let to = lab.addr("db", 8080);
    let flows =
        trace(&lab, "node-a", "web-2", || traffic::tcp_request(&lab.ns("web-2"), to, 10).map(|_| ()))?;
    let f = one(&flows, |f| f.dst == to, "to db");
    assert_eq!(f.direction, Direction::Egress);
    assert_eq!(hops(&f.path), [format!("{}/ingress", veth(&lab, "web-2")), "eth1/egress".into()]);
    assert_eq!(f.eni.as_deref(), Some("eth1"));
    assert_eq!(f.pod_ip_owner_eni.as_deref(), Some("eth1"));
    assert!(f.snat.is_none() && f.dnat.is_none());
    assert_eq!(f.path[1].src.ip(), ip(&lab, "web-2"));
    assert_eq!(f.community_id, Some(tests::reference_community_id("tcp", f.src, f.dst)?));
    Ok(())
}

fn pod_to_internet_is_snated_by_eth0(cfg: impl FnOnce(&mut LabConfig), pod: &str, owner: &str) -> Result<()> {
    let lab = lab("inet", cfg)?;
    let to = lab.addr("inet", 80);
    let flows = trace(&lab, "node-a", pod, || traffic::tcp_request(&lab.ns(pod), to, 10).map(|_| ()))?;
    let f = one(&flows, |f| f.dst == to, "to inet");
    let eth0 = &lab.plan.node("node-a").unwrap().enis[0];
    assert_eq!(f.eni.as_deref(), Some(eth0.name.as_str()));
    assert_eq!(f.pod_ip_owner_eni.as_deref(), Some(owner));
    let snat = f.snat.as_ref().unwrap_or_else(|| panic!("no SNAT: {f:#?}"));
    assert_eq!(snat.to.ip(), IpAddr::V4(eth0.ip), "{f:#?}");
    assert_eq!(snat.from.ip(), ip(&lab, pod));
    assert_eq!(snat.kind, NatKind::PodEgressSnat);
    assert_eq!(snat.after_hop.as_ref().unwrap().to_string(), format!("{}/ingress", veth(&lab, pod)));
    assert_eq!(snat.before_hop.as_ref().unwrap().to_string(), format!("{}/egress", eth0.name));
    assert_eq!(
        hops(&f.reply_path),
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
    let f = one(
        &flows,
        |f| f.direction == Direction::Ingress && f.ingress_mode == Some(IngressMode::Nodeport),
        "via NodePort",
    );
    let dnat = f.dnat.as_ref().unwrap();
    assert_eq!(dnat.from, SocketAddr::new(node_ip, 30080));
    assert_eq!(dnat.to, at(&lab, "web-2", 8080));
    let snat = f.snat.as_ref().unwrap_or_else(|| panic!("no MASQUERADE: {f:#?}"));
    assert_eq!(snat.kind, NatKind::Masquerade, "{f:#?}");
    assert_eq!(snat.to.ip(), node_ip);
    assert_eq!(f.client_ip_preserved, Some(false));
    assert_eq!(f.eni.as_deref(), Some("eth0"));
    assert_eq!(hops(&f.path), ["eth0/ingress".to_string(), format!("{}/egress", veth(&lab, "web-2"))]);
    // Served here: its Community ID is that of the tuple the ALB sent.
    let wire = &f.path[0];
    assert_eq!(f.community_id, Some(tests::reference_community_id("tcp", wire.src, wire.dst)?));
    // The 0x80 connmark sends the reply back through eth0, not the pod's own ENI.
    assert_eq!(hops(&f.reply_path), [format!("{}/ingress", veth(&lab, "web-2")), "eth0/egress".to_string()]);
    Ok(())
}

#[test]
fn nodeport_with_local_policy_keeps_the_client_ip() -> Result<()> {
    let lab = lab("npl", |c| c.etp = Etp::Local)?;
    let flows = trace(&lab, "node-a", "web-2", || nodeport_until_local(&lab))?;
    let f = one(&flows, |f| f.ingress_mode == Some(IngressMode::Nodeport), "via NodePort");
    assert_eq!(f.dnat.as_ref().unwrap().to, at(&lab, "web-2", 8080));
    assert!(f.snat.is_none(), "no MASQUERADE with Local: {f:#?}");
    assert_eq!(f.client_ip_preserved, Some(true));
    assert_eq!(f.src.ip(), ip(&lab, "alb"));
    Ok(())
}

#[test]
fn alb_to_pod_ip_arrives_on_the_owning_eni_without_nat() -> Result<()> {
    let lab = lab("direct", |_| {})?;
    let to = lab.addr("web-2", 8080);
    let flows = trace(&lab, "node-a", "web-2", || traffic::tcp_request(&lab.ns("alb"), to, 10).map(|_| ()))?;
    let f = one(&flows, |f| f.direction == Direction::Ingress, "from alb");
    assert_eq!(f.ingress_mode, Some(IngressMode::Direct));
    assert_eq!(f.eni.as_deref(), Some("eth1"));
    assert_eq!(hops(&f.path), ["eth1/ingress".to_string(), format!("{}/egress", veth(&lab, "web-2"))]);
    assert_eq!(hops(&f.reply_path), [format!("{}/ingress", veth(&lab, "web-2")), "eth1/egress".to_string()]);
    assert!(f.snat.is_none() && f.dnat.is_none());
    assert_eq!(f.nat_steps, 0);
    assert_eq!(f.client_ip_preserved, Some(true));
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
    let f = one(&flows, |f| f.dst == svc, "to the api ClusterIP");
    let dnat = f.dnat.as_ref().unwrap();
    assert_eq!(dnat.from, svc);
    assert_eq!(dnat.to, at(&lab, "api-1", 8080));
    assert_eq!(dnat.kind, NatKind::ServiceDnat);
    assert!(dnat.chain.as_deref().unwrap().starts_with("KUBE-SEP-"), "{f:#?}");
    assert_eq!(f.eni.as_deref(), Some("eth1"));
    assert!(f.snat.is_none());
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
    let f = one(&flows, |f| f.proto == Proto::Udp && f.dst == to, "UDP to db");
    assert!(f.packets >= 500, "{f:#?}");
    let from = format!("{}/ingress", veth(&lab, "web-2"));
    let out =
        f.hop_latency_us.iter().find(|l| l.from.to_string() == from && l.to.to_string() == "eth1/egress");
    let out = out.unwrap_or_else(|| panic!("no latency for the outbound hop: {:#?}", f.hop_latency_us));
    assert!(out.samples > 1);
    assert!(out.p50 > 0.0);
    assert!(out.p99 >= out.p50);
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
    let to = SocketAddr::new(db6.into(), 8080);
    let flows =
        trace(&lab, "node-a", "web-1", || traffic::tcp_request(&lab.ns("web-1"), to, 10).map(|_| ()))?;
    let f = one(&flows, |f| f.dst == to, "IPv6 to db");
    assert_eq!(f.pod_ip, IpAddr::V6(lab.plan.pod("web-1").unwrap().ipv6.unwrap()));
    assert_eq!(hops(&f.path), [format!("{}/ingress", veth(&lab, "web-1")), "eth0/egress".to_string()]);
    assert_eq!(hops(&f.reply_path), ["eth0/ingress".to_string(), format!("{}/egress", veth(&lab, "web-1"))]);
    assert_eq!(f.eni.as_deref(), Some("eth0"));
    Ok(())
}
