//! Where and why a pod's packets died (issue: drops), on the lab.
use std::time::Duration;

use anyhow::Result;
use nix::sys::signal::Signal;
use podtrace::assemble::model::{IngressMode, Proto};
use serde_json::Value;
use tests::{FlowReport, lab, one, start_podtrace};
use xtask::{
    lab::{Lab, traffic},
    netns,
};

fn trace(lab: &Lab, pod: &str, traffic: impl FnOnce()) -> Result<(Vec<FlowReport>, Value)> {
    let pods_file = lab.pods_file();
    let running = start_podtrace(
        &lab.ns("node-a"),
        &["--pod", pod, "--pods-file", pods_file.to_str().unwrap(), "-o", "json"],
    )?;
    traffic();
    std::thread::sleep(Duration::from_millis(300));
    let out = running.signal(Signal::SIGINT)?;
    assert!(out.status.success(), "{}", out.stderr);
    Ok((out.flows(), out.summary()))
}

fn in_node(lab: &Lab, args: &[&str]) -> Result<()> {
    let mut full = vec!["netns", "exec"];
    let ns = lab.ns("node-a");
    full.push(&ns);
    full.extend(args);
    netns::run("ip", &full)
}

#[test]
fn iptables_drop_is_reported_with_reason_and_hop() -> Result<()> {
    let lab = lab("ipt", |_| {})?;
    let web2 = lab.plan.pod("web-2").unwrap().ip.to_string();
    in_node(&lab, &["iptables", "-I", "FORWARD", "-d", &web2, "-p", "tcp", "--dport", "8080", "-j", "DROP"])?;
    let to = lab.addr("web-2", 8080);
    let (flows, summary) = trace(&lab, "web-2", || {
        assert!(traffic::tcp_request(&lab.ns("alb"), to, 10).is_err(), "the DROP rule must bite");
    })?;
    let f = one(&flows, |f| f.dst == to, "to web-2");
    let drops = &f.drops;
    assert_eq!(drops.len(), 1, "{f:#?}");
    assert_eq!(drops[0].reason, "NETFILTER_DROP");
    assert_eq!(drops[0].after_hop.as_ref().unwrap().to_string(), "eth1/ingress");
    assert!(drops[0].count >= 1);
    assert!(drops[0].location.contains('+'), "symbolised: {drops:?}");
    assert!(f.no_reply);
    assert!(summary["counters"]["drops"].as_u64().unwrap() >= drops[0].count);
    Ok(())
}

#[test]
fn missing_route_is_a_routing_drop() -> Result<()> {
    let lab = lab("noroute", |_| {})?;
    // web-1 uses the primary ENI, whose route table is main: take its default route away.
    in_node(&lab, &["ip", "route", "del", "default"])?;
    let to = lab.addr("inet", 80);
    let (flows, _) = trace(&lab, "web-1", || {
        let echoed = traffic::udp_stream(&lab.ns("web-1"), to, 5, 50, false).unwrap();
        assert_eq!(echoed, 0);
    })?;
    let f = one(&flows, |f| f.dst == to && f.proto == Proto::Udp, "UDP to inet");
    let d = f.drops.first().unwrap_or_else(|| panic!("no drop: {f:#?}"));
    assert!(d.reason.contains("NOROUTES"), "{f:#?}");
    assert_eq!(d.count, 5);
    assert_eq!(
        d.after_hop.as_ref().unwrap().to_string(),
        format!("{}/ingress", lab.plan.pod("web-1").unwrap().veth)
    );
    assert!(f.eni.is_none(), "it never left the node");
    Ok(())
}

#[test]
fn vpc_source_check_drop_shows_as_reply_left_by_eth1_never_answered() -> Result<()> {
    let lab = lab("srcchk", |_| {})?;
    // Without the 0x80 connmark rules, web-2's NodePort replies follow its pref-1536 rule out
    // of eth1 with eth0's address as source: the VPC drops them.
    in_node(&lab, &["iptables", "-t", "mangle", "-F", "PREROUTING"])?;
    let (flows, _) = trace(&lab, "web-2", || {
        for _ in 0..8 {
            let _ = traffic::tcp_request(&lab.ns("alb"), lab.addr("node-a", 30080), 10);
        }
    })?;
    let hit: Vec<&FlowReport> =
        flows.iter().filter(|f| f.ingress_mode == Some(IngressMode::Nodeport)).collect();
    assert!(!hit.is_empty(), "some requests must have gone to web-2: {flows:#?}");
    for f in hit {
        assert_eq!(
            f.unanswered_after.as_ref().map(ToString::to_string).as_deref(),
            Some("eth1/egress"),
            "{f:#?}"
        );
        assert_eq!(f.reply_path.last().unwrap().ifname, "eth1");
        assert_eq!(f.path[0].ifname, "eth0", "the request came in by eth0");
    }
    let dropped: u64 = xtask::lab::src_dst_drops(&lab.plan)?
        .iter()
        .filter(|(l, _)| l == "node-a-eth1")
        .map(|(_, n)| n)
        .sum();
    assert!(dropped > 0, "the lab's VPC dropped the replies");
    Ok(())
}

#[test]
fn healthy_traffic_has_no_drop_entries() -> Result<()> {
    let lab = lab("healthy", |_| {})?;
    let to = lab.addr("db", 8080);
    let (flows, summary) = trace(&lab, "web-2", || {
        // 5000 datagrams each way: 10 000 packets through the pod's veth.
        assert_eq!(traffic::udp_stream(&lab.ns("web-2"), to, 5000, 64, true).unwrap(), 5000);
        for _ in 0..20 {
            traffic::tcp_request(&lab.ns("web-2"), to, 1000).unwrap();
        }
    })?;
    let udp = one(&flows, |f| f.proto == Proto::Udp && f.dst == to, "UDP to db");
    assert!(udp.packets >= 10_000);
    for f in &flows {
        assert!(f.drops.is_empty(), "false positive: {f:#?}");
        assert!(f.unanswered_after.is_none());
    }
    assert_eq!(summary["counters"]["drops"], 0);
    Ok(())
}
