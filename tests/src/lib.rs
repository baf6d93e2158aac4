//! Helpers shared by the end-to-end tests. Every test builds its own namespaces under a
//! unique prefix and tears them down in a guard that also runs when the test panics.
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;
pub use podtrace::report::json::{FlowReport, HopReport};
use xtask::netns;

/// Frame builders (and the malformed-packet table), shared with tracer-ebpf's host tests.
pub use test_frames as packets;

pub mod flood;
pub mod kube_stand_in;
pub mod otlp_receiver;

/// A namespace prefix unique to this test process and call, e.g. `t1234x3-`.
pub fn unique_prefix(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("t{}{tag}{n}-", std::process::id() % 100_000)
}

/// Two namespaces `<prefix>a` / `<prefix>b` joined by a veth pair `va` <-> `vb`
/// (198.18.250.1/24 and .2). Deleted on drop.
pub struct VethPair {
    pub a: String,
    pub b: String,
}

impl VethPair {
    pub fn new(tag: &str) -> Result<VethPair> {
        let p = unique_prefix(tag);
        let pair = VethPair { a: format!("{p}a"), b: format!("{p}b") };
        netns::add(&pair.a)?;
        netns::add(&pair.b)?;
        netns::ip_batch(
            &pair.a,
            &[
                format!("link add va type veth peer name vb netns {}", pair.b),
                "addr add 198.18.250.1/24 dev va".into(),
                "link set va up".into(),
                "link set lo up".into(),
            ],
        )?;
        netns::ip_batch(
            &pair.b,
            &["addr add 198.18.250.2/24 dev vb".into(), "link set vb up".into(), "link set lo up".into()],
        )?;
        Ok(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = netns::del(&self.a);
        let _ = netns::del(&self.b);
    }
}

/// The podtrace binary built by `cargo build` (PODTRACE_BIN overrides).
pub fn podtrace_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("PODTRACE_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/podtrace
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("podtrace");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build --bins` first (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// The kubectl plugin binary built beside podtrace (`cargo build --bins`).
pub fn kubectl_podtrace_bin() -> std::path::PathBuf {
    let bin = podtrace_bin().with_file_name("kubectl-podtrace");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build --bins` first (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A running `podtrace` inside a namespace, its stderr collected line by line.
pub struct Running {
    child: std::process::Child,
    stderr: std::sync::mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

/// What a finished podtrace printed.
#[derive(Debug)]
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// stdout parsed as flows of the JSON contract (one per line).
    pub fn flows(&self) -> Vec<FlowReport> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a flow of the contract: {l:?}: {e}"))
            })
            .collect()
    }

    /// stdout parsed as JSON lines.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    /// The `podtrace summary: {...}` line of `-o json` runs.
    pub fn summary(&self) -> serde_json::Value {
        let line = self
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("podtrace summary: "))
            .unwrap_or_else(|| panic!("no summary in stderr: {}", self.stderr));
        serde_json::from_str(line).expect("summary JSON")
    }
}

/// Starts `podtrace ARGS` in `ns` (via `ip netns exec`) and waits until it says it is tracing.
pub fn start_podtrace(ns: &str, args: &[&str]) -> Result<Running> {
    spawn_podtrace(ns, &[], args, &[], std::process::Stdio::piped())
}

