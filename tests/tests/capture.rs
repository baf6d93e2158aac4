//! `podtrace capture` on the lab (issue 20), every file read back by tshark: the pod's packets
//! at its veth and at the ENI across an internet SNAT and a NodePort's DNAT + MASQUERADE, each
//! hop's interface block, growing timestamps along the path, packet counts equal to a
//! `podtrace -o json` run at the same time, only the pod's packets, the filter's any-hop rule,
//! the snaplen, stdout output and one-line errors.
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Result, bail};
use podtrace::assemble::model::{Direction, Hook, IngressMode};
use tests::{FlowReport, lab, podtrace_bin, run_podtrace, start_podtrace};
use xtask::lab::{Lab, traffic};

/// One packet as tshark dissects it.
#[derive(Clone, Debug)]
struct Pkt {
    iface: String,
    src: Option<SocketAddr>,
    dst: Option<SocketAddr>,
    seq: Option<u64>,
    ack: Option<u64>,
    flags: String,
    /// Nanoseconds since the epoch (tshark prints them with 9 digits).
    ts: u128,
    len: usize,
    caplen: usize,
    comment: String,
}

/// Runs tshark on a file; fails on any message other than its root notice.
fn tshark(file: &Path) -> Result<Vec<Pkt>> {
    let fields = [
        "frame.interface_name",
        "ip.src",
        "ip.dst",
        "tcp.srcport",
        "tcp.dstport",
        "tcp.seq_raw",
        "tcp.ack_raw",
        "tcp.flags",
        "frame.time_epoch",
        "frame.len",
        "frame.cap_len",
        "frame.comment",
    ];
    let mut args = vec!["-r".to_string(), file.display().to_string(), "-T".into(), "fields".into()];
    args.extend(["-E", "occurrence=f"].map(String::from));
    for f in fields {
        args.extend(["-e".to_string(), f.to_string()]);
    }
    let out = Command::new("tshark").args(&args).output()?;
    let err: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("Running as user"))
        .map(String::from)
        .collect();
    if !out.status.success() || !err.is_empty() {
        bail!("tshark -r {}: {:?} {err:?}", file.display(), out.status);
    }
    let mut pkts = Vec::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let sock = |ip: &str, port: &str| format!("{ip}:{port}").parse().ok();
        let (secs, frac) = f[8].split_once('.').unwrap_or((f[8], "0"));
        pkts.push(Pkt {
            iface: f[0].to_string(),
            src: sock(f[1], f[3]),
            dst: sock(f[2], f[4]),
            seq: f[5].parse().ok(),
            ack: f[6].parse().ok(),
            flags: f[7].to_string(),
            ts: secs.parse::<u128>()? * 1_000_000_000 + format!("{frac:0<9}")[..9].parse::<u128>()?,
            len: f[9].parse()?,
            caplen: f[10].parse()?,
            comment: f[11].to_string(),
        });
    }
    Ok(pkts)
}

fn same_segment(p: &Pkt, q: &Pkt) -> bool {
    (p.seq, p.ack, &p.flags, p.len) == (q.seq, q.ack, &q.flags, q.len)
}

/// Interface block names, from capinfos.
fn interface_names(file: &Path) -> Result<Vec<String>> {
    let out = Command::new("capinfos").arg(file).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Name = ").map(String::from))
        .collect())
}

fn hop_name(ifname: &str, hook: Hook) -> String {
    format!("{ifname}/{}", hook.as_str())
}

/// Requests to node-a's NodePort until one was served by web-2 (the local endpoint).
fn nodeport_until_local(lab: &Lab) -> Result<()> {
    let to = lab.addr("node-a", 30080);
    for _ in 0..64 {
        if traffic::tcp_request(&lab.ns("alb"), to, 10)?.server == "web-2" {
            return Ok(());
        }
    }
    bail!("no NodePort request reached web-2")
}

