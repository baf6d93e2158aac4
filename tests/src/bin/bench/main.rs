//! The benchmark harness behind `cargo xtask bench`: measures podtrace's overhead on the lab
//! and writes BENCHMARKS.md. Every figure is a ratio of configurations measured in the same run,
//! in interleaved rounds, reported as medians.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::programs::{LinkOrder, SchedClassifier, TcAttach, TcAttachType};
use clap::Parser;
use podtrace::{
    kernel::{load, netlink},
    node::links,
};
use tracer_common::names;
mod agent;
mod capture_cost;
mod check;
mod notes;
mod peers;
mod poll_cost;
mod report;
mod scale;

use agent::*;
use capture_cost::*;
use notes::*;
use report::*;

use xtask::{
    lab::{Lab, LabConfig},
    netns,
};

#[derive(Parser)]
#[command(about = "podtrace benchmarks on the namespace lab")]
struct Args {
    /// Short runs (CI smoke test): fewer rounds, shorter measurements.
    #[arg(long)]
    quick: bool,
    /// Where to write the report (default: print only).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The podtrace binary to measure (a release build).
    #[arg(long)]
    podtrace: PathBuf,
    /// Measure only the kernel cost per packet (figure 3), print it, write nothing.
    #[arg(long)]
    kernel_cost_only: bool,
    /// Measure only the agent figures (figure 4 and 5), print them, write nothing.
    #[arg(long)]
    agent_only: bool,
    /// Measure only the capture path's kernel cost (figure 3b), print it, write nothing.
    #[arg(long)]
    capture_cost_only: bool,
    /// Measure only the poll cost against CPUs and flows (figure 6), print it, write nothing.
    #[arg(long)]
    poll_cost_only: bool,
    /// Exit non-zero when a target is missed by more than the run's own spread.
    #[arg(long)]
    check: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    Untraced,
    Podtrace,
    Empty,
    Tcpdump,
}

impl Config {
    const ALL: [Config; 4] = [Config::Untraced, Config::Podtrace, Config::Empty, Config::Tcpdump];
    fn name(self) -> &'static str {
        match self {
            Config::Untraced => "untraced",
            Config::Podtrace => "podtrace",
            Config::Empty => "empty TC program",
            Config::Tcpdump => "tcpdump -w /dev/null",
        }
    }
}

struct Bench {
    lab: Lab,
    podtrace: PathBuf,
    /// The traced path: web-2's veth and node-a's ENIs.
    ifaces: Vec<String>,
    quick: bool,
}

/// Something running for one configuration; dropped to tear it down.
enum Active {
    None,
    Process(Vec<Child>),
    Programs(#[expect(dead_code, reason = "holds the programs attached until dropped")] aya::Ebpf),
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Active::Process(children) = self {
            for c in children.iter_mut() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::SIGINT,
                );
                let _ = c.wait();
            }
        }
    }
}

/// Measurements of each configuration, one per round.
type Rounds = BTreeMap<Config, Vec<f64>>;

/// Median over rounds of `cfg`'s measurement divided by the untraced one of the same round:
/// configurations measured minutes apart are never compared.
fn ratio(m: &Rounds, cfg: Config) -> f64 {
    let mut r: Vec<f64> = m[&cfg].iter().zip(&m[&Config::Untraced]).map(|(c, u)| c / u).collect();
    median(&mut r)
}

/// The median of measurements; there is always at least one.
fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty(), "a median of no measurements");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn wait_for_line(child: &mut Child, want: &str) -> Result<()> {
    use std::io::BufRead;
    let err = child.stderr.take().context("stderr")?;
    let mut lines = std::io::BufReader::new(err).lines();
    for line in lines.by_ref() {
        if line?.contains(want) {
            // Keep draining; warnings of the measured process are worth seeing (everything the
            // agent logs at debug level with BENCH_VERBOSE=1, e.g. poll timings).
            let all = std::env::var_os("BENCH_VERBOSE").is_some();
            std::thread::spawn(move || {
                for l in lines
                    .map_while(Result::ok)
                    .filter(|l| all || l.contains(" WARN ") || l.starts_with("error"))
                {
                    eprintln!("bench: (measured process) {l}");
                }
            });
            return Ok(());
        }
    }
    bail!("process ended before printing {want:?}")
}

