//! The agent and the CLI under hostile input and resource exhaustion (issue 17): one test per
//! reproduced failure. Memory is measured from /proc (VmHWM of a running process, or the
//! `ru_maxrss` wait4 reports for a finished one); the only time bound asserted is the issue's
//! own: `/healthz` answers within 1 s.
use std::{
    collections::HashSet,
    io::{Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use aya::programs::{SchedClassifier, TcAttachType};
use nix::sys::signal::Signal;
use podtrace::kernel::{netlink, tc};
use tests::{Finished, Running, bpf, lab, metric, packets::*, start_podtrace_via};
use xtask::{
    lab::{Lab, state_dir, traffic},
    netns,
};

// ---------------------------------------------------------------------------------------------
// Helpers

fn in_ns<T: Send>(lab: &Lab, member: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    netns::run_in(&lab.ns(member), f)
}

fn sh(lab: &Lab, member: &str, args: &[&str]) -> Result<String> {
    let ns = lab.ns(member);
    let mut full = vec!["netns", "exec", ns.as_str()];
    full.extend(args);
    netns::output("ip", &full)
}

/// A field of /proc/PID/status in kB (VmRSS, VmHWM).
fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} for {pid}"))
}

/// The DaemonSet's memory limit, from the manifest, in bytes.
fn daemonset_memory_limit() -> Result<u64> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let doc: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(path)?)?;
    let limit = doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
        .as_str()
        .context("no memory limit in the DaemonSet")?;
    let mib: u64 = limit.strip_suffix("Mi").context("limit in Mi")?.parse()?;
    Ok(mib << 20)
}

/// Starts an agent on node-a with the lab's pods file and `sock`, run by `wrapper`.
fn agent(lab: &Lab, wrapper: &[&str], sock: &Path, extra: &[&str]) -> Result<Running> {
    let pods = lab.pods_file();
    let mut args = tests::agent_args(&pods, sock);
    args.extend(extra);
    start_podtrace_via(&lab.ns("node-a"), wrapper, &args)
}

fn default_sock(lab: &Lab) -> PathBuf {
    state_dir(lab.prefix()).join("agent.sock")
}

/// One HTTP/1.0 GET over any stream, bounded by `within`; (status, body).
fn get_on<S: Read + Write>(mut s: S, path: &str) -> Result<(u16, String)> {
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

fn get_unix(sock: &Path, path: &str, within: Duration) -> Result<(u16, String)> {
    let s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(within))?;
    s.set_write_timeout(Some(within))?;
    get_on(s, path)
}

/// Response headers and body of a GET on the unix socket.
fn get_with_headers(sock: &Path, path: &str) -> Result<(u16, String, String)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8(resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no header end")?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, head.to_string(), body.to_string()))
}

/// `/healthz` on the unix socket answers 200 within the issue's bound of 1 s.
fn healthz_within_1s(sock: &Path, when: &str) -> Result<()> {
    let t = Instant::now();
    let (code, body) = get_unix(sock, "/healthz", Duration::from_secs(1))
        .with_context(|| format!("{when}: /healthz after {:?}", t.elapsed()))?;
    ensure!(code == 200, "{when}: /healthz answered {code}: {body}");
    ensure!(t.elapsed() < Duration::from_secs(1), "{when}: /healthz took {:?}", t.elapsed());
    Ok(())
}

fn polls(sock: &Path) -> Result<(f64, Duration)> {
    let (_, text) = get_unix(sock, "/metrics", Duration::from_secs(5))?;
    let polls = metric(&text, "podtrace_agent_events_total", &[("name", "polls")])?;
    // The agent stretches its interval while polls are long (a tenth of a core at most): a
    // wait for polls follows the interval and poll time it publishes, not a fixed guess.
    let interval = metric(&text, "podtrace_poll_interval_seconds", &[])?;
    let took = metric(&text, "podtrace_poll_seconds", &[])?;
    Ok((polls, Duration::from_secs_f64(interval + took)))
}