fn capture_file(lab: &Lab, name: &str) -> std::path::PathBuf {
    xtask::lab::state_dir(lab.prefix()).join(name)
}

#[test]
fn snat_and_nodeport_packets_are_captured_at_every_hop_and_counted_like_the_flows() -> Result<()> {
    let lab = lab("capture", |_| {})?;
    let pods = lab.pods_file();
    let pods = pods.to_str().unwrap();
    let file = capture_file(&lab, "web-2.pcapng");
    let node = lab.ns("node-a");
    let trace = start_podtrace(&node, &["--pod", "web-2", "--pods-file", pods, "-o", "json"])?;
    let capture = start_podtrace(
        &node,
        &["capture", "--pod", "web-2", "--pods-file", pods, "-w", file.to_str().unwrap(), "-o", "json"],
    )?;
    let inet = lab.addr("inet", 80);
    for _ in 0..3 {
        traffic::tcp_request(&lab.ns("web-2"), inet, 2000)?;
    }
    nodeport_until_local(&lab)?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let captured = capture.signal(nix::sys::signal::Signal::SIGINT)?;
    let traced = trace.signal(nix::sys::signal::Signal::SIGINT)?;
    assert!(captured.status.success(), "capture failed: {}", captured.stderr);
    assert!(traced.status.success(), "trace failed: {}", traced.stderr);
    let flows: Vec<FlowReport> = traced.flows();
    let pkts = tshark(&file)?;
    let veth = lab.plan.pod("web-2").unwrap().veth.clone();
    let node_ip = lab.plan.ip_of("node-a").unwrap();
    let pod_ip = lab.plan.ip_of("web-2").unwrap();

    // Every hop's interface block, whether packets crossed it or not.
    let names = interface_names(&file)?;
    for iface in [veth.as_str(), "eth0", "eth1"] {
        for hook in ["ingress", "egress"] {
            assert!(names.contains(&format!("{iface}/{hook}")), "no block {iface}/{hook} in {names:?}");
        }
    }

    // Internet egress: each segment at the veth with the pod's address, then at eth0 SNATed.
    let egress: Vec<&FlowReport> = flows.iter().filter(|f| f.dst == inet).collect();
    assert_eq!(egress.len(), 3, "{flows:#?}");
    for f in &egress {
        let snat = f.snat.as_ref().expect("SNAT");
        assert_eq!(snat.to.ip(), node_ip);
        let at_veth: Vec<&Pkt> =
            pkts.iter().filter(|p| p.iface == format!("{veth}/ingress") && p.src == Some(f.src)).collect();
        assert!(at_veth.len() >= 4, "handshake and data at the veth: {at_veth:#?}");
        for p in at_veth {
            // The same segment: same sequence and acknowledgement numbers, flags and length (pure
            // ACKs, a FIN and the next data segment can share their sequence number).
            let after: Vec<&Pkt> = pkts
                .iter()
                .filter(|q| {
                    q.iface == "eth0/egress"
                        && same_segment(p, q)
                        && q.src == Some(snat.to)
                        && q.dst == Some(inet)
                })
                .collect();
            assert_eq!(after.len(), 1, "segment seq {:?} at eth0 with the SNATed source {}", p.seq, snat.to);
            assert!(after[0].ts > p.ts, "eth0 sees it after the veth");
        }
    }

    // NodePort ingress: at eth0 for the node's port, then DNATed + MASQUERADEd at the veth.
    let np = flows
        .iter()
        .find(|f| f.direction == Direction::Ingress && f.ingress_mode == Some(IngressMode::Nodeport))
        .expect("a NodePort flow");
    let wire = np.path.first().unwrap();
    assert_eq!(wire.dst, SocketAddr::new(node_ip, 30080));
    let at_eth0: Vec<&Pkt> = pkts
        .iter()
        .filter(|p| p.iface == "eth0/ingress" && p.src == Some(wire.src) && p.dst == Some(wire.dst))
        .collect();
    assert!(!at_eth0.is_empty());
    for p in at_eth0 {
        let after: Vec<&Pkt> = pkts
            .iter()
            .filter(|q| {
                q.iface == format!("{veth}/egress")
                    && same_segment(p, q)
                    && q.dst.map(|d| d.ip()) == Some(pod_ip)
            })
            .collect();
        assert_eq!(after.len(), 1, "segment seq {:?} at the veth after the DNAT", p.seq);
        assert_eq!(after[0].src.map(|s| s.ip()), Some(node_ip), "MASQUERADEd");
        assert!(after[0].ts > p.ts, "the veth sees it after eth0");
    }

    // Every hop of every flow: as many packets in the file as podtrace counted there.
    let mut in_file: HashMap<(String, SocketAddr, SocketAddr), u64> = HashMap::new();
    for p in &pkts {
        if let (Some(s), Some(d)) = (p.src, p.dst) {
            *in_file.entry((p.iface.clone(), s, d)).or_default() += 1;
        }
    }
    let mut hops = 0;
    for f in &flows {
        for h in f.path.iter().chain(&f.reply_path) {
            let key = (hop_name(&h.ifname, h.hook), h.src, h.dst);
            assert_eq!(in_file.get(&key).copied().unwrap_or(0), h.packets, "{key:?} of {}", f.id);
            hops += 1;
        }
    }
    assert!(hops >= 4 * 4);
    // And nothing else: every TCP packet in the file is a hop of one of web-2's flows (the
    // NodePort requests node-b served are not there).
    let known: std::collections::HashSet<&(String, SocketAddr, SocketAddr)> = in_file.keys().collect();
    let of_flows: std::collections::HashSet<(String, SocketAddr, SocketAddr)> = flows
        .iter()
        .flat_map(|f| f.path.iter().chain(&f.reply_path))
        .map(|h| (hop_name(&h.ifname, h.hook), h.src, h.dst))
        .collect();
    let foreign: Vec<_> = known.iter().filter(|k| !of_flows.contains(**k)).collect();
    assert!(foreign.is_empty(), "packets of no web-2 flow: {foreign:?}");

    // The first packet of each flow carries podtrace's account of it.
    let comments: Vec<&Pkt> = pkts.iter().filter(|p| !p.comment.is_empty()).collect();
    assert_eq!(comments.len(), flows.len(), "one comment per flow");
    for f in &egress {
        let first = pkts.iter().find(|p| p.src == Some(f.src)).unwrap();
        assert!(
            first.comment.contains("SNAT") && first.comment.contains("pod-egress-snat"),
            "{}",
            first.comment
        );
    }

    // The capture's own summary: nothing lost, its counts those of the flows.
    let line = captured.stderr.lines().find_map(|l| l.strip_prefix("podtrace capture summary: ")).unwrap();
    let s: serde_json::Value = serde_json::from_str(line)?;
    assert_eq!((s["ring_full"].as_u64(), s["missed"].as_u64()), (Some(0), Some(0)), "{s}");
    assert_eq!(s["packets"].as_u64(), Some(pkts.len() as u64));
    for f in s["flows"].as_array().unwrap() {
        for h in f["hops"].as_array().unwrap() {
            assert_eq!(h["captured"], h["counted"], "{h}");
        }
    }
    Ok(())
}

