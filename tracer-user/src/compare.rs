//! `podtrace compare`: ALB/NLB `target-type: instance` (NodePort + iptables) against
//! `target-type: ip` (straight to the pod IP), measured on this node from the same traced
//! flows: hops, NAT steps, node crossings, client IP, in-node latency, throughput.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use crate::{
    flows::{FlowReport, Role, percentile},
    inventory::Inventory,
    output::{Format, Style},
    preflight, svg,
    trace::{self, TraceArgs},
};

#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Write an SVG chart (latency distributions and the hop diagram of each mode).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write an HTML page with the table and the chart.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Also write the JSON report to a file (whatever `-o` prints).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Latency percentiles over all sampled packets of a mode, µs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub samples: usize,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Percentiles {
        v.sort_by(f64::total_cmp);
        Percentiles {
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
            samples: v.len(),
        }
    }
}

/// One ingress mode's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ModeStats {
    /// "nodeport" (target-type instance) or "direct" (target-type ip).
    pub mode: String,
    pub flows: usize,
    /// Completed requests: TCP flows whose opener got an answer.
    pub requests: usize,
    /// Network devices a request crosses on nodes: the hooks of its path on this node, plus
    /// the serving node's ENI and pod veth when it was forwarded there (node crossing).
    pub hops_per_packet: f64,
    /// Address rewrites per flow (DNAT, SNAT/MASQUERADE).
    pub nat_steps: f64,
    pub node_crossings: usize,
    pub node_crossing_share: f64,
    pub client_ip_preserved_share: f64,
    /// From the ENI ingress to the last hook of the request path (pod veth egress, or the ENI
    /// egress towards the serving node).
    pub in_node_latency_us: Percentiles,
    /// The way back: pod veth ingress to ENI egress.
    pub reply_latency_us: Percentiles,
    pub bytes: u64,
    pub bytes_per_sec: f64,
    /// The most common path, drawn: `alb ⇒ eth0 → [DNAT, MASQUERADE] → eni… → web-2`.
    pub hop_diagram: Vec<String>,
    #[serde(skip)]
    pub latency_values_us: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    pub duration_s: f64,
    pub modes: Vec<ModeStats>,
}

fn diagram(f: &FlowReport) -> String {
    let client =
        f.path.first().map(|h| h.src.split(':').next().unwrap_or("").to_string()).unwrap_or_default();
    let mut parts = vec![client];
    let mut nat = Vec::new();
    if f.dnat.is_some() {
        nat.push("DNAT");
    }
    if let Some(s) = &f.snat {
        nat.push(if s.kind == "masquerade" { "MASQUERADE" } else { "SNAT" });
    }
    for (i, h) in f.path.iter().enumerate() {
        let arrow = if h.role == Role::Eni && h.hook == "ingress" { " ⇒ " } else { " → " };
        parts.push(format!("{arrow}{}", h.ifname));
        if i == 0 && !nat.is_empty() {
            parts.push(format!(" → [{}]", nat.join(", ")));
        }
    }
    if f.node_crossing {
        parts.push(format!(" ⇒ other node → {}", f.pod));
    } else {
        parts.push(format!(" → {}", f.pod));
    }
    parts.concat()
}

fn latency_values(f: &FlowReport, reply: bool) -> Vec<f64> {
    let path = if reply { &f.reply_path } else { &f.path };
    let (Some(a), Some(b)) = (path.first(), path.last()) else { return Vec::new() };
    let (a, b) = (a.name(), b.name());
    f.hop_latency_us
        .iter()
        .filter(|l| l.from == a && l.to == b)
        .flat_map(|l| l.values_us.iter().copied())
        .collect()
}