/// A one-off iperf3 server in `ns` on `port`, once it listens: a client started earlier fails
/// at once, and the server would then wait for it forever.
fn iperf_server(ns: &str, port: &str) -> Result<Child> {
    let mut server = Command::new("ip")
        .args(["netns", "exec", ns, "iperf3", "-s", "-1", "-p", port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let since = Instant::now();
    while !netns::output("ip", &["netns", "exec", ns, "ss", "-Hltn", &format!("sport = :{port}")])?
        .contains(port)
    {
        if since.elapsed() > Duration::from_secs(10) {
            let _ = server.kill();
            let _ = server.wait();
            bail!("iperf3's server did not listen within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// Runs an iperf3 client against `server`; a failed client ends the server too.
fn iperf_client(mut server: Child, client: &mut Command) -> Result<std::process::Output> {
    let out = client.output()?;
    if !out.status.success() {
        let _ = server.kill();
    }
    let _ = server.wait();
    if !out.status.success() {
        bail!("iperf3 client: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

impl Bench {
    fn ns(&self, m: &str) -> String {
        self.lab.ns(m)
    }

    fn start(&self, cfg: Config) -> Result<Active> {
        let node = self.ns("node-a");
        match cfg {
            Config::Untraced => Ok(Active::None),
            Config::Podtrace => self.start_podtrace(&[]),
            Config::Empty => self.attach_empty(true),
            Config::Tcpdump => {
                let mut v = Vec::new();
                for i in &self.ifaces {
                    let mut c = Command::new("ip")
                        .args(["netns", "exec", &node, "tcpdump", "-i", i, "-w", "/dev/null", "-n"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .spawn()?;
                    wait_for_line(&mut c, "listening on")?;
                    v.push(c);
                }
                Ok(Active::Process(v))
            }
        }
    }

    /// `podtrace --pod web-2` with `extra` arguments, once it traces.
    fn start_podtrace(&self, extra: &[&str]) -> Result<Active> {
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.ns("node-a")])
            .arg(&self.podtrace)
            .args(["--pod", "web-2", "--pods-file"])
            .arg(self.lab.pods_file())
            .args(["-o", "json"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        wait_for_line(&mut c, "tracing")?;
        Ok(Active::Process(vec![c]))
    }

    /// podtrace's empty program on the traced hooks, before (`first`) or after the programs
    /// already attached there.
    fn attach_empty(&self, first: bool) -> Result<Active> {
        let ifaces = self.ifaces.clone();
        let e = netns::run_in(&self.ns("node-a"), move || {
            let mut e = load::load(&load::LoadOptions::default())?;
            let p: &mut SchedClassifier = e.program_mut(names::PROG_TC_NOOP).context("noop")?.try_into()?;
            p.load()?;
            for i in &ifaces {
                let idx = netlink::ifindex(i).ok_or_else(|| anyhow!("no {i}"))?;
                for d in [TcAttachType::Ingress, TcAttachType::Egress] {
                    let order = if first { LinkOrder::first() } else { LinkOrder::last() };
                    p.attach(idx, TcAttach::Tcx { attach_type: d, order })?;
                }
            }
            Ok(e)
        })?;
        Ok(Active::Programs(e))
    }

    fn iperf(&self, udp: bool, secs: u32) -> Result<f64> {
        let db = self.ns("db");
        let server = iperf_server(&db, "5201")?;
        let to = self.lab.plan.host("db").unwrap().ip.to_string();
        let t = secs.to_string();
        let mut args: Vec<String> =
            ["netns", "exec", &self.ns("web-2")].iter().map(|s| s.to_string()).collect();
        args.extend(["iperf3", "-c", &to, "-p", "5201", "-t", &t, "-J"].map(str::to_string));
        if udp {
            args.extend(["-u", "-l", "64", "-b", "0"].map(str::to_string));
        }
        let out = iperf_client(server, Command::new("ip").args(&args))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
        if udp {
            let s = &v["end"]["sum"];
            let packets = json_number(s, "packets")? - json_number(s, "lost_packets")?;
            Ok(packets / json_number(s, "seconds")?)
        } else {
            json_number(&v["end"]["sum_received"], "bits_per_second")
        }
    }

    /// Interleaved rounds of every configuration: the samples of each, in round order, and the
    /// CPU the podtrace process used while iperf3 ran in its rounds.
    fn rounds(&self, udp: bool) -> Result<(Rounds, CpuUse)> {
        let (rounds, secs) = if self.quick { (3, 1) } else { (11, 3) };
        let mut samples = Rounds::new();
        let mut podtrace_cpu = CpuUse::default();
        for r in 0..rounds {
            // Rotate the order each round so that drift does not favour one configuration.
            for k in 0..Config::ALL.len() {
                let cfg = Config::ALL[(k + r) % Config::ALL.len()];
                let active = self.start(cfg)?;
                // podtrace's process and its CPU ticks before the measurement.
                let podtrace_before = match (&active, cfg) {
                    (Active::Process(c), Config::Podtrace) => {
                        let pid = podtrace_pid(&c[0])?;
                        Some((pid, proc_stat(pid)?.0))
                    }
                    _ => None,
                };
                let started = Instant::now();
                let v = self.iperf(udp, secs)?;
                if let Some((pid, ticks)) = podtrace_before {
                    podtrace_cpu.ticks += proc_stat(pid)?.0 - ticks;
                    podtrace_cpu.seconds += started.elapsed().as_secs_f64();
                }
                drop(active);
                samples.entry(cfg).or_default().push(v);
            }
        }
        Ok((samples, podtrace_cpu))
    }

    /// ns per run of podtrace's programs and of the empty program (BPF_ENABLE_STATS) under a
    /// UDP load. In each round both are attached to the same hooks at once and measured over
    /// the same packets, so that the ratio of a round never compares two moments of this noisy
    /// machine; the empty program goes first in the chain in even rounds, last in odd ones.
    /// `extra`: podtrace's arguments besides `--pod web-2`.
    fn ns_per_packet(&self, extra: &[&str]) -> Result<KernelCost> {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
        let podtrace = [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS];
        let empty = [names::PROG_TC_NOOP];
        let mut k = KernelCost::default();
        for r in 0..if self.quick { 3 } else { 11 } {
            let traced = self.start_podtrace(extra)?;
            let floor = self.attach_empty(r % 2 == 0)?;
            let ids = self.attached_ids()?;
            let before = (self.prog_stats(&ids, &podtrace)?, self.prog_stats(&ids, &empty)?);
            self.iperf(true, if self.quick { 1 } else { 2 })?;
            let after = (self.prog_stats(&ids, &podtrace)?, self.prog_stats(&ids, &empty)?);
            drop(floor);
            drop(traced);
            let per_run = |b: (u64, u64), a: (u64, u64), what: &[&str]| -> Result<(f64, u64)> {
                let (t, c) = (a.0 - b.0, a.1 - b.1);
                if c == 0 {
                    bail!("{what:?} did not run under the UDP load");
                }
                Ok((t as f64 / c as f64, c))
            };
            let (ns, runs) = per_run(before.0, after.0, &podtrace)?;
            k.podtrace.push(ns);
            k.podtrace_runs += runs;
            let (ns, runs) = per_run(before.1, after.1, &empty)?;
            k.empty.push(ns);
            k.empty_runs += runs;
        }
        Ok(k)
    }

    fn attached_ids(&self) -> Result<Vec<u32>> {
        let ifaces = self.ifaces.clone();
        netns::run_in(&self.ns("node-a"), move || {
            let mut ids = Vec::new();
            for i in &ifaces {
                let idx = netlink::ifindex(i).ok_or_else(|| anyhow!("no {i}"))?;
                for d in [TcAttachType::Ingress, TcAttachType::Egress] {
                    let (_, progs) = SchedClassifier::query_tcx(idx, d).map_err(|e| anyhow!("{e}"))?;
                    ids.extend(progs.iter().map(|p| p.id()));
                }
            }
            Ok(ids)
        })
    }

    /// Run time and run count summed over the attached programs `ids` named `names`; each name
    /// must match one of them.
    fn prog_stats(&self, ids: &[u32], names: &[&str]) -> Result<(u64, u64)> {
        let listed: Vec<&str> = names.iter().map(|n| listed_name(n)).collect();
        let mut found = vec![false; listed.len()];
        let (mut t, mut c) = (0, 0);
        // Programs of other tools may be unloaded while we list them; ours stay attached, and
        // a name that matches nothing is an error below.
        for p in aya::programs::loaded_programs().flatten() {
            let Some(i) = p.name_as_str().and_then(|n| listed.iter().position(|l| *l == n)) else { continue };
            if ids.contains(&p.id()) {
                found[i] = true;
                t += p.run_time().as_nanos() as u64;
                c += p.run_count();
            }
        }
        if let Some(i) = found.iter().position(|f| !f) {
            bail!("no attached program (ids {ids:?}) is listed as {:?}", listed[i]);
        }
        Ok((t, c))
    }
}

/// The DaemonSet's sample rate (`deploy/daemonset.yaml`, the agent's default), for the second
/// row of figure 3.
const AGENT_SAMPLE_RATE: [&str; 2] = ["--sample-rate", "64"];

/// Figure 3: ns per run of each round, and the runs measured in all.
#[derive(Default)]
struct KernelCost {
    podtrace: Vec<f64>,
    empty: Vec<f64>,
    podtrace_runs: u64,
    empty_runs: u64,
}

impl KernelCost {
    /// podtrace / empty of each round.
    fn ratios(&self) -> Vec<f64> {
        self.podtrace.iter().zip(&self.empty).map(|(p, e)| p / e.max(1e-9)).collect()
    }
}

/// The name the kernel lists a program under: names are cut to BPF_OBJ_NAME_LEN (16) bytes
/// including the NUL, so `podtrace_ingress` is listed as `podtrace_ingres`.
fn listed_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

/// A number in iperf3's JSON; absent is an error, never a zero.
fn json_number(v: &serde_json::Value, field: &str) -> Result<f64> {
    v[field].as_f64().ok_or_else(|| anyhow!("no number {field:?} in {v}"))
}

/// "1 tick", "3 ticks".
fn ticks(n: u64) -> String {
    if n == 1 { "1 tick".into() } else { format!("{n} ticks") }
}

/// CPU time of a process over some interval, in clock ticks.
#[derive(Default)]
struct CpuUse {
    ticks: u64,
    seconds: f64,
}

impl CpuUse {
    fn percent_of_a_core(&self, clock: &Clock) -> f64 {
        self.ticks as f64 / clock.ticks_per_second / self.seconds * 100.0
    }
}

/// The unit of /proc/<pid>/stat's utime and stime: USER_HZ ticks, which sysconf(_SC_CLK_TCK)
/// returns; not CONFIG_HZ, the rate of the kernel's timer (250 on the machine this was
/// written on, where USER_HZ is 100).
struct Clock {
    ticks_per_second: f64,
}

impl Clock {
    fn user_hz() -> Result<Clock> {
        // SAFETY: sysconf only reads a system constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if hz <= 0 {
            bail!("sysconf(_SC_CLK_TCK) returned {hz}");
        }
        Ok(Clock { ticks_per_second: hz as f64 })
    }

    fn tick_ms(&self) -> f64 {
        1000.0 / self.ticks_per_second
    }
}

/// The pid of the podtrace process behind `child` (`ip netns exec` execs it in place), checked
/// so that the CPU and memory figures are never another process's.
fn podtrace_pid(child: &Child) -> Result<u32> {
    let pid = child.id();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    if comm.trim() != "podtrace" {
        bail!("process {pid} is {:?}, not podtrace", comm.trim());
    }
    Ok(pid)
}

/// Median, min and max.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    let m = median(&mut v);
    (m, v[0], v[v.len() - 1])
}

/// /proc/<pid> CPU ticks and memory.
fn proc_stat(pid: u32) -> Result<(u64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name (which may hold spaces and parentheses): state is field 3, utime
    // and stime are fields 14 and 15 of proc(5).
    let fields: Vec<&str> = stat.rsplit_once(')').context("/proc/pid/stat")?.1.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> { Ok(fields.get(i).context("/proc/pid/stat too short")?.parse()?) };
    let ticks = field(11)? + field(12)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |k: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {k} in /proc/{pid}/status"))
    };
    Ok((ticks, kb("VmRSS:")?, kb("VmHWM:")?))
}

/// One metric of the agent; absent is an error, never a zero.
fn metric(text: &str, name: &str, label: Option<(&str, &str)>) -> Result<f64> {
    tests::metric(text, name, label.as_slice())
}

fn stage(t0: Instant, what: &str) {
    eprintln!("bench: [{:>5.1} s] {what}", t0.elapsed().as_secs_f64());
}

/// Flows of the "million tracked" row (fewer in a quick run).
fn million_flows(quick: bool) -> u32 {
    if quick { 200_000 } else { 1_000_000 }
}

fn verdict(ok: bool, stretch: bool) -> &'static str {
    match (ok, stretch) {
        (true, true) => "met (stretch met)",
        (true, false) => "met",
        _ => "MISSED",
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = LabConfig { prefix: "pt-bench-".into(), ..LabConfig::default() };
    let lab = Lab::start(&cfg)?;
    let veth = lab.plan.pod("web-2").unwrap().veth.clone();
    let t0 = Instant::now();
    let b = Bench {
        lab,
        podtrace: args.podtrace.clone(),
        ifaces: vec![veth, "eth0".into(), "eth1".into()],
        quick: args.quick,
    };
    if args.kernel_cost_only {
        for (what, extra) in [("default", &[][..]), ("--sample-rate 64", &AGENT_SAMPLE_RATE[..])] {
            let k = b.ns_per_packet(extra)?;
            let (r, lo, hi) = spread(&k.ratios());
            println!(
                "podtrace ({what}) {:.1} ns/run, empty {:.1} ns/run (medians of {} rounds): {r:.2}x ({lo:.2} – {hi:.2})",
                spread(&k.podtrace).0,
                spread(&k.empty).0,
                k.podtrace.len()
            );
        }
        return Ok(());
    }
    if args.poll_cost_only {
        let mut s = String::new();
        poll_cost::table(&mut s, &poll_cost::measure(args.quick)?);
        print!("{s}");
        return Ok(());
    }
    if args.capture_cost_only {
        let mut s = String::new();
        capture_table(&mut s, &b.capture_cost()?);
        print!("{s}");
        return Ok(());
    }
    let clock = Clock::user_hz()?;
    if args.agent_only {
        let a = agent_figures(&b)?;
        let sock = xtask::lab::state_dir(b.lab.prefix()).join("bench-million.sock");
        let million = scale::million_tracked(&b, &sock, million_flows(b.quick))?;
        let mut s = String::new();
        agent_table(&mut s, &a, &million, &clock);
        print!("{s}");
        return Ok(());
    }
    stage(t0, "TCP throughput");
    let (tcp, tcp_cpu) = b.rounds(false)?;
    stage(t0, "UDP 64-byte packets/s");
    let (udp, udp_cpu) = b.rounds(true)?;
    stage(t0, "kernel ns per packet");
    let kernel = b.ns_per_packet(&[])?;
    let kernel_agent_rate = b.ns_per_packet(&AGENT_SAMPLE_RATE)?;
    stage(t0, "capture path, kernel ns per packet");
    let capture = b.capture_cost()?;
    stage(t0, "agent");
    let agent = agent_figures(&b)?;
    stage(t0, "agent holding a million flows");
    let sock = xtask::lab::state_dir(b.lab.prefix()).join("bench-million.sock");
    let million = scale::million_tracked(&b, &sock, million_flows(b.quick))?;
    stage(t0, "poll cost against CPUs and flows");
    let poll = poll_cost::measure(args.quick)?;
    let run =
        Run { tcp, tcp_cpu, udp, udp_cpu, kernel, kernel_agent_rate, capture, agent, million, poll, clock };
    let report = render(&args, &run);
    print!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report)?;
        eprintln!("bench: wrote {}", out.display());
    }
    stage(t0, "done");
    if args.check {
        check::enforce(&check::targets(&run))?;
    }
    Ok(())
}

/// Everything one run measured.
struct Run {
    tcp: Rounds,
    /// The podtrace process's CPU while iperf3 ran in its TCP / UDP rounds.
    tcp_cpu: CpuUse,
    udp: Rounds,
    udp_cpu: CpuUse,
    /// Figure 3 at podtrace's default sample rate, and at the agent's.
    kernel: KernelCost,
    kernel_agent_rate: KernelCost,
    capture: CaptureCost,
    agent: AgentFigures,
    million: scale::MillionTracked,
    poll: Vec<poll_cost::PollCell>,
    clock: Clock,
}
