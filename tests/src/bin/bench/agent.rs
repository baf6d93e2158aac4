//! Figures 4 and 5: the agent's CPU, memory, flood and attach latency.
use std::{
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::*;
/// The agent's bounds in figure 4: its flow cap and its kernel flow table.
pub(crate) const AGENT_MAX_TRACKED_FLOWS: u32 = 200_000;
pub(crate) const AGENT_MAX_FLOWS: u32 = 262_144;

pub(crate) struct AgentFigures {
    pub cpu: CpuUse,
    pub pps: f64,
    pub rss_idle_kb: u64,
    pub rss_100k_kb: u64,
    pub flows_100k: f64,
    /// Duration of the last poll over those flows and the poll interval then.
    pub poll_100k_s: f64,
    pub poll_interval_100k_s: f64,
    pub flood: scale::SynFlood,
    pub attach_ms: Vec<f64>,
    /// Mean time between two packets of a new pod while waiting for the agent to count one.
    pub attach_send_interval_ms: f64,
    /// Veths created at once, and how long until all were attached.
    pub veths: u32,
    pub attach_many_ms: f64,
}

/// `podtrace agent` on node-a with the lab's pods file, running once it says it is tracing.
pub(crate) fn spawn_agent(b: &Bench, sock: &std::path::Path, extra: &[&str]) -> Result<Child> {
    let mut agent = Command::new("ip")
        .args(["netns", "exec", &b.ns("node-a")])
        .arg(&b.podtrace)
        .args(["agent", "--pods-file"])
        .arg(b.lab.pods_file())
        .arg("--socket")
        .arg(sock)
        .args(extra)
        .args(std::env::var_os("BENCH_VERBOSE").map(|_| "-vv"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_for_line(&mut agent, "tracing")?;
    Ok(agent)
}

pub(crate) fn agent_figures(b: &Bench) -> Result<AgentFigures> {
    let t0 = Instant::now();
    let dir = xtask::lab::state_dir(b.lab.prefix());
    let sock = dir.join("bench-agent.sock");
    let (max_tracked, max_flows) = (AGENT_MAX_TRACKED_FLOWS.to_string(), AGENT_MAX_FLOWS.to_string());
    let agent = spawn_agent(
        b,
        &sock,
        &["--max-tracked-flows", &max_tracked, "--max-flows", &max_flows, "--idle-timeout", "10m"],
    )?;
    let pid = podtrace_pid(&agent)?;
    let guard = Active::Process(vec![agent]);
    std::thread::sleep(Duration::from_secs(1));
    let (_, rss_idle_kb, _) = proc_stat(pid)?;

    stage(t0, "agent CPU at a fixed rate");
    // 1. CPU at a fixed rate: 64-byte UDP at 100 kpps (51.2 Mbit/s) from web-2 to db.
    let secs = if b.quick { 3 } else { 10 };
    let (ticks0, _, _) = proc_stat(pid)?;
    let start = Instant::now();
    let to = b.lab.plan.host("db").unwrap().ip.to_string();
    let server = iperf_server(&b.ns("db"), "5202")?;
    let out = iperf_client(
        server,
        Command::new("ip").args([
            "netns",
            "exec",
            &b.ns("web-2"),
            "iperf3",
            "-c",
            &to,
            "-p",
            "5202",
            "-u",
            "-l",
            "64",
            "-b",
            "51.2M",
            "-t",
            &secs.to_string(),
            "-J",
        ]),
    )?;
    let (ticks1, _, _) = proc_stat(pid)?;
    let cpu = CpuUse { ticks: ticks1 - ticks0, seconds: start.elapsed().as_secs_f64() };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    let pps = json_number(&v["end"]["sum"], "packets")? / json_number(&v["end"]["sum"], "seconds")?;

    stage(t0, "agent with 100k flows");
    // 2. 100 000 concurrent flows, injected into the agent's own program (BPF_PROG_TEST_RUN).
    let inject = scale::Injector::for_agent(b)?;
    let before = scale::packets_seen(&sock)?;
    inject.send(b, 0, 100_000)?;
    let text = scale::settled(&sock, before + 100_000.0, Duration::from_secs(120))?;
    let flows_100k = metric(&text, "podtrace_flows", Some(("pod", "web-2")))?;
    let poll_100k_s = metric(&text, "podtrace_poll_seconds", None)?;
    let poll_interval_100k_s = metric(&text, "podtrace_poll_interval_seconds", None)?;
    let (_, rss_100k_kb, _) = proc_stat(pid)?;

    drop(guard);

    stage(t0, "agent under a SYN flood through the lab");
    // 3. A SYN flood of distinct flows, far beyond every bound, sent through the lab to an
    // agent run with the DaemonSet's flags.
    let agent = spawn_agent(b, &sock, &DAEMONSET_BOUNDS)?;
    let pid = podtrace_pid(&agent)?;
    let guard = Active::Process(vec![agent]);
    let flood = scale::syn_flood(b, &sock, pid, if b.quick { 200_000 } else { 1_000_000 })?;
    drop(guard);

    stage(t0, "attach latency");
    // 4. Attach latency: a fresh agent (small tables), new pods, first counted packet.
    let agent = spawn_agent(b, &sock, &["--poll-interval", "100ms"])?;
    let guard = Active::Process(vec![agent]);
    let mut attach_ms = Vec::new();
    let (mut sends, mut sending_s) = (0u32, 0.0);
    let db = std::net::SocketAddr::new(b.lab.plan.host("db").unwrap().ip.into(), 9);
    for k in 0..if b.quick { 3 } else { 7 } {
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as f64;
        let pod = b.lab.add_pod(&format!("bench-{k}"), "node-a", 0, 100 + k as u8)?;
        let ip = pod.pod.ip.to_string();
        let sock_udp = netns::run_in(&pod.pod.netns, || Ok(std::net::UdpSocket::bind("0.0.0.0:0")?))?;
        let sending = Instant::now();
        let deadline = sending + Duration::from_secs(5);
        let first = 'counted: loop {
            let _ = sock_udp.send_to(b"x", db);
            sends += 1;
            let (_, body) = tests::agent_get(&sock, "GET", &format!("/flows?pod={ip}"))?;
            for line in body.lines() {
                let f: serde_json::Value = serde_json::from_str(line).context("a line of /flows")?;
                if f["proto"] == "udp" {
                    break 'counted json_number(&f, "first_seen_ms")?;
                }
            }
            if Instant::now() > deadline {
                bail!("the agent never counted a packet of the new pod {ip}");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        sending_s += sending.elapsed().as_secs_f64();
        attach_ms.push(first - created);
        pod.delete()?;
    }
    let veths = if b.quick { 100 } else { 500 };
    stage(t0, &format!("{veths} veths"));
    // 5. Many veths at once.
    let peers = format!("{}bench-peers", b.lab.prefix());
    netns::add(&peers)?;
    b.lab.adopt_netns(&peers)?;
    let lines: Vec<String> =
        (0..veths).map(|i| format!("link add bv{i} type veth peer name p{i} netns {peers}")).collect();
    let start = Instant::now();
    netns::ip_batch(&b.ns("node-a"), &lines)?;
    // Every link of the lab's node is an ENI or a veth: all of them must end up attached.
    let expected =
        netns::run_in(&b.ns("node-a"), || Ok(links::links()?.iter().filter(|l| l.name != "lo").count()))?
            as f64;
    let attach_many_ms = loop {
        let (_, text) = tests::agent_get(&sock, "GET", "/metrics")?;
        let attached = metric(&text, "podtrace_attached_interfaces", None)?;
        if attached >= expected {
            break start.elapsed().as_secs_f64() * 1000.0;
        }
        if start.elapsed() > Duration::from_secs(180) {
            bail!("{veths} veths not attached within 180 s ({attached} of {expected} interfaces)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    netns::del(&peers)?;
    drop(guard);
    Ok(AgentFigures {
        cpu,
        pps,
        rss_idle_kb,
        rss_100k_kb,
        flows_100k,
        poll_100k_s,
        poll_interval_100k_s,
        flood,
        attach_ms,
        attach_send_interval_ms: sending_s * 1000.0 / sends as f64,
        veths,
        attach_many_ms,
    })
}

/// Figures 4 and 5.
/// The flood target: the agent answered afterwards, what it could not keep is counted, and its
/// peak stayed inside the user-space memory it is sized for with these flags (the figure the
/// DaemonSet's limit is computed from: beyond it, a pod would be OOM-killed).
pub(crate) fn flood_ok(f: &scale::SynFlood) -> bool {
    f.alive && f.counted >= f.sent as f64 && f.map_full + f.evicted > 0.0 && f.hwm_kb << 10 <= flood_budget()
}

pub(crate) fn flood_budget() -> u64 {
    podtrace::cmd::agent::user_space_budget(DAEMONSET_MAX_TRACKED_FLOWS, DAEMONSET_MAX_FLOWS)
}

/// The bounds deploy/daemonset.yaml gives the agent (tests/tests/deploy.rs keeps the manifest
/// and the Helm chart on these values).
pub(crate) const DAEMONSET_MAX_TRACKED_FLOWS: u32 = 50_000;
pub(crate) const DAEMONSET_MAX_FLOWS: u32 = 262_144;
pub(crate) const DAEMONSET_BOUNDS: [&str; 6] =
    ["--max-tracked-flows", "50000", "--max-flows", "262144", "--sample-rate", "64"];

pub(crate) fn agent_table(s: &mut String, a: &AgentFigures, m: &scale::MillionTracked, clock: &Clock) {
    let cpu_pct = a.cpu.percent_of_a_core(clock);
    writeln!(s, "## 4. Agent cost and memory (`podtrace agent`)\n").unwrap();
    writeln!(s, "| measurement | value |\n|---|---|").unwrap();
    writeln!(
        s,
        "| user+system CPU at {:.0} kpps (64-byte UDP through web-2's veth and eth1) | {cpu_pct:.2} % of a core ({} of {:.0} ms in {:.1} s) |",
        a.pps / 1e3,
        ticks(a.cpu.ticks),
        clock.tick_ms(),
        a.cpu.seconds,
    )
    .unwrap();
    writeln!(s, "| RSS idle | {:.1} MiB |", a.rss_idle_kb as f64 / 1024.0).unwrap();
    writeln!(
        s,
        "| RSS with {:.0} concurrent flows tracked | {:.1} MiB |",
        a.flows_100k,
        a.rss_100k_kb as f64 / 1024.0
    )
    .unwrap();
    let f = &a.flood;
    writeln!(
        s,
        "| SYN flood of {} distinct flows through the lab ({:.0} kpps): alive / peak RSS | {} / {:.1} MiB |",
        f.sent,
        f.sent as f64 / f.seconds / 1e3,
        if f.alive { "yes" } else { "NO" },
        f.hwm_kb as f64 / 1024.0
    )
    .unwrap();
    writeln!(
        s,
        "| SYN flood: packets counted / kernel flow_map_full / agent flows_evicted | {:.0} / {:.0} / {:.0} |",
        f.counted, f.map_full, f.evicted
    )
    .unwrap();
    writeln!(
        s,
        "| {:.0} flows tracked (`--max-tracked-flows {}`): RSS / peak RSS | {:.1} MiB / {:.1} MiB |",
        m.flows,
        m.flows_wanted,
        m.rss_kb as f64 / 1024.0,
        m.hwm_kb as f64 / 1024.0
    )
    .unwrap();
    writeln!(
        s,
        "| {:.0} flows tracked, no traffic: CPU polling them, over one poll period | {:.2} % of a core ({} in {:.0} s; a poll {:.2} s, then {:.2} s until the next) |",
        m.flows,
        m.cpu.percent_of_a_core(clock),
        ticks(m.cpu.ticks),
        m.cpu.seconds,
        m.poll_s,
        m.interval_s
    )
    .unwrap();
    let cpu_ok = cpu_pct <= 2.0;
    let mem_ok = (a.rss_100k_kb as f64 / 1024.0) <= 64.0;
    writeln!(s, "\nTargets: ≤ 2 % of a core at 100 kpps (stretch ≤ 1 %): **{}**; RSS ≤ 64 MiB at 100 k flows (stretch ≤ 40 MiB): **{}**; the SYN flood bounded and counted (alive, losses counted, peak RSS within the {:.0} MiB user space these flags are sized for): **{}**. The flows of the 100 k and million rows are injected into the agent's own program with BPF_PROG_TEST_RUN (distinct destinations, one packet each), which fills the kernel table exactly like real traffic would. The SYN flood is real packets: a raw socket in web-2 sends SYNs of distinct ports to db, through web-2's veth, node-a's routing and conntrack, eth1 and the VPC; each crosses two traced hooks. During the flood the agent runs with the DaemonSet's bounds (`{}`): losses in its kernel table and beyond its flow cap are counted.\n",
        verdict(cpu_ok, cpu_pct <= 1.0), verdict(mem_ok, (a.rss_100k_kb as f64 / 1024.0) <= 40.0), flood_budget() as f64 / (1 << 20) as f64, verdict(flood_ok(f), flood_ok(f)), DAEMONSET_BOUNDS.join(" ")).unwrap();
    let mut att = a.attach_ms.clone();
    let med = median(&mut att);
    writeln!(s, "## 5. Attach latency\n").unwrap();
    writeln!(s, "| measurement | value |\n|---|---|").unwrap();
    writeln!(
        s,
        "| new pod veth → first packet counted (median of {}) | {med:.0} ms (all: {}) |",
        a.attach_ms.len(),
        a.attach_ms.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", ")
    )
    .unwrap();
    writeln!(s, "| {} veths created at once → all attached | {:.0} ms |", a.veths, a.attach_many_ms).unwrap();
    writeln!(s, "\nTarget: new veth traced ≤ 1 s (stretch ≤ 500 ms): **{}**. Measured from just before the CNI-like set-up starts (namespace, veth, routes, rules) to the kernel timestamp of the first packet counted; until the agent reports that packet, the pod sends one every {:.1} ms (mean).\n", verdict(med <= 1000.0, med <= 500.0), a.attach_send_interval_ms).unwrap();
}
