//! The path diagram (`--svg`, `--html`): the node drawn as a user thinks of it, from the same
//! grouped paths as the live view. Left to right: the pod, its host veth, the NAT the node
//! applied, the node's ENIs with their addresses, the peers outside. Each path is one arrow
//! (towards the peer for egress, towards the pod for ingress) whose width is proportional to
//! its bytes; NAT steps are labelled boxes on the arrow; drops and unanswered connections are
//! red. Self-contained: no fonts, scripts, styles or images from elsewhere.
use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use super::{
    group::{NatStep, PathGroup},
    path_text::{self, HEADERS, NUMERIC, bytes_text, latency_text},
};
use crate::{
    assemble::{
        context::TracedPod,
        model::{Direction, NatKind},
    },
    node::inventory::Inventory,
};

/// An ENI (or a branch ENI) as the node inventory read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniBox {
    pub name: String,
    pub primary: bool,
    /// For a branch ENI (Security Groups for Pods): the trunk ENI it is stacked on.
    pub trunk: Option<String>,
    /// `198.18.1.10/24`
    pub addrs: Vec<String>,
}

/// A traced pod and its host veths as the node's routes name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodBox {
    pub name: String,
    pub namespace: String,
    pub ips: Vec<IpAddr>,
    pub veths: Vec<String>,
}

/// What the diagram knows about the node besides the paths: only facts read from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePicture {
    pub enis: Vec<EniBox>,
    pub pods: Vec<PodBox>,
}

impl NodePicture {
    pub fn read(inv: &Inventory, pods: &[TracedPod]) -> NodePicture {
        let enis = inv.enis.iter().map(|e| EniBox {
            name: e.name.clone(),
            primary: e.primary,
            trunk: None,
            addrs: e.addrs.iter().map(|(a, len)| format!("{a}/{len}")).collect(),
        });
        let branches = inv.branches.iter().map(|b| EniBox {
            name: b.name.clone(),
            primary: false,
            trunk: Some(b.trunk.clone()),
            addrs: inv
                .addrs
                .iter()
                .filter(|a| a.index == b.ifindex && !is_link_local(a.addr))
                .map(|a| format!("{}/{}", a.addr, a.prefix))
                .collect(),
        });
        NodePicture {
            enis: enis.chain(branches).collect(),
            pods: pods
                .iter()
                .map(|p| PodBox {
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    ips: p.ips.clone(),
                    veths: p.veths.iter().filter_map(|i| inv.link(*i)).map(|l| l.name.clone()).collect(),
                })
                .collect(),
        }
    }
}

fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

// Columns (x of left edges and widths) and rows.
const W: f64 = 1400.0;
const POD_X: f64 = 20.0;
const POD_W: f64 = 150.0;
const VETH_X: f64 = 200.0;
const VETH_W: f64 = 150.0;
/// Two NAT slots between the veth and the ENI, in the order packets meet them on egress.
const NAT_SLOTS: [f64; 2] = [385.0, 640.0];
const NAT_W: f64 = 240.0;
const NAT_H: f64 = 38.0;
const ENI_X: f64 = 910.0;
const ENI_W: f64 = 180.0;
const PEER_X: f64 = 1150.0;
const PEER_W: f64 = 230.0;
const LANE_H: f64 = 80.0;
const TOP: f64 = 120.0;
const MAX_ARROW: f64 = 18.0;
const MIN_ARROW: f64 = 1.5;

