//! An incident tool must never make the incident worse: clean detach on every signal, other
//! tools' hooks untouched, leftovers of killed runs removed, coexistence, one-line errors,
//! capabilities dropped, exact loss accounting, bounded agent memory.
use std::{collections::HashSet, time::Duration};

use anyhow::{Result, anyhow};
use aya::programs::{SchedClassifier, TcAttachType};
use nix::sys::signal::Signal;
use podtrace::kernel::{
    attach::{AttachMode, Tracer},
    load::LoadOptions,
    maps, netlink, tc,
};
use tests::{Finished, bpf, lab, packets::*, run_podtrace, start_agent, start_podtrace};
use tracer_common::{counter, names};
use xtask::{
    lab::{Lab, traffic},
    netns,
};

fn in_ns<T: Send>(lab: &Lab, member: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    netns::run_in(&lab.ns(member), f)
}

/// tcx programs (id, name) on every interface of node-a, both directions.
fn tcx_programs(lab: &Lab) -> Result<Vec<(u32, String, String)>> {
    in_ns(lab, "node-a", || {
        let mut out = Vec::new();
        for l in podtrace::node::links::links()? {
            for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
                let (_, progs) = SchedClassifier::query_tcx(l.index, dir).map_err(|e| anyhow!("{e}"))?;
                for p in progs {
                    out.push((p.id(), p.name_as_str().unwrap_or("").to_string(), l.name.clone()));
                }
            }
        }
        Ok(out)
    })
}

/// podtrace tc filters on node-a's interfaces, except those of the `foreign` programs.
fn our_filters(lab: &Lab, foreign: &HashSet<u32>) -> Result<Vec<tc::BpfFilter>> {
    in_ns(lab, "node-a", || {
        let mut out = Vec::new();
        for l in podtrace::node::links::links()? {
            out.extend(tc::bpf_filters(l.index)?.into_iter().filter(|f| {
                f.name.starts_with("podtrace") && !f.prog_id.is_some_and(|i| foreign.contains(&i))
            }));
        }
        Ok(out)
    })
}

fn sh(lab: &Lab, member: &str, args: &[&str]) -> Result<String> {
    let ns = lab.ns(member);
    let mut full = vec!["netns", "exec", ns.as_str()];
    full.extend(args);
    netns::output("ip", &full)
}

/// Another tool's hooks on eth1, all owned by this test process: a clsact qdisc it created
/// with a u32 filter, a BPF classifier attached as a netlink tc filter, and a BPF program
/// attached with tcx. (The BPF ones are separately loaded copies of podtrace's classifier, so
/// they even carry podtrace's program names: the cleanup must still leave them alone.)
struct Foreign {
    tc: Tracer,
    tcx: Tracer,
    ids: HashSet<u32>,
}

impl Foreign {
    fn install(lab: &Lab) -> Result<Foreign> {
        sh(lab, "node-a", &["tc", "qdisc", "add", "dev", "eth1", "clsact"])?;
        sh(
            lab,
            "node-a",
            &[
                "tc", "filter", "add", "dev", "eth1", "ingress", "pref", "1", "protocol", "all", "u32",
                "match", "u32", "0", "0", "classid", "1:1",
            ],
        )?;
        let load = |mode| {
            in_ns(lab, "node-a", || {
                let mut t = Tracer::load(&LoadOptions::default(), mode)?;
                let i = netlink::ifindex("eth1").ok_or_else(|| anyhow!("no eth1"))?;
                t.attach(i, "eth1")?;
                Ok(t)
            })
        };
        let (tc, tcx) = (load(AttachMode::Tc)?, load(AttachMode::Tcx)?);
        let mut ids = HashSet::new();
        for t in [&tc, &tcx] {
            for n in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS] {
                let p: &SchedClassifier = t.ebpf.program(n).unwrap().try_into()?;
                ids.insert(p.info()?.id());
            }
        }
        Ok(Foreign { tc, tcx, ids })
    }

    fn packets(&self) -> Result<(u64, u64)> {
        let n = |t: &Tracer| maps::read_counters(&t.ebpf).map(|c| c[counter::PACKETS as usize]);
        Ok((n(&self.tc)?, n(&self.tcx)?))
    }

    fn still_there(&self, lab: &Lab, when: &str) -> Result<()> {
        let progs = tcx_programs(lab)?;
        assert_eq!(
            progs.iter().filter(|(id, _, _)| self.ids.contains(id)).count(),
            2,
            "{when}: foreign tcx programs"
        );
        let bpf_filters = in_ns(lab, "node-a", || tc::bpf_filters(netlink::ifindex("eth1").unwrap()))?;
        let foreign_filters =
            bpf_filters.iter().filter(|f| f.prog_id.is_some_and(|i| self.ids.contains(&i))).count();
        assert_eq!(foreign_filters, 2, "{when}: foreign tc BPF filters");
        let filters = sh(lab, "node-a", &["tc", "filter", "show", "dev", "eth1", "ingress"])?;
        assert!(filters.contains("u32"), "{when}: the foreign u32 filter: {filters}");
        let qdiscs = sh(lab, "node-a", &["tc", "qdisc", "show", "dev", "eth1"])?;
        assert!(qdiscs.contains("clsact"), "{when}: clsact removed: {qdiscs}");
        Ok(())
    }
}