#[test]
fn the_filter_keeps_a_packet_at_every_hop_when_one_hop_matches_and_snaplen_cuts() -> Result<()> {
    let lab = lab("capflt", |_| {})?;
    let pods = lab.pods_file();
    let file = capture_file(&lab, "filtered.pcapng");
    let node_ip = lab.plan.ip_of("node-a").unwrap();
    let pod_ip = lab.plan.ip_of("web-2").unwrap();
    // Written to stdout, as `| wireshark -k -i -` reads it.
    let filter = format!("tcp and host {node_ip}");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("node-a")])
        .arg(podtrace_bin())
        .args(["capture", "--pod", "web-2", "--pods-file", pods.to_str().unwrap(), "-w", "-"])
        .args(["--snaplen", "64", "--filter", &filter, "-o", "json"])
        .stdout(std::fs::File::create(&file)?)
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first)?;
    assert!(first.contains("tracing"), "{first}");
    // SNATed to the node's address at eth0 (matches there only), and VPC traffic (never).
    traffic::tcp_request(&lab.ns("web-2"), lab.addr("inet", 80), 500)?;
    traffic::tcp_request(&lab.ns("web-2"), lab.addr("db", 8080), 500)?;
    traffic::udp_stream(&lab.ns("web-2"), lab.addr("db", 8080), 5, 100, true)?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)?;
    let status = child.wait()?;
    let mut stderr_text = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut stderr_text)?;
    let stderr = stderr_text;
    assert!(status.success(), "{stderr}");
    let pkts = tshark(&file)?;
    let veth = lab.plan.pod("web-2").unwrap().veth.clone();
    assert!(!pkts.is_empty());
    let inet = lab.addr("inet", 80);
    for p in &pkts {
        let ends = [p.src.map(|s| s.ip()), p.dst.map(|d| d.ip())];
        assert!(
            p.src.is_some() && (ends.contains(&Some(node_ip)) || p.dst == Some(inet) || p.src == Some(inet)),
            "{p:?}"
        );
        assert!(p.caplen <= 64 && p.caplen == p.len.min(64), "{p:?}");
    }
    // The veth copies carry the pod's address, not the node's: there because the same packets
    // matched at eth0.
    assert!(
        pkts.iter().any(|p| p.iface == format!("{veth}/ingress") && p.src.map(|s| s.ip()) == Some(pod_ip))
    );
    assert!(pkts.iter().any(|p| p.iface == "eth0/egress"));
    let line = stderr.lines().find_map(|l| l.strip_prefix("podtrace capture summary: ")).unwrap();
    let s: serde_json::Value = serde_json::from_str(line)?;
    let cut = pkts.iter().filter(|p| p.len > 64).count() as u64;
    assert_eq!(s["truncated"].as_u64(), Some(cut), "{s}");
    assert_eq!(s["packets"].as_u64(), Some(pkts.len() as u64));
    assert!(s["filtered_out"].as_u64().unwrap() > 0, "the VPC traffic was left out: {s}");
    Ok(())
}