/// `start_podtrace` with environment variables (KUBECONFIG, OTEL_EXPORTER_OTLP_*).
pub fn start_podtrace_with(ns: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Running> {
    spawn_podtrace(ns, &[], args, env, std::process::Stdio::piped())
}

/// As [`start_podtrace`], stdout going to `stdout` (a file a test reads while podtrace runs).
pub fn start_podtrace_to(ns: &str, args: &[&str], stdout: std::process::Stdio) -> Result<Running> {
    spawn_podtrace(ns, &[], args, &[], stdout)
}

/// As [`start_podtrace`], with podtrace run by `wrapper` (e.g. `["prlimit", "--nofile=64"]`,
/// `["unshare", "--pid", "--fork", "--mount-proc"]`) inside the namespace.
pub fn start_podtrace_via(ns: &str, wrapper: &[&str], args: &[&str]) -> Result<Running> {
    spawn_podtrace(ns, wrapper, args, &[], std::process::Stdio::piped())
}

fn spawn_podtrace(
    ns: &str,
    wrapper: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
    stdout: std::process::Stdio,
) -> Result<Running> {
    use std::io::BufRead;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(wrapper)
        .arg(podtrace_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut running = Running { child, stderr: rx, stderr_seen: Vec::new() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match running.stderr.recv_timeout(left) {
            Ok(line) => {
                let ready = line.starts_with("podtrace: ") && line.contains("tracing");
                running.stderr_seen.push(line);
                if ready {
                    return Ok(running);
                }
            }
            Err(_) => {
                let _ = running.child.kill();
                let out = running.finish()?;
                anyhow::bail!("podtrace did not start: {}", out.stderr);
            }
        }
    }
}

/// `podtrace agent` with a pods file and socket, polling every 200 ms: what every test's agent
/// starts from.
pub fn agent_args<'a>(pods: &'a std::path::Path, sock: &'a std::path::Path) -> Vec<&'a str> {
    vec![
        "agent",
        "--pods-file",
        pods.to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
        "--poll-interval",
        "200ms",
    ]
}

/// Starts `podtrace agent` on the lab's node-a with the lab's pods file, its socket in the
/// lab's state directory and a 200 ms poll interval, plus `extra` arguments.
pub fn start_agent(lab: &xtask::lab::Lab, extra: &[&str]) -> Result<(Running, std::path::PathBuf)> {
    let sock = xtask::lab::state_dir(lab.prefix()).join("agent.sock");
    let pods = lab.pods_file();
    let mut args = agent_args(&pods, &sock);
    args.extend(extra);
    Ok((start_podtrace(&lab.ns("node-a"), &args)?, sock))
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for podtrace to exit (it was started with --duration) and collects its output.
    pub fn finish(mut self) -> Result<Finished> {
        use std::io::Read;
        let mut stdout = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut stdout)?;
        }
        let status = self.child.wait()?;
        let more: Vec<String> = self.stderr.iter().collect();
        self.stderr_seen.extend(more);
        Ok(Finished { status, stdout, stderr: self.stderr_seen.join("\n") })
    }

    /// Sends a signal, then collects the output.
    pub fn signal(self, sig: nix::sys::signal::Signal) -> Result<Finished> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)?;
        self.finish()
    }
}

impl Drop for Running {
    /// A test that fails half-way must not leave podtrace running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs podtrace to completion in `ns` (for error cases).
pub fn run_podtrace(ns: &str, args: &[&str]) -> Result<Finished> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(podtrace_bin())
        .args(args)
        .output()?;
    Ok(Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    })
}

/// Starts a lab with a unique prefix for one test.
pub fn lab(tag: &str, cfg: impl FnOnce(&mut xtask::lab::LabConfig)) -> Result<xtask::lab::Lab> {
    let mut c = xtask::lab::LabConfig { prefix: unique_prefix(tag), ..Default::default() };
    cfg(&mut c);
    xtask::lab::Lab::start(&c)
}

/// The one flow matching a predicate (the first of several), or a panic listing them all.
pub fn one<'a>(flows: &'a [FlowReport], pred: impl Fn(&FlowReport) -> bool, what: &str) -> &'a FlowReport {
    flows.iter().find(|f| pred(f)).unwrap_or_else(|| panic!("no flow {what} in {flows:#?}"))
}

/// `["eniX/ingress", "eth1/egress"]` of a path.
pub fn hops(path: &[HopReport]) -> Vec<String> {
    path.iter().map(|h| h.name().to_string()).collect()
}