fn trace_args(lab: &Lab, mode: &str) -> Vec<String> {
    let pf = lab.pods_file();
    ["--pod", "web-2", "--pods-file", pf.to_str().unwrap(), "--attach-mode", mode, "-o", "json"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn start(lab: &Lab, args: &[String]) -> Result<tests::Running> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    start_podtrace(&lab.ns("node-a"), &a)
}

#[test]
fn any_signal_leaves_nothing_attached_and_other_tools_hooks_keep_running() -> Result<()> {
    let lab = lab("detach", |_| {})?;
    let foreign = Foreign::install(&lab)?;
    let ours =
        |progs: &[(u32, String, String)]| progs.iter().filter(|(id, _, _)| !foreign.ids.contains(id)).count();
    for (mode, sig) in [
        ("tcx", Signal::SIGINT),
        ("tcx", Signal::SIGTERM),
        ("tcx", Signal::SIGKILL),
        ("tc", Signal::SIGINT),
        ("tc", Signal::SIGTERM),
    ] {
        let running = start(&lab, &trace_args(&lab, mode))?;
        match mode {
            "tcx" => assert_eq!(ours(&tcx_programs(&lab)?), 6, "3 interfaces x 2 directions"),
            _ => assert_eq!(our_filters(&lab, &foreign.ids)?.len(), 6),
        }
        let out = running.signal(sig)?;
        if sig != Signal::SIGKILL {
            assert!(out.status.success(), "{mode}/{sig}: {}", out.stderr);
        }
        assert_eq!(ours(&tcx_programs(&lab)?), 0, "{mode}/{sig}: tcx programs left");
        assert_eq!(our_filters(&lab, &foreign.ids)?.len(), 0, "{mode}/{sig}: tc filters left");
        foreign.still_there(&lab, &format!("{mode}/{sig}"))?;
    }
    // The agent too: it traces every veth and ENI of the node.
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL] {
        let (running, sock) = start_agent(&lab, &[])?;
        let _ = tests::agent_get(&sock, "GET", "/healthz")?;
        assert!(ours(&tcx_programs(&lab)?) >= 8, "agent/{sig}: eth0, eth1 and two pod veths, both ways");
        let out = running.signal(sig)?;
        if sig != Signal::SIGKILL {
            assert!(out.status.success(), "agent/{sig}: {}", out.stderr);
        }
        assert_eq!(ours(&tcx_programs(&lab)?), 0, "agent/{sig}: tcx programs left");
        foreign.still_there(&lab, &format!("agent/{sig}"))?;
    }
    // The SIGKILLed agent left its socket file: a restart (the DaemonSet's) takes it over.
    let sock = xtask::lab::state_dir(lab.prefix()).join("agent.sock");
    assert!(sock.exists());
    let (running, _) = start_agent(&lab, &[])?;
    assert_eq!(tests::agent_get(&sock, "GET", "/healthz")?.0, 200);
    assert!(running.signal(Signal::SIGTERM)?.status.success());
    assert!(!sock.exists(), "socket removed on a clean exit");
    // The other tool's programs still see every packet.
    let before = foreign.packets()?;
    traffic::tcp_request(&lab.ns("web-2"), lab.addr("db", 8080), 10)?;
    let after = foreign.packets()?;
    assert!(after.0 > before.0 && after.1 > before.1, "foreign programs still run: {before:?} -> {after:?}");
    Ok(())
}