/// Waits until the agent has polled twice more (the second poll began after now).
fn two_more_polls(sock: &Path) -> Result<()> {
    let (start, _) = polls(sock)?;
    let t = Instant::now();
    loop {
        let (now, period) = polls(sock)?;
        if now >= start + 2.0 {
            return Ok(());
        }
        // Three of the agent's current periods, and 10 s for a loaded machine.
        let bound = period * 3 + Duration::from_secs(10);
        ensure!(
            t.elapsed() < bound,
            "the agent stopped polling: {now} polls after {:?} (period {period:?})",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs podtrace in `ns` to completion, killed (and the test failed) if it is still running
/// after a minute: on a podtrace that accepts what it should refuse, a run would never end.
fn run_bounded(ns: &str, args: &[&str]) -> Result<Finished> {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(tests::podtrace_bin()).args(args);
    Ok(run_measured(&mut cmd, Duration::from_secs(60), 4 << 20)?.0)
}

fn one_line_error(out: &Finished, want: &str) {
    assert!(!out.status.success(), "must fail: {want}: {}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line for {want:?}, got: {:?}", out.stderr);
    assert!(lines[0].contains(want), "{want:?} not in {:?}", lines[0]);
    assert!(!lines[0].contains("panicked"), "{}", lines[0]);
}

/// Runs a command to completion; returns what it printed and its peak RSS (kB, from wait4),
/// killing it if it outlives `limit` or grows past `max_rss_kb` while running.
fn run_measured(
    cmd: &mut std::process::Command,
    limit: Duration,
    max_rss_kb: u64,
) -> Result<(Finished, u64)> {
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()?;
    let pid = child.id();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let mut killed = None;
    loop {
        // WNOWAIT: the child stays waitable for wait4 below, which reports its peak RSS.
        let done = nix::sys::wait::waitid(
            nix::sys::wait::Id::Pid(nix::unistd::Pid::from_raw(pid as i32)),
            nix::sys::wait::WaitPidFlag::WEXITED
                | nix::sys::wait::WaitPidFlag::WNOHANG
                | nix::sys::wait::WaitPidFlag::WNOWAIT,
        )?;
        if !matches!(done, nix::sys::wait::WaitStatus::StillAlive) {
            break;
        }
        let rss = status_kb(pid, "VmRSS:").unwrap_or(0);
        if start.elapsed() > limit || rss > max_rss_kb {
            killed = Some(format!("killed after {:?} at {rss} kB", start.elapsed()));
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain wait4 on our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    ensure!(r == pid as i32, "wait4: {}", std::io::Error::last_os_error());
    use std::os::unix::process::ExitStatusExt;
    let finished = Finished {
        status: std::process::ExitStatus::from_raw(status),
        stdout: String::from_utf8_lossy(&out_t.join().unwrap()).into(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap()).into(),
    };
    if let Some(why) = killed {
        bail!("{why}: {}", finished.stderr);
    }
    Ok((finished, usage.ru_maxrss as u64))
}

/// The program attached first to an interface of node-a (tcx), opened by id.
fn program_fd(lab: &Lab, ifname: &str, dir: TcAttachType) -> Result<std::os::fd::OwnedFd> {
    let id = in_ns(lab, "node-a", || {
        let i = netlink::ifindex(ifname).ok_or_else(|| anyhow!("no {ifname}"))?;
        let (_, progs) = SchedClassifier::query_tcx(i, dir).map_err(|e| anyhow!("{e}"))?;
        progs.first().map(|p| p.id()).ok_or_else(|| anyhow!("nothing attached to {ifname}"))
    })?;
    bpf::prog_fd_by_id(id)
}

/// `n` one-packet UDP flows from web-2 run through the agent's program on web-2's veth.
fn inject_flows(lab: &Lab, n: u32) -> Result<()> {
    let veth = lab.plan.pod("web-2").unwrap().veth.clone();
    let ingress = program_fd(lab, &veth, TcAttachType::Ingress)?;
    let src = lab.plan.pod("web-2").unwrap().ip.octets();
    let dst = lab.plan.host("db").unwrap().ip.octets();
    in_ns(lab, "node-a", || {
        let idx = netlink::ifindex(&veth).unwrap();
        for i in 0..n {
            let (sport, dport) = (1024 + (i % 60_000) as u16, 9000 + (i / 60_000) as u16);
            let p = eth(
                &[],
                ETH_IPV4,
                &ipv4(&V4 { src, dst, proto: 17, ..V4::default() }, &udp(sport, dport, b"x")),
            );
            bpf::test_run(&ingress, &p, idx)?;
        }
        Ok(())
    })
}

/// Raises this test process's open-file limit towards `n` (the attacks hold thousands of
/// sockets); returns the limit now in force (the hard limit may be lower).
fn raise_own_fd_limit(n: u64) -> Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        ensure!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0, "getrlimit");
        if lim.rlim_cur < n {
            let want = libc::rlimit { rlim_cur: n, rlim_max: lim.rlim_max.max(n) };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return Ok(n);
            }
            lim.rlim_cur = lim.rlim_max;
            ensure!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0, "setrlimit");
        }
    }
    Ok(lim.rlim_cur)
}

/// Tests that hold thousands of sockets share this process's open-file limit: they take
/// turns, or one starves the other (EMFILE in the middle of an attack).
static FD_HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn fd_heavy_turn() -> std::sync::MutexGuard<'static, ()> {
    FD_HEAVY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// podtrace's tc filters on node-a, by interface name.
fn podtrace_filters(lab: &Lab) -> Result<Vec<(String, tc::BpfFilter)>> {
    in_ns(lab, "node-a", || {
        let mut out = Vec::new();
        for l in podtrace::node::links::links()? {
            for f in tc::bpf_filters(l.index)? {
                if f.name.starts_with("podtrace") {
                    out.push((l.name.clone(), f));
                }
            }
        }
        Ok(out)
    })
}

fn has_clsact(lab: &Lab, ifname: &str) -> Result<bool> {
    Ok(sh(lab, "node-a", &["tc", "qdisc", "show", "dev", ifname])?.contains("clsact"))
}

// ---------------------------------------------------------------------------------------------
// API memory

/// ~47 k flows, then `GET /flows`: the agent built a 64 MB body at once (peak 331 MB, over the
/// DaemonSet's 256Mi) and another for every client that never read it.
#[test]
fn flows_api_memory_stays_inside_the_daemonset_limit_with_ten_slow_clients() -> Result<()> {
    let lab = lab("hflows", |_| {})?;
    let sock = default_sock(&lab);
    let running = agent(&lab, &[], &sock, &["--max-tracked-flows", "60000"])?;
    let pid = running.pid();
    inject_flows(&lab, 50_000)?;
    two_more_polls(&sock)?;
    let (_, text) = get_unix(&sock, "/metrics", Duration::from_secs(5))?;
    assert_eq!(metric(&text, "podtrace_flows", &[("pod", "web-2")])?, 50_000.0, "{text}");

    // Ten clients ask for every flow and never read a byte.
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut s = UnixStream::connect(&sock)?;
        write!(s, "GET /flows HTTP/1.1\r\nHost: test\r\n\r\n")?;
        slow.push(s);
    }
    let limit = daemonset_memory_limit()?;
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(500));
        healthz_within_1s(&sock, &format!("with 10 slow /flows clients ({i})"))?;
        let hwm = status_kb(pid, "VmHWM:")? << 10;
        assert!(hwm < limit, "agent peak RSS {} MiB >= the DaemonSet's {} MiB", hwm >> 20, limit >> 20);
    }
    // Meanwhile a client that reads gets every flow, page by page, each once.
    let mut ids = HashSet::new();
    let mut next: Option<String> = None;
    let mut pages = 0;
    let retry_until = Instant::now() + Duration::from_secs(30);
    loop {
        let path = match &next {
            Some(t) => format!("/flows?pod=web-2&limit=5000&continue={t}"),
            None => "/flows?pod=web-2&limit=5000".to_string(),
        };
        let (code, head, body) = get_with_headers(&sock, &path)?;
        if code == 503 {
            // All /flows slots are taken by the slow clients until they time out.
            assert!(Instant::now() < retry_until, "/flows refused for 30 s: {body}");
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        assert_eq!(code, 200, "{head}\n{body}");
        pages += 1;
        let lines: Vec<&str> = body.lines().collect();
        assert!(lines.len() <= 5000);
        for l in lines {
            let f: tests::FlowReport = serde_json::from_str(l)?;
            assert!(ids.insert(f.id.clone()), "flow {} served twice", f.id);
        }
        next = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("podtrace-continue").then(|| v.trim().to_string())
        });
        if next.is_none() {
            break;
        }
        assert!(pages < 20, "paging does not end");
    }
    assert_eq!(ids.len(), 50_000);
    assert_eq!(pages, 10);
    let hwm = status_kb(pid, "VmHWM:")? << 10;
    assert!(hwm < limit, "agent peak RSS {} MiB >= the DaemonSet's {} MiB", hwm >> 20, limit >> 20);
    eprintln!("agent peak RSS with 50 000 flows and 10 slow clients: {} MiB", hwm >> 20);
    let budget = podtrace::cmd::agent::user_space_budget(60_000, 262_144);
    assert!(hwm <= budget, "{} MiB over the documented budget of {} MiB", hwm >> 20, budget >> 20);
    drop(slow);
    // An unpaged request streams them all.
    let (code, body) = get_unix(&sock, "/flows?pod=web-2", Duration::from_secs(120))?;
    assert_eq!(code, 200);
    assert_eq!(body.lines().count(), 50_000);
    Ok(())
}

