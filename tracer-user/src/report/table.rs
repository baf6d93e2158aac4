//! Rendering flows: the live table (colour only on a TTY) and JSON lines.
use std::io::{IsTerminal, Write};

use crate::assemble::model::{Direction, NatKind, Role};

use super::json::FlowReport;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// ANSI styling that disappears when stdout is not a terminal (or NO_COLOR is set).
#[derive(Clone, Copy)]
pub struct Style {
    on: bool,
}

impl Style {
    pub fn detect() -> Style {
        Style { on: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }
    pub fn plain() -> Style {
        Style { on: false }
    }
    fn paint(&self, code: &str, s: &str) -> String {
        if self.on { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }
    pub fn eni(&self, s: &str) -> String {
        self.paint("1;36", s)
    }
    pub fn nat(&self, s: &str) -> String {
        self.paint("33", s)
    }
    pub fn bad(&self, s: &str) -> String {
        self.paint("1;31", s)
    }
    pub fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
}

fn hop_label(style: Style, ifname: &str, role: Role) -> String {
    match role {
        Role::Eni => style.eni(ifname),
        _ => ifname.to_string(),
    }
}

/// `web-2 → eni1a2b3c4d5e6 → eth0 ⇒ 203.0.113.10:80  [SNAT → 198.18.1.10:61000]  p50 in-node 38 µs`
pub fn row(f: &FlowReport, style: Style) -> String {
    let mut hops: Vec<String> = Vec::new();
    for h in &f.path {
        let label = hop_label(style, &h.ifname, h.role);
        if hops.last() != Some(&label) {
            hops.push(label);
        }
    }
    let arrow = " → ";
    let line = if f.direction == Direction::Egress {
        let mut parts = vec![f.pod.clone()];
        parts.extend(hops);
        let end = if f.eni.is_some() { format!(" ⇒ {}", f.dst) } else { format!(" → {}", f.dst) };
        format!("{}{end}", parts.join(arrow))
    } else {
        let peer = f.path.first().map_or(f.src, |h| h.src);
        let start = if f.eni.is_some() { format!("{peer} ⇒ ") } else { format!("{peer} → ") };
        let mut parts = hops;
        parts.push(f.pod.clone());
        format!("{start}{}", parts.join(arrow))
    };
    let mut tags = Vec::new();
    if let Some(d) = &f.dnat {
        tags.push(style.nat(&format!("[DNAT {} → {}]", d.from, d.to)));
    }
    if let Some(s) = &f.snat {
        let label = if s.kind == NatKind::Masquerade { "MASQUERADE" } else { "SNAT" };
        tags.push(style.nat(&format!("[{label} → {}]", s.to)));
    }
    if let Some(mode) = &f.ingress_mode {
        tags.push(style.dim(&format!("({})", mode.as_str())));
    }
    if let Some(lat) = f.in_node_latency() {
        tags.push(format!("p50 in-node {} µs", fmt_us(lat)));
    }
    for d in &f.drops {
        let after = d.after_hop.as_ref().map_or("?".to_string(), ToString::to_string);
        tags.push(style.bad(&format!("✗ dropped after {after}: {} ×{}", d.reason, d.count)));
    }
    if f.retransmits > 0 {
        tags.push(style.bad(&format!("{} retransmits", f.retransmits)));
    }
    if let Some(hop) = &f.unanswered_after {
        tags.push(style.bad(&format!("✗ reply left by {hop}, never answered")));
    } else if f.no_reply && f.drops.is_empty() {
        tags.push(style.bad("✗ no reply"));
    }
    format!(
        "{:<4} {line}  {}  {}",
        f.proto.to_string(),
        tags.join("  "),
        style.dim(&format!("{} pkts", f.packets))
    )
}

fn fmt_us(us: f64) -> String {
    if us >= 100.0 { format!("{us:.0}") } else { format!("{us:.1}") }
}

/// Redraws the live table (terminal only).
pub fn live_table(
    out: &mut impl Write,
    title: &str,
    flows: &[FlowReport],
    style: Style,
) -> std::io::Result<()> {
    write!(out, "\x1b[H\x1b[2J")?;
    writeln!(out, "{title}")?;
    for f in flows {
        writeln!(out, "{}", row(f, style))?;
    }
    out.flush()
}

pub fn table(out: &mut impl Write, flows: &[FlowReport], style: Style) -> std::io::Result<()> {
    for f in flows {
        writeln!(out, "{}", row(f, style))?;
    }
    Ok(())
}

pub fn json_lines(out: &mut impl Write, flows: &[FlowReport]) -> std::io::Result<()> {
    for f in flows {
        writeln!(out, "{}", serde_json::to_string(f).expect("flow serializes"))?;
    }
    out.flush()
}
