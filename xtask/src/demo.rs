//! `cargo xtask demo`: the lab, podtrace on node-a tracing web-2, and the brief's traffic cases
//! one after the other; then the final table and summary. The lab is torn down at the end, also
//! after Ctrl-C.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use xtask::lab::{Lab, LabConfig, traffic};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// The podtrace binary of this workspace, built in debug mode.
pub fn podtrace_bin() -> Result<PathBuf> {
    crate::cargo(&["build", "--quiet", "--bins", "-p", "tracer-user"])?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug/podtrace");
    if !bin.is_file() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}

fn step(what: &str) -> bool {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return false;
    }
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprintln!("\x1b[1mdemo:\x1b[0m {what}");
    } else {
        eprintln!("demo: {what}");
    }
    true
}

pub fn run() -> Result<()> {
    let bin = podtrace_bin()?;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    let lab = Lab::start(&LabConfig { prefix: "pt-demo-".into(), ..LabConfig::default() })?;
    let result = drive(&lab, &bin);
    drop(lab);
    eprintln!("demo: lab torn down");
    result
}

fn drive(lab: &Lab, bin: &PathBuf) -> Result<()> {
    let pods_file = lab.pods_file();
    eprintln!(
        "demo: lab up: node-a (eth0 {}, eth1 {}), pods web-1 (eth0) and web-2 (eth1)",
        lab.plan.node("node-a").map(|n| n.enis[0].ip.to_string()).unwrap_or_default(),
        lab.plan.node("node-a").map(|n| n.enis[1].ip.to_string()).unwrap_or_default()
    );
    eprintln!("demo: $ podtrace --pod web-2 --pods-file {}   (on node-a)", pods_file.display());
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("node-a")])
        .arg(bin)
        .args(["--pod", "web-2", "--pods-file"])
        .arg(&pods_file)
        .stdin(Stdio::null())
        .spawn()
        .context("starting podtrace")?;
    std::thread::sleep(Duration::from_millis(1500));
    let web2 = lab.ns("web-2");
    let alb = lab.ns("alb");
    type Case<'a> = (&'a str, Box<dyn Fn() -> Result<String> + 'a>);
    let cases: Vec<Case> = vec![
        (
            "web-2 (IP on eth1) -> VPC host db: expect eth1, no NAT",
            Box::new(|| summary(traffic::tcp_load(&web2, lab.addr("db", 8080), 5, 1, 256)?)),
        ),
        (
            "web-2 -> internet 203.0.113.10: expect eth0 and SNAT to eth0's IP",
            Box::new(|| summary(traffic::tcp_load(&web2, lab.addr("inet", 80), 5, 1, 256)?)),
        ),
        (
            "alb -> node-a:30080 (target-type instance): DNAT, MASQUERADE, maybe to node-b",
            Box::new(|| summary(traffic::tcp_load(&alb, lab.addr("node-a", 30080), 10, 2, 256)?)),
        ),
        (
            "alb -> web-2's pod IP (target-type ip): straight in on eth1",
            Box::new(|| summary(traffic::tcp_load(&alb, lab.addr("web-2", 8080), 5, 1, 256)?)),
        ),
        (
            "web-2 -> ClusterIP api 198.19.0.10:80: DNAT to api-1 on node-b",
            Box::new(|| summary(traffic::tcp_load(&web2, lab.addr("api", 80), 5, 1, 256)?)),
        ),
        (
            "web-2 -> db, 2000 UDP datagrams for per-hop latency",
            Box::new(|| {
                let n = traffic::udp_stream(&web2, lab.addr("db", 8080), 2000, 200, true)?;
                Ok(format!("{n} echoed"))
            }),
        ),
    ];
    for (what, run) in &cases {
        if !step(what) {
            break;
        }
        match run() {
            Ok(s) => eprintln!("      {s}"),
            Err(e) => eprintln!("      failed: {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(1200));
    }
    // Stop podtrace like a user would: it prints the final table and its counters.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGINT);
    let status = child.wait()?;
    if !status.success() {
        bail!("podtrace exited with {status}");
    }
    Ok(())
}

fn summary(s: traffic::LoadStats) -> Result<String> {
    Ok(format!(
        "{} requests ok, {} failed, served by {:?}, client IP preserved in {}",
        s.ok, s.failed, s.served_by, s.client_ip_preserved
    ))
}