/// `/flows?pod=a&pod=b`: the last value won silently.
#[test]
fn a_repeated_query_parameter_is_refused() -> Result<()> {
    let lab = lab("hquery", |_| {})?;
    let sock = default_sock(&lab);
    let _agent = agent(&lab, &[], &sock, &[])?;
    let (code, body) = get_unix(&sock, "/flows?pod=web-1&pod=web-2", Duration::from_secs(5))?;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("pod"), "{body}");
    for bad in ["limit=0", "limit=x", "limit=1000000", "continue=zz", "continue=%00"] {
        let (code, body) = get_unix(&sock, &format!("/flows?{bad}"), Duration::from_secs(5))?;
        assert_eq!(code, 400, "{bad}: {body}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Connections

/// A SYN flood through the lab (600 000 distinct flows, each SYN and db's RST crossing two
/// traced hooks) fills the kernel table and node-a's conntrack: the agent, run with the
/// DaemonSet's bounds, stays alive, counts what it could not keep, and its peak stays inside the
/// user-space budget the DaemonSet's memory limit is computed from. It did not: the budget left
/// out the kernel table's share of a poll (234 MiB against 137 after 200 000 SYNs), and the
/// conntrack events queued between two polls without bound (559 MiB after a million).
#[test]
fn a_syn_flood_keeps_the_agent_inside_its_memory_budget() -> Result<()> {
    const SYNS: u32 = 600_000;
    let lab = lab("hsyn", |_| {})?;
    let sock = default_sock(&lab);
    let bounds = ["--max-tracked-flows", "50000", "--max-flows", "262144", "--sample-rate", "64"];
    let running = agent(&lab, &[], &sock, &bounds)?;
    let pid = running.pid();
    let packets = |text: &str| metric(text, "podtrace_kernel_events_total", &[("name", "packets")]);
    let before = packets(&get_unix(&sock, "/metrics", Duration::from_secs(5))?.1)?;
    let (web2, db) = (lab.plan.pod("web-2").unwrap().ip, lab.plan.host("db").unwrap().ip);
    tests::flood::send_syns(&lab.ns("web-2"), web2, db, SYNS)?;
    // Every SYN crosses web-2's veth before anything on the node can drop it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while packets(&get_unix(&sock, "/metrics", Duration::from_secs(10))?.1)? < before + SYNS as f64 {
        ensure!(Instant::now() < deadline, "the agent did not count the flood's SYNs within 2 minutes");
        std::thread::sleep(Duration::from_millis(200));
    }
    two_more_polls(&sock)?;
    healthz_within_1s(&sock, "after the flood")?;
    let (_, text) = get_unix(&sock, "/metrics", Duration::from_secs(5))?;
    let full = metric(&text, "podtrace_kernel_events_total", &[("name", "flow_map_full")])?;
    assert!(full > 0.0, "the flood did not fill the 262 144-entry table: {text}");
    // Present (an absent metric is an error), whatever it counted.
    metric(&text, "podtrace_agent_events_total", &[("name", "conntrack_events_dropped")])?;
    let hwm = status_kb(pid, "VmHWM:")? << 10;
    let budget = podtrace::cmd::agent::user_space_budget(50_000, 262_144);
    eprintln!("agent peak RSS during a {SYNS}-SYN flood: {} MiB (budget {} MiB)", hwm >> 20, budget >> 20);
    assert!(hwm <= budget, "peak RSS {} MiB over the budget of {} MiB", hwm >> 20, budget >> 20);
    let out = running.signal(Signal::SIGTERM)?;
    assert!(out.status.success(), "{}", out.stderr);
    Ok(())
}

/// 21 k idle TCP connections exhausted the agent's descriptors: `/healthz` and `/flows`
/// failed on both listeners and polling failed ("Too many open files").
#[test]
fn idle_connections_cannot_exhaust_the_agents_descriptors() -> Result<()> {
    let _turn = fd_heavy_turn();
    let lab = lab("hidle", |_| {})?;
    let sock = default_sock(&lab);
    // A limit the agent cannot raise: the connection cap must keep within it.
    let running = agent(&lab, &["prlimit", "--nofile=8192:8192"], &sock, &["--listen", "127.0.0.1:19301"])?;
    let pid = running.pid();
    // The issue's "done when": idle connections and ten stalled /flows clients at once.
    inject_flows(&lab, 50_000)?;
    two_more_polls(&sock)?;
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut s = UnixStream::connect(&sock)?;
        write!(s, "GET /flows HTTP/1.1\r\nHost: test\r\n\r\n")?;
        slow.push(s);
    }
    // 21 000 as in the issue, or as many as this process may open (above the agent's 8192).
    // The margin is for the tests running beside this one (labs, pipes, sockets).
    let n = raise_own_fd_limit(22_000)?.saturating_sub(1_000).min(21_000);
    assert!(n > 10_000, "room for {n} connections only");
    let conns = in_ns(&lab, "node-a", || {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(std::net::TcpStream::connect("127.0.0.1:19301")?);
        }
        Ok(v)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..5 {
        healthz_within_1s(&sock, &format!("with {n} idle TCP connections ({i})"))?;
        let (code, _) = in_ns(&lab, "node-a", || {
            let s = std::net::TcpStream::connect("127.0.0.1:19301")?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            get_on(s, "/healthz")
        })?;
        assert_eq!(code, 200, "healthz over TCP");
        std::thread::sleep(Duration::from_millis(200));
    }
    // /flows answers, once the stalled clients' answers are abandoned (503 until then).
    let retry_until = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get_unix(&sock, "/flows?limit=10", Duration::from_secs(10))?;
        if code == 503 && Instant::now() < retry_until {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        assert_eq!(code, 200, "{body}");
        assert_eq!(body.lines().count(), 10);
        break;
    }
    two_more_polls(&sock)?;
    let fds = fd_count(pid);
    assert!(fds < 1024, "the agent holds {fds} descriptors");
    let (hwm, limit) = (status_kb(pid, "VmHWM:")? << 10, daemonset_memory_limit()?);
    assert!(hwm < limit, "agent peak RSS {} MiB >= the DaemonSet's {} MiB", hwm >> 20, limit >> 20);
    drop(slow);
    let t = Instant::now();
    let out = std::process::Command::new(tests::podtrace_bin())
        .args(["healthz", "--socket", sock.to_str().unwrap()])
        .output()?;
    assert!(out.status.success(), "podtrace healthz: {}", String::from_utf8_lossy(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(1), "podtrace healthz took {:?}", t.elapsed());
    drop(conns);
    let out = running.signal(Signal::SIGTERM)?;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(!out.stderr.contains("Too many open files"), "{}", out.stderr);
    Ok(())
}

/// 500 slowloris connections (1 byte / 3 s): none was ever closed.
#[test]
fn slowloris_connections_are_closed() -> Result<()> {
    let _turn = fd_heavy_turn();
    let lab = lab("hslow", |_| {})?;
    let sock = default_sock(&lab);
    let _agent = agent(&lab, &[], &sock, &["--listen", "127.0.0.1:19302"])?;
    raise_own_fd_limit(4096)?;
    let mut conns = in_ns(&lab, "node-a", || {
        let mut v = Vec::new();
        for _ in 0..500 {
            let s = std::net::TcpStream::connect("127.0.0.1:19302")?;
            s.set_nonblocking(true)?;
            v.push(Some(s));
        }
        Ok(v)
    })?;
    let request =
        b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while conns.iter().any(Option::is_some) {
        ensure!(
            Instant::now() < deadline,
            "{} of 500 slowloris connections still open after 30 s",
            conns.iter().filter(|c| c.is_some()).count()
        );
        for c in conns.iter_mut() {
            let Some(s) = c else { continue };
            let mut buf = [0u8; 64];
            let closed = match s.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => true, // an error answer: the server gave up on it
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    s.write(&request[sent % request.len()..][..1]).is_err()
                }
                Err(_) => true,
            };
            if closed {
                *c = None;
            }
        }
        sent += 1;
        healthz_within_1s(&sock, "during the slowloris")?;
        std::thread::sleep(Duration::from_secs(3));
    }
    Ok(())
}

