//! `podtrace compare` on the lab: NodePort (target-type instance) against pod IP
//! (target-type ip), with Cluster and Local externalTrafficPolicy.
use std::time::Duration;

use anyhow::Result;
use nix::sys::signal::Signal;
use serde_json::Value;
use tests::{lab, start_podtrace};
use xtask::lab::{Etp, Lab, traffic};

const REQUESTS: u32 = 40;

fn compare(lab: &Lab, svg: &std::path::Path) -> Result<Value> {
    let pods = lab.pods_file();
    let running = start_podtrace(
        &lab.ns("node-a"),
        &[
            "compare",
            "-l",
            "app=web",
            "--pods-file",
            pods.to_str().unwrap(),
            "--sample-rate",
            "1",
            "-o",
            "json",
            "--svg",
            svg.to_str().unwrap(),
        ],
    )?;
    let alb = lab.ns("alb");
    traffic::client_ports(&alb, 20000, 29999)?;
    let np = traffic::tcp_load(&alb, lab.addr("node-a", 30080), REQUESTS, 4, 256)?;
    traffic::client_ports(&alb, 40000, 49999)?;
    let ip = traffic::tcp_load(&alb, lab.addr("web-2", 8080), REQUESTS, 4, 256)?;
    assert_eq!((np.failed, ip.failed), (0, 0));
    std::thread::sleep(Duration::from_millis(400));
    let out = running.signal(Signal::SIGINT)?;
    assert!(out.status.success(), "{}", out.stderr);
    let report: Value = serde_json::from_str(out.stdout.trim())?;
    Ok(report)
}

fn mode<'a>(r: &'a Value, m: &str) -> &'a Value {
    r["modes"].as_array().unwrap().iter().find(|x| x["mode"] == m).unwrap()
}

#[test]
fn nodeport_costs_hops_nat_and_crossings_direct_costs_nothing() -> Result<()> {
    let lab = lab("cmpc", |_| {})?;
    let svg = xtask::lab::state_dir(lab.prefix()).join("compare.svg");
    let r = compare(&lab, &svg)?;
    let (np, direct) = (mode(&r, "nodeport"), mode(&r, "direct"));
    assert_eq!(np["flows"], REQUESTS as u64, "{r:#}");
    assert_eq!(direct["flows"], REQUESTS as u64);
    assert!(np["hops_per_packet"].as_f64().unwrap() > direct["hops_per_packet"].as_f64().unwrap(), "{r:#}");
    assert!(np["nat_steps"].as_f64().unwrap() >= 1.0);
    assert_eq!(direct["nat_steps"].as_f64().unwrap(), 0.0);
    // Cluster: some requests bounce to node-b, and the pods never see the client IP.
    assert!(np["node_crossings"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(np["client_ip_preserved_share"].as_f64().unwrap(), 0.0);
    assert_eq!(direct["client_ip_preserved_share"].as_f64().unwrap(), 1.0);
    assert!(np["in_node_latency_us"]["samples"].as_u64().unwrap() > 0);
    assert!(direct["in_node_latency_us"]["samples"].as_u64().unwrap() > 0);

    // The chart is well-formed SVG with both series.
    let text = std::fs::read_to_string(&svg)?;
    let doc = roxmltree::Document::parse(&text)?;
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let series: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("series"))
        .filter_map(|n| n.attribute("data-mode"))
        .collect();
    assert_eq!(series, ["nodeport", "direct"]);
    for n in doc.descendants().filter(|n| n.attribute("class") == Some("series")) {
        assert!(n.attribute("d").unwrap().matches('L').count() > 5, "a real curve");
    }
    assert!(
        doc.descendants()
            .any(|n| n.attribute("class") == Some("diagram") && n.text().is_some_and(|t| t.contains("DNAT")))
    );
    Ok(())
}

#[test]
fn with_local_policy_nothing_crosses_and_the_client_ip_survives() -> Result<()> {
    let lab = lab("cmpl", |c| c.etp = Etp::Local)?;
    let svg = xtask::lab::state_dir(lab.prefix()).join("compare.svg");
    let r = compare(&lab, &svg)?;
    let np = mode(&r, "nodeport");
    assert_eq!(np["flows"], REQUESTS as u64, "{r:#}");
    assert_eq!(np["node_crossings"], 0);
    assert_eq!(np["client_ip_preserved_share"].as_f64().unwrap(), 1.0);
    assert_eq!(np["nat_steps"].as_f64().unwrap(), 1.0, "DNAT only, no MASQUERADE");
    Ok(())
}
