//! Figure 3b: the capture path's kernel cost per packet.
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::*;
/// The capture path's configurations (figure 3b): podtrace's programs loaded by the bench on
/// the same six hooks, so that only the capture path differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CaptureCfg {
    /// Loaded without `CAPTURE_ARMED`: the verifier removes the capture path (`podtrace`,
    /// `podtrace --pod`, `agent --no-capture`).
    Off,
    /// Armed, no capture running (the agent between captures): one array lookup per packet.
    Idle,
    /// A capture of web-2 running (every packet of the load is copied at the veth and eth1),
    /// its ring drained by a thread.
    On,
}

impl CaptureCfg {
    const ALL: [CaptureCfg; 3] = [CaptureCfg::Off, CaptureCfg::Idle, CaptureCfg::On];
    fn name(self) -> &'static str {
        match self {
            CaptureCfg::Off => "capture path absent (podtrace, podtrace --pod, agent --no-capture)",
            CaptureCfg::Idle => "capture path armed, no capture running (agent)",
            CaptureCfg::On => "capture of web-2 running (podtrace capture)",
        }
    }
}

/// Figure 3b: ns per run of each configuration per round, runs measured, and the programs'
/// translated sizes.
#[derive(Default)]
pub(crate) struct CaptureCost {
    pub ns: BTreeMap<CaptureCfg, Vec<f64>>,
    pub runs: BTreeMap<CaptureCfg, u64>,
    /// BPF instructions after verification (xlated), ingress + egress.
    pub insns: BTreeMap<CaptureCfg, u64>,
}

/// podtrace's programs, attached by the bench, with a drain thread for a running capture.
pub(crate) struct Attached {
    _tracer: podtrace::kernel::attach::Tracer,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    drain: Option<std::thread::JoinHandle<u64>>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
    }
}

impl Bench {
    fn attach_capture_cfg(&self, cfg: CaptureCfg) -> Result<Attached> {
        use podtrace::kernel::{
            attach::{AttachMode, Tracer},
            capture::{self, CaptureRole},
            load::{CaptureLoad, LoadOptions},
        };
        let ifaces = self.ifaces.clone();
        let pod_ip = self.lab.plan.ip_of("web-2").context("web-2's IP")?;
        let (tracer, ring) = netns::run_in(&self.ns("node-a"), move || {
            let capture = (cfg != CaptureCfg::Off).then_some(CaptureLoad { ring_bytes: 8 << 20 });
            let mut t = Tracer::load(&LoadOptions { capture, ..LoadOptions::default() }, AttachMode::Auto)?;
            let mut roles = Vec::new();
            for (k, i) in ifaces.iter().enumerate() {
                let idx = netlink::ifindex(i).ok_or_else(|| anyhow!("no {i}"))?;
                t.attach(idx, i)?;
                // ifaces[0] is web-2's veth.
                roles.push((idx, if k == 0 { CaptureRole::PodVeth } else { CaptureRole::Node }));
            }
            let ring = if cfg == CaptureCfg::On {
                capture::configure(&mut t.ebpf, &roles, &[pod_ip])?;
                capture::set_active(&mut t.ebpf, true, 0)?;
                Some(capture::take_ring(&mut t.ebpf)?)
            } else {
                None
            };
            Ok((t, ring))
        })?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let drain = ring.map(|mut ring| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    while ring.next().is_some() {
                        n += 1;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                n
            })
        });
        Ok(Attached { _tracer: tracer, stop, drain })
    }

    /// Translated instructions of the attached programs `ids` named like podtrace's TC programs.
    fn xlated_insns(&self, ids: &[u32]) -> u64 {
        let want = [listed_name(names::PROG_TC_INGRESS), listed_name(names::PROG_TC_EGRESS)];
        // Each program is attached to three interfaces: count each once.
        let mut seen = std::collections::BTreeSet::new();
        aya::programs::loaded_programs()
            .flatten()
            .filter(|p| ids.contains(&p.id()) && p.name_as_str().is_some_and(|n| want.contains(&n)))
            .filter(|p| seen.insert(p.id()))
            .map(|p| p.size_translated().unwrap_or(0) as u64 / 8)
            .sum()
    }

    /// ns per run of podtrace's programs with the capture path absent, armed and idle, and
    /// capturing, under the UDP load of figure 2, in interleaved rounds.
    pub(crate) fn capture_cost(&self) -> Result<CaptureCost> {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
        let want = [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS];
        let mut c = CaptureCost::default();
        for r in 0..if self.quick { 3 } else { 11 } {
            for k in 0..CaptureCfg::ALL.len() {
                let cfg = CaptureCfg::ALL[(k + r) % CaptureCfg::ALL.len()];
                let active = self.attach_capture_cfg(cfg)?;
                let ids = self.attached_ids()?;
                c.insns.insert(cfg, self.xlated_insns(&ids));
                let before = self.prog_stats(&ids, &want)?;
                self.iperf(true, if self.quick { 1 } else { 2 })?;
                let after = self.prog_stats(&ids, &want)?;
                drop(active);
                let (t, n) = (after.0 - before.0, after.1 - before.1);
                if n == 0 {
                    bail!("{cfg:?}: podtrace's programs did not run under the UDP load");
                }
                c.ns.entry(cfg).or_default().push(t as f64 / n as f64);
                *c.runs.entry(cfg).or_default() += n;
            }
        }
        Ok(c)
    }
}

pub(crate) fn capture_table(s: &mut String, c: &CaptureCost) {
    writeln!(s, "## 3b. The capture path's kernel cost per packet (`podtrace capture`)\n").unwrap();
    writeln!(
        s,
        "| configuration | ns per run, median (min – max) | ratio to absent, median of rounds | runs measured | instructions after verification (ingress + egress) |\n|---|---|---|---|---|"
    )
    .unwrap();
    let off = &c.ns[&CaptureCfg::Off];
    for cfg in CaptureCfg::ALL {
        let v = &c.ns[&cfg];
        let (m, lo, hi) = spread(v);
        let mut ratios: Vec<f64> = v.iter().zip(off).map(|(x, o)| x / o.max(1e-9)).collect();
        let ratio = median(&mut ratios);
        writeln!(
            s,
            "| {} | {m:.1} ({lo:.1} – {hi:.1}) | {ratio:.3} | {} | {} |",
            cfg.name(),
            c.runs[&cfg],
            c.insns[&cfg]
        )
        .unwrap();
    }
    writeln!(
        s,
        "\n{} interleaved rounds (rotating order) under the UDP load of figure 2 (web-2 → db: web-2's veth and eth1), podtrace's programs loaded by the bench on the same six hooks in each configuration, so that only the capture path differs. Absent, the verifier removes the capture path (a load-time constant): the instruction count is what runs. Armed, an idle capture costs one array lookup per packet; capturing, every packet of the load is copied at two hooks.\n",
        off.len()
    )
    .unwrap();
}