/// `--listen 0.0.0.0:PORT` served flows to the whole VPC without a word.
#[test]
fn listening_beyond_loopback_needs_insecure_listen() -> Result<()> {
    let lab = lab("hlisten", |_| {})?;
    let ns = lab.ns("node-a");
    let sock = default_sock(&lab);
    let pods = lab.pods_file();
    let base = ["agent", "--pods-file", pods.to_str().unwrap(), "--socket", sock.to_str().unwrap()];
    for addr in ["0.0.0.0:19303", "[::]:19303", "198.18.1.10:19303"] {
        let mut args = base.to_vec();
        args.extend(["--listen", addr]);
        let out = run_bounded(&ns, &args)?;
        one_line_error(&out, "--insecure-listen");
    }
    let out = netns::output("ip", &["netns", "exec", &ns, "ss", "-ltnH"])?;
    assert!(!out.contains(":19303"), "nothing listens after the refusals: {out}");
    let running = agent(&lab, &[], &sock, &["--listen", "0.0.0.0:19303", "--insecure-listen"])?;
    let out = running.signal(Signal::SIGTERM)?;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("unauthenticated"), "a warning: {}", out.stderr);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Pods file

/// The pods file replaced by a FIFO while the agent ran froze the whole agent.
#[test]
fn a_fifo_in_place_of_the_pods_file_does_not_freeze_the_agent() -> Result<()> {
    let lab = lab("hfifo", |_| {})?;
    let dir = state_dir(lab.prefix());
    let pods = dir.join("pods-live.json");
    std::fs::copy(lab.pods_file(), &pods)?;
    let sock = default_sock(&lab);
    let running = start_podtrace_via(&lab.ns("node-a"), &[], &tests::agent_args(&pods, &sock))?;
    std::fs::remove_file(&pods)?;
    nix::unistd::mkfifo(&pods, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        healthz_within_1s(&sock, "with a FIFO as pods file")?;
        std::thread::sleep(Duration::from_millis(300));
    }
    two_more_polls(&sock)?;
    let out = running.signal(Signal::SIGTERM)?;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
    Ok(())
}