const EGRESS: &str = "#1971c2";
const INGRESS: &str = "#2f9e44";
const NAT_FILL: &str = "#fff3bf";
const NAT_STROKE: &str = "#e67700";
const RED: &str = "#e03131";
const BOX_STROKE: &str = "#868e96";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A font size at which `text` fits `width` (sans-serif glyphs, digits and bold ones
/// included, are at most about 0.64 em wide).
fn fitting(text: &str, width: f64, max: f64) -> f64 {
    let n = text.chars().count().max(1) as f64;
    (width / (0.64 * n)).clamp(7.0, max)
}

/// The two lines of a NAT step's box, and its tooltip. Named by where the rewrite sits
/// (source or destination), so kinds added later still read right.
pub fn nat_label(step: &NatStep, source: bool) -> (String, String, String) {
    let (first, second) = if source {
        let what = if step.kind == NatKind::Masquerade { "MASQUERADE" } else { "SNAT" };
        (format!("{what} to {}", step.to), format!("from {}", step.from))
    } else {
        let what = if step.kind == NatKind::NodeportDnat { "DNAT from NodePort" } else { "DNAT from" };
        let to = match &step.service {
            Some(service) => format!("to {} · {service}", step.to),
            None => format!("to {}", step.to),
        };
        (format!("{what} {}", step.from), to)
    };
    let tip = match &step.chain {
        Some(chain) => format!("{} ({chain})", step.kind),
        None => step.kind.to_string(),
    };
    (first, second, tip)
}

/// Boxes and lanes, top to bottom: for each pod, for each ENI, its paths.
struct Layout<'a> {
    /// (lane's top y, path)
    lanes: Vec<(f64, &'a PathGroup)>,
    /// (pod, top, bottom)
    pods: Vec<(PodBox, f64, f64)>,
    /// (ENI name, top, bottom): one per block of lanes, then the ENIs no path used.
    enis: Vec<(String, f64, f64)>,
    height: f64,
}

fn eni_lines(node: &NodePicture, name: &str) -> usize {
    1 + node.enis.iter().find(|e| e.name == name).map_or(0, |e| e.addrs.len().min(4))
}

fn layout<'a>(node: &NodePicture, groups: &'a [PathGroup]) -> Layout<'a> {
    // Pods in the node's order, then any pod only the paths know.
    let mut pods: Vec<PodBox> = node.pods.clone();
    for g in groups {
        if !pods.iter().any(|p| p.name == g.key.pod && p.namespace == g.key.namespace) {
            pods.push(PodBox {
                name: g.key.pod.clone(),
                namespace: g.key.namespace.clone(),
                ips: vec![],
                veths: g.veth.iter().cloned().collect(),
            });
        }
    }
    let eni_rank = |e: &Option<String>| match e {
        Some(n) => node.enis.iter().position(|x| &x.name == n).unwrap_or(node.enis.len()),
        None => usize::MAX,
    };
    let mut out = Layout { lanes: vec![], pods: vec![], enis: vec![], height: 0.0 };
    let mut y = TOP;
    for pod in pods {
        let mut blocks: BTreeMap<(usize, Option<String>), Vec<&PathGroup>> = BTreeMap::new();
        for g in groups.iter().filter(|g| g.key.pod == pod.name && g.key.namespace == pod.namespace) {
            blocks.entry((eni_rank(&g.key.eni), g.key.eni.clone())).or_default().push(g);
        }
        let top = y;
        for ((_, eni), mut paths) in blocks {
            paths.sort_by(|a, b| a.key.direction.cmp(&b.key.direction).then(b.bytes.cmp(&a.bytes)));
            let block_top = y;
            for g in paths {
                out.lanes.push((y, g));
                y += LANE_H;
            }
            if let Some(name) = eni {
                // Room for the ENI's name and addresses even with a single lane.
                let needed = 24.0 + 15.0 * eni_lines(node, &name) as f64;
                y = y.max(block_top + needed + 10.0);
                out.enis.push((name, block_top, y));
            }
        }
        y = y.max(top + 70.0);
        out.pods.push((pod, top, y));
        y += 10.0;
    }
    for e in &node.enis {
        if !out.enis.iter().any(|(n, _, _)| n == &e.name) {
            let h = 24.0 + 15.0 * eni_lines(node, &e.name) as f64;
            out.enis.push((e.name.clone(), y, y + h));
            y += h + 10.0;
        }
    }
    out.height = y + 90.0;
    out
}

