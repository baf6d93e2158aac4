//! The live view (issue 19) on the lab: one run of the demo's traffic traced three ways at
//! once (per-flow JSON, per-path JSON with the diagram files, the plain summary every
//! interval), which must agree with each other and with the traffic sent; and the terminal UI
//! in a real pseudo-terminal (tmux): rows appear, Enter expands, a resize redraws, q, Ctrl-C and
//! SIGTERM end it with the terminal as it was.
use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use podtrace::{
    assemble::model::{Direction, IngressMode, NatKind},
    report::path_json::PathReport,
};
use tests::{lab, start_podtrace, start_podtrace_to};
use xtask::lab::{Lab, traffic};

/// Waits for `what` (an event, not a duration: the deadline only turns a hang into a failure).
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A service port as kube-proxy names it: `default/web` for an unnamed port,
/// `default/api:http` for a named one.
fn service_name(lab: &Lab, service: &str, port: u16) -> String {
    let svc = lab.plan.service(service).unwrap();
    let p = svc.ports.iter().find(|p| p.port == port && p.proto == "tcp").unwrap();
    if p.name.is_empty() {
        format!("default/{}", svc.name)
    } else {
        format!("default/{}:{}", svc.name, p.name)
    }
}

fn eth0_ip(lab: &Lab) -> IpAddr {
    IpAddr::V4(lab.plan.node("node-a").unwrap().enis[0].ip)
}

/// What the demo sends, and how much of it web-2 served.
struct Sent {
    nodeport_served_by_web_2: u32,
}

fn demo_traffic(lab: &Lab) -> Result<Sent> {
    let (web2, alb) = (lab.ns("web-2"), lab.ns("alb"));
    let all_ok = |s: traffic::LoadStats, n: u32, what: &str| {
        assert_eq!((s.ok, s.failed), (n, 0), "{what}");
        s
    };
    all_ok(traffic::tcp_load(&web2, lab.addr("inet", 80), 5, 1, 256)?, 5, "internet");
    // kube-proxy picks web-2 or web-3 at random: until web-2 served at least two (its path is
    // traced). Two connections from two client ports get two MASQUERADE ports, so the path's
    // label has the `*` port the diagram is checked for; with one, it shows that one port
    // (a rare CI failure when web-2 happened to serve a single connection).
    let mut served = 0;
    for _ in 0..8 {
        let s = all_ok(traffic::tcp_load(&alb, lab.addr("node-a", 30080), 10, 2, 256)?, 10, "NodePort");
        served += s.served_by.get("web-2").copied().unwrap_or(0);
        if served >= 2 {
            break;
        }
    }
    assert!(served >= 2, "web-2 served {served} of the NodePort connections");
    all_ok(traffic::tcp_load(&alb, lab.addr("web-2", 8080), 4, 1, 256)?, 4, "pod IP");
    all_ok(traffic::tcp_load(&web2, lab.addr("api", 80), 3, 1, 256)?, 3, "ClusterIP");
    all_ok(traffic::tcp_load(&web2, lab.addr("db", 8080), 2, 1, 256)?, 2, "VPC");
    Ok(Sent { nodeport_served_by_web_2: served })
}

fn one<'a>(paths: &'a [PathReport], what: &str, pred: impl Fn(&PathReport) -> bool) -> &'a PathReport {
    let found: Vec<&PathReport> = paths.iter().filter(|p| pred(p)).collect();
    assert_eq!(found.len(), 1, "one path {what} in {paths:#?}");
    found[0]
}

fn with_class<'a>(doc: &'a roxmltree::Document, class: &str) -> Vec<roxmltree::Node<'a, 'a>> {
    doc.descendants().filter(|n| n.attribute("class") == Some(class)).collect()
}

fn text_of(n: roxmltree::Node) -> String {
    let pieces = n.descendants().filter(|d| d.is_text()).filter_map(|d| d.text()).map(str::trim);
    pieces.filter(|t| !t.is_empty()).collect::<Vec<_>>().join(" ")
}