/// `--pods-file /dev/zero`: RSS 5.3 GB and growing; a FIFO hung the start.
#[test]
fn pods_files_that_are_not_regular_files_are_refused() -> Result<()> {
    let lab = lab("hdevzero", |_| {})?;
    let ns = lab.ns("node-a");
    let fifo = state_dir(lab.prefix()).join("pods.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let sock = default_sock(&lab);
    for file in ["/dev/zero", fifo.to_str().unwrap()] {
        for args in [
            vec!["agent", "--pods-file", file, "--socket", sock.to_str().unwrap()],
            vec!["--pod", "web-2", "--pods-file", file, "--duration", "1s"],
        ] {
            let mut cmd = std::process::Command::new("ip");
            cmd.args(["netns", "exec", &ns]).arg(tests::podtrace_bin()).args(&args);
            let (out, _) = run_measured(&mut cmd, Duration::from_secs(20), 512 << 10)?;
            one_line_error(&out, "is not a regular file");
        }
    }
    Ok(())
}

/// A synthetic `kubectl get pods -A -o json` of `n` pods (about 230 bytes each) plus the lab's.
fn big_pods_file(lab: &Lab, n: usize) -> Result<PathBuf> {
    let lab_pods: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(lab.pods_file())?)?;
    let path = state_dir(lab.prefix()).join("pods-100k.json");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
    write!(f, "{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[")?;
    for p in lab_pods["items"].as_array().unwrap() {
        write!(f, "{p},")?;
    }
    for i in 0..n {
        if i > 0 {
            write!(f, ",")?;
        }
        write!(
            f,
            r#"{{"metadata":{{"name":"filler-{i}","namespace":"ns-{}","labels":{{"app":"filler"}}}},"spec":{{"nodeName":"node-{}","containers":[{{"name":"c"}}]}},"status":{{"phase":"Running","podIP":"10.{}.{}.{}","hostIP":"10.200.0.1"}}}}"#,
            i % 50,
            i % 200,
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        )?;
    }
    write!(f, "]}}")?;
    f.flush()?;
    Ok(path)
}

/// A pods file of 100 k pods (23 MB): trace RSS 460 MB, agent peak 636 MB.
#[test]
fn a_large_pods_file_is_parsed_in_bounded_memory() -> Result<()> {
    let lab = lab("hbigpods", |_| {})?;
    let ns = lab.ns("node-a");
    let small = lab.pods_file();
    let big = big_pods_file(&lab, 100_000)?;
    assert!(std::fs::metadata(&big)?.len() > 20 << 20);
    let trace = |pods: &Path| -> Result<u64> {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &ns]).arg(tests::podtrace_bin()).args([
            "--pod",
            "web-2",
            "--pods-file",
            pods.to_str().unwrap(),
            "--duration",
            "1s",
            "-o",
            "json",
        ]);
        let (out, rss) = run_measured(&mut cmd, Duration::from_secs(60), 2 << 20)?;
        assert!(out.status.success(), "{}", out.stderr);
        Ok(rss)
    };
    let baseline = trace(&small)?;
    let with_big = trace(&big)?;
    assert!(
        with_big < baseline + (40 << 10),
        "trace peak RSS {with_big} kB with 100 k pods, {baseline} kB with the lab's"
    );
    let sock = default_sock(&lab);
    let agent_peak = |pods: &Path| -> Result<u64> {
        let running = start_podtrace_via(&ns, &[], &tests::agent_args(pods, &sock))?;
        two_more_polls(&sock)?;
        // Named from the file all the same.
        let (_, text) = get_unix(&sock, "/metrics", Duration::from_secs(5))?;
        metric(&text, "podtrace_flows", &[("pod", "web-2")])?;
        let hwm = status_kb(running.pid(), "VmHWM:")?;
        assert!(running.signal(Signal::SIGTERM)?.status.success());
        Ok(hwm)
    };
    let (baseline, with_big) = (agent_peak(&small)?, agent_peak(&big)?);
    // The agent keeps every pod with an address (no --node-name here): about 100 bytes each.
    assert!(
        with_big < baseline + (40 << 10),
        "agent peak RSS {with_big} kB with 100 k pods, {baseline} kB with the lab's"
    );
    Ok(())
}

/// `{"items":[]}` followed by NUL bytes was accepted.
#[test]
fn trailing_garbage_after_the_pod_list_is_refused() -> Result<()> {
    let lab = lab("htrail", |_| {})?;
    let file = state_dir(lab.prefix()).join("trailing.json");
    let mut text = br#"{"items":[]}"#.to_vec();
    text.extend([0u8; 16]);
    std::fs::write(&file, text)?;
    let out = run_bounded(&lab.ns("node-a"), &["--pod", "web-2", "--pods-file", file.to_str().unwrap()])?;
    one_line_error(&out, "trailing characters");
    Ok(())
}

/// An invalid pods file left in place: a WARN every 2 s, forever.
#[test]
fn an_invalid_pods_file_is_reported_once_not_every_two_seconds() -> Result<()> {
    let lab = lab("hwarn", |_| {})?;
    let pods = state_dir(lab.prefix()).join("pods-live.json");
    std::fs::copy(lab.pods_file(), &pods)?;
    let sock = default_sock(&lab);
    let running = start_podtrace_via(
        &lab.ns("node-a"),
        &[],
        &["agent", "--pods-file", pods.to_str().unwrap(), "--socket", sock.to_str().unwrap()],
    )?;
    std::fs::write(&pods, "{\"items\": [")?;
    std::thread::sleep(Duration::from_secs(9));
    let (_, text) = get_unix(&sock, "/metrics", Duration::from_secs(5))?;
    assert_eq!(metric(&text, "podtrace_agent_events_total", &[("name", "pods_file_errors")])?, 1.0);
    // The pods it had are kept.
    assert!(metric(&text, "podtrace_flows", &[("pod", "web-2")]).is_ok(), "{text}");
    let out = running.signal(Signal::SIGTERM)?;
    let warnings = out.stderr.lines().filter(|l| l.contains("pods-live.json")).count();
    assert_eq!(warnings, 1, "{}", out.stderr);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Socket path

/// `--socket DIR/agent.sock` with DIR existing, mode 1777: DIR was chmod'ed to 0700.
#[test]
fn an_existing_socket_directory_keeps_its_mode() -> Result<()> {
    let lab = lab("hsockdir", |_| {})?;
    let dir = state_dir(lab.prefix()).join("shared");
    std::fs::create_dir(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))?;
    let sock = dir.join("agent.sock");
    let running = agent(&lab, &[], &sock, &[])?;
    assert_eq!(std::fs::metadata(&sock)?.permissions().mode() & 0o777, 0o600);
    assert!(running.signal(Signal::SIGTERM)?.status.success());
    assert_eq!(std::fs::metadata(&dir)?.permissions().mode() & 0o7777, 0o1777);
    // A directory podtrace creates itself is private.
    let own = state_dir(lab.prefix()).join("own/sub");
    let running = agent(&lab, &[], &own.join("agent.sock"), &[])?;
    assert_eq!(std::fs::metadata(&own)?.permissions().mode() & 0o777, 0o700);
    drop(running);
    Ok(())
}

