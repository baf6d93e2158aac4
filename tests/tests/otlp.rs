//! OTLP export on the two-node lab: each node's agent sends its flows as OTLP log records to a
//! receiver built from the official OTLP protobufs (node-a over gRPC configured by the standard
//! environment variables, node-b over http/protobuf configured by flags). Checked: the
//! attributes against the traffic sent (Community ID against the spec's reference
//! implementation), nothing lost at a steady rate (records made = received + counted drops),
//! and a dead collector costs counted drops only: the agent keeps serving and resumes.
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use tests::{
    Running, agent_get, lab, metric,
    otlp_receiver::{OtlpReceiver, Received},
    reference_community_id, start_podtrace_with,
};
use xtask::lab::{Lab, state_dir, traffic};

fn start_agent(lab: &Lab, node: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<(Running, PathBuf)> {
    let sock = state_dir(lab.prefix()).join(format!("agent-{node}.sock"));
    let pods = lab.pods_file();
    let mut args = tests::agent_args(&pods, &sock);
    args.extend(["--node-name", node, "--otlp-interval", "1s"]);
    args.extend(extra);
    Ok((start_podtrace_with(&lab.ns(node), &args, env)?, sock))
}

/// The export's accounting from /metrics.
#[derive(Debug, PartialEq, Clone, Copy)]
struct Accounting {
    records: f64,
    exported: f64,
    queue_full: f64,
    failed: f64,
    pending: f64,
}

fn accounting(sock: &std::path::Path) -> Result<Accounting> {
    let (code, text) = agent_get(sock, "GET", "/metrics")?;
    assert_eq!(code, 200, "{text}");
    Ok(Accounting {
        records: metric(&text, "podtrace_export_records_total", &[])?,
        exported: metric(&text, "podtrace_export_exported_total", &[])?,
        queue_full: metric(&text, "podtrace_export_dropped_total", &[("reason", "queue_full")])?,
        failed: metric(&text, "podtrace_export_dropped_total", &[("reason", "export_failed")])?,
        pending: metric(&text, "podtrace_export_pending_records", &[])?,
    })
}

/// Waits until nothing is pending and no record was made for two rounds; checks the identity
/// records = exported + dropped.
fn settled(sock: &std::path::Path) -> Result<Accounting> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = accounting(sock)?;
    loop {
        std::thread::sleep(Duration::from_millis(2500));
        let now = accounting(sock)?;
        if now.pending == 0.0 && now == last {
            assert_eq!(now.records, now.exported + now.queue_full + now.failed, "{now:?}");
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!("export did not settle: {now:?}");
        }
        last = now;
    }
}

/// TCP requests from web-1 (node-a) to web-3 (node-b), `n` of them, 10 per second.
fn steady(lab: &Lab, n: usize) -> Result<Vec<SocketAddr>> {
    let mut locals = Vec::new();
    for _ in 0..n {
        locals.push(traffic::tcp_request(&lab.ns("web-1"), lab.addr("web-3", 8080), 64)?.local);
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(locals)
}

/// The last record of a connection from a node's receiver.
fn last_of<'a>(records: &'a [Received], pod: &str, community_id: &str) -> &'a Received {
    records
        .iter()
        .rev()
        .find(|r| r.attr("k8s.pod.name") == Some(pod) && r.attr("network.community_id") == Some(community_id))
        .unwrap_or_else(|| panic!("no record of {pod} {community_id}"))
}

