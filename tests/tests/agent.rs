//! `podtrace agent` on the lab: pod churn, the API, metrics and clean shutdown.
use std::{
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use nix::sys::signal::Signal;
use tests::{FlowReport, agent_get, lab, metric, start_agent, start_podtrace};
use xtask::{lab::traffic, netns};

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// BPF links held by a process (their fds' fdinfo names a link type).
fn links_of(pid: u32) -> Result<usize> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return Ok(0) };
    Ok(dir
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|s| s.contains("link_type:")))
        .count())
}

fn wait_for<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<(T, Duration)> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok((v, start.elapsed()));
        }
        if start.elapsed() > within {
            bail!("{what} did not happen within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn agent_follows_pod_churn_serves_flows_and_metrics_and_leaks_nothing() -> Result<()> {
    let lab = lab("agent", |_| {})?;
    let (agent, sock) = start_agent(&lab, &[])?;
    let pid = agent.pid();
    // Settle: every existing interface is attached.
    let (before_links, _) = wait_for("initial attach", Duration::from_secs(5), || {
        let n = links_of(pid)?;
        Ok((n >= 8).then_some(n))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let fds_before = fd_count(pid);

    // A new pod appears (CNI ADD): the agent attaches to its veth on the link event.
    let pod = lab.add_pod("churn-1", "node-a", 0, 50)?;
    let (_, attach_time) = wait_for("attach to the new veth", Duration::from_secs(2), || {
        Ok((links_of(pid)? == before_links + 2).then_some(()))
    })?;
    assert!(attach_time < Duration::from_millis(500), "attached after {attach_time:?}");

    let ip = pod.pod.ip.to_string();
    let echoed = traffic::udp_stream(&pod.pod.netns, lab.addr("db", 8080), 20, 100, true)?;
    assert_eq!(echoed, 20);
    let query = format!("/flows?pod={ip}");
    let (flows, seen_after) = wait_for("the new pod's flow in /flows", Duration::from_secs(3), || {
        let (code, body) = agent_get(&sock, "GET", &query)?;
        assert_eq!(code, 200, "{body}");
        Ok(body.lines().any(|l| l.contains("\"udp\"")).then_some(body))
    })?;
    assert!(seen_after < Duration::from_secs(1), "flow visible after {seen_after:?}");
    let f: FlowReport = serde_json::from_str(flows.lines().next().unwrap())?;
    assert_eq!(f.pod_ip.to_string(), ip);
    assert_eq!(f.eni.as_deref(), Some("eth0"));
    assert_eq!(f.path[0].ifname, pod.pod.veth);

    // Metrics parse as Prometheus text and count exactly the 20 + 20 packets sent, once a
    // poll has begun after the last echo (the flow may first show from a poll mid-stream).
    let polls_now = |text: &str| metric(text, "podtrace_agent_events_total", &[("name", "polls")]);
    let after_stream = polls_now(&agent_get(&sock, "GET", "/metrics")?.1)?;
    let (text, _) = wait_for("two polls after the stream", Duration::from_secs(5), || {
        let (code, text) = agent_get(&sock, "GET", "/metrics")?;
        assert_eq!(code, 200);
        Ok((polls_now(&text)? >= after_stream + 2.0).then_some(text))
    })?;
    assert_eq!(metric(&text, "podtrace_packets_total", &[("pod", &ip), ("eni", "eth0")])?, 40.0, "{text}");
    assert_eq!(metric(&text, "podtrace_flows", &[("pod", &ip)])?, 1.0);
    assert_eq!(metric(&text, "podtrace_kernel_events_total", &[("name", "flow_map_full")])?, 0.0);
    assert!(metric(&text, "podtrace_flow_table_fill_ratio", &[])? > 0.0, "{text}");
    assert!(metric(&text, "podtrace_agent_events_total", &[("name", "polls")])? >= 1.0);
    // A few flows poll in microseconds: the configured interval, not stretched.
    assert_eq!(metric(&text, "podtrace_poll_interval_seconds", &[])?, 0.2, "{text}");
    assert!(metric(&text, "podtrace_poll_seconds", &[])? < 0.2, "{text}");

    // The pod goes away (CNI DEL): detached, links and fds back to where they were.
    pod.delete()?;
    wait_for(
        "links released",
        Duration::from_secs(3),
        || Ok((links_of(pid)? == before_links).then_some(())),
    )?;
    wait_for("fds back to their earlier count", Duration::from_secs(3), || {
        Ok((fd_count(pid) <= fds_before).then_some(()))
    })?;

    // SIGTERM: clean exit, socket removed, nothing left attached.
    let out = agent.signal(Signal::SIGTERM)?;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(!sock.exists(), "socket removed on exit");
    assert_eq!(links_of(pid)?, 0);
    Ok(())
}

#[test]
fn cli_reads_from_a_running_agent_without_attaching_anything() -> Result<()> {
    let lab = lab("agentcli", |_| {})?;
    let (_agent, sock) = start_agent(&lab, &[])?;
    let client = start_podtrace(
        &lab.ns("node-a"),
        &["--pod", "web-2", "--agent", sock.to_str().unwrap(), "-o", "json", "--duration", "3s"],
    )?;
    traffic::tcp_request(&lab.ns("web-2"), lab.addr("db", 8080), 10)?;
    // While it runs, the client holds no BPF link and no BPF program: only the agent does.
    assert_eq!(links_of(client.pid())?, 0);
    assert_eq!(bpf_programs_of(client.pid()), 0);
    let out = client.finish()?;
    assert!(out.status.success(), "{}", out.stderr);
    let flows = out.flows();
    assert!(flows.iter().any(|f| f.pod == "web-2" && f.dst == lab.addr("db", 8080)), "{flows:#?}");
    Ok(())
}

/// BPF programs held by a process (their fds' fdinfo has a prog_id).
fn bpf_programs_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|d| {
            d.flatten()
                .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|s| s.contains("prog_id:")))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn api_is_read_only_on_a_private_socket_and_tcp_only_when_asked() -> Result<()> {
    let lab = lab("agentsec", |_| {})?;
    let (agent, sock) = start_agent(&lab, &[])?;
    let mode = std::fs::metadata(&sock)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The agent's own TCP sockets (the lab's IMDS stand-in listens in the node too).
    let tcp_of = |pid: u32| -> Result<Vec<String>> {
        let out = netns::output("ip", &["netns", "exec", &lab.ns("node-a"), "ss", "-ltnpH"])?;
        Ok(out
            .lines()
            .filter(|l| l.contains(&format!("pid={pid},")))
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
            .collect())
    };
    assert_eq!(tcp_of(agent.pid())?, Vec::<String>::new(), "no TCP listener by default");
    assert_eq!(agent_get(&sock, "POST", "/flows")?.0, 405);
    assert_eq!(agent_get(&sock, "DELETE", "/metrics")?.0, 405);
    assert_eq!(agent_get(&sock, "GET", "/attach")?.0, 404);
    assert_eq!(agent_get(&sock, "GET", "/flows?since=yesterday")?.0, 400);
    assert_eq!(agent_get(&sock, "GET", "/healthz")?.0, 200);
    let out = agent.signal(Signal::SIGINT)?;
    assert!(out.status.success());

    let (agent, _) = start_agent(&lab, &["--listen", "127.0.0.1:19091"])?;
    assert_eq!(tcp_of(agent.pid())?, ["127.0.0.1:19091"], "only the address asked for");
    drop(agent);
    Ok(())
}