/// A regular file at the socket path was silently deleted; other things are refused too.
#[test]
fn only_a_stale_socket_is_replaced() -> Result<()> {
    let lab = lab("hsockfile", |_| {})?;
    let ns = lab.ns("node-a");
    let dir = state_dir(lab.prefix());
    let pods = lab.pods_file();
    let file = dir.join("precious.txt");
    std::fs::write(&file, "keep me")?;
    let dangling = dir.join("dangling.sock");
    std::os::unix::fs::symlink(dir.join("nowhere/agent.sock"), &dangling)?;
    let subdir = dir.join("a-directory");
    std::fs::create_dir(&subdir)?;
    for (path, want) in
        [(&file, "is not a socket"), (&dangling, "dangling symlink"), (&subdir, "is not a socket")]
    {
        let out = run_bounded(
            &ns,
            &["agent", "--pods-file", pods.to_str().unwrap(), "--socket", path.to_str().unwrap()],
        )?;
        one_line_error(&out, want);
    }
    assert_eq!(std::fs::read_to_string(&file)?, "keep me");
    assert!(dangling.symlink_metadata().is_ok() && subdir.is_dir());
    // A stale socket (its agent SIGKILLed) is taken over.
    let sock = default_sock(&lab);
    agent(&lab, &[], &sock, &[])?.signal(Signal::SIGKILL)?;
    assert!(sock.exists());
    let running = agent(&lab, &[], &sock, &[])?;
    assert_eq!(get_unix(&sock, "/healthz", Duration::from_secs(5))?.0, 200);
    drop(running);
    Ok(())
}

/// Agent A running, its socket removed, agent B started on the path, A stopped: A deleted B's
/// socket.
#[test]
fn an_agent_removes_only_its_own_socket() -> Result<()> {
    let lab = lab("hsockown", |_| {})?;
    let sock = default_sock(&lab);
    let a = agent(&lab, &[], &sock, &[])?;
    std::fs::remove_file(&sock)?;
    let b = agent(&lab, &[], &sock, &[])?;
    assert!(a.signal(Signal::SIGTERM)?.status.success());
    assert!(sock.exists(), "A removed B's socket");
    assert_eq!(get_unix(&sock, "/healthz", Duration::from_secs(5))?.0, 200);
    assert!(b.signal(Signal::SIGTERM)?.status.success());
    assert!(!sock.exists(), "B removed its own socket");
    Ok(())
}

