//! The run's targets, each with its own spread: what `--check` enforces and the report's
//! target table shows. A target missed by less than the run's spread is noise on these
//! machines; missed by more, it is a regression and `--check` exits non-zero.
use std::fmt::Write as _;

use anyhow::{Result, bail};

use super::{Config, Rounds, Run, flood_ok, median, poll_cost, spread};

pub struct Target {
    pub what: &'static str,
    pub value: f64,
    pub limit: f64,
    /// The run's own spread around `value` (half its range over rounds, or the measurement's
    /// resolution).
    pub spread: f64,
    /// True when bigger is better (`value >= limit`).
    pub at_least: bool,
    pub unit: &'static str,
}

impl Target {
    fn met(&self) -> bool {
        if self.at_least { self.value >= self.limit } else { self.value <= self.limit }
    }

    /// Missed by more than the spread: a regression, not noise.
    fn missed_beyond_spread(&self) -> bool {
        if self.at_least {
            self.value + self.spread < self.limit
        } else {
            self.value - self.spread > self.limit
        }
    }

    fn verdict(&self) -> &'static str {
        match (self.met(), self.missed_beyond_spread()) {
            (true, _) => "met",
            (false, false) => "missed within the run's spread",
            (false, true) => "MISSED",
        }
    }
}

/// Half the range of the per-round ratios of `cfg` to untraced.
fn ratio_spread(m: &Rounds, cfg: Config) -> f64 {
    let r: Vec<f64> = m[&cfg].iter().zip(&m[&Config::Untraced]).map(|(c, u)| c / u).collect();
    let (_, lo, hi) = spread(&r);
    (hi - lo) / 2.0
}

fn yes(ok: bool) -> f64 {
    if ok { 1.0 } else { 0.0 }
}

pub fn targets(run: &Run) -> Vec<Target> {
    let kernel = run.kernel.ratios();
    let (k_med, k_lo, k_hi) = spread(&kernel);
    let k_spread = (k_hi - k_lo) / 2.0;
    let a = &run.agent;
    let cpu = a.cpu.percent_of_a_core(&run.clock);
    let mut attach = a.attach_ms.clone();
    let attach_med = median(&mut attach);
    let (_, att_lo, att_hi) = spread(&a.attach_ms);
    vec![
        Target {
            what: "TCP throughput, traced / untraced",
            value: super::ratio(&run.tcp, Config::Podtrace),
            limit: 0.97,
            spread: ratio_spread(&run.tcp, Config::Podtrace),
            at_least: true,
            unit: "",
        },
        Target {
            what: "UDP 64-byte packet rate, traced / untraced",
            value: super::ratio(&run.udp, Config::Podtrace),
            limit: 0.95,
            spread: ratio_spread(&run.udp, Config::Podtrace),
            at_least: true,
            unit: "",
        },
        Target {
            what: "kernel cost / empty program, median of rounds",
            value: k_med,
            limit: 1.5,
            spread: k_spread,
            at_least: false,
            unit: "×",
        },
        Target {
            what: "kernel cost / empty program, worst round",
            value: k_hi,
            limit: 1.7,
            spread: k_spread,
            at_least: false,
            unit: "×",
        },
        Target {
            what: "agent CPU at a fixed packet rate",
            value: cpu,
            limit: 2.0,
            // One clock tick over the measurement: the resolution of /proc's CPU times.
            spread: run.clock.tick_ms() / 10.0 / a.cpu.seconds,
            at_least: false,
            unit: " % of a core",
        },
        Target {
            what: "agent RSS with 100 k flows",
            value: a.rss_100k_kb as f64 / 1024.0,
            limit: 64.0,
            spread: 0.0,
            at_least: false,
            unit: " MiB",
        },
        Target {
            what: "new veth → first packet counted, median",
            value: attach_med,
            limit: 1000.0,
            spread: (att_hi - att_lo) / 2.0,
            at_least: false,
            unit: " ms",
        },
        Target {
            what: "SYN flood: agent alive, losses counted, peak RSS within its budget (1 = yes)",
            value: yes(flood_ok(&a.flood)),
            limit: 1.0,
            spread: 0.0,
            at_least: true,
            unit: "",
        },
        Target {
            what: "poll reads no more on 192 CPUs than on 2, plus a bitmap ≤ 32 KiB (1 = yes)",
            value: yes(poll_cost::independent_of_cpus(&run.poll)),
            limit: 1.0,
            spread: 0.0,
            at_least: true,
            unit: "",
        },
    ]
}

pub fn summary(s: &mut String, targets: &[Target]) {
    let _ = writeln!(s, "## 7. Targets of this run\n");
    let _ = writeln!(s, "| target | this run | limit | the run's spread | verdict |\n|---|---|---|---|---|");
    for t in targets {
        let _ = writeln!(
            s,
            "| {} | {:.3}{} | {} {}{} | ± {:.3} | **{}** |",
            t.what,
            t.value,
            t.unit,
            if t.at_least { "≥" } else { "≤" },
            t.limit,
            t.unit,
            t.spread,
            t.verdict()
        );
    }
    let _ = writeln!(
        s,
        "\n`cargo xtask bench --check` exits non-zero when a target is missed by more than the run's spread (half the range of its rounds, or the measurement's resolution); a miss within the spread is noise on this machine and is reported, not failed.\n"
    );
}

/// `--check`: one line naming every target missed beyond the run's spread.
pub fn enforce(targets: &[Target]) -> Result<()> {
    let missed: Vec<String> = targets
        .iter()
        .filter(|t| t.missed_beyond_spread())
        .map(|t| {
            format!(
                "{} {:.3}{} (limit {} {}{}, spread ± {:.3})",
                t.what,
                t.value,
                t.unit,
                if t.at_least { "≥" } else { "≤" },
                t.limit,
                t.unit,
                t.spread
            )
        })
        .collect();
    if !missed.is_empty() {
        bail!("{} target(s) missed beyond the run's spread: {}", missed.len(), missed.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(value: f64, spread: f64, at_least: bool) -> Target {
        Target { what: "x", value, limit: 1.5, spread, at_least, unit: "" }
    }

    #[test]
    fn a_miss_within_the_spread_is_noise_beyond_it_a_regression() {
        assert_eq!(t(1.4, 0.1, false).verdict(), "met");
        assert_eq!(t(1.55, 0.1, false).verdict(), "missed within the run's spread");
        assert_eq!(t(1.7, 0.1, false).verdict(), "MISSED");
        assert_eq!(t(1.3, 0.1, true).verdict(), "MISSED");
        assert_eq!(t(1.45, 0.1, true).verdict(), "missed within the run's spread");
        assert!(enforce(&[t(1.55, 0.1, false)]).is_ok());
        let e = enforce(&[t(1.7, 0.1, false), t(1.0, 0.0, false)]).unwrap_err().to_string();
        assert!(e.starts_with("1 target(s) missed") && e.contains("1.700"), "{e}");
    }
}