#[test]
fn tc_mode_leftovers_of_a_killed_run_are_removed_on_the_next_start() -> Result<()> {
    let lab = lab("leftover", |_| {})?;
    let foreign = Foreign::install(&lab)?;
    let killed = start(&lab, &trace_args(&lab, "tc"))?;
    killed.signal(Signal::SIGKILL)?;
    // netlink filters outlive their process...
    assert_eq!(our_filters(&lab, &foreign.ids)?.len(), 6, "SIGKILL leaves the tc filters behind");
    // ... until the next podtrace finds them by name, sees no live owner, and removes them.
    let mut args = trace_args(&lab, "tc");
    args.extend(["--duration".to_string(), "500ms".to_string()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_podtrace(&lab.ns("node-a"), &a)?;
    assert!(out.status.success(), "{}", out.stderr);
    let removed = out.stderr.lines().filter(|l| l.contains("removed leftover tc filter")).count();
    assert_eq!(removed, 6, "{}", out.stderr);
    assert_eq!(our_filters(&lab, &foreign.ids)?.len(), 0);
    foreign.still_there(&lab, "after the cleanup")?;
    Ok(())
}

#[test]
fn two_clis_on_the_same_pod_both_work() -> Result<()> {
    let lab = lab("twocli", |_| {})?;
    let first = start(&lab, &trace_args(&lab, "tcx"))?;
    let second = start(&lab, &trace_args(&lab, "auto"))?;
    let to = lab.addr("db", 8080);
    traffic::tcp_request(&lab.ns("web-2"), to, 10)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut counts = Vec::new();
    for run in [first.signal(Signal::SIGINT)?, second.signal(Signal::SIGINT)?] {
        assert!(run.status.success(), "{}", run.stderr);
        let flows = run.flows();
        let f = flows.iter().find(|f| f.dst == to).expect("both see the flow");
        assert_eq!(f.eni.as_deref(), Some("eth1"));
        counts.push((f.packets, f.bytes));
    }
    // Two independent tracers on the same hooks count the same packets.
    assert_eq!(counts[0], counts[1]);
    assert!(counts[0].0 >= 6, "a whole TCP exchange: {counts:?}");
    Ok(())
}

fn one_line_error(out: &Finished, want: &str) {
    assert!(!out.status.success(), "must fail: {want}");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line for {want:?}, got: {:?}", out.stderr);
    assert!(lines[0].contains(want), "{want:?} not in {:?}", lines[0]);
}

#[test]
fn bad_input_is_one_line_with_a_nonzero_exit_and_nothing_attached() -> Result<()> {
    let lab = lab("badin", |_| {})?;
    let ns = lab.ns("node-a");
    let pf = lab.pods_file();
    let pf = pf.to_str().unwrap();
    let dir = xtask::lab::state_dir(lab.prefix());
    let broken = dir.join("broken.json");
    std::fs::write(&broken, "{\"items\": [{\"metadata\": {\"name\": \"x\"}, \"status\": {\"podIP\": 7}}]}")?;
    let pending = dir.join("pending.json");
    std::fs::write(
        &pending,
        r#"{"kind":"List","items":[{"metadata":{"name":"new-1","namespace":"default"},"spec":{"nodeName":"node-a","containers":[{"name":"c"}]},"status":{"phase":"Pending"}}]}"#,
    )?;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--pod", "web-2", "-o", "xml"], "invalid value 'xml' for '--output <OUTPUT>'"),
        (vec!["--pod", "web-2", "--duration", "-1"], "invalid duration \"-1\""),
        (vec!["--pod", "web-2", "--sample-rate", "3"], "invalid sample rate"),
        (vec!["--pod", "web-2", "--bogus"], "unexpected argument '--bogus'"),
        (
            vec!["--pod", "web-2", "--pods-file", "/nonexistent/pods.json"],
            "cannot read pods file /nonexistent/pods.json",
        ),
        (
            vec!["--pod", "x", "--pods-file", broken.to_str().unwrap()],
            "line 1 column 61: field `items[0].status.podIP`",
        ),
        (
            vec!["--pod", "new-1", "--pods-file", pending.to_str().unwrap()],
            "pod default/new-1 has no IP yet (phase Pending)",
        ),
        (vec!["--pod", "web-2", "--pods-file", pf, "--eni", "nope0"], "--eni nope0: no such interface"),
        (vec!["node", "--instance-type", "z9.huge"], "unknown instance type z9.huge"),
    ];
    for (args, want) in &cases {
        let out = run_podtrace(&ns, args)?;
        one_line_error(&out, want);
    }
    // Without BTF.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(tests::podtrace_bin())
        .args(["--pod", "web-2", "--pods-file", pf])
        .env("PODTRACE_BTF", "/nonexistent/vmlinux")
        .output()?;
    let out = Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    one_line_error(&out, "this kernel has no BTF");
    // Not root, no capabilities.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(tests::podtrace_bin())
        .args(["--pod", "web-2", "--pods-file", pf])
        .output()?;
    let out = Finished {
        status: out.status,
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    one_line_error(
        &out,
        "not enough privileges: podtrace needs root or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN",
    );
    assert!(tcx_programs(&lab)?.is_empty(), "a failed run attached something");
    assert!(our_filters(&lab, &HashSet::new())?.is_empty());
    Ok(())
}

#[test]
fn a_vanishing_interface_is_reported_and_the_rest_keeps_being_traced() -> Result<()> {
    let lab = lab("vanish", |_| {})?;
    let extra = lab.add_pod("gone-1", "node-a", 1, 60)?;
    let pf = lab.pods_file();
    let ip = extra.pod.ip.to_string();
    let running = start_podtrace(
        &lab.ns("node-a"),
        &["--pod", "web-2", "--pod-ip", &ip, "--pods-file", pf.to_str().unwrap(), "-o", "json"],
    )?;
    extra.delete()?;
    std::thread::sleep(Duration::from_millis(1500));
    let to = lab.addr("db", 8080);
    traffic::tcp_request(&lab.ns("web-2"), to, 10)?;
    std::thread::sleep(Duration::from_millis(300));
    let out = running.signal(Signal::SIGINT)?;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("interface {} disappeared", extra.pod.veth)), "{}", out.stderr);
    assert_eq!(out.summary()["vanished"], serde_json::json!([extra.pod.veth]));
    assert!(out.flows().iter().any(|f| f.dst == to), "web-2 still traced");
    Ok(())
}

