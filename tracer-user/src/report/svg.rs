//! The comparison chart as a self-contained SVG (no fonts or scripts): in-node latency as a
//! cumulative distribution per mode, the key figures as bars, and each mode's hop diagram.
use std::fmt::Write as _;

use super::compare::{CompareReport, ModeStats};

const W: f64 = 960.0;
const H: f64 = 560.0;
const COLORS: [&str; 2] = ["#d9480f", "#1971c2"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn label(m: &ModeStats) -> &'static str {
    if m.mode == "nodeport" { "NodePort (target-type: instance)" } else { "pod IP (target-type: ip)" }
}

/// Cumulative distribution of in-node latency, one curve per mode.
fn cdf(out: &mut String, r: &CompareReport, x0: f64, y0: f64, w: f64, h: f64) {
    // Scale to the tail that matters (p99 of the slower mode); rarer outliers sit on the edge.
    let p99 = r.modes.iter().map(|m| m.in_node_latency_us.p99).fold(0.0_f64, f64::max);
    let xmax = (p99 * 1.25).max(1.0).ceil();
    writeln!(out, r#"<g class="latency-cdf">"#).unwrap();
    writeln!(out, r#"<text x="{}" y="{}" font-size="15" font-weight="bold">In-node latency (ENI ingress → pod veth), cumulative</text>"#, x0, y0 - 14.0).unwrap();
    writeln!(out, r##"<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#868e96"/>"##)
        .unwrap();
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let x = x0 + f * w;
        let y = y0 + h - f * h;
        writeln!(out, r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#e9ecef"/>"##, x0 + w).unwrap();
        writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="end">{:.0} %</text>"#,
            x0 - 6.0,
            y + 4.0,
            f * 100.0
        )
        .unwrap();
        writeln!(
            out,
            r#"<text x="{x}" y="{}" font-size="11" text-anchor="middle">{:.0}</text>"#,
            y0 + h + 16.0,
            f * xmax
        )
        .unwrap();
    }
    writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">µs</text>"#,
        x0 + w / 2.0,
        y0 + h + 34.0
    )
    .unwrap();
    for (i, m) in r.modes.iter().enumerate() {
        let mut v = m.latency_values_us.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1) as f64;
        let mut d = String::new();
        for (k, x) in v.iter().enumerate() {
            let px = x0 + x.min(xmax) / xmax * w;
            let py = y0 + h - (k + 1) as f64 / n * h;
            write!(d, "{}{px:.1},{py:.1} ", if k == 0 { "M" } else { "L" }).unwrap();
        }
        if d.is_empty() {
            d = format!("M{x0},{} L{x0},{}", y0 + h, y0 + h);
        }
        writeln!(
            out,
            r#"<path class="series" data-mode="{}" d="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            m.mode,
            d.trim(),
            COLORS[i % 2]
        )
        .unwrap();
        let ly = y0 + h - 34.0 + i as f64 * 18.0;
        writeln!(
            out,
            r##"<rect x="{}" y="{}" width="12" height="12" fill="{}"/>"##,
            x0 + w - 300.0,
            ly - 10.0,
            COLORS[i % 2]
        )
        .unwrap();
        writeln!(
            out,
            r#"<text x="{}" y="{ly}" font-size="12">{} p50 {:.1} µs (n={})</text>"#,
            x0 + w - 282.0,
            esc(label(m)),
            m.in_node_latency_us.p50,
            m.in_node_latency_us.samples
        )
        .unwrap();
    }
    writeln!(out, "</g>").unwrap();
}