#[test]
fn agents_export_flows_as_otlp_logs_lose_nothing_and_survive_a_dead_collector() -> Result<()> {
    let lab = lab("otlp", |_| {})?;
    let rx_a = OtlpReceiver::start(&lab.ns("node-a"), 0)?;
    let rx_b = OtlpReceiver::start(&lab.ns("node-b"), 0)?;
    let endpoint_a = format!("http://127.0.0.1:{}", rx_a.port);
    let (agent_a, sock_a) = start_agent(
        &lab,
        "node-a",
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint_a), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
    )?;
    let endpoint_b = format!("http://127.0.0.1:{}", rx_b.port);
    let (_agent_b, sock_b) = start_agent(
        &lab,
        "node-b",
        &["--otlp-endpoint", &endpoint_b, "--otlp-protocol", "http/protobuf"],
        &[],
    )?;

    // A steady rate: 40 connections over 4 s, every one of them on both nodes.
    let locals = steady(&lab, 40)?;
    let a = settled(&sock_a)?;
    let b = settled(&sock_b)?;
    let (got_a, got_b) = (rx_a.records(), rx_b.records());
    for (acc, got) in [(a, &got_a), (b, &got_b)] {
        assert_eq!(acc.queue_full + acc.failed, 0.0, "{acc:?}");
        assert_eq!(got.len() as f64, acc.exported, "every record made was received");
    }
    assert!(
        got_a.iter().all(|r| r.protocol == "grpc") && got_b.iter().all(|r| r.protocol == "http/protobuf")
    );
    let web3 = lab.addr("web-3", 8080);
    let veth1 = lab.plan.pod("web-1").unwrap().veth.clone();
    for local in &locals {
        let cid = reference_community_id("tcp", *local, web3)?;
        let on_a = last_of(&got_a, "web-1", &cid);
        let on_b = last_of(&got_b, "web-3", &cid);
        for (r, node) in [(on_a, "node-a"), (on_b, "node-b")] {
            assert_eq!(r.event_name, "podtrace.flow");
            assert_eq!(r.attr("k8s.namespace.name"), Some("default"));
            assert_eq!(r.attr("k8s.node.name"), Some(node));
            assert_eq!(r.resource.get("k8s.node.name").map(String::as_str), Some(node));
            assert_eq!(r.resource.get("service.name").map(String::as_str), Some("podtrace"));
            assert_eq!(r.attr("network.transport"), Some("tcp"));
            assert_eq!(r.attr("network.type"), Some("ipv4"));
            assert_eq!(r.attr("source.address"), Some(local.ip().to_string().as_str()));
            assert_eq!(r.attr("source.port"), Some(local.port().to_string().as_str()));
            assert_eq!(r.attr("destination.address"), Some(web3.ip().to_string().as_str()));
            assert_eq!(r.attr("destination.port"), Some("8080"));
            assert!(r.attr("podtrace.packets").is_some_and(|p| p.parse::<u64>().unwrap() >= 4), "{r:?}");
        }
        assert_eq!(on_a.attr("podtrace.direction"), Some("egress"));
        assert_eq!(on_a.attr("podtrace.eni"), Some("eth0"));
        assert_eq!(on_a.attr("podtrace.path"), Some(format!("{veth1}/ingress,eth0/egress").as_str()));
        assert_eq!(on_b.attr("podtrace.direction"), Some("ingress"));
        assert_eq!(on_b.attr("podtrace.eni"), Some("eth1"));
    }

    // The collector on node-a dies: the agent keeps serving, counts what it cannot deliver.
    let port_a = rx_a.port;
    let received_before = got_a.len() as f64;
    rx_a.kill();
    steady(&lab, 10)?;
    let dead = settled(&sock_a)?;
    assert!(dead.failed > 0.0, "{dead:?}");
    assert_eq!(dead.exported, received_before, "{dead:?}");
    assert_eq!(agent_get(&sock_a, "GET", "/healthz")?.0, 200);
    let (code, body) = agent_get(&sock_a, "GET", "/flows?pod=web-1")?;
    assert_eq!(code, 200);
    assert!(!body.is_empty());

    // It comes back on the same address: export resumes, the accounting still adds up.
    let rx_a2 = OtlpReceiver::start(&lab.ns("node-a"), port_a)?;
    let more = steady(&lab, 5)?;
    let back = settled(&sock_a)?;
    let got = rx_a2.records();
    assert_eq!(back.exported, received_before + got.len() as f64, "{back:?}");
    assert_eq!(back.records, back.exported + back.failed + back.queue_full);
    for local in &more {
        last_of(&got, "web-1", &reference_community_id("tcp", *local, web3)?);
    }
    let out = agent_a.signal(nix::sys::signal::Signal::SIGTERM)?;
    assert!(out.status.success(), "{}", out.stderr);
    Ok(())
}

/// A collector that accepts connections and never answers: export requests time out, the
/// queue fills, and every record is still accounted for.
#[test]
fn a_stalled_collector_fills_the_queue_and_every_record_is_counted() -> Result<()> {
    let lab = lab("otlpslow", |_| {})?;
    let stall = xtask::netns::run_in(&lab.ns("node-a"), || Ok(std::net::TcpListener::bind("127.0.0.1:0")?))?;
    let endpoint = format!("http://{}", stall.local_addr()?);
    // Hold every connection open without a byte back.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in stall.incoming().flatten() {
            held.push(c);
        }
    });
    let (_agent, sock) = start_agent(
        &lab,
        "node-a",
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "http/protobuf",
            "--otlp-timeout",
            "2s",
            "--otlp-queue-size",
            "4",
            "--otlp-batch-size",
            "2",
        ],
        &[],
    )?;
    // Distinct flows, so that each round makes many records.
    for _ in 0..20 {
        traffic::tcp_request(&lab.ns("web-1"), lab.addr("db", 8080), 10)?;
    }
    std::thread::sleep(Duration::from_secs(3));
    let mid = accounting(&sock)?;
    assert!(mid.queue_full > 0.0, "a full queue drops: {mid:?}");
    assert_eq!(agent_get(&sock, "GET", "/healthz")?.0, 200, "the poll loop does not wait for the collector");
    let done = settled(&sock)?;
    assert_eq!(done.exported, 0.0);
    assert!(done.failed > 0.0, "{done:?}");
    assert_eq!(done.records, done.queue_full + done.failed);
    Ok(())
}
