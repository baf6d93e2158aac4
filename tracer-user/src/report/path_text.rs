//! Paths as text: the cells of a row, shared by the live view and the plain summary that is
//! printed when stdout is not a terminal (pipe, file).
use std::io::Write;

use super::group::{Connection, PathGroup, Peer};
use crate::assemble::model::{Direction, NatKind};

/// Column titles, in the order of [`path_cells`].
pub const HEADERS: [&str; 14] = [
    "DIR", "PROTO", "PATH", "NAT", "MODE", "CONNS", "PKTS", "BYTES", "RATE", "P50", "P99", "DROPS", "RETX",
    "LAST",
];

/// Columns whose values are numbers (right-aligned).
pub const NUMERIC: [bool; 14] =
    [false, false, false, false, false, true, true, true, true, true, true, true, true, true];

/// Where the DROPS column is (the views colour it when non-zero).
pub const DROPS_COLUMN: usize = 11;

/// `web-2 → eth1 ⇒ 198.18.3.10:8080`, `198.18.100.10:* ⇒ eth0 → web-2:8080`. `⇒` marks where
/// the path crosses the wire; without an ENI the path never left the node.
pub fn path_text(g: &PathGroup) -> String {
    let k = &g.key;
    let pod = match k.pod_port {
        Some(port) => format!("{}:{port}", k.pod),
        None => k.pod.clone(),
    };
    match (k.direction, &k.eni) {
        (Direction::Egress, Some(eni)) => format!("{pod} → {eni} ⇒ {}", k.peer),
        (Direction::Egress, None) => format!("{pod} → {}", k.peer),
        (Direction::Ingress, Some(eni)) if k.node_crossing => {
            format!("{} ⇒ {eni} ⇒ other node → {pod}", k.peer)
        }
        (Direction::Ingress, Some(eni)) => format!("{} ⇒ {eni} → {pod}", k.peer),
        (Direction::Ingress, None) => format!("{} → {pod}", k.peer),
    }
}

fn snat_label(kind: NatKind) -> &'static str {
    if kind == NatKind::Masquerade { "MASQUERADE" } else { "SNAT" }
}

/// `DNAT NodePort 198.18.1.10:30080 (default/web), MASQUERADE → 198.18.1.10:*`,
/// `DNAT 198.19.0.10:80 → 198.18.1.21:8080`, in the order the rewrites happen (DNAT in prerouting, SNAT in
/// postrouting). An ingress DNAT's target is the pod itself, already in the path: not repeated.
pub fn nat_text(g: &PathGroup) -> String {
    let mut parts = Vec::new();
    if let Some(d) = &g.dnat {
        let what = if d.kind == NatKind::NodeportDnat { "DNAT NodePort" } else { "DNAT" };
        let mut text = if g.key.direction == Direction::Ingress && !g.key.node_crossing {
            format!("{what} {}", d.from)
        } else {
            format!("{what} {} → {}", d.from, d.to)
        };
        // The service, unless it is already the path's peer.
        if let Some(service) = d.service.as_ref().filter(|s| g.key.peer != Peer::Service(s.to_string())) {
            text += &format!(" ({service})");
        }
        parts.push(text);
    }
    if let Some(s) = &g.snat {
        parts.push(format!("{} → {}", snat_label(s.kind), s.to));
    }
    if parts.is_empty() { "-".into() } else { parts.join(", ") }
}

/// `812 B`, `12.3 KiB`, `4.5 MiB`.
pub fn bytes_text(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{v:.0} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// `44.4 µs`, `118 µs`, `1.2 ms`.
pub fn latency_text(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 100.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.1} µs")
    }
}