fn text(out: &mut String, x: f64, y: f64, size: f64, attrs: &str, s: &str) {
    writeln!(out, r#"<text x="{x:.1}" y="{y:.1}" font-size="{size:.1}" {attrs}>{}</text>"#, esc(s)).unwrap();
}

fn draw_pod(out: &mut String, pod: &PodBox, top: f64, bottom: f64) {
    let h = bottom - top - 8.0;
    writeln!(out, r#"<g class="pod" data-name="{}">"#, esc(&pod.name)).unwrap();
    writeln!(out, r##"<rect x="{POD_X}" y="{top:.1}" width="{POD_W}" height="{h:.1}" rx="8" fill="#e7f5ff" stroke="#1c7ed6"/>"##).unwrap();
    text(out, POD_X + 10.0, top + 20.0, 14.0, r#"font-weight="bold""#, &pod.name);
    text(out, POD_X + 10.0, top + 36.0, 11.0, "", &format!("pod in {}", pod.namespace));
    for (i, ip) in pod.ips.iter().take(3).enumerate() {
        let ip = ip.to_string();
        text(out, POD_X + 10.0, top + 52.0 + 14.0 * i as f64, fitting(&ip, POD_W - 16.0, 11.0), "", &ip);
    }
    writeln!(out, "</g>").unwrap();
    let veth = pod.veths.first().cloned().unwrap_or_else(|| "(no veth on this node)".into());
    writeln!(out, r#"<g class="veth" data-name="{}">"#, esc(&veth)).unwrap();
    writeln!(out, r##"<rect x="{VETH_X}" y="{top:.1}" width="{VETH_W}" height="{h:.1}" rx="4" fill="#f8f9fa" stroke="{BOX_STROKE}"/>"##).unwrap();
    text(out, VETH_X + 10.0, top + 20.0, fitting(&veth, VETH_W - 16.0, 13.0), r#"font-weight="bold""#, &veth);
    text(out, VETH_X + 10.0, top + 36.0, 11.0, "", "host veth");
    // A pod with more interfaces (egress-cni's IPv4 side of an IPv6 pod) has more veths.
    for (i, more) in pod.veths.iter().skip(1).take(2).enumerate() {
        text(out, VETH_X + 10.0, top + 52.0 + 14.0 * i as f64, fitting(more, VETH_W - 16.0, 11.0), "", more);
    }
    writeln!(out, "</g>").unwrap();
}

fn draw_eni(out: &mut String, node: &NodePicture, name: &str, top: f64, bottom: f64) {
    let eni = node.enis.iter().find(|e| e.name == name);
    let h = bottom - top - 8.0;
    writeln!(out, r#"<g class="eni" data-name="{}">"#, esc(name)).unwrap();
    writeln!(out, r##"<rect x="{ENI_X}" y="{top:.1}" width="{ENI_W}" height="{h:.1}" rx="4" fill="#e6fcf5" stroke="#0c8599"/>"##).unwrap();
    let title = match eni {
        Some(EniBox { trunk: Some(trunk), .. }) => format!("{name} (branch ENI on {trunk})"),
        Some(e) if e.primary => format!("{name} (primary ENI)"),
        Some(_) => format!("{name} (ENI)"),
        None => name.to_string(),
    };
    text(out, ENI_X + 10.0, top + 20.0, fitting(&title, ENI_W - 16.0, 13.0), r#"font-weight="bold""#, &title);
    for (i, a) in eni.map(|e| &e.addrs[..]).unwrap_or_default().iter().take(4).enumerate() {
        let y = top + 36.0 + 15.0 * i as f64;
        text(out, ENI_X + 10.0, y, fitting(a, ENI_W - 16.0, 11.0), r#"class="eni-addr""#, a);
    }
    writeln!(out, "</g>").unwrap();
}

fn draw_nat(out: &mut String, step: &NatStep, source: bool, slot: usize, y: f64) {
    let x = NAT_SLOTS[slot];
    let (first, second, tip) = nat_label(step, source);
    writeln!(out, r#"<g class="nat" data-kind="{}"><title>{}</title>"#, step.kind, esc(&tip)).unwrap();
    writeln!(out, r#"<rect x="{x}" y="{:.1}" width="{NAT_W}" height="{NAT_H}" rx="5" fill="{NAT_FILL}" stroke="{NAT_STROKE}"/>"#, y - NAT_H / 2.0).unwrap();
    text(
        out,
        x + 8.0,
        y - 3.0,
        fitting(&first, NAT_W - 14.0, 11.5),
        r#"class="nat-label" font-weight="bold""#,
        &first,
    );
    text(out, x + 8.0, y + 12.0, fitting(&second, NAT_W - 14.0, 10.5), "", &second);
    writeln!(out, "</g>").unwrap();
}

/// One path: its arrow, NAT boxes, peer box and red marks.
fn draw_path(out: &mut String, g: &PathGroup, top: f64, max_bytes: u64) {
    let y = top + LANE_H / 2.0;
    let width = (MAX_ARROW * g.bytes as f64 / max_bytes.max(1) as f64).max(MIN_ARROW);
    let egress = g.key.direction == Direction::Egress;
    let colour = if egress { EGRESS } else { INGRESS };
    let head = 8.0 + width;
    // Segments between the boxes, in the direction the path was opened.
    let mut stops: Vec<(f64, f64)> = vec![(POD_X + POD_W, VETH_X)];
    match g.key.eni {
        Some(_) => stops.extend([(VETH_X + VETH_W, ENI_X), (ENI_X + ENI_W, PEER_X)]),
        None => stops.push((VETH_X + VETH_W, PEER_X)),
    }
    if !egress {
        stops = stops.into_iter().rev().map(|(a, b)| (b, a)).collect();
    }
    if let Some(last) = stops.last_mut() {
        last.1 += if egress { -head } else { head };
    }
    let d: Vec<String> = stops.iter().map(|(a, b)| format!("M{a:.1},{y:.1} H{b:.1}")).collect();
    writeln!(
        out,
        r#"<g class="path" data-direction="{}" data-peer="{}" data-bytes="{}">"#,
        if egress { "egress" } else { "ingress" },
        esc(&g.key.peer.to_string()),
        g.bytes
    )
    .unwrap();
    writeln!(
        out,
        r#"<path class="path-arrow" d="{}" fill="none" stroke="{colour}" stroke-width="{width:.1}"><title>{}</title></path>"#,
        d.join(" "),
        esc(&path_text::path_text(g))
    )
    .unwrap();
    let (tip, back) = if egress { (PEER_X, PEER_X - head) } else { (POD_X + POD_W, POD_X + POD_W + head) };
    let half = 4.0 + width * 0.8;
    writeln!(
        out,
        r#"<polygon class="arrowhead" points="{tip:.1},{y:.1} {back:.1},{:.1} {back:.1},{:.1}" fill="{colour}"/>"#,
        y - half,
        y + half
    )
    .unwrap();
    // Packets meet DNAT (prerouting) before SNAT (postrouting): on egress left to right, on
    // ingress from the ENI leftwards.
    let (dnat_slot, snat_slot) = if egress { (0, 1) } else { (1, 0) };
    if let Some(d) = &g.dnat {
        draw_nat(out, d, false, dnat_slot, y);
    }
    if let Some(s) = &g.snat {
        draw_nat(out, s, true, snat_slot, y);
    }
    draw_peer(out, g, y);
    draw_losses(out, g, y, width);
    writeln!(out, "</g>").unwrap();
}

fn draw_peer(out: &mut String, g: &PathGroup, y: f64) {
    let lost = g.dropped() > 0 || g.unanswered() > 0;
    let stroke = if lost { RED } else { BOX_STROKE };
    let top = y - 30.0;
    writeln!(out, r#"<rect class="peer" x="{PEER_X}" y="{top:.1}" width="{PEER_W}" height="60" rx="4" fill="white" stroke="{stroke}"/>"#).unwrap();
    let peer = g.key.peer.to_string();
    let what = match g.key.direction {
        Direction::Egress => "to",
        Direction::Ingress => "from",
    };
    let first = format!("{what} {peer}");
    text(
        out,
        PEER_X + 8.0,
        top + 16.0,
        fitting(&first, PEER_W - 14.0, 12.0),
        r#"class="peer-label" font-weight="bold""#,
        &first,
    );
    let mut second = format!("{} · {} conns · {}", g.key.proto, g.total(), bytes_text(g.bytes as f64));
    if let Some(mode) = g.key.ingress_mode {
        second += &format!(" · {}", mode.as_str());
    }
    text(out, PEER_X + 8.0, top + 32.0, fitting(&second, PEER_W - 14.0, 11.0), "", &second);
    let third = match g.latency() {
        Some(l) => format!("in-node p50 {} · p99 {}", latency_text(l.p50), latency_text(l.p99)),
        None => "in-node latency: no samples".into(),
    };
    text(out, PEER_X + 8.0, top + 48.0, fitting(&third, PEER_W - 14.0, 11.0), r##"fill="#495057""##, &third);
}

/// Drops in red where they happened (after the ENI or the veth), unanswered connections at
/// the peer.
fn draw_losses(out: &mut String, g: &PathGroup, y: f64, width: f64) {
    let below = y + width / 2.0 + 13.0;
    for (i, (place, n)) in g.drops.iter().enumerate() {
        let at_eni = place.after_hop.as_ref().is_some_and(|h| Some(&h.ifname) == g.key.eni.as_ref());
        let x = if at_eni { ENI_X - 14.0 } else { VETH_X + VETH_W + 14.0 };
        let after = place.after_hop.as_ref().map_or("?".to_string(), ToString::to_string);
        let label = format!("✗ {n} dropped after {after}: {}", place.reason);
        let anchor = if at_eni { "end" } else { "start" };
        writeln!(out, r#"<g class="drop"><circle cx="{x:.1}" cy="{y:.1}" r="6" fill="{RED}"/>"#).unwrap();
        text(
            out,
            x,
            below + 12.0 * i as f64,
            10.5,
            &format!(r#"fill="{RED}" text-anchor="{anchor}""#),
            &label,
        );
        writeln!(out, "</g>").unwrap();
    }
    let unanswered = g.unanswered();
    if unanswered > 0 {
        let label = format!("✗ {unanswered} never answered");
        writeln!(out, r#"<g class="drop">"#).unwrap();
        text(
            out,
            PEER_X - 6.0,
            y - width / 2.0 - 6.0,
            10.5,
            &format!(r#"fill="{RED}" text-anchor="end""#),
            &label,
        );
        writeln!(out, "</g>").unwrap();
    }
}

fn legend(out: &mut String, y: f64, max_bytes: u64) {
    writeln!(out, r#"<g class="legend" font-size="11">"#).unwrap();
    let items = [
        (EGRESS, "egress: the pod opened the connection"),
        (INGRESS, "ingress: a peer opened it"),
        (NAT_STROKE, "NAT step (iptables rewrite)"),
        (RED, "drops / never answered"),
    ];
    for (i, (colour, label)) in items.iter().enumerate() {
        let x = 20.0 + 300.0 * i as f64;
        writeln!(out, r#"<rect x="{x}" y="{:.1}" width="24" height="8" fill="{colour}"/>"#, y - 8.0).unwrap();
        text(out, x + 32.0, y, 11.0, "", label);
    }
    let note = format!(
        "Arrow width is proportional to bytes (the widest: {}). Addresses come from the node's interfaces and the flows' packets.",
        bytes_text(max_bytes as f64)
    );
    text(out, 20.0, y + 22.0, 11.0, r##"fill="#495057""##, &note);
    writeln!(out, "</g>").unwrap();
}

/// The diagram as a standalone SVG document.
pub fn svg(node: &NodePicture, groups: &[PathGroup], title: &str) -> String {
    let l = layout(node, groups);
    let max_bytes = groups.iter().map(|g| g.bytes).max().unwrap_or(0);
    let h = l.height;
    let mut s = String::new();
    writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#).unwrap();
    writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h:.0}" viewBox="0 0 {W} {h:.0}" font-family="sans-serif">"#).unwrap();
    writeln!(s, "<title>{}</title>", esc(title)).unwrap();
    writeln!(s, r#"<rect width="{W}" height="{h:.0}" fill="white"/>"#).unwrap();
    text(&mut s, 20.0, 30.0, 18.0, r#"font-weight="bold""#, title);
    text(&mut s, 20.0, 50.0, 12.0, r##"fill="#495057""##, &path_text::totals_text(groups));
    // The node: everything between the pod and the outside.
    let node_x = VETH_X - 12.0;
    let node_w = ENI_X + ENI_W + 12.0 - node_x;
    writeln!(s, r##"<rect class="node" x="{node_x}" y="75" width="{node_w}" height="{:.1}" rx="10" fill="#fcfcfd" stroke="#adb5bd" stroke-dasharray="6 4"/>"##, h - 155.0).unwrap();
    text(&mut s, node_x + 10.0, 92.0, 12.0, r##"fill="#495057" font-weight="bold""##, "this node");
    for (x, label) in [
        (POD_X, "pod"),
        (VETH_X, "host veth"),
        (NAT_SLOTS[0], "NAT (iptables)"),
        (ENI_X, "ENI and its addresses"),
        (PEER_X, "peer outside the pod"),
    ] {
        text(&mut s, x, 110.0, 11.0, r##"fill="#868e96""##, label);
    }
    for (pod, top, bottom) in &l.pods {
        draw_pod(&mut s, pod, *top, *bottom);
    }
    for (name, top, bottom) in &l.enis {
        draw_eni(&mut s, node, name, *top, *bottom);
    }
    for (top, g) in &l.lanes {
        draw_path(&mut s, g, *top, max_bytes);
    }
    if groups.is_empty() {
        text(&mut s, NAT_SLOTS[0], TOP + 30.0, 13.0, "", "no flows seen");
    }
    legend(&mut s, h - 50.0, max_bytes);
    writeln!(s, "</svg>").unwrap();
    s
}

/// A standalone page: the diagram and the table of the same paths. Well-formed XML (XHTML
/// polyglot), so tools and tests can parse it.
pub fn html(node: &NodePicture, groups: &[PathGroup], title: &str, now_ms: u64) -> String {
    let mut s = String::new();
    writeln!(s, "<!DOCTYPE html>").unwrap();
    writeln!(s, r#"<html xmlns="http://www.w3.org/1999/xhtml" lang="en">"#).unwrap();
    writeln!(s, r#"<head><meta charset="utf-8"/><title>{}</title>"#, esc(title)).unwrap();
    writeln!(s, "<style>body{{font-family:sans-serif;margin:16px}}table{{border-collapse:collapse;font-size:13px}}th,td{{padding:3px 10px;border-bottom:1px solid #dee2e6;text-align:left;white-space:nowrap}}td.num{{text-align:right}}svg{{max-width:100%;height:auto}}</style></head>").unwrap();
    writeln!(s, "<body>").unwrap();
    let diagram = svg(node, groups, title);
    s += diagram.split_once('\n').map_or("", |(_, rest)| rest);
    writeln!(s, "<h2>Paths</h2>\n<table class=\"paths\">\n<tr>").unwrap();
    for h in HEADERS {
        write!(s, "<th>{h}</th>").unwrap();
    }
    writeln!(s, "</tr>").unwrap();
    for g in groups {
        write!(s, "<tr>").unwrap();
        for (i, c) in path_text::path_cells(g, now_ms).iter().enumerate() {
            let class = if NUMERIC[i] { r#" class="num""# } else { "" };
            write!(s, "<td{class}>{}</td>", esc(c)).unwrap();
        }
        writeln!(s, "</tr>").unwrap();
    }
    writeln!(s, "</table>\n</body>\n</html>").unwrap();
    s
}

#[cfg(test)]
mod tests;