#[test]
fn bad_filters_and_outputs_are_one_line_errors_before_anything_is_attached() -> Result<()> {
    let lab = lab("capbad", |_| {})?;
    let pods = lab.pods_file();
    let pods = pods.to_str().unwrap();
    let node = lab.ns("node-a");
    for (args, says) in [
        (vec!["--filter", "tcp prot 443", "-w", "/tmp/never.pcapng"], "unexpected \"prot\""),
        (vec!["--filter", "port 99999", "-w", "/tmp/never.pcapng"], "not a port number"),
        (vec!["-w", "/nonexistent-dir/x.pcapng"], "creating /nonexistent-dir/x.pcapng"),
        (vec!["-w", "/tmp/never.pcapng", "--buffer-size", "3000"], "invalid buffer size"),
    ] {
        let mut all = vec!["capture", "--pod", "web-2", "--pods-file", pods];
        all.extend(args);
        let out = run_podtrace(&node, &all)?;
        assert!(!out.status.success(), "{all:?} succeeded");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{all:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{all:?}: {}", out.stderr);
    }
    // Nothing stayed attached: bpftool lists no tcx program on the node's interfaces.
    let net = xtask::netns::output("ip", &["netns", "exec", &node, "bpftool", "net", "show"])?;
    assert!(!net.contains("podtrace"), "{net}");
    Ok(())
}

#[test]
fn the_agent_streams_a_capture_over_its_unix_socket_only_and_bounded() -> Result<()> {
    let lab = lab("capagent", |_| {})?;
    let (agent, sock) = tests::start_agent(&lab, &["--listen", "127.0.0.1:19093"])?;
    let file = capture_file(&lab, "agent.pcapng");
    let node = lab.ns("node-a");
    let inet = lab.addr("inet", 80);
    let web2 = lab.ns("web-2");
    let load = std::thread::spawn(move || -> Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(1000));
        traffic::tcp_request(&web2, inet, 100)?;
        Ok(())
    });
    let out = run_podtrace(
        &node,
        // The issue's form: the agent's socket first, as for `podtrace --agent SOCK --pod …`.
        &[
            "--agent",
            sock.to_str().unwrap(),
            "capture",
            "--pod",
            "web-2",
            "--duration",
            "3s",
            "-w",
            file.to_str().unwrap(),
        ],
    )?;
    load.join().unwrap()?;
    assert!(out.status.success(), "{}", out.stderr);
    let pkts = tshark(&file)?;
    let veth = lab.plan.pod("web-2").unwrap().veth.clone();
    let node_ip = lab.plan.ip_of("node-a").unwrap();
    let at_veth = pkts.iter().filter(|p| p.iface == format!("{veth}/ingress") && p.dst == Some(inet)).count();
    let at_eth0 = pkts
        .iter()
        .filter(|p| p.iface == "eth0/egress" && p.dst == Some(inet) && p.src.map(|s| s.ip()) == Some(node_ip))
        .count();
    assert!(at_veth >= 4 && at_veth == at_eth0, "{at_veth} at the veth, {at_eth0} SNATed at eth0");
    // Bounds and mistakes are refused before anything runs.
    for (q, code) in [
        ("/capture?pod=web-2&duration=1h", 400),
        ("/capture?pod=web-2&max_bytes=99999999999", 400),
        ("/capture?pod=web-2&filter=tcp%20prot", 400),
        ("/capture?pods=web-2", 400),
        ("/capture?pod=nope", 404),
    ] {
        assert_eq!(tests::agent_get(&sock, "GET", q)?.0, code, "{q}");
    }
    // Packet payloads never leave by the TCP listener.
    let over_tcp = xtask::netns::run_in(&node, || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:19093")?;
        write!(s, "GET /capture?pod=web-2&duration=1s HTTP/1.0\r\n\r\n")?;
        let mut r = String::new();
        s.read_to_string(&mut r)?;
        Ok(r)
    })?;
    assert!(over_tcp.starts_with("HTTP/1.0 404") || over_tcp.starts_with("HTTP/1.1 404"), "{over_tcp}");
    // A client that leaves a long capture early frees the agent for the next one at once: the
    // first capture ends with its client, and the ring comes back.
    let get_raw = |q: &str| -> Result<Vec<u8>> {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock)?;
        write!(s, "GET {q} HTTP/1.0\r\nHost: test\r\n\r\n")?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    };
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock)?;
        write!(s, "GET /capture?pod=web-2&duration=300s HTTP/1.0\r\nHost: test\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        assert!(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"));
    }
    let started = std::time::Instant::now();
    let second = loop {
        let answer = get_raw("/capture?pod=web-2&duration=1s")?;
        let text = String::from_utf8_lossy(&answer[..answer.len().min(16)]).to_string();
        if !text.contains(" 409 ") || started.elapsed() > std::time::Duration::from_secs(5) {
            break answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let body = second.windows(4).position(|w| w == b"\r\n\r\n").map(|i| &second[i + 4..]).unwrap_or(&[]);
    assert!(
        second.starts_with(b"HTTP/1.1 200") || second.starts_with(b"HTTP/1.0 200"),
        "the next capture after a client left: {:?}",
        String::from_utf8_lossy(&second[..second.len().min(200)])
    );
    assert_eq!(body.get(..4), Some(&[0x0a, 0x0d, 0x0d, 0x0a][..]), "a pcapng section header block");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "the left capture held the agent");
    drop(agent);
    Ok(())
}