/// Traces `pod` on `node` with `-o json` (plus `extra` arguments) while `traffic` runs, stops
/// podtrace with SIGINT and returns its flows.
pub fn trace_pod(
    lab: &xtask::lab::Lab,
    node: &str,
    pod: &str,
    extra: &[&str],
    traffic: impl FnOnce() -> Result<()>,
) -> Result<Vec<FlowReport>> {
    let pods_file = lab.pods_file();
    let mut args = vec!["--pod", pod, "--pods-file", pods_file.to_str().unwrap(), "-o", "json"];
    args.extend(extra);
    let running = start_podtrace(&lab.ns(node), &args)?;
    traffic()?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = running.signal(nix::sys::signal::Signal::SIGINT)?;
    assert!(out.status.success(), "podtrace failed: {}", out.stderr);
    Ok(out.flows())
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Sum of the samples of metric `name` whose labels include `labels`; an error when there is
/// no such sample (an absent metric is not zero).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let found: Vec<f64> = parse_prometheus(text)?
        .iter()
        .filter(|s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    if found.is_empty() {
        anyhow::bail!("no sample of {name} with labels {labels:?}");
    }
    Ok(found.iter().sum())
}

/// Strict parser of the Prometheus / OpenMetrics text format: every line must be a comment
/// (`# HELP`, `# TYPE`, `# EOF`) or a well-formed sample.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why: &str| anyhow::anyhow!("line {}: {why}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix("# ") {
            let mut w = c.split_whitespace();
            match w.next() {
                Some("HELP") | Some("TYPE") => {
                    let name = w.next().ok_or_else(|| bad("comment without a metric name"))?;
                    if !valid_name(name) {
                        return Err(bad("bad metric name"));
                    }
                }
                Some("EOF") => {}
                _ => return Err(bad("unknown comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad("no value"))?;
        let value: f64 = value.parse().map_err(|_| bad("value is not a number"))?;
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').ok_or_else(|| bad("unclosed labels"))?),
            None => (series, ""),
        };
        if !valid_name(name) {
            return Err(bad("bad metric name"));
        }
        let map = parse_labels(labels).ok_or_else(|| bad("malformed labels"))?;
        out.push(Sample { name: name.to_string(), labels: map, value });
    }
    Ok(out)
}

/// GETs a path from an agent's unix socket; returns (status code, body).
pub fn agent_get(socket: &std::path::Path, method: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: test\r\nContent-Length: 0\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

/// `k="v",k2="v2"` with `\\`, `\"` and `\n` escapes in values.
fn parse_labels(s: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let mut map = std::collections::BTreeMap::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        map.insert(key, value);
        match chars.next() {
            None => break,
            Some(',') => continue,
            Some(_) => return None,
        }
    }
    Some(map)
}

/// Raw BPF syscalls the tests need on programs owned by another process (a running podtrace):
/// open a program by id and run it on a packet (BPF_PROG_TEST_RUN).
pub mod bpf {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use anyhow::{Result, bail};

    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

    fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> libc::c_long {
        // SAFETY: attr is a zero-initialised buffer larger than union bpf_attr's used part.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) }
    }

    pub fn prog_fd_by_id(id: u32) -> Result<OwnedFd> {
        let mut attr = [0u64; 16];
        attr[0] = id as u64; // prog_id (u32) + next_id
        let fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut attr);
        if fd < 0 {
            bail!("BPF_PROG_GET_FD_BY_ID {id}: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new fd.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Runs a TC program once on `data` with `skb->ifindex = ifindex` (interface of the calling
    /// thread's network namespace). Returns the program's verdict.
    pub fn test_run(prog: &impl AsRawFd, data: &[u8], ifindex: u32) -> Result<i32> {
        let mut ctx = [0u8; 192]; // struct __sk_buff
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; data.len() + 256];
        let mut attr = [0u64; 16];
        // struct { u32 prog_fd, retval, data_size_in, data_size_out; u64 data_in, data_out;
        //          u32 repeat, duration, ctx_size_in, ctx_size_out; u64 ctx_in, ctx_out; ... }
        attr[0] = prog.as_raw_fd() as u64;
        attr[1] = data.len() as u64 | ((out.len() as u64) << 32);
        attr[2] = data.as_ptr() as u64;
        attr[3] = out.as_mut_ptr() as u64;
        attr[4] = 1; // repeat
        attr[5] = ctx.len() as u64;
        attr[6] = ctx.as_ptr() as u64;
        if sys_bpf(BPF_PROG_TEST_RUN, &mut attr) < 0 {
            bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
        }
        Ok((attr[0] >> 32) as u32 as i32)
    }
}

/// The Community ID v1 of a TCP/UDP 5-tuple, computed by the spec's reference implementation
/// (Python `communityid`, installed by `cargo xtask setup`).
pub fn reference_community_id(
    proto: &str,
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
) -> Result<String> {
    let script = format!(
        "import communityid; print(communityid.CommunityID().calc(communityid.FlowTuple.make_{proto}('{}', '{}', {}, {})))",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    );
    let out = std::process::Command::new("python3").args(["-c", &script]).output()?;
    anyhow::ensure!(out.status.success(), "communityid: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}