#[test]
fn the_cli_keeps_only_net_admin_after_attaching() -> Result<()> {
    let lab = lab("caps", |_| {})?;
    let running = start(&lab, &trace_args(&lab, "tcx"))?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", running.pid()))?;
    let cap = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap()
    };
    assert_eq!(cap("CapEff:"), 1 << 12, "only CAP_NET_ADMIN effective");
    assert_eq!(cap("CapPrm:"), 1 << 12);
    assert_eq!(cap("CapBnd:"), 1 << 12, "and nothing to regain");
    // Still fully working with what it kept.
    let to = lab.addr("db", 8080);
    traffic::tcp_request(&lab.ns("web-2"), to, 10)?;
    std::thread::sleep(Duration::from_millis(300));
    let out = running.signal(Signal::SIGTERM)?;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.flows().iter().any(|f| f.dst == to));
    assert!(tcx_programs(&lab)?.is_empty());
    Ok(())
}

#[test]
fn jumbo_frames_on_the_mtu_9001_path_are_tracked() -> Result<()> {
    let lab = lab("jumbo", |_| {})?;
    let running = start(&lab, &trace_args(&lab, "tcx"))?;
    let to = lab.addr("db", 8080);
    let echoed = traffic::udp_stream(&lab.ns("web-2"), to, 3, 8900, true)?;
    assert_eq!(echoed, 3);
    std::thread::sleep(Duration::from_millis(300));
    let out = running.signal(Signal::SIGINT)?;
    let flows = out.flows();
    let f = flows.iter().find(|f| f.dst == to).expect("jumbo flow");
    assert_eq!(f.path[0].packets, 3);
    assert_eq!(f.path[0].bytes, 3 * (8900 + 8 + 20 + 14));
    Ok(())
}

