//! Named network namespaces (`/run/netns/NAME`, the iproute2 convention) and running code or
//! commands inside them.
use std::{
    fs::File,
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

const NETNS_DIR: &str = "/run/netns";

pub fn exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Names of all named namespaces.
pub fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

pub fn add(name: &str) -> Result<()> {
    run("ip", &["netns", "add", name])
}

/// Deletes the namespace; a missing one is not an error.
pub fn del(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    run("ip", &["netns", "del", name])
}

/// Moves the calling thread into the namespace. Only use on threads you own.
pub fn enter(name: &str) -> Result<()> {
    let f = File::open(Path::new(NETNS_DIR).join(name))
        .with_context(|| format!("network namespace {name} not found"))?;
    setns(f, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering netns {name}"))
}

/// Runs `f` on a fresh thread inside the namespace and returns its result. Sockets created by
/// `f` stay in that namespace for their whole life, wherever they are used later.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(name)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| bail!("thread in netns {name} panicked"))
    })
}

/// Runs a command and fails with its stderr when it fails.
pub fn run(cmd: &str, args: &[&str]) -> Result<()> {
    output(cmd, args).map(|_| ())
}

/// Runs a command and returns its stdout.
pub fn output(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd} (is it installed? try `cargo xtask setup`)"))?;
    if !out.status.success() {
        bail!("{cmd} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with `input` on stdin.
pub fn run_with_input(cmd: &str, args: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd}"))?;
    child.stdin.take().expect("piped stdin").write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{cmd} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs iproute2 commands (one per line, without the leading `ip`) inside a namespace.
pub fn ip_batch(ns: &str, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    run_with_input("ip", &["-n", ns, "-batch", "-"], &(lines.join("\n") + "\n"))
        .with_context(|| format!("configuring {ns}"))
}

/// Loads an iptables-restore ruleset into a namespace (v6 = ip6tables).
pub fn iptables_restore(ns: &str, rules: &str, v6: bool) -> Result<()> {
    let tool = if v6 { "ip6tables-restore" } else { "iptables-restore" };
    run_with_input("ip", &["netns", "exec", ns, tool], rules)
        .with_context(|| format!("loading {tool} rules into {ns}"))
}

/// Sets sysctls (path under /proc/sys, dotted) inside a namespace.
pub fn sysctls(ns: &str, settings: &[(String, String)]) -> Result<()> {
    let settings = settings.to_vec();
    run_in(ns, move || {
        for (k, v) in &settings {
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            std::fs::write(&path, v).with_context(|| format!("sysctl {k}={v} in {ns}"))?;
        }
        Ok(())
    })
}

/// Loads an iptables-restore ruleset with a given tool (`iptables-restore`,
/// `iptables-legacy-restore`) into a namespace.
pub fn iptables_restore_with(ns: &str, rules: &str, tool: &str) -> Result<()> {
    run_with_input("ip", &["netns", "exec", ns, tool], rules)
        .with_context(|| format!("loading {tool} rules into {ns}"))
}

/// Loads native nftables tables (`nft -f` input) into a namespace.
pub fn nft_apply(ns: &str, text: &str) -> Result<()> {
    run_with_input("ip", &["netns", "exec", ns, "nft", "-f", "-"], text)
        .with_context(|| format!("loading nft tables into {ns}"))
}
