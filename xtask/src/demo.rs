//! `cargo xtask demo`: the lab, podtrace on node-a tracing web-2, and the brief's traffic cases
//! one after the other. podtrace prints its grouped view of web-2's paths every few seconds
//! and at the end; the demo checks that the final one has the five paths of the cases (VPC,
//! internet via SNAT, NodePort, pod IP, ClusterIP) and writes the path diagram to
//! `target/demo/paths.html` (and `.svg`). The lab is torn down at the end, also after Ctrl-C.
use std::{
    cell::Cell,
    io::{BufRead, BufReader},
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

fn target_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().map_or(manifest.clone(), PathBuf::from);
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

/// The podtrace binary of this workspace, built in debug mode.
pub fn podtrace_bin() -> Result<PathBuf> {
    crate::cargo(&["build", "--quiet", "--bins", "-p", "tracer-user"])?;
    let bin = target_dir().join("debug/podtrace");
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
    let out_dir = target_dir().join("demo");
    std::fs::create_dir_all(&out_dir)?;
    let (html, svg) = (out_dir.join("paths.html"), out_dir.join("paths.svg"));
    eprintln!(
        "demo: $ podtrace --pod web-2 --pods-file {} --interval 4s --html {} --svg {}   (on node-a)",
        pods_file.display(),
        html.display(),
        svg.display()
    );
    // Piped: podtrace prints the plain grouped view (the live view needs a terminal of its
    // own); the demo shows it as it comes and keeps it for the check.
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("node-a")])
        .arg(bin)
        .args(["--pod", "web-2", "--pods-file"])
        .arg(&pods_file)
        .args(["--interval", "4s", "--html"])
        .arg(&html)
        .arg("--svg")
        .arg(&svg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting podtrace")?;
    // Its stderr is shown as it comes; the traffic starts once it says it is tracing.
    let stderr = child.stderr.take().context("podtrace's stderr")?;
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if line.starts_with("podtrace: tracing") {
                let _ = ready_tx.send(());
            }
        }
    });
    let stdout = child.stdout.take().context("podtrace's stdout")?;
    let printer = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            seen.push(line);
        }
        seen
    });
    if ready.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        bail!("podtrace did not start tracing");
    }
    let web2 = lab.ns("web-2");
    let alb = lab.ns("alb");
    let nodeport_served_by_web_2 = Cell::new(0);
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
            Box::new(|| {
                let s = traffic::tcp_load(&alb, lab.addr("node-a", 30080), 10, 2, 256)?;
                nodeport_served_by_web_2.set(s.served_by.get("web-2").copied().unwrap_or(0));
                summary(s)
            }),
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
    // Stop podtrace like a user would: it prints the final view and its counters.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGINT);
    let status = child.wait()?;
    let printed = printer.join().map_err(|_| anyhow::anyhow!("reading podtrace's output failed"))?;
    if !status.success() {
        bail!("podtrace exited with {status}");
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Ok(());
    }
    check_final_view(lab, &printed, nodeport_served_by_web_2.get())?;
    eprintln!("demo: the same paths as a picture: {} (and {})", html.display(), svg.display());
    Ok(())
}

/// The last grouped view podtrace printed: about five rows, one per case of the demo, instead
/// of a line per connection.
fn check_final_view(lab: &Lab, printed: &[String], nodeport_served_by_web_2: u32) -> Result<()> {
    let start = printed
        .iter()
        .rposition(|l| l.starts_with("paths of default/web-2 after"))
        .context("podtrace printed no grouped view")?;
    let rows: Vec<&String> = printed[start + 2..].iter().take_while(|l| !l.trim().is_empty()).collect();
    let node = lab.plan.node("node-a").context("node-a")?;
    let (eth0, eth1) = (&node.enis[0], &node.enis[1]);
    let alb = lab.addr("alb", 0).ip();
    let mut expected = vec![
        ("VPC", format!("web-2 → {} ⇒ {}", eth1.name, lab.addr("db", 8080)), "-".to_string()),
        (
            "internet via SNAT",
            format!("web-2 → {} ⇒ {}", eth0.name, lab.addr("inet", 80)),
            format!("SNAT → {}:*", eth0.ip),
        ),
        ("pod IP (direct)", format!("{alb}:* ⇒ {} → web-2:8080", eth1.name), "direct".into()),
        (
            "ClusterIP",
            // The pod asked for the service: kube-proxy's rules name it (`default/api:http`).
            format!("web-2 → {} ⇒ {}", eth1.name, service_port_name(lab, "api", 80)?),
            format!("DNAT {} → ", lab.addr("api", 80)),
        ),
    ];
    // kube-proxy picks web-2 or web-3 at random; requests web-3 served are not web-2's.
    if nodeport_served_by_web_2 > 0 {
        expected.push((
            "NodePort",
            format!("{alb}:* ⇒ {} → web-2:8080", eth0.name),
            format!("DNAT NodePort {}:30080", eth0.ip),
        ));
    }
    let missing: Vec<&str> = expected
        .iter()
        .filter(|(_, path, nat)| {
            !rows
                .iter()
                .any(|r| r.contains(" tcp ") && r.contains(&format!(" {path} ")) && r.contains(nat.as_str()))
        })
        .map(|(what, _, _)| *what)
        .collect();
    // The five cases, plus the UDP datagrams to db: a path of their own (another protocol).
    if !missing.is_empty() || rows.len() > expected.len() + 1 {
        bail!(
            "the final view should show the demo's {} paths, one row each; missing: {missing:?}; rows:\n{}",
            expected.len(),
            rows.iter().map(|r| r.as_str()).collect::<Vec<_>>().join("\n")
        );
    }
    eprintln!(
        "demo: {} rows instead of a line per connection: {} (and UDP to db)",
        rows.len(),
        expected.iter().map(|(what, _, _)| *what).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// A service port as kube-proxy names it: `default/web` unnamed, `default/api:http` named.
fn service_port_name(lab: &Lab, service: &str, port: u16) -> Result<String> {
    let svc = lab.plan.service(service).context("no such service")?;
    let p = svc.ports.iter().find(|p| p.port == port && p.proto == "tcp").context("no such port")?;
    Ok(if p.name.is_empty() {
        format!("default/{}", svc.name)
    } else {
        format!("default/{}:{}", svc.name, p.name)
    })
}

fn summary(s: traffic::LoadStats) -> Result<String> {
    Ok(format!(
        "{} requests ok, {} failed, served by {:?}, client IP preserved in {}",
        s.ok, s.failed, s.served_by, s.client_ip_preserved
    ))
}