#[test]
fn per_flow_json_per_path_json_plain_lines_and_the_diagram_agree() -> Result<()> {
    let lab = lab("paths", |_| {})?;
    let dir = xtask::lab::state_dir(lab.prefix());
    let (svg, html, plain) = (dir.join("paths.svg"), dir.join("paths.html"), dir.join("plain.txt"));
    let pods_file = lab.pods_file();
    let base = ["--pod", "web-2", "--pods-file", pods_file.to_str().unwrap()];
    let node = lab.ns("node-a");
    let per_flow = start_podtrace(&node, &[&base[..], &["-o", "json"]].concat())?;
    let per_path = start_podtrace(
        &node,
        &[
            &base[..],
            &[
                "-o",
                "json",
                "--group-by",
                "path",
                "--svg",
                svg.to_str().unwrap(),
                "--html",
                html.to_str().unwrap(),
            ],
        ]
        .concat(),
    )?;
    let lines = start_podtrace_to(
        &node,
        &[&base[..], &["--interval", "1s"]].concat(),
        std::fs::File::create(&plain)?.into(),
    )?;
    let sent = demo_traffic(&lab)?;
    // The plain output is printed while tracing, not only at the end.
    wait_for("a summary printed while tracing", || {
        Ok(std::fs::read_to_string(&plain)?.contains("paths of default/web-2 after").then_some(()))
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let flows = per_flow.signal(Signal::SIGINT)?;
    let grouped = per_path.signal(Signal::SIGINT)?;
    let printed = lines.signal(Signal::SIGINT)?;
    for out in [&flows, &grouped, &printed] {
        assert!(out.status.success(), "{}", out.stderr);
    }
    let flows = flows.flows();
    let paths: Vec<PathReport> = grouped
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not a path object: {l}")))
        .collect::<Result<_>>()?;

    // The five ways of the demo, one path each, with what was sent.
    assert_eq!(paths.len(), 5, "{paths:#?}");
    let eth0 = eth0_ip(&lab);
    let (alb, api) = (lab.addr("alb", 0).ip(), lab.addr("api", 80));
    let inet = one(&paths, "to the internet", |p| p.key.peer == lab.addr("inet", 80).to_string());
    assert_eq!((inet.key.eni.as_deref(), inet.key.snat), (Some("eth0"), Some(NatKind::PodEgressSnat)));
    assert_eq!(inet.snat.as_ref().unwrap().to, format!("{eth0}:*"), "SNAT ports are a wildcard");
    assert_eq!(inet.connections.total, 5);
    let nodeport = one(&paths, "via the NodePort", |p| p.key.ingress_mode == Some(IngressMode::Nodeport));
    assert_eq!(nodeport.key.peer, format!("{alb}:*"));
    assert_eq!(nodeport.dnat.as_ref().unwrap().from, format!("{eth0}:30080"));
    assert_eq!(nodeport.connections.total as u32, sent.nodeport_served_by_web_2);
    let direct = one(&paths, "to the pod IP", |p| p.key.ingress_mode == Some(IngressMode::Direct));
    assert_eq!((direct.key.eni.as_deref(), direct.connections.total), (Some("eth1"), 4));
    assert_eq!(nodeport.dnat.as_ref().unwrap().service, Some(service_name(&lab, "web", 80)));
    let cluster_ip = one(&paths, "to the ClusterIP", |p| p.key.dnat == Some(NatKind::ServiceDnat));
    assert_eq!(cluster_ip.key.peer, service_name(&lab, "api", 80), "the service is the peer");
    assert_eq!(cluster_ip.dnat.as_ref().unwrap().from, api.to_string());
    assert_eq!(cluster_ip.dnat.as_ref().unwrap().to, lab.addr("api-1", 8080).to_string());
    assert_eq!(cluster_ip.connections.total, 3);
    let vpc = one(&paths, "to db", |p| p.key.peer == lab.addr("db", 8080).to_string());
    assert_eq!((vpc.key.direction, vpc.key.snat, vpc.key.dnat), (Direction::Egress, None, None));
    assert_eq!(vpc.connections.total, 2);

    // The paths partition the per-flow JSON of the same traffic, and add up to it.
    let ids: Vec<&String> = paths.iter().flat_map(|p| &p.flow_ids).collect();
    let unique: BTreeSet<&String> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "a flow in two paths");
    assert_eq!(unique, flows.iter().map(|f| &f.id).collect::<BTreeSet<_>>());
    for p in &paths {
        let of_path = flows.iter().filter(|f| p.flow_ids.contains(&f.id));
        let (packets, bytes) = of_path.fold((0, 0), |(n, b), f| (n + f.packets, b + f.bytes));
        assert_eq!((p.packets, p.bytes), (packets, bytes), "{}", p.key.peer);
    }

    // The diagram: one arrow per path, the NAT steps labelled, the ENIs with their addresses.
    let svg_text = std::fs::read_to_string(&svg)?;
    let doc = roxmltree::Document::parse(&svg_text)?;
    assert_eq!(with_class(&doc, "path-arrow").len(), paths.len());
    let labels: BTreeSet<String> = with_class(&doc, "nat-label").into_iter().map(text_of).collect();
    let expected: BTreeSet<String> = [
        format!("SNAT to {eth0}:*"),
        format!("DNAT from NodePort {eth0}:30080"),
        format!("MASQUERADE to {eth0}:*"),
        format!("DNAT from {api}"),
    ]
    .into();
    assert_eq!(labels, expected);
    let enis: Vec<String> = with_class(&doc, "eni").into_iter().map(text_of).collect();
    for e in &lab.plan.node("node-a").unwrap().enis {
        let addr = format!("{}/{}", e.ip, e.prefix_len);
        assert!(enis.iter().any(|t| t.starts_with(&e.name) && t.contains(&addr)), "{addr} in {enis:?}");
    }
    let page = std::fs::read_to_string(&html)?;
    let opts = roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(&page, opts)?;
    assert_eq!(with_class(&doc, "path-arrow").len(), paths.len());
    assert_eq!(doc.descendants().filter(|n| n.has_tag_name("tr")).count(), 1 + paths.len());

    // The plain lines: a summary every interval and one at the end, with the same paths.
    let text = std::fs::read_to_string(&plain)?;
    let blocks: Vec<&str> = text.split("paths of default/web-2 after").skip(1).collect();
    assert!(blocks.len() >= 2, "{text}");
    let last: Vec<&str> = blocks.last().unwrap().lines().collect();
    assert!(last[0].ends_with(&format!(": 5 paths, {} connections (0 active)", flows.len())), "{text}");
    let rows = &last[2..];
    assert_eq!(rows.iter().filter(|r| !r.trim().is_empty()).count(), 5, "{text}");
    for p in &paths {
        let peer = p.key.peer.as_str();
        assert!(
            rows.iter().any(|r| r.contains(peer) && r.contains(&format!("/{}", p.connections.total))),
            "{peer} in {text}"
        );
    }
    Ok(())
}

/// A tmux server of our own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
    dir: PathBuf,
}