/// A second agent on a busy socket attached to every interface for ~1 s before refusing.
#[test]
fn a_second_agent_on_a_busy_socket_attaches_nothing() -> Result<()> {
    let lab = lab("hsockbusy", |_| {})?;
    let sock = default_sock(&lab);
    let _first = agent(&lab, &[], &sock, &[])?;
    let pods = lab.pods_file();
    let args = ["agent", "--pods-file", pods.to_str().unwrap(), "--socket", sock.to_str().unwrap()];
    let out = run_bounded(&lab.ns("node-a"), &args)?;
    one_line_error(&out, "another podtrace agent is serving");
    // With -v every attach is logged: there must be none.
    let mut verbose = args.to_vec();
    verbose.push("-v");
    let out = run_bounded(&lab.ns("node-a"), &verbose)?;
    assert!(!out.status.success());
    assert!(out.stderr.contains("another podtrace agent is serving"), "{}", out.stderr);
    assert!(!out.stderr.contains("attached to"), "{}", out.stderr);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Durations and sizes

/// Every duration flag with an absurd value, and a deadline that overflows `Instant`, is
/// one line and exit 2 before anything is attached (these panicked).
#[test]
fn absurd_durations_are_one_line_errors() -> Result<()> {
    let lab = lab("hdur", |_| {})?;
    let ns = lab.ns("node-a");
    let big = "99999999999999999999s";
    let cases: Vec<Vec<&str>> = vec![
        vec!["--pod", "web-2", "--duration", big],
        vec!["--pod-ip", "198.18.2.11", "--duration", "10000000000000000000s"],
        vec!["--pod", "web-2", "-o", "json", "--interval", big],
        vec!["compare", "--pod", "web-2", "--duration", big],
        vec!["node", "--watch", big],
        vec!["agent", "--idle-timeout", big],
        vec!["agent", "--poll-interval", big],
        vec!["agent", "--reconcile-interval", big],
        vec!["healthz", "--timeout", big],
    ];
    for args in &cases {
        let out = run_bounded(&ns, args)?;
        one_line_error(&out, "at most one year");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    Ok(())
}

/// The agent accepted `--sample-rate 18446744073709551615`, 0 and 3 (trace refused them).
#[test]
fn the_agent_validates_the_sample_rate_like_trace() -> Result<()> {
    let lab = lab("hrate", |_| {})?;
    for bad in ["18446744073709551615", "0", "3"] {
        let out = run_bounded(&lab.ns("node-a"), &["agent", "--sample-rate", bad])?;
        one_line_error(&out, "invalid sample rate");
    }
    Ok(())
}

/// `--max-flows 4294967295`: "Argument list too long (needs root…)"; `--max-flows 10000000`:
/// accepted, 2.1 GB of locked memory on 2 CPUs.
#[test]
fn flow_table_sizes_are_bounded_by_the_memory_they_lock() -> Result<()> {
    let lab = lab("hmaxflows", |_| {})?;
    let ns = lab.ns("node-a");
    let pods = lab.pods_file();
    let sock = default_sock(&lab);
    let cpus = podtrace::kernel::maps::possible_cpus()? as u64;
    for n in ["4294967295", "10000000"] {
        for args in [
            vec![
                "agent",
                "--pods-file",
                pods.to_str().unwrap(),
                "--socket",
                sock.to_str().unwrap(),
                "--max-flows",
                n,
            ],
            vec!["--pod", "web-2", "--pods-file", pods.to_str().unwrap(), "--max-flows", n],
        ] {
            let out = run_bounded(&ns, &args)?;
            one_line_error(&out, &format!("--max-flows {n} would lock"));
            assert!(out.stderr.contains(&format!("{cpus} CPUs")), "{}", out.stderr);
            assert!(!out.stderr.contains("needs root"), "{}", out.stderr);
        }
    }
    // The memory stated is what the kernel charges: 10 M entries on this machine.
    let out = run_bounded(
        &ns,
        &["--pod", "web-2", "--pods-file", pods.to_str().unwrap(), "--max-flows", "10000000"],
    )?;
    // struct htab_elem (48) + key (48) + per-CPU pointer (8), 40 bytes per CPU, 2^24 buckets.
    let expect = 10_000_000 * (104 + 40 * cpus) + (1u64 << 24) * 16;
    let stated = format!("{:.1} GB", expect as f64 / 1e9);
    assert!(out.stderr.contains(&stated), "{stated} in {}", out.stderr);
    assert!(podtrace_filters(&lab)?.is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Leftovers

/// Stops a podtrace started under `unshare --fork`: unshare ignores SIGTERM while it waits,
/// so the signal goes to its child, and unshare then exits with it.
fn stop_unshared(running: Running, sig: Signal) -> Result<Finished> {
    let pid = running.pid();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    let child: i32 = children.split_whitespace().next().context("unshare has no child")?.parse()?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), sig)?;
    running.finish()
}

/// The agent in its own PID namespace (the DaemonSet has no hostPID) removed a live
/// `--attach-mode tc` trace's filters as leftovers of a killed podtrace.
#[test]
fn an_agent_that_cannot_see_other_pids_leaves_live_filters_alone() -> Result<()> {
    let lab = lab("hpidns", |_| {})?;
    let pods = lab.pods_file();
    let trace_args =
        ["--pod", "web-2", "--pods-file", pods.to_str().unwrap(), "--attach-mode", "tc", "-o", "json"];
    let trace = start_podtrace_via(&lab.ns("node-a"), &[], &trace_args)?;
    assert_eq!(podtrace_filters(&lab)?.len(), 6);
    let unshare = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM"];
    let sock = default_sock(&lab);
    let running = agent(&lab, &unshare, &sock, &[])?;
    assert_eq!(get_unix(&sock, "/healthz", Duration::from_secs(5))?.0, 200);
    assert_eq!(podtrace_filters(&lab)?.len(), 6, "the live trace's filters");
    let to = lab.addr("db", 8080);
    traffic::tcp_request(&lab.ns("web-2"), to, 10)?;
    std::thread::sleep(Duration::from_millis(300));
    let out = trace.signal(Signal::SIGINT)?;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.flows().iter().any(|f| f.dst == to), "the trace kept working");
    let agent_out = stop_unshared(running, Signal::SIGTERM)?;
    assert!(agent_out.status.success(), "{}", agent_out.stderr);
    assert!(!agent_out.stderr.contains("removed leftover"), "{}", agent_out.stderr);

    // And what a SIGKILLed trace left is still found and removed from there.
    let killed = start_podtrace_via(&lab.ns("node-a"), &[], &trace_args)?;
    killed.signal(Signal::SIGKILL)?;
    assert_eq!(podtrace_filters(&lab)?.len(), 6);
    let running = agent(&lab, &unshare, &sock, &[])?;
    let out = stop_unshared(running, Signal::SIGTERM)?;
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stderr.matches("removed leftover tc filter").count(), 6, "{}", out.stderr);
    assert!(podtrace_filters(&lab)?.is_empty());
    Ok(())
}

/// SIGKILL of a tc-mode agent, then a restart: filters removed, but the empty clsact qdiscs
/// podtrace had created stayed. Another tool's clsact (with or without filters) stays.
#[test]
fn clsact_qdiscs_podtrace_created_go_with_the_leftovers() -> Result<()> {
    let lab = lab("hclsact", |_| {})?;
    let web2 = lab.plan.pod("web-2").unwrap().veth.clone();
    let web1 = lab.plan.pod("web-1").unwrap().veth.clone();
    sh(&lab, "node-a", &["tc", "qdisc", "add", "dev", "eth1", "clsact"])?;
    sh(
        &lab,
        "node-a",
        &[
            "tc", "filter", "add", "dev", "eth1", "ingress", "pref", "1", "protocol", "all", "u32", "match",
            "u32", "0", "0", "classid", "1:1",
        ],
    )?;
    sh(&lab, "node-a", &["tc", "qdisc", "add", "dev", &web2, "clsact"])?;
    let sock = default_sock(&lab);
    let killed = agent(&lab, &[], &sock, &["--attach-mode", "tc"])?;
    assert!(podtrace_filters(&lab)?.len() >= 8);
    assert!(has_clsact(&lab, "eth0")? && has_clsact(&lab, &web1)?);
    killed.signal(Signal::SIGKILL)?;
    assert!(has_clsact(&lab, "eth0")?, "SIGKILL leaves them");
    let running = agent(&lab, &[], &sock, &["--attach-mode", "tc"])?;
    let out = running.signal(Signal::SIGTERM)?;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("removed leftover tc filter"), "{}", out.stderr);
    assert!(podtrace_filters(&lab)?.is_empty());
    assert!(!has_clsact(&lab, "eth0")?, "podtrace's clsact on eth0 stayed");
    assert!(!has_clsact(&lab, &web1)?, "podtrace's clsact on {web1} stayed");
    assert!(has_clsact(&lab, "eth1")?, "the other tool's clsact on eth1");
    assert!(sh(&lab, "node-a", &["tc", "filter", "show", "dev", "eth1", "ingress"])?.contains("u32"));
    assert!(has_clsact(&lab, &web2)?, "the other tool's empty clsact on {web2}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// A pod deleted: `podtrace_packets_total{pod=…}` went down (31 200 → 30 096).
#[test]
fn a_deleted_pods_counters_never_go_down() -> Result<()> {
    let lab = lab("hmono", |_| {})?;
    let sock = default_sock(&lab);
    let _agent = agent(&lab, &[], &sock, &[])?;
    let pod = lab.add_pod("gone-1", "node-a", 0, 51)?;
    std::thread::sleep(Duration::from_millis(500));
    let ip = pod.pod.ip.to_string();
    assert_eq!(traffic::udp_stream(&pod.pod.netns, lab.addr("db", 8080), 20, 100, true)?, 20);
    two_more_polls(&sock)?;
    let packets = |text: &str| metric(text, "podtrace_packets_total", &[("pod", &ip)]);
    let (_, before) = get_unix(&sock, "/metrics", Duration::from_secs(5))?;
    assert_eq!(packets(&before)?, 40.0, "{before}");
    pod.delete()?;
    std::thread::sleep(Duration::from_millis(500));
    two_more_polls(&sock)?;
    let (_, after) = get_unix(&sock, "/metrics", Duration::from_secs(5))?;
    assert_eq!(packets(&after)?, 40.0, "a counter never decreases: {after}");
    let bytes = |text: &str| metric(text, "podtrace_bytes_total", &[("pod", &ip)]);
    assert_eq!(bytes(&after)?, bytes(&before)?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The --agent client

/// The client failed with one error line (after the line saying what it traces).
fn client_error(out: &Finished, want: &str) {
    assert!(!out.status.success(), "must fail: {want}: {}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.starts_with("podtrace: tracing ")).collect();
    assert_eq!(lines.len(), 1, "one error line for {want:?}, got: {:?}", out.stderr);
    assert!(lines[0].starts_with("error: ") && lines[0].contains(want), "{want:?} not in {:?}", lines[0]);
}

/// A fake agent on a unix socket: `/healthz` is fine, `/flows` gets `answer`.
fn fake_agent(dir: &Path, answer: impl Fn(&mut UnixStream) + Send + Sync + 'static) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("fake.sock");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if req.starts_with(b"GET /healthz") {
                    let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nok\n");
                } else {
                    answer(&mut s);
                }
            });
        }
    });
    Ok(path)
}

