//! BENCHMARKS.md from one run: the figures' tables and the reading, in this run's numbers.

use super::*;
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

/// The date (UTC) and the commit the report is written from; they only label the report, so
/// an error becomes a note in it rather than the end of the run.
pub(crate) fn provenance() -> String {
    let out = |cmd: &mut Command| -> Option<String> {
        let o = cmd.output().ok().filter(|o| o.status.success())?;
        Some(String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let date =
        out(Command::new("date").args(["-u", "+%Y-%m-%d"])).unwrap_or_else(|| "an unknown date".into());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let commit = match out(Command::new("git").args(["-C", root, "rev-parse", "--short", "HEAD"])) {
        Some(c) => {
            let dirty =
                out(Command::new("git").args(["-C", root, "status", "--porcelain", "--untracked-files=no"]))
                    .is_some_and(|s| !s.is_empty());
            format!("commit {c}{}", if dirty { " with local changes" } else { "" })
        }
        None => "an unknown commit".into(),
    };
    format!("on {date}, at {commit}")
}

pub(crate) fn render(args: &Args, run: &Run) -> String {
    let (tcp, udp, k, a) = (&run.tcp, &run.udp, &run.kernel, &run.agent);
    let cmd = if args.quick { "cargo xtask bench --quick" } else { "cargo xtask bench" };
    let mut s = String::new();
    writeln!(s, "# Benchmarks\n").unwrap();
    writeln!(s, "Written by `{cmd}` (as root) {}. Machine: {}.", provenance(), machine()).unwrap();
    writeln!(
        s,
        "Sections 1–8 and \"Reading this run\" hold the figures of this one run and nothing else (figure 8 quotes the peers' published figures beside them, with sources); throughput and"
    )
    .unwrap();
    writeln!(
        s,
        "packet rates are medians of interleaved rounds ({} rounds, rotating the order of the",
        if args.quick { 3 } else { 11 }
    )
    .unwrap();
    writeln!(s, "configurations each round); a ratio is the median over rounds of a configuration's figure divided by the untraced figure of the same round, so it compares configurations measured side by side.")
        .unwrap();
    writeln!(
        s,
        "The lab's two nodes, VPC and hosts share this machine, so absolute numbers are the lab's, not EKS's."
    )
    .unwrap();
    writeln!(
        s,
        "One figure alone: `cargo xtask bench --only kernel-cost|capture-cost|agent|poll-cost` (printed, not written); `--check` exits non-zero when a target is missed by more than the run's spread (figure 7)."
    )
    .unwrap();
    writeln!(s, "\"Notes from development\" at the end is hand-written, dated, and about earlier runs.\n")
        .unwrap();
    writeln!(
        s,
        "Configurations: *untraced*; *podtrace* (`podtrace --pod web-2`, tcx on web-2's veth, eth0 and eth1,"
    )
    .unwrap();
    writeln!(
        s,
        "both directions); *empty TC program* (a classifier that only returns TCX_NEXT on the same six hooks:"
    )
    .unwrap();
    writeln!(s, "the floor of any TC-based tool); *tcpdump* (`tcpdump -i IF -w /dev/null` on the same three interfaces).\n").unwrap();
    for (title, m, unit, scale, target, stretch, what) in [
        (
            "1. TCP throughput, pod → VPC host (iperf3)",
            tcp,
            "Gbit/s",
            1e-9,
            0.97,
            0.99,
            "traced/untraced throughput",
        ),
        (
            "2. Small packets: UDP 64 bytes, pod → VPC host (iperf3 -u -l 64 -b 0)",
            udp,
            "kpps",
            1e-3,
            0.95,
            0.98,
            "traced/untraced packet rate",
        ),
    ] {
        writeln!(s, "## {title}\n").unwrap();
        writeln!(s, "| configuration | {unit}, median (min – max) | ratio to untraced |").unwrap();
        writeln!(s, "|---|---|---|").unwrap();
        for c in Config::ALL {
            let (med, lo, hi) = spread(&m[&c]);
            writeln!(
                s,
                "| {} | {:.2} ({:.2} – {:.2}) | {:.3} |",
                c.name(),
                med * scale,
                lo * scale,
                hi * scale,
                ratio(m, c)
            )
            .unwrap();
        }
        let r = ratio(m, Config::Podtrace);
        let (pl, tl) = (1.0 - r, 1.0 - ratio(m, Config::Tcpdump));
        // tcpdump's loss over podtrace's; podtrace's may be zero or negative (within noise).
        // The empty program only returns: its "loss" is this run's noise floor. When
        // podtrace's loss is below it, podtrace's cost is at most the floor, and tcpdump's
        // loss is compared with the floor instead (a lower bound of the ratio).
        let floor = 1.0 - ratio(m, Config::Empty);
        let versus = if tl <= 0.0 {
            // A negative multiple of podtrace's cost would be a figure nobody measured.
            format!(
                "tcpdump's loss ({:.1} %) is within this run's noise too, so the two costs cannot be \
                 compared here (target ≥ 3×, stretch ≥ 5×): **not measurable here**",
                tl * 100.0
            )
        } else if pl > 0.0 && pl <= floor {
            let x = tl / floor;
            format!(
                "podtrace's loss ({:.1} %) is within this run's noise floor, the empty program's \
                 ({:.1} %); tcpdump's ({:.1} %) is {x:.1}× that floor, so tcpdump costs at least \
                 {x:.1}× what podtrace costs (target ≥ 3×, stretch ≥ 5×): **{}**",
                pl * 100.0,
                floor * 100.0,
                tl * 100.0,
                if x >= 3.0 { verdict(true, x >= 5.0) } else { "not measurable here" }
            )
        } else if pl > 0.0 {
            let x = tl / pl;
            format!(
                "tcpdump costs {x:.1}× what podtrace costs (target ≥ 3×, stretch ≥ 5×): **{}**",
                verdict(x >= 3.0, x >= 5.0)
            )
        } else {
            format!(
                "tcpdump costs {:.1} % while podtrace's cost is within noise (ratio ≥ 1), so tcpdump costs more than any multiple of it (target ≥ 3×, stretch ≥ 5×): **{}**",
                tl * 100.0,
                verdict(tl > 0.0, tl > 0.0)
            )
        };
        writeln!(
            s,
            "\nTarget: {what} ≥ {target} (stretch ≥ {stretch}): **{:.3} — {}**. {versus}.\n",
            r,
            verdict(r >= target, r >= stretch)
        )
        .unwrap();
    }
    let (pt, pt_lo, pt_hi) = spread(&k.podtrace);
    let (et, et_lo, et_hi) = spread(&k.empty);
    let (ratio, r_lo, r_hi) = spread(&k.ratios());
    writeln!(s, "## 3. Kernel cost per packet (BPF_ENABLE_STATS run_time_ns / run_cnt)\n").unwrap();
    writeln!(s, "| program | ns per run, median (min – max) | runs measured |\n|---|---|---|").unwrap();
    writeln!(s, "| podtrace (ingress + egress), default sample rate (1 in 16) | {pt:.1} ({pt_lo:.1} – {pt_hi:.1}) | {} |", k.podtrace_runs)
        .unwrap();
    writeln!(s, "| empty TC program | {et:.1} ({et_lo:.1} – {et_hi:.1}) | {} |", k.empty_runs).unwrap();
    let ka = &run.kernel_agent_rate;
    let ((at, at_lo, at_hi), (aet, aet_lo, aet_hi)) = (spread(&ka.podtrace), spread(&ka.empty));
    let (a_ratio, a_lo, a_hi) = spread(&ka.ratios());
    writeln!(s, "| podtrace --sample-rate 64 (the agent's rate), its own rounds | {at:.1} ({at_lo:.1} – {at_hi:.1}) | {} |", ka.podtrace_runs).unwrap();
    writeln!(
        s,
        "| empty TC program, in those rounds | {aet:.1} ({aet_lo:.1} – {aet_hi:.1}) | {} |",
        ka.empty_runs
    )
    .unwrap();
    writeln!(s, "\nTarget: podtrace ≤ 1.5× the empty program as the median of rounds and ≤ 1.7× in the worst round: **{ratio:.2}× (rounds: {r_lo:.2} – {r_hi:.2}) — {}**. {} rounds under the UDP load of figure 2. In each round `podtrace --pod web-2` and the empty program are attached to the same six hooks at once (the empty one first in the chain in even rounds, last in odd ones) and measured over the same packets; the ratio is the median of each round's podtrace / empty. Stats are enabled with BPF_ENABLE_STATS (the file-descriptor form of `kernel.bpf_stats_enabled=1`) only while measuring. The target applies to podtrace's default sample rate (1 in 16); at the agent's 1 in 64, measured the same way in {} rounds of its own, the ratio is {a_ratio:.2}× (rounds: {a_lo:.2} – {a_hi:.2}).\n", verdict(ratio <= 1.5 && r_hi <= 1.7, ratio <= 1.5 && r_hi <= 1.7), k.podtrace.len(), ka.podtrace.len()).unwrap();
    capture_table(&mut s, &run.capture);
    agent_table(&mut s, a, &run.million, &run.clock);
    poll_cost::table(&mut s, &run.poll);
    check::summary(&mut s, &check::targets(run));
    peers::table(&mut s, run);
    reading(&mut s, run);
    s += DEVELOPMENT_NOTES;
    s
}

/// The largest distance of a round from its configuration's median, as a share of the median,
/// and the configuration it belongs to.
pub(crate) fn widest_spread(m: &Rounds) -> (f64, Config) {
    Config::ALL
        .iter()
        .map(|c| {
            let (med, lo, hi) = spread(&m[c]);
            ((hi - med).max(med - lo) / med, *c)
        })
        .max_by(|x, y| x.0.total_cmp(&y.0))
        .expect("configurations")
}

/// What this run's figures say, in words and in this run's numbers only.
pub(crate) fn reading(s: &mut String, run: &Run) {
    let (k, a, clock) = (&run.kernel, &run.agent, &run.clock);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let (tcp_spread, tcp_widest) = widest_spread(&run.tcp);
    let (udp_spread, udp_widest) = widest_spread(&run.udp);
    writeln!(
        s,
        "## Reading this run
"
    )
    .unwrap();
    writeln!(
        s,
        "**Noise.** {cores} cores carry the iperf3 client, the server, both nodes' softirqs and the tool \
         under test. In this run, one configuration's rounds lie up to ±{:.1} % from their median in \
         figure 1 ({}) and ±{:.1} % in figure 2 ({}): the min – max columns. The empty program only \
         returns, so its ratio to untraced ({:.3} in figure 1, {:.3} in figure 2) is this run's noise \
         floor. Ratios are taken within each round and their median reported, which removes drift \
         between rounds but not the spread within them. On TCP (GSO: one packet carries up to 64 KiB) \
         per-packet costs hardly show in throughput; small packets (figure 2) show them best.\n",
        tcp_spread * 100.0,
        tcp_widest.name(),
        udp_spread * 100.0,
        udp_widest.name(),
        ratio(&run.tcp, Config::Empty),
        ratio(&run.udp, Config::Empty),
    )
    .unwrap();
    let (r, lo, hi) = spread(&k.ratios());
    let side = if lo <= 1.5 && hi > 1.5 {
        "they fall on both sides of the 1.5× target, so another run's median may land on the other side"
    } else if hi <= 1.5 {
        "every round is within the 1.5× target"
    } else {
        "every round is above the 1.5× target (see the notes from development for where the time goes)"
    };
    writeln!(
        s,
        "**Kernel cost.** Figure 3's rounds range from {lo:.2}× to {hi:.2}× around the median {r:.2}×; {side}. \
         podtrace's programs take {:.1} ns per run more than the empty program's {:.1} ns (medians).\n",
        spread(&k.podtrace).0 - spread(&k.empty).0,
        spread(&k.empty).0,
    )
    .unwrap();
    writeln!(
        s,
        "**podtrace's user space.** While podtrace traced the TCP rounds its process used {:.2} % of a core \
         ({} of {:.0} ms in {:.0} s); during the UDP rounds, at a median {:.0} kpps through its hooks, \
         {:.2} % ({} in {:.0} s).\n",
        run.tcp_cpu.percent_of_a_core(clock),
        ticks(run.tcp_cpu.ticks),
        clock.tick_ms(),
        run.tcp_cpu.seconds,
        spread(&run.udp[&Config::Podtrace]).0 / 1e3,
        run.udp_cpu.percent_of_a_core(clock),
        ticks(run.udp_cpu.ticks),
        run.udp_cpu.seconds,
    )
    .unwrap();
    writeln!(
        s,
        "**Agent.** With {:.0} flows tracked, its last poll took {:.2} s and its poll interval was {:.2} s \
         (`podtrace_poll_seconds`, `podtrace_poll_interval_seconds`). Per-pod totals, not per-flow records, \
         are kept between polls, so the SYN flood's peak RSS ({:.1} MiB) is that of polls over the full kernel \
         table ({AGENT_MAX_FLOWS} entries): it scales with `--max-flows`, not with the flood. With a million \
         flows tracked ({:.0} reported), a poll took {:.2} s and the interval stretched to {:.2} s.\n",
        a.flows_100k,
        a.poll_100k_s,
        a.poll_interval_100k_s,
        a.flood.hwm_kb as f64 / 1024.0,
        run.million.flows,
        run.million.poll_s,
        run.million.interval_s,
    )
    .unwrap();
    writeln!(
        s,
        "**Attach latency.** The {} veths were all attached {:.0} ms after their creation began: {:.1} ms \
         per tcx link (two per veth).\n",
        a.veths,
        a.attach_many_ms,
        a.attach_many_ms / (2.0 * a.veths as f64),
    )
    .unwrap();
}