impl Tmux {
    /// Runs podtrace in a 220x50 pseudo-terminal, recording the terminal's mode before and
    /// after (`stty -g`), podtrace's pid and exit status.
    fn start(lab: &Lab, name: &str) -> Result<Tmux> {
        let dir = xtask::lab::state_dir(lab.prefix()).join(name);
        std::fs::create_dir_all(&dir)?;
        let t = Tmux { socket: format!("{}{name}", lab.prefix()), dir };
        let d = t.dir.display();
        // Each file is written under a temporary name and renamed, so the test never reads
        // one that the shell has created but not yet filled.
        let script = format!(
            "stty -g > {d}/stty.before\n\
             sh -c 'echo $$ > {d}/pid.tmp; mv {d}/pid.tmp {d}/pid; \
                    exec ip netns exec {ns} {bin} --pod web-2 --pods-file {pf}'\n\
             echo $? > {d}/exit\n\
             stty -g > {d}/stty.tmp; mv {d}/stty.tmp {d}/stty.after\n\
             sleep 600\n",
            ns = lab.ns("node-a"),
            bin = tests::podtrace_bin().display(),
            pf = lab.pods_file().display(),
        );
        std::fs::write(t.dir.join("run.sh"), script)?;
        let run = format!("sh {d}/run.sh");
        t.tmux(&["new-session", "-d", "-s", "view", "-x", "220", "-y", "50", &run])?;
        Ok(t)
    }

    fn tmux(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .context("running tmux (cargo xtask setup installs it)")?;
        if !out.status.success() {
            bail!("tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into())
    }

    fn screen(&self) -> Result<String> {
        self.tmux(&["capture-pane", "-p", "-t", "view"])
    }

    fn alternate_screen(&self) -> Result<bool> {
        Ok(self.tmux(&["display", "-p", "-t", "view", "#{alternate_on}"])?.trim() == "1")
    }

    fn keys(&self, keys: &str) -> Result<()> {
        self.tmux(&["send-keys", "-t", "view", keys]).map(|_| ())
    }

    fn file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(name)).ok()
    }