/// Bars of the figures that differ between modes.
fn bars(out: &mut String, r: &CompareReport, x0: f64, y0: f64, w: f64) {
    writeln!(out, r#"<g class="figures">"#).unwrap();
    writeln!(out, r#"<text x="{x0}" y="{}" font-size="15" font-weight="bold">Per flow</text>"#, y0 - 14.0)
        .unwrap();
    type Metric = (&'static str, fn(&ModeStats) -> f64, f64);
    let metrics: [Metric; 4] = [
        ("hops per packet", |m| m.hops_per_packet, 4.0),
        ("NAT steps", |m| m.nat_steps, 2.0),
        ("node crossings", |m| m.node_crossing_share, 1.0),
        ("client IP preserved", |m| m.client_ip_preserved_share, 1.0),
    ];
    for (row, (name, get, scale)) in metrics.iter().enumerate() {
        let y = y0 + row as f64 * 56.0;
        writeln!(out, r#"<text x="{x0}" y="{}" font-size="12">{name}</text>"#, y + 8.0).unwrap();
        for (i, m) in r.modes.iter().enumerate() {
            let v = get(m);
            let bw = (v / scale).clamp(0.0, 1.0) * (w - 60.0);
            let by = y + 16.0 + i as f64 * 13.0;
            writeln!(out, r#"<rect class="bar" data-mode="{}" x="{x0}" y="{by}" width="{bw:.1}" height="11" fill="{}"/>"#, m.mode, COLORS[i % 2]).unwrap();
            let text = if *scale == 1.0 { format!("{:.0} %", v * 100.0) } else { format!("{v:.2}") };
            writeln!(out, r#"<text x="{:.1}" y="{}" font-size="11">{text}</text>"#, x0 + bw + 6.0, by + 10.0)
                .unwrap();
        }
    }
    writeln!(out, "</g>").unwrap();
}

fn hop_diagrams(out: &mut String, r: &CompareReport, x0: f64, y0: f64) {
    writeln!(out, r#"<g class="hop-diagrams">"#).unwrap();
    writeln!(
        out,
        r#"<text x="{x0}" y="{y0}" font-size="15" font-weight="bold">Paths through this node</text>"#
    )
    .unwrap();
    let mut y = y0 + 22.0;
    for (i, m) in r.modes.iter().enumerate() {
        writeln!(
            out,
            r#"<text x="{x0}" y="{y}" font-size="12" fill="{}" font-weight="bold">{}</text>"#,
            COLORS[i % 2],
            esc(label(m))
        )
        .unwrap();
        y += 17.0;
        if m.hop_diagram.is_empty() {
            writeln!(out, r#"<text x="{}" y="{y}" font-size="12">(no flows)</text>"#, x0 + 12.0).unwrap();
            y += 17.0;
        }
        for d in &m.hop_diagram {
            writeln!(out, r#"<text class="diagram" data-mode="{}" x="{}" y="{y}" font-size="12" font-family="monospace">{}</text>"#, m.mode, x0 + 12.0, esc(d)).unwrap();
            y += 17.0;
        }
        y += 6.0;
    }
    writeln!(out, "</g>").unwrap();
}

pub fn chart(r: &CompareReport) -> String {
    let mut s = String::new();
    writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#).unwrap();
    writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">"#).unwrap();
    writeln!(s, r##"<rect width="{W}" height="{H}" fill="#ffffff"/>"##).unwrap();
    writeln!(s, r#"<title>podtrace compare: NodePort vs pod IP ({:.0} s)</title>"#, r.duration_s).unwrap();
    cdf(&mut s, r, 70.0, 50.0, 480.0, 260.0);
    bars(&mut s, r, 620.0, 50.0, 320.0);
    hop_diagrams(&mut s, r, 30.0, 400.0);
    writeln!(s, "</svg>").unwrap();
    s
}

/// A standalone HTML page: the table and the chart.
pub fn page(r: &CompareReport, table: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>podtrace compare</title></head>\n<body>\n<h1>NodePort (instance) vs pod IP (ip)</h1>\n<pre>{}</pre>\n{}\n</body></html>\n",
        esc(table),
        chart(r).lines().skip(1).collect::<Vec<_>>().join("\n")
    )
}
