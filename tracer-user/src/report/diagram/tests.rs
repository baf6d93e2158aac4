//! The diagram of the recorded demo traffic, parsed back as XML.
use super::*;
use crate::{
    assemble::model::HopName,
    report::group::{
        DropPlace, GroupBy, GroupOptions,
        fixtures::{DEMO_WEB_2, RECORDED_NOW_MS, recorded},
        group,
    },
};

/// node-a of the lab as its inventory reads it.
fn node_a() -> NodePicture {
    NodePicture {
        enis: vec![
            EniBox { name: "eth0".into(), primary: true, trunk: None, addrs: vec!["198.18.1.10/24".into()] },
            EniBox { name: "eth1".into(), primary: false, trunk: None, addrs: vec!["198.18.2.10/24".into()] },
        ],
        pods: vec![PodBox {
            name: "web-2".into(),
            namespace: "default".into(),
            ips: vec!["198.18.2.11".parse().unwrap()],
            veths: vec!["eni9fb0db7f13e".into()],
        }],
    }
}

fn demo_paths() -> Vec<PathGroup> {
    let (_, flows) = recorded(DEMO_WEB_2);
    group(&flows, &GroupOptions::new(GroupBy::Path, RECORDED_NOW_MS))
}

fn with_class<'a>(doc: &'a roxmltree::Document, class: &str) -> Vec<roxmltree::Node<'a, 'a>> {
    doc.descendants().filter(|n| n.attribute("class") == Some(class)).collect()
}

/// The text of an element and its children, one space between pieces.
fn all_text(n: roxmltree::Node) -> String {
    let pieces = n.descendants().filter(|d| d.is_text()).filter_map(|d| d.text()).map(str::trim);
    pieces.filter(|t| !t.is_empty()).collect::<Vec<_>>().join(" ")
}

#[test]
fn one_arrow_per_path_with_its_nat_steps_labelled() {
    let paths = demo_paths();
    let text = svg(&node_a(), &paths, "paths of default/web-2");
    let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
    assert_eq!(with_class(&doc, "path-arrow").len(), paths.len());
    assert_eq!(with_class(&doc, "path").len(), 6);
    let labels: Vec<String> = with_class(&doc, "nat-label").iter().map(|n| all_text(*n)).collect();
    let mut sorted = labels.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "DNAT from 198.19.0.10:80",
            "DNAT from NodePort 198.18.1.10:30080",
            "MASQUERADE to 198.18.1.10:*",
            "SNAT to 198.18.1.10:*",
        ]
    );
    // The NodePort path: DNAT nearer the ENI than the MASQUERADE (it happens first).
    let nodeport = with_class(&doc, "path")
        .into_iter()
        .find(|p| p.descendants().any(|d| d.attribute("data-kind") == Some("nodeport-dnat")))
        .unwrap();
    let x_of = |kind: &str| -> f64 {
        let nat = nodeport.descendants().find(|d| d.attribute("data-kind") == Some(kind)).unwrap();
        nat.descendants().find(|d| d.has_tag_name("rect")).unwrap().attribute("x").unwrap().parse().unwrap()
    };
    assert!(x_of("nodeport-dnat") > x_of("masquerade"));
    assert_eq!(nodeport.attribute("data-direction"), Some("ingress"));
}

#[test]
fn arrows_are_as_wide_as_their_bytes_and_the_enis_show_their_addresses() {
    let paths = demo_paths();
    let doc_text = svg(&node_a(), &paths, "t");
    let doc = roxmltree::Document::parse(&doc_text).unwrap();
    let widths: Vec<(u64, f64)> = with_class(&doc, "path")
        .iter()
        .map(|p| {
            let bytes = p.attribute("data-bytes").unwrap().parse().unwrap();
            let arrow = p.descendants().find(|d| d.attribute("class") == Some("path-arrow")).unwrap();
            (bytes, arrow.attribute("stroke-width").unwrap().parse().unwrap())
        })
        .collect();
    let (max_bytes, max_w) = widths.iter().copied().fold((0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
    assert_eq!(max_w, MAX_ARROW);
    for (bytes, w) in &widths {
        let expected = MAX_ARROW * *bytes as f64 / max_bytes as f64;
        assert!((w - expected).abs() < 0.051, "{bytes} bytes drawn {w} wide, expected {expected}");
    }
    let enis: Vec<String> = with_class(&doc, "eni").iter().map(|n| all_text(*n)).collect();
    assert_eq!(enis, ["eth0 (primary ENI) 198.18.1.10/24", "eth1 (ENI) 198.18.2.10/24"]);
    let pod = with_class(&doc, "pod");
    assert!(all_text(pod[0]).contains("198.18.2.11"));
}

#[test]
fn drops_and_unanswered_connections_are_red() {
    let mut paths = demo_paths();
    paths[0].drops.insert(
        DropPlace {
            reason: "NETFILTER_DROP".into(),
            after_hop: Some("eth1/ingress".parse::<HopName>().unwrap()),
        },
        3,
    );
    let text = svg(&node_a(), &paths, "t");
    let doc = roxmltree::Document::parse(&text).unwrap();
    let drops = with_class(&doc, "drop");
    assert_eq!(drops.len(), 1);
    let label = drops[0].descendants().find(|d| d.has_tag_name("text")).unwrap();
    assert_eq!(all_text(label), "✗ 3 dropped after eth1/ingress: NETFILTER_DROP");
    assert_eq!(label.attribute("fill"), Some(RED));
    // Without drops nothing is red.
    let clean = svg(&node_a(), &demo_paths(), "t");
    assert!(with_class(&roxmltree::Document::parse(&clean).unwrap(), "drop").is_empty());
    assert_eq!(clean.matches(RED).count(), 1, "only the legend's swatch");
}

#[test]
fn the_page_is_one_self_contained_document_with_the_diagram_and_the_table() {
    let paths = demo_paths();
    let page = html(&node_a(), &paths, "paths of default/web-2", RECORDED_NOW_MS);
    let doc = roxmltree::Document::parse_with_options(
        &page,
        roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() },
    )
    .expect("well-formed page");
    let svgs: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("svg")).collect();
    assert_eq!(svgs.len(), 1);
    assert_eq!(with_class(&doc, "path-arrow").len(), 6);
    let rows = doc.descendants().filter(|n| n.has_tag_name("tr")).count();
    assert_eq!(rows, 1 + 6, "a header and one row per path");
    // Nothing is fetched from elsewhere.
    for n in doc.descendants() {
        for a in n.attributes() {
            assert!(!["href", "src"].contains(&a.name()), "{} on {:?}", a.name(), n.tag_name());
        }
        assert!(!["script", "link", "img", "image"].contains(&n.tag_name().name()));
    }
    assert!(!page.contains("url("), "no external style resources");
}

#[test]
fn an_empty_trace_still_draws_the_node() {
    let text = svg(&node_a(), &[], "t");
    let doc = roxmltree::Document::parse(&text).unwrap();
    assert!(with_class(&doc, "path-arrow").is_empty());
    assert_eq!(with_class(&doc, "eni").len(), 2);
    assert!(text.contains("no flows seen"));
}