    /// Waits until the live view shows its title line.
    fn wait_for_view(&self) -> Result<()> {
        wait_for("the live view", || {
            Ok(self.screen()?.starts_with("podtrace default/web-2 on ").then_some(()))
        })
    }

    /// Waits for podtrace to end; checks it exited 0 and left the terminal as it found it.
    fn assert_ended_cleanly(&self) -> Result<()> {
        let after = wait_for("podtrace to exit", || Ok(self.file("stty.after")))?;
        assert_eq!(self.file("exit").as_deref().map(str::trim), Some("0"), "{}", self.screen()?);
        assert_eq!(Some(after), self.file("stty.before"), "terminal mode restored");
        assert!(!self.alternate_screen()?, "alternate screen left");
        Ok(())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

fn rows_with<'a>(screen: &'a str, text: &str) -> Vec<&'a str> {
    screen.lines().filter(|l| l.contains(text)).collect()
}

#[test]
fn the_live_view_in_a_terminal_groups_expands_and_gives_the_terminal_back() -> Result<()> {
    let lab = lab("tui", |_| {})?;
    let eth0 = eth0_ip(&lab);
    let (inet, db) = (lab.addr("inet", 80), lab.addr("db", 8080));

    let t = Tmux::start(&lab, "keys")?;
    t.wait_for_view()?;
    assert!(t.alternate_screen()?);
    let web2 = lab.ns("web-2");
    traffic::tcp_load(&web2, inet, 6, 1, 512)?;
    traffic::tcp_load(&web2, db, 2, 1, 64)?;
    // Two rows, refreshed in place: the connections of each path counted, none open.
    let screen = wait_for("both paths with all their connections", || {
        let s = t.screen()?;
        let inet_row = rows_with(&s, &format!("⇒ {inet}")).iter().any(|r| r.contains(" 0/6 "));
        let db_row = rows_with(&s, &format!("⇒ {db}")).iter().any(|r| r.contains(" 0/2 "));
        Ok((inet_row && db_row).then_some(s))
    })?;
    assert!(screen.lines().next().unwrap().contains("2 paths, 8 connections"), "{screen}");
    assert_eq!(rows_with(&screen, &format!("SNAT → {eth0}:*")).len(), 1, "{screen}");
    // Enter expands the first row (the internet path has the most bytes) into its 6 connections.
    t.keys("Enter")?;
    let screen = wait_for("the expanded path", || {
        let s = t.screen()?;
        Ok((!rows_with(&s, "└").is_empty()).then_some(s))
    })?;
    let connections = rows_with(&screen, "└");
    assert_eq!(connections.len(), 6, "{screen}");
    let mut ports = BTreeSet::new();
    for c in &connections {
        assert!(c.contains(&format!("→ {inet}")) && c.contains(&format!("SNAT → {eth0}:")), "{c}");
        ports.insert(c.split_once("└ :").unwrap().1.split(' ').next().unwrap().to_string());
    }
    assert_eq!(ports.len(), 6, "six connections, six source ports: {connections:?}");
    // A smaller window: the view is drawn again to the new size, footer on its last line.
    t.tmux(&["resize-window", "-t", "view", "-x", "120", "-y", "24"])?;
    wait_for("the view redrawn at 120x24", || {
        let s = t.screen()?;
        let lines: Vec<&str> = s.lines().collect();
        let redrawn = lines.len() == 24
            && lines[0].starts_with("podtrace default/web-2 on ")
            && lines[23].starts_with("losses: ")
            && lines.iter().all(|l| l.chars().count() <= 120);
        Ok(redrawn.then_some(()))
    })?;
    t.keys("q")?;
    t.assert_ended_cleanly()?;
    // After the terminal is given back, the same paths as plain lines.
    let screen = t.screen()?;
    assert!(screen.contains("paths of default/web-2 after"), "{screen}");
    assert!(screen.contains("2 paths, 8 connections (0 active)"), "{screen}");
    drop(t);

    // Ctrl-C is a key in raw mode: it quits like q.
    let t = Tmux::start(&lab, "ctrl-c")?;
    t.wait_for_view()?;
    t.keys("C-c")?;
    t.assert_ended_cleanly()?;
    drop(t);

    // SIGTERM ends the session loop: the terminal is restored on the way out.
    let t = Tmux::start(&lab, "sigterm")?;
    t.wait_for_view()?;
    let pid: i32 = wait_for("the pid", || Ok(t.file("pid")))?.trim().parse()?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM)?;
    t.assert_ended_cleanly()?;
    Ok(())
}
