//! The cluster view on the two-node lab: a podtrace agent on node-a and node-b (authenticated
//! TLS listeners), the Kubernetes API stand-in in front of them, and `kubectl-podtrace` asking
//! through `pods/proxy` with a user's kubeconfig: paths stitched across nodes, one-line
//! refusals, and `kubectl plugin list` finding the plugin.
use std::{
    io::BufRead,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Result, bail};
use podtrace::{
    assemble::model::{Direction, NatKind, Role},
    report::stitched::StitchedFlow,
};
use tests::{
    Running,
    kube_stand_in::{KubeStandIn, Rule, User},
    kubectl_podtrace_bin, lab, reference_community_id, start_podtrace_with,
};
use xtask::lab::{Lab, state_dir, traffic};

const AGENT_TOKEN: &str = "agent-sa-token";

/// Read-only info every authenticated user has (kube-apiserver's system:public-info-viewer).
fn public_info() -> Rule {
    Rule::urls(&["/healthz", "/livez", "/readyz", "/version"], &["get"])
}

fn user(name: &str, rules: Vec<Rule>) -> User {
    let mut rules = rules;
    rules.push(public_info());
    User {
        token: format!("{name}-token"),
        name: name.into(),
        groups: vec!["system:authenticated".into()],
        rules,
    }
}

/// The RBAC of deploy/: the agent's ServiceAccount, and the users.
fn users() -> Vec<User> {
    let viewer = vec![
        Rule::resource("", &["pods"], &["get", "list"]),
        Rule::resource("", &["nodes"], &["list"]),
        Rule::resource("podtrace.io", &["flows", "nodes"], &["get"]),
        Rule::resource("", &["pods/proxy"], &["get"]).in_namespace("podtrace"),
    ];
    vec![
        User {
            token: AGENT_TOKEN.into(),
            name: "system:serviceaccount:podtrace:podtrace".into(),
            groups: vec!["system:serviceaccounts".into(), "system:authenticated".into()],
            rules: vec![
                Rule::resource("authentication.k8s.io", &["tokenreviews"], &["create"]),
                Rule::resource("authorization.k8s.io", &["subjectaccessreviews"], &["create"]),
            ],
        },
        user("alice", viewer),
        // May look pods up, but not reach the agents through the API server.
        user("bob", vec![Rule::resource("", &["pods"], &["get", "list"])]),
        // May reach the agents, but the agents' own check refuses: no podtrace.io flows.
        user(
            "carol",
            vec![
                Rule::resource("", &["pods"], &["get", "list"]),
                Rule::resource("", &["pods/proxy"], &["get"]).in_namespace("podtrace"),
            ],
        ),
    ]
}

/// `podtrace agent` on `node`: authenticated TLS on every address of the node, port 9443 (the
/// agent pods' `api` port), TokenReview/SubjectAccessReview with the stand-in.
fn start_agent(lab: &Lab, api: &KubeStandIn, node: &str, extra: &[&str]) -> Result<Running> {
    let dir = state_dir(lab.prefix());
    let kubeconfig = dir.join(format!("agent-{node}.kubeconfig"));
    api.kubeconfig(&kubeconfig, AGENT_TOKEN)?;
    let sock = dir.join(format!("agent-{node}.sock"));
    let pods = lab.pods_file();
    let mut args = tests::agent_args(&pods, &sock);
    args.extend(["--node-name", node, "--listen", "0.0.0.0:9443", "--authenticate"]);
    args.extend(extra);
    start_podtrace_with(&lab.ns(node), &args, &[("KUBECONFIG", kubeconfig.to_str().unwrap())])
}

fn kubeconfig_of(lab: &Lab, api: &KubeStandIn, who: &str) -> Result<PathBuf> {
    let path = state_dir(lab.prefix()).join(format!("{who}-{}.kubeconfig", api.port));
    api.kubeconfig(&path, &format!("{who}-token"))?;
    Ok(path)
}

/// A running kubectl-podtrace (root namespace, as on a laptop), ready once it says it traces.
struct Plugin {
    child: std::process::Child,
}