/// Programs of a running podtrace on an interface (excluding `skip`).
fn program_fd(lab: &Lab, ifname: &str, dir: TcAttachType) -> Result<std::os::fd::OwnedFd> {
    let id = in_ns(lab, "node-a", || {
        let i = netlink::ifindex(ifname).ok_or_else(|| anyhow!("no {ifname}"))?;
        let (_, progs) = SchedClassifier::query_tcx(i, dir).map_err(|e| anyhow!("{e}"))?;
        progs.first().map(|p| p.id()).ok_or_else(|| anyhow!("nothing attached to {ifname}"))
    })?;
    bpf::prog_fd_by_id(id)
}

fn udp_from_web2(lab: &Lab, sport: u16) -> Vec<u8> {
    let src = lab.plan.pod("web-2").unwrap().ip.octets();
    let dst = lab.plan.host("db").unwrap().ip.octets();
    eth(
        &[],
        ETH_IPV4,
        &ipv4(&V4 { src, dst, proto: 17, ..V4::default() }, &udp(sport, 8080, &sport.to_be_bytes())),
    )
}

#[test]
fn forced_map_full_and_hop_log_overwrites_are_counted_exactly() -> Result<()> {
    let lab = lab("loss", |_| {})?;
    let veth = lab.plan.pod("web-2").unwrap().veth.clone();
    let (veth_idx, eth1_idx) =
        in_ns(&lab, "node-a", || Ok((netlink::ifindex(&veth).unwrap(), netlink::ifindex("eth1").unwrap())))?;

    // 1. A 16-entry flow table and 100 new flows: 84 refused, each counted.
    let mut args = trace_args(&lab, "tcx");
    args.extend(["--max-flows".into(), "16".into()]);
    let running = start(&lab, &args)?;
    let ingress = program_fd(&lab, &veth, TcAttachType::Ingress)?;
    in_ns(&lab, "node-a", || {
        for i in 0..100 {
            assert_eq!(bpf::test_run(&ingress, &udp_from_web2(&lab, 20_000 + i), veth_idx)?, -1);
        }
        Ok(())
    })?;
    let out = running.signal(Signal::SIGINT)?;
    assert_eq!(out.summary()["counters"]["flow_map_full"], 84, "{}", out.stderr);

    // 2. The hop log, with podtrace stopped so nobody drains it: 10 000 hop events on one CPU,
    //    whose log keeps its newest 2 MiB / (CPUs × 128-byte record) rounded down to a power of
    //    two, at most 4096 (4096 on a 2-CPU machine): all the others are lost, and counted.
    let cpus = podtrace::kernel::maps::possible_cpus()? as u64;
    let fit = (2u64 << 20) / (cpus * 128);
    let kept = (1u64 << (63 - fit.leading_zeros())).clamp(64, 4096);
    let running = start(&lab, &trace_args(&lab, "tcx"))?;
    let ingress = program_fd(&lab, &veth, TcAttachType::Ingress)?;
    let egress = program_fd(&lab, "eth1", TcAttachType::Egress)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(running.pid() as i32), Signal::SIGSTOP)?;
    in_ns(&lab, "node-a", || {
        // Sightings are kept per CPU: both hooks of a packet must run on the same one.
        let mut one_cpu = nix::sched::CpuSet::new();
        one_cpu.set(0)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one_cpu)?;
        for i in 0..10_000 {
            let p = udp_from_web2(&lab, 30_000 + i);
            bpf::test_run(&ingress, &p, veth_idx)?;
            bpf::test_run(&egress, &p, eth1_idx)?;
        }
        Ok(())
    })?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(running.pid() as i32), Signal::SIGCONT)?;
    std::thread::sleep(Duration::from_millis(300));
    let out = running.signal(Signal::SIGINT)?;
    let summary = out.summary();
    assert_eq!(summary["counters"]["hop_events"], 10_000, "{}", out.stderr);
    assert_eq!(summary["user"]["hop_events_lost"], 10_000 - kept, "{}", out.stderr);
    Ok(())
}