/// A directory for one test's sockets, removed when the test ends (also on panic).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(tag: &str) -> Scratch {
    Scratch(std::env::temp_dir().join(tests::unique_prefix(tag)))
}

/// `--agent` to a socket that streams forever: client RSS 2.3 GB in 8 s, `--duration` ignored.
#[test]
fn the_agent_client_caps_what_it_reads_and_keeps_its_duration() -> Result<()> {
    let scratch = scratch_dir("hclientinf");
    let dir = &scratch.0;
    let sock = fake_agent(dir, |s| {
        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/x-ndjson\r\n\r\n");
        let chunk = vec![b'{'; 1 << 16];
        while s.write_all(&chunk).is_ok() {}
    })?;
    let mut cmd = std::process::Command::new(tests::podtrace_bin());
    cmd.args(["--pod", "web-1", "--agent", sock.to_str().unwrap(), "--duration", "2s", "-o", "json"]);
    let (out, rss_kb) = run_measured(&mut cmd, Duration::from_secs(30), 512 << 10)?;
    client_error(&out, "the answer from the agent exceeds 32 MiB");
    assert!(rss_kb < 200 << 10, "client peak RSS {rss_kb} kB");
    Ok(())
}

/// `--agent` to a socket sending garbage: the raw bytes reached the terminal.
#[test]
fn the_agent_client_never_prints_control_bytes() -> Result<()> {
    let scratch = scratch_dir("hclientesc");
    let dir = &scratch.0;
    // An error answer full of terminal escapes.
    let sock = fake_agent(dir, |s| {
        let _ =
            s.write_all(b"HTTP/1.0 500 \x1b]0;owned\x07\r\n\r\n\x1b[2J\x1b[31mEVIL\x00\x08\x7f\xc2\x9b6n\n");
    })?;
    let out = std::process::Command::new(tests::podtrace_bin())
        .args(["--pod", "web-1", "--agent", sock.to_str().unwrap(), "--duration", "1s"])
        .output()?;
    let finished = Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    client_error(&finished, "agent answered HTTP/1.0 500");
    let clean = |bytes: &[u8], what: &str| {
        let text = String::from_utf8_lossy(bytes);
        let bad: Vec<char> = text.chars().filter(|c| c.is_control() && *c != '\n').collect();
        assert!(bad.is_empty(), "{what} has control characters {bad:?}: {text:?}");
    };
    clean(&out.stderr, "an error answer");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("EVIL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A well-formed flow whose names carry escapes, printed as a table and as JSON.
    let flow = serde_json::json!({
        "pod": "web-1\u{1b}[2J", "namespace": "default\u{7}", "pod_ip": "198.18.1.11", "proto": "udp",
        "direction": "egress", "src": "198.18.1.11:1000", "dst": "198.18.3.10:8080",
        "path": [{"ifname": "eni\u{1b}]0;x\u{7}", "role": "pod-veth", "hook": "ingress",
                  "src": "198.18.1.11:1000", "dst": "198.18.3.10:8080", "packets": 1, "bytes": 40}],
        "reply_path": [], "eni": "eth0\u{9b}", "pod_ip_owner_eni": null, "snat": null, "dnat": null,
        "ingress_mode": null, "hop_latency_us": [], "packets": 1, "bytes": 40, "nat_steps": 0,
        "client_ip_preserved": null, "node_crossing": false, "unanswered_after": null,
        "no_reply": false, "drops": [], "retransmits": 0, "first_seen_ms": 1, "last_seen_ms": 1,
        "id": "udp:198.18.1.11:1000>198.18.3.10:8080"
    });
    let _: tests::FlowReport = serde_json::from_value(flow.clone())?;
    let line = format!("{flow}\n");
    let sock = fake_agent(&dir.join("2"), move |s| {
        let _ = s.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{line}").as_bytes());
    })?;
    for format in ["table", "json"] {
        let out = std::process::Command::new(tests::podtrace_bin())
            .args(["--pod", "web-1", "--agent", sock.to_str().unwrap(), "--duration", "1s", "-o", format])
            .output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        clean(&out.stdout, format);
        assert!(String::from_utf8_lossy(&out.stdout).contains("web-1"));
    }
    Ok(())
}