/// `now`, `12s ago`, `5m ago`, `2h ago`.
pub fn age_text(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0 => "now".into(),
        1..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn drops_text(dropped: u64, unanswered: usize) -> String {
    match unanswered {
        0 => dropped.to_string(),
        n => format!("{dropped} ({n} unanswered)"),
    }
}

/// The cells of a path's row, in the order of [`HEADERS`].
pub fn path_cells(g: &PathGroup, now_ms: u64) -> [String; 14] {
    let lat = g.latency();
    [
        match g.key.direction {
            Direction::Egress => "egress".into(),
            Direction::Ingress => "ingress".into(),
        },
        g.key.proto.to_string(),
        path_text(g),
        nat_text(g),
        g.key.ingress_mode.map_or("-".into(), |m| m.as_str().into()),
        format!("{}/{}", g.active(), g.total()),
        g.packets.to_string(),
        bytes_text(g.bytes as f64),
        g.bytes_per_sec.map_or("-".into(), |r| format!("{}/s", bytes_text(r))),
        lat.map_or("-".into(), |l| latency_text(l.p50)),
        lat.map_or("-".into(), |l| latency_text(l.p99)),
        drops_text(g.dropped(), g.unanswered()),
        g.retransmits.to_string(),
        age_text(now_ms, g.last_seen_ms),
    ]
}

/// The cells of one connection of an expanded path: its own ports and rewrites.
pub fn connection_cells(g: &PathGroup, c: &Connection, now_ms: u64) -> [String; 14] {
    let path = match g.key.direction {
        Direction::Egress => format!("  └ :{} → {}", c.pod_side.port(), c.peer),
        Direction::Ingress => format!("  └ {} → :{}", c.peer, c.pod_side.port()),
    };
    let mut nat = Vec::new();
    if let Some(to) = c.dnat_to {
        nat.push(format!("DNAT → {to}"));
    }
    if let (Some(to), Some(s)) = (c.snat_to, &g.snat) {
        nat.push(format!("{} → {to}", snat_label(s.kind)));
    }
    [
        String::new(),
        String::new(),
        path,
        if nat.is_empty() { "-".into() } else { nat.join(", ") },
        String::new(),
        if c.active { "open".into() } else { "closed".into() },
        c.packets.to_string(),
        bytes_text(c.bytes as f64),
        String::new(),
        c.in_node_p50_us.map_or("-".into(), latency_text),
        String::new(),
        drops_text(c.drops, c.unanswered as usize),
        c.retransmits.to_string(),
        age_text(now_ms, c.last_seen_ms),
    ]
}

/// Rows as aligned columns under [`HEADERS`].
pub fn aligned(rows: &[[String; 14]]) -> Vec<String> {
    let mut width = HEADERS.map(|h| h.chars().count());
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = width[i] - cell.chars().count();
            if i > 0 {
                s.push_str("  ");
            }
            if NUMERIC[i] {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s
    };
    let mut out = vec![line(&HEADERS.map(String::from))];
    out.extend(rows.iter().map(|r| line(r)));
    out
}

/// `6 paths, 26 connections (0 active)`.
pub fn totals_text(groups: &[PathGroup]) -> String {
    let total: usize = groups.iter().map(PathGroup::total).sum();
    let active: usize = groups.iter().map(PathGroup::active).sum();
    let paths = if groups.len() == 1 { "path" } else { "paths" };
    format!("{} {paths}, {total} connections ({active} active)", groups.len())
}

/// The plain summary: a heading, the column titles and one line per path.
pub fn write_summary(
    out: &mut impl Write,
    heading: &str,
    groups: &[PathGroup],
    now_ms: u64,
) -> std::io::Result<()> {
    writeln!(out, "{heading}: {}", totals_text(groups))?;
    let rows: Vec<[String; 14]> = groups.iter().map(|g| path_cells(g, now_ms)).collect();
    for line in aligned(&rows) {
        writeln!(out, "{}", line.trim_end())?;
    }
    writeln!(out)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_like_a_person_would_write_them() {
        assert_eq!(bytes_text(812.0), "812 B");
        assert_eq!(bytes_text(12.3 * 1024.0), "12.3 KiB");
        assert_eq!(bytes_text(3.0 * 1024.0 * 1024.0), "3.0 MiB");
        assert_eq!(latency_text(44.44), "44.4 µs");
        assert_eq!(latency_text(118.2), "118 µs");
        assert_eq!(latency_text(1250.0), "1.2 ms");
        assert_eq!(age_text(10_000, 9_500), "now");
        assert_eq!(age_text(70_000, 10_000), "1m ago");
        assert_eq!(age_text(1_000, 5_000), "now", "clocks a little ahead are not the future");
    }

    #[test]
    fn the_plain_summary_of_the_demo_traffic_is_one_line_per_path() {
        use crate::report::group::{
            GroupBy, GroupOptions,
            fixtures::{DEMO_WEB_2, RECORDED_NOW_MS, recorded},
            group,
        };
        let (_, flows) = recorded(DEMO_WEB_2);
        let groups = group(&flows, &GroupOptions::new(GroupBy::Path, RECORDED_NOW_MS));
        let mut out = Vec::new();
        write_summary(&mut out, "web-2", &groups, RECORDED_NOW_MS).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "web-2: 6 paths, 25 connections (0 active)");
        assert!(lines[1].starts_with("DIR      PROTO  PATH"), "{text}");
        assert_eq!((lines.len(), lines[8]), (9, ""), "{text}");
        let expected = [
            ("egress   tcp    web-2 → eth1 ⇒ 198.18.3.10:8080 ", " -  "),
            ("egress   tcp    web-2 → eth0 ⇒ 203.0.113.10:80 ", " SNAT → 198.18.1.10:* "),
            (
                "ingress  tcp    198.18.100.10:* ⇒ eth0 → web-2:8080 ",
                " DNAT NodePort 198.18.1.10:30080 (default/web), MASQUERADE → 198.18.1.10:*  nodeport ",
            ),
            ("ingress  tcp    198.18.100.10:* ⇒ eth1 → web-2:8080 ", " direct "),
            ("egress   tcp    web-2 → eth1 ⇒ default/api:http ", " DNAT 198.19.0.10:80 → 198.18.1.21:8080 "),
            ("egress   udp    web-2 → eth1 ⇒ 198.18.3.10:8080 ", " -  "),
        ];
        for (path, nat) in expected {
            let rows: Vec<&&str> = lines[2..8].iter().filter(|l| l.starts_with(path)).collect();
            assert_eq!(rows.len(), 1, "{path} in {text}");
            assert!(rows[0].contains(nat), "{nat} in {}", rows[0]);
        }
        // Columns: 5 connections, none open; 50 packets; last seen 30 s before the end.
        let inet = lines.iter().find(|l| l.contains("203.0.113.10")).unwrap();
        let cells: Vec<&str> = inet.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(&cells[5..8], ["0/5", "50", "5.9 KiB"], "{inet}");
        assert_eq!(cells.last(), Some(&"30s ago"));
    }

    #[test]
    fn columns_line_up_with_wide_characters() {
        let mut row: [String; 14] = Default::default();
        row[2] = "web-2 → eth1 ⇒ 198.18.3.10:8080".into();
        row[6] = "777".into();
        let lines = aligned(&[row]);
        let col = |l: &str, text: &str| l.split(text).next().unwrap().chars().count();
        assert_eq!(col(&lines[0], "PATH"), col(&lines[1], "web-2"));
        // Numbers end where their title ends.
        assert_eq!(col(&lines[0], "PKTS") + 4, col(&lines[1], "777") + 3);
    }
}