#[test]
fn agent_metrics_show_the_forced_losses_exactly() -> Result<()> {
    let lab = lab("agentloss", |_| {})?;
    let veth = lab.plan.pod("web-2").unwrap().veth.clone();
    let veth_idx = in_ns(&lab, "node-a", || Ok(netlink::ifindex(&veth).unwrap()))?;
    let (running, sock) = start_agent(&lab, &["--max-flows", "16"])?;
    let ingress = program_fd(&lab, &veth, TcAttachType::Ingress)?;
    // Whatever the quiet lab already put in the table counts towards the 16.
    let (_, before) = tests::agent_get(&sock, "GET", "/metrics")?;
    let used = tests::parse_prometheus(&before)?
        .iter()
        .find(|s| s.name == "podtrace_flow_table_fill_ratio")
        .map(|s| (s.value * 16.0).round() as u64)
        .unwrap_or(0);
    in_ns(&lab, "node-a", || {
        for i in 0..100 {
            bpf::test_run(&ingress, &udp_from_web2(&lab, 40_000 + i), veth_idx)?;
        }
        Ok(())
    })?;
    // Two more polls: the second began after the injection ended.
    let polls = |text: &str| tests::metric(text, "podtrace_agent_events_total", &[("name", "polls")]);
    let start = polls(&tests::agent_get(&sock, "GET", "/metrics")?.1)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (_, text) = tests::agent_get(&sock, "GET", "/metrics")?;
        if polls(&text)? >= start + 2.0 {
            break text;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the agent stopped polling: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let full = tests::metric(&text, "podtrace_kernel_events_total", &[("name", "flow_map_full")])?;
    assert_eq!(full as u64, 100 - (16 - used), "{text}");
    drop(running);
    Ok(())
}

#[test]
fn agent_memory_is_bounded_by_eviction_and_expiry_without_losing_counts() -> Result<()> {
    let lab = lab("agentcap", |_| {})?;
    let veth = lab.plan.pod("web-2").unwrap().veth.clone();
    let veth_idx = in_ns(&lab, "node-a", || Ok(netlink::ifindex(&veth).unwrap()))?;
    let (_running, sock) = start_agent(&lab, &["--max-tracked-flows", "10", "--idle-timeout", "2s"])?;
    let get = |name: &str, labels: &[(&str, &str)]| -> Result<f64> {
        tests::metric(&tests::agent_get(&sock, "GET", "/metrics")?.1, name, labels)
    };
    let agent_event = |name: &str| get("podtrace_agent_events_total", &[("name", name)]);
    let table_entries = || -> Result<u64> {
        let text = tests::agent_get(&sock, "GET", "/metrics")?.1;
        Ok((tests::metric(&text, "podtrace_flow_table_fill_ratio", &[])? * 262_144.0).round() as u64)
    };
    let wait = |what: &str, ok: &dyn Fn() -> Result<bool>| -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ok()? {
            anyhow::ensure!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    };
    let quiet_entries = table_entries()?;

    // 30 one-packet flows of web-2: 20 beyond the cap of 10.
    let ingress = program_fd(&lab, &veth, TcAttachType::Ingress)?;
    in_ns(&lab, "node-a", || {
        for i in 0..30 {
            bpf::test_run(&ingress, &udp_from_web2(&lab, 41_000 + i), veth_idx)?;
        }
        Ok(())
    })?;
    wait("the evictions", &|| Ok(agent_event("flows_evicted")? >= 20.0))?;
    let web2 = [("pod", "web-2")];
    assert_eq!(agent_event("flows_evicted")?, 20.0);
    assert_eq!(get("podtrace_flows", &web2)?, 10.0);
    // Evicted flows leave the kernel table too, and their packets stay counted, once.
    let entries = table_entries()?;
    assert!((10..=quiet_entries + 10).contains(&entries), "{entries} entries, {quiet_entries} before");
    assert_eq!(get("podtrace_packets_total", &web2)?, 30.0);
    assert_eq!(get("podtrace_bytes_total", &web2)?, 30.0 * 44.0);

    // Two idle seconds later the other ten expire: nothing of web-2 is tracked any more, and
    // the totals have not moved.
    wait("the expiry", &|| Ok(agent_event("flows_expired")? >= 10.0))?;
    assert_eq!(get("podtrace_flows", &web2)?, 0.0);
    assert!(table_entries()? <= quiet_entries);
    assert_eq!(get("podtrace_packets_total", &web2)?, 30.0);
    Ok(())
}