impl Plugin {
    fn start(kubeconfig: &Path, args: &[&str]) -> Result<Plugin> {
        let mut child = Command::new(kubectl_podtrace_bin())
            .args(args)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line)?;
        if !line.contains("(Ctrl-C to stop)") {
            let _ = child.kill();
            bail!("kubectl-podtrace did not start: {line}");
        }
        // Keep draining stderr so the plugin never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Ok(Plugin { child })
    }

    fn finish(mut self) -> Result<String> {
        use std::io::Read;
        let mut out = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut out)?;
        let status = self.child.wait()?;
        assert!(status.success(), "kubectl-podtrace failed: {out}");
        Ok(out)
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs kubectl-podtrace to completion: (exit success, stdout, stderr).
fn run_plugin(kubeconfig: &Path, args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(kubectl_podtrace_bin()).args(args).arg("--kubeconfig").arg(kubeconfig).output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// NodePort requests from the ALB to node-a until kube-proxy forwarded one to web-3 on node-b:
/// that one, and who served each request sent.
fn nodeport_bounce(lab: &Lab) -> Result<(traffic::Reply, Vec<String>)> {
    let mut served_by = Vec::new();
    for _ in 0..64 {
        let r = traffic::tcp_request(&lab.ns("alb"), lab.addr("node-a", 30080), 10)?;
        served_by.push(r.server.clone());
        if r.server == "web-3" {
            return Ok((r, served_by));
        }
    }
    bail!("no NodePort request reached web-3")
}

fn wait_healthy(lab: &Lab, node: &str) -> Result<()> {
    let sock = state_dir(lab.prefix()).join(format!("agent-{node}.sock"));
    for _ in 0..100 {
        if tests::agent_get(&sock, "GET", "/healthz").is_ok_and(|(c, _)| c == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("agent on {node} not healthy")
}

#[test]
fn kubectl_podtrace_stitches_a_nodeport_bounce_and_a_pod_to_pod_flow_across_nodes() -> Result<()> {
    let lab = lab("cluster", |_| {})?;
    let api = KubeStandIn::start(&lab, &[("node-a", true), ("node-b", true)], users())?;
    let _a = start_agent(&lab, &api, "node-a", &[])?;
    let _b = start_agent(&lab, &api, "node-b", &[])?;
    wait_healthy(&lab, "node-a")?;
    wait_healthy(&lab, "node-b")?;
    let alice = kubeconfig_of(&lab, &api, "alice")?;

    let json = Plugin::start(&alice, &["web-3", "-n", "default", "--duration", "4s", "-o", "json"])?;
    let table = Plugin::start(&alice, &["web-3", "--duration", "4s"])?;
    let compare = Plugin::start(&alice, &["compare", "-l", "app=web", "--duration", "4s", "-o", "json"])?;
    let (bounce, mut served_by) = nodeport_bounce(&lab)?;
    while served_by.len() < 16 {
        served_by.push(traffic::tcp_request(&lab.ns("alb"), lab.addr("node-a", 30080), 10)?.server);
    }
    let direct = traffic::tcp_request(&lab.ns("web-1"), lab.addr("web-3", 8080), 10)?;
    let json = json.finish()?;
    let table = table.finish()?;
    let compare: serde_json::Value = serde_json::from_str(&compare.finish()?)?;
    // Shown with --nocapture (README's example comes from here).
    eprintln!("{table}\n{compare}");
    let flows: Vec<StitchedFlow> =
        json.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();

    // The bounce: node-a DNATed and masqueraded the ALB's request and forwarded it by eth0;
    // node-b took it by eth1 to web-3. One connection, one Community ID on both nodes: that of
    // the tuple between the nodes, as web-3 saw its peer.
    let web3 = lab.addr("web-3", 8080);
    let wire_id = reference_community_id("tcp", bounce.seen_peer, web3)?;
    let s = flows
        .iter()
        .find(|s| s.flow.community_id.as_deref() == Some(wire_id.as_str()))
        .unwrap_or_else(|| panic!("no flow of the bounce {wire_id} in {json}"));
    assert_eq!(s.node, "node-b");
    assert_eq!(s.nodes, ["node-a", "node-b"], "{s:#?}");
    let a = &s.peers[0].flow;
    assert_eq!(s.peers[0].node, "node-a");
    assert_eq!(a.community_id.as_deref(), Some(wire_id.as_str()));
    assert_eq!(a.path[0].src, bounce.local, "node-a's half starts at the ALB's socket");
    let dnat = a.dnat.as_ref().expect("node-a DNATs the NodePort");
    assert_eq!((dnat.from, dnat.to), (lab.addr("node-a", 30080), web3));
    let masq = a.snat.as_ref().expect("node-a masquerades");
    assert_eq!((masq.kind, masq.to), (NatKind::Masquerade, bounce.seen_peer));
    assert_eq!(a.eni.as_deref(), Some("eth0"));
    assert!(a.node_crossing, "{a:#?}");
    let b = &s.flow;
    assert_eq!((b.pod.as_str(), b.direction, b.dnat.is_none()), ("web-3", Direction::Ingress, true));
    assert_eq!(b.path[0].ifname, "eth1");
    assert_eq!(b.path.last().map(|h| h.role), Some(Role::PodVeth));
    let veth3 = lab.plan.pod("web-3").unwrap().veth.clone();
    let alb = lab.plan.ip_of("alb").unwrap();
    let line = table
        .lines()
        .find(|l| l.contains(&format!("{alb}:{}", bounce.local.port())))
        .unwrap_or_else(|| panic!("no table row of the bounce in {table}"));
    assert!(
        line.contains(&format!(
            "{} ⇒ node-a eth0 → [DNAT, MASQUERADE] → eth0 ⇒ node-b eth1 → {veth3} → web-3",
            bounce.local
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!("[node-a: DNAT {} → {web3}, MASQUERADE → {}", dnat.from, masq.to)),
        "{line}"
    );

    // Pod to pod across nodes: web-1's egress on node-a is web-3's ingress on node-b.
    let p2p_id = reference_community_id("tcp", direct.local, web3)?;
    let s = flows
        .iter()
        .find(|s| s.flow.community_id.as_deref() == Some(p2p_id.as_str()))
        .unwrap_or_else(|| panic!("no pod-to-pod flow {p2p_id} in {json}"));
    assert_eq!(s.nodes, ["node-a", "node-b"]);
    let a = &s.peers[0].flow;
    assert_eq!((a.pod.as_str(), a.direction, a.src, a.dst), ("web-1", Direction::Egress, direct.local, web3));
    assert_eq!((s.flow.src, s.flow.dst), (direct.local, web3));
    let veth1 = lab.plan.pod("web-1").unwrap().veth.clone();
    assert!(
        table.contains(&format!("web-1 → node-a {veth1} → eth0 ⇒ node-b eth1 → {veth3} → web-3")),
        "{table}"
    );

    // compare through the plugin: the NodePort requests once each, the ones kube-proxy
    // forwarded to node-b followed to web-3 (not counted again as direct there); the one
    // request straight to web-3's IP is the only direct one.
    let bounced = served_by.iter().filter(|s| *s == "web-3").count() as u64;
    let (np, dir) = (&compare[0], &compare[1]);
    assert_eq!((np["mode"].as_str(), dir["mode"].as_str()), (Some("nodeport"), Some("direct")));
    assert_eq!(np["flows"], served_by.len(), "{compare}");
    // Every NodePort request was masqueraded (Cluster policy); the pod-to-pod one was not.
    assert_eq!(np["client_ip_preserved_share"], 0.0, "{compare}");
    assert_eq!(dir["client_ip_preserved_share"], 1.0, "{compare}");
    assert_eq!(np["node_crossings"], bounced, "{compare}");
    assert_eq!(np["followed_to_pod"], bounced, "{compare}");
    assert_eq!(dir["flows"], 1, "{compare}");
    let paths = np["paths"].as_array().unwrap();
    assert!(
        paths.iter().any(|p| p.as_str().unwrap().starts_with(&format!(
            "{alb} ⇒ node-a eth0 → [DNAT, MASQUERADE] → eth0 ⇒ node-b eth1 → {veth3} → web-3  (×{bounced})"
        ))),
        "{compare}"
    );

    // The node view from a laptop: node-b's ENIs as its agent reads them.
    let (ok, out, err) = run_plugin(&alice, &["node", "node-b", "-o", "json"])?;
    assert!(ok, "{err}");
    let node: serde_json::Value = serde_json::from_str(&out)?;
    let enis: Vec<&str> =
        node["enis"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    let want: Vec<&str> = lab.plan.node("node-b").unwrap().enis.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(enis, want);

    // Every proxied request reached the agent without the caller's Authorization header, and
    // the agents reviewed the forwarded token with the API server.
    let log = api.log();
    let proxied: Vec<&String> = log.iter().filter(|l| l.starts_with("proxied headers:")).collect();
    assert!(!proxied.is_empty());
    for l in proxied {
        let names: Vec<&str> = l["proxied headers:".len()..].trim().split(',').collect();
        assert!(names.contains(&"x-podtrace-authorization") && !names.contains(&"authorization"), "{l}");
    }
    assert!(log.iter().any(|l| l.contains(
        "system:serviceaccount:podtrace:podtrace POST /apis/authentication.k8s.io/v1/tokenreviews"
    )));
    assert!(log.iter().any(|l| l.contains(
        "system:serviceaccount:podtrace:podtrace POST /apis/authorization.k8s.io/v1/subjectaccessreviews"
    )));
    Ok(())
}

/// `error: ...` alone on one line, non-zero exit.
fn refused(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let (ok, out, err) = run_plugin(kubeconfig, args)?;
    assert!(!ok, "not refused: {out}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    Ok(err.trim().to_string())
}

#[test]
fn kubectl_podtrace_refusals_are_one_line_and_name_what_is_missing() -> Result<()> {
    let lab = lab("clusterno", |_| {})?;
    let api = KubeStandIn::start(&lab, &[("node-a", true), ("node-b", true)], users())?;
    let _b = start_agent(&lab, &api, "node-b", &[])?;
    wait_healthy(&lab, "node-b")?;

    // The API server refuses bob the pods/proxy subresource: the verb and resource are named.
    let err = refused(&kubeconfig_of(&lab, &api, "bob")?, &["web-3", "--duration", "1s"])?;
    assert!(err.contains("RBAC denied"), "{err}");
    assert!(
        err.contains(
            r#"User "bob" cannot get resource "pods/proxy" in API group "" in the namespace "podtrace""#
        ),
        "{err}"
    );
    // The agent's own SubjectAccessReview refuses carol its flows.
    let err = refused(&kubeconfig_of(&lab, &api, "carol")?, &["web-3", "--duration", "1s"])?;
    assert!(
        err.contains(r#"RBAC denied by the podtrace agent on node node-b: forbidden: User "carol" cannot get flows.podtrace.io in namespace "default""#),
        "{err}"
    );
    // An unknown token: the API server's 401.
    let err = refused(&kubeconfig_of(&lab, &api, "mallory")?, &["web-3"])?;
    assert!(err.contains("did not accept your credentials"), "{err}");
    // Straight to the agent's port from the VPC, bypassing the API server: no token, an
    // unknown one, bob's (authenticated, not authorized): 401, 401, 403.
    let agent = lab.addr("node-b", 9443);
    let direct = |headers: &[(String, String)]| {
        tests::kube_stand_in::forward(&lab.ns("alb"), agent, true, "/flows?namespace=default", headers)
            .map(|r| r.0)
    };
    let bearer = |t: &str| vec![("Authorization".to_string(), format!("Bearer {t}"))];
    assert_eq!(direct(&[])?, 401);
    assert_eq!(direct(&bearer("mallory-token"))?, 401);
    assert_eq!(direct(&bearer("bob-token"))?, 403);
    assert_eq!(direct(&bearer("alice-token"))?, 200);
    // Plain HTTP is not served there.
    assert!(
        tests::kube_stand_in::forward(&lab.ns("alb"), agent, false, "/flows", &bearer("alice-token"))
            .is_err()
    );

    // An agent pod on node-a that does not answer (its agent is not running); in a second
    // view of the cluster, no agent pod on node-a at all and an unready one on node-b.
    let alice = kubeconfig_of(&lab, &api, "alice")?;
    let err = refused(&alice, &["web-1"])?;
    assert!(
        err.contains(
            "podtrace agent podtrace-node-a on node node-a is unhealthy: the API server could not reach it"
        ),
        "{err}"
    );
    let api2 = KubeStandIn::start(&lab, &[("node-b", false)], users())?;
    let alice2 = kubeconfig_of(&lab, &api2, "alice")?;
    let err = refused(&alice2, &["web-1"])?;
    assert!(err.contains("no podtrace agent on node node-a"), "{err}");
    let err = refused(&alice2, &["web-3"])?;
    assert!(
        err.contains("podtrace agent podtrace-node-b on node node-b is unhealthy: its pod is not Ready"),
        "{err}"
    );
    let err = refused(&alice, &["web-9"])?;
    assert!(err.contains("pod web-9 not found in namespace default"), "{err}");
    Ok(())
}

#[test]
fn kubectl_plugin_list_finds_the_plugin() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("podtrace-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let link = dir.join("kubectl-podtrace");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(kubectl_podtrace_bin(), &link)?;
    let out = Command::new("kubectl")
        .args(["plugin", "list"])
        .env("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin", dir.display()))
        .env("KUBECONFIG", "/dev/null")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(&dir)?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.lines().any(|l| l.trim() == link.to_str().unwrap()), "{text}");
    // kubectl runs it for `kubectl podtrace`.
    let help = Command::new("kubectl")
        .args(["podtrace", "--help"])
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", kubectl_podtrace_bin().parent().unwrap().display()),
        )
        .output()?;
    assert!(String::from_utf8_lossy(&help.stdout).contains("kubectl podtrace node NODE"), "{help:?}");
    Ok(())
}
