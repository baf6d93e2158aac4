//! The agent and the CLI under hostile input and resource exhaustion (issue 17): one test per
//! reproduced failure. Memory is measured from /proc (VmHWM of a running process, or the
//! `ru_maxrss` wait4 reports for a finished one); the only time bound asserted is the issue's
//! own: `/healthz` answers within 1 s.
use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use podtrace::kernel::tc;
use tests::{Finished, Running, lab, start_podtrace_via};
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

/// Starts an agent on node-a with the lab's pods file and `sock`, run by `wrapper`.
fn agent(lab: &Lab, wrapper: &[&str], sock: &Path, extra: &[&str]) -> Result<Running> {
    let pods = lab.pods_file();
    let mut args = vec![
        "agent",
        "--pods-file",
        pods.to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
        "--poll-interval",
        "200ms",
    ];
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
// Durations and sizes

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