/// Aggregates the ingress flows of the traced pods by mode.
pub fn aggregate(flows: &[FlowReport], duration: Duration) -> CompareReport {
    let secs = duration.as_secs_f64().max(1e-3);
    let mut modes = Vec::new();
    for mode in ["nodeport", "direct"] {
        let of_mode: Vec<&FlowReport> =
            flows.iter().filter(|f| f.ingress_mode.as_deref() == Some(mode)).collect();
        let n = of_mode.len().max(1) as f64;
        let share =
            |pred: &dyn Fn(&FlowReport) -> bool| of_mode.iter().filter(|f| pred(f)).count() as f64 / n;
        let hops: f64 = of_mode
            .iter()
            .map(|f| f.path.len() as f64 + if f.node_crossing { 2.0 } else { 0.0 })
            .sum::<f64>()
            / n;
        let mut diagrams: BTreeMap<String, usize> = BTreeMap::new();
        for f in &of_mode {
            *diagrams.entry(diagram(f)).or_default() += 1;
        }
        let mut diagrams: Vec<(String, usize)> = diagrams.into_iter().collect();
        diagrams.sort_by_key(|d| std::cmp::Reverse(d.1));
        let lat: Vec<f64> = of_mode.iter().flat_map(|f| latency_values(f, false)).collect();
        let bytes = of_mode.iter().map(|f| f.bytes).sum();
        modes.push(ModeStats {
            mode: mode.into(),
            flows: of_mode.len(),
            requests: of_mode
                .iter()
                .filter(|f| f.proto == "tcp" && f.unanswered_after.is_none() && !f.no_reply)
                .count(),
            hops_per_packet: round2(hops),
            nat_steps: round2(of_mode.iter().map(|f| f.nat_steps as f64).sum::<f64>() / n),
            node_crossings: of_mode.iter().filter(|f| f.node_crossing).count(),
            node_crossing_share: round2(share(&|f| f.node_crossing)),
            client_ip_preserved_share: round2(share(&|f| f.client_ip_preserved == Some(true))),
            in_node_latency_us: Percentiles::of(lat.clone()),
            reply_latency_us: Percentiles::of(of_mode.iter().flat_map(|f| latency_values(f, true)).collect()),
            bytes,
            bytes_per_sec: round2(bytes as f64 / secs),
            hop_diagram: diagrams.into_iter().take(2).map(|(d, c)| format!("{d}  (×{c})")).collect(),
            latency_values_us: lat,
        });
    }
    CompareReport { duration_s: round2(secs), modes }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The side-by-side table.
pub fn table(r: &CompareReport, style: Style) -> String {
    let (a, b) = (&r.modes[0], &r.modes[1]);
    let pct = |x: f64| format!("{:.0} %", x * 100.0);
    let lat = |p: &Percentiles| {
        if p.samples == 0 {
            "-".to_string()
        } else {
            format!("{:.1} / {:.1} / {:.1}  (n={})", p.p50, p.p90, p.p99, p.samples)
        }
    };
    let rows: Vec<(&str, String, String)> = vec![
        ("flows", a.flows.to_string(), b.flows.to_string()),
        ("requests answered", a.requests.to_string(), b.requests.to_string()),
        ("hops per packet", format!("{:.2}", a.hops_per_packet), format!("{:.2}", b.hops_per_packet)),
        ("NAT steps per flow", format!("{:.2}", a.nat_steps), format!("{:.2}", b.nat_steps)),
        (
            "node crossings",
            format!("{} ({})", a.node_crossings, pct(a.node_crossing_share)),
            format!("{} ({})", b.node_crossings, pct(b.node_crossing_share)),
        ),
        ("client IP preserved", pct(a.client_ip_preserved_share), pct(b.client_ip_preserved_share)),
        ("in-node latency p50/p90/p99 µs", lat(&a.in_node_latency_us), lat(&b.in_node_latency_us)),
        ("reply latency p50/p90/p99 µs", lat(&a.reply_latency_us), lat(&b.reply_latency_us)),
        ("bytes/s", format!("{:.0}", a.bytes_per_sec), format!("{:.0}", b.bytes_per_sec)),
    ];
    let mut s = format!(
        "{:<32} {:<36} {}\n",
        "",
        style.eni("nodeport (target-type: instance)"),
        style.eni("direct (target-type: ip)")
    );
    for (k, x, y) in rows {
        s += &format!("{k:<32} {x:<36} {y}\n");
    }
    for m in &r.modes {
        for d in &m.hop_diagram {
            s += &format!("{:<9} {d}\n", m.mode);
        }
    }
    s
}

pub async fn run(args: CompareArgs) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let t = &args.trace;
    if t.pods.is_empty() && t.selector.is_none() && t.pod_ips.is_empty() {
        bail!("compare needs pods: --pod NAME (repeatable) or -l app=web");
    }
    preflight::check_privileges()?;
    preflight::check_btf()?;
    let pods = trace::select_pods(t).await?;
    let inv = Inventory::read(&t.enis)?;
    // Endpoints on other nodes are traced where their flows cross this node.
    let targets = trace::resolve_targets(&inv, &pods, true)?;
    let mut session = trace::start_session(&targets, t, true)?;
    preflight::drop_capabilities().context("dropping capabilities after attaching")?;
    let clock = crate::flows::Clock::now();
    eprintln!(
        "podtrace: tracing {} for compare on {} (Ctrl-C to stop)",
        targets.pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
        targets.attach.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ")
    );
    let start = Instant::now();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let ring = session.watch_ring()?;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            ready = ring.readable() => {
                if let Ok(mut guard) = ready {
                    session.drain_hops();
                    guard.clear_ready();
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        session.drain_hops();
        if t.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
    }
    let snap = session.poll()?;
    let flows = trace::reports(&session, &snap, &targets, clock);
    let report = aggregate(&flows, start.elapsed());
    let names = session.tracer.attached().map(|(_, n)| n.to_string()).collect();
    let summary = crate::output::Summary::new(flows.len(), names, &snap.counters, session.user, Vec::new());
    eprintln!("{}", summary.text(Style::plain()));
    match t.output {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table => print!("{}", table(&report, Style::detect())),
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, svg::chart(&report)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, svg::page(&report, &table(&report, Style::plain())))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
