//! `cargo xtask compare`: the same workload from the lab's ALB once through node-a's NodePort
//! (target-type instance) and once straight to web-2's pod IP (target-type ip), with
//! `podtrace compare` running on node-a; writes the report and chart under target/compare/.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use xtask::lab::{Etp, Lab, LabConfig, traffic};

pub fn run(etp: Etp, requests: u32) -> Result<()> {
    let bin = crate::demo::podtrace_bin()?;
    let out_dir = bin.parent().and_then(|p| p.parent()).map(|t| t.join("compare")).context("target dir")?;
    std::fs::create_dir_all(&out_dir)?;
    let lab = Lab::start(&LabConfig { prefix: "pt-cmp-".into(), etp, ..LabConfig::default() })?;
    let result = drive(&lab, &bin, &out_dir, requests);
    drop(lab);
    result
}

fn drive(lab: &Lab, bin: &PathBuf, out_dir: &std::path::Path, requests: u32) -> Result<()> {
    let pods = lab.pods_file();
    let f = |n: &str| out_dir.join(n).to_string_lossy().into_owned();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("node-a")])
        .arg(bin)
        .args(["compare", "-l", "app=web", "--sample-rate", "1", "--pods-file"])
        .arg(&pods)
        .args(["--svg", &f("compare.svg"), "--html", &f("compare.html"), "--json", &f("compare.json")])
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting podtrace compare")?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("tracing") => break,
            Some(Ok(l)) => eprintln!("{l}"),
            _ => bail!("podtrace compare did not start"),
        }
    }
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| eprintln!("{l}")));
    let alb = lab.ns("alb");
    traffic::client_ports(&alb, 20000, 29999)?;
    let instance = traffic::tcp_load(&alb, lab.addr("node-a", 30080), requests, 8, 512)?;
    traffic::client_ports(&alb, 40000, 49999)?;
    let ip = traffic::tcp_load(&alb, lab.addr("web-2", 8080), requests, 8, 512)?;
    for (name, s) in [("instance (node-a:30080)", &instance), ("ip (web-2 pod IP)", &ip)] {
        let mut l = s.latencies_us.clone();
        l.sort_unstable();
        let p50 = l.get(l.len() / 2).copied().unwrap_or(0);
        eprintln!(
            "compare: {name}: {} requests ok, {} failed, served by {:?}, client-side p50 {p50} µs",
            s.ok, s.failed, s.served_by
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGINT)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("podtrace compare exited with {status}");
    }
    eprintln!("compare: wrote {}, {} and {}", f("compare.svg"), f("compare.html"), f("compare.json"));
    Ok(())
}
