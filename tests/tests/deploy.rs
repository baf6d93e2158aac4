//! Every manifest in deploy/ (and the Helm chart, rendered) deserializes into the Kubernetes
//! API types without losing a field (a typo'd or misplaced field fails), and the permissions
//! are the minimum podtrace needs; the agent runs on the lab with exactly the manifest's
//! capabilities.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role},
};
use podtrace::assemble::model::NatKind;
use serde_json::Value;
use xtask::lab::traffic;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Deserializes into `T`, serializes back and compares: fields the type does not know vanish
/// in the round trip, so they are reported instead of silently ignored.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, what: &str) -> Result<T> {
    let t: T = serde_json::from_value(doc.clone()).with_context(|| format!("{what}: schema error"))?;
    let back = serde_json::to_value(&t)?;
    let mut missing = Vec::new();
    diff(doc, &back, what.to_string(), &mut missing);
    if !missing.is_empty() {
        bail!("{what}: fields not in the Kubernetes schema: {}", missing.join(", "));
    }
    Ok(t)
}

fn diff(want: &Value, got: &Value, path: String, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => diff(v, w, format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(x, y, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks one manifest by kind; returns the kind.
fn check(doc: &Value, what: &str) -> Result<String> {
    let kind = doc["kind"].as_str().with_context(|| format!("{what}: no kind"))?.to_string();
    match kind.as_str() {
        "Namespace" => drop(typed::<Namespace>(doc, what)?),
        "ServiceAccount" => drop(typed::<ServiceAccount>(doc, what)?),
        "ClusterRoleBinding" => {
            let b = typed::<ClusterRoleBinding>(doc, what)?;
            assert_eq!(b.role_ref.kind, "ClusterRole");
            assert_eq!(b.role_ref.name, "podtrace");
        }
        "ClusterRole" => {
            let r = typed::<ClusterRole>(doc, what)?;
            let rules = r.rules.unwrap_or_default();
            match r.metadata.name.as_deref() {
                // The agent: its node's pods (the watcher lists, then watches; nothing gets
                // single pods), and reviewing the requests of its authenticated listener (what
                // system:auth-delegator grants). Nothing else.
                Some("podtrace") => assert_eq!(
                    grants(&rules),
                    [
                        ("", "pods", "list"),
                        ("", "pods", "watch"),
                        ("authentication.k8s.io", "tokenreviews", "create"),
                        ("authorization.k8s.io", "subjectaccessreviews", "create"),
                    ]
                    .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string())),
                    "{what}"
                ),
                // A kubectl podtrace user: read pods and nodes, and the agents' virtual
                // resources; never pods/proxy cluster-wide.
                Some("podtrace-viewer") => assert_eq!(
                    grants(&rules),
                    [
                        ("", "nodes", "get"),
                        ("", "nodes", "list"),
                        ("", "pods", "get"),
                        ("", "pods", "list"),
                        ("podtrace.io", "flows", "get"),
                        ("podtrace.io", "nodes", "get"),
                    ]
                    .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string())),
                    "{what}"
                ),
                other => bail!("{what}: unexpected ClusterRole {other:?}"),
            }
        }
        "Role" => {
            let r = typed::<Role>(doc, what)?;
            assert_eq!(r.metadata.name.as_deref(), Some("podtrace-agent-access"));
            assert_eq!(
                r.metadata.namespace.as_deref(),
                Some("podtrace"),
                "{what}: the agents' namespace only"
            );
            assert_eq!(
                grants(&r.rules.unwrap_or_default()),
                [("", "pods", "list"), ("", "pods/proxy", "get")].map(|(g, r, v)| (
                    g.to_string(),
                    r.to_string(),
                    v.to_string()
                )),
                "{what}"
            );
        }
        "DaemonSet" => {
            let ds = typed::<DaemonSet>(doc, what)?;
            let spec = ds.spec.template.spec.unwrap();
            assert_eq!(spec.host_network, Some(true), "{what}: hostNetwork (node's interfaces)");
            let c = &spec.containers[0];
            let sc = c.security_context.clone().unwrap();
            assert_ne!(sc.privileged, Some(true), "{what}: must not be privileged");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}: read-only root fs");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}: no privilege escalation");
            let caps = sc.capabilities.unwrap();
            assert_eq!(caps.drop.unwrap_or_default(), vec!["ALL".to_string()]);
            assert_eq!(
                caps.add.unwrap_or_default(),
                ["BPF", "PERFMON", "NET_ADMIN", "SYSLOG"],
                "{what}: capabilities"
            );
            let seccomp = sc
                .seccomp_profile
                .or(spec.security_context.as_ref().and_then(|p| p.seccomp_profile.clone()))
                .map(|p| p.type_);
            assert_eq!(seccomp.as_deref(), Some("RuntimeDefault"), "{what}: seccomp");
            // Nothing is pinned: the bpf filesystem (other tools' pinned maps) is not mounted.
            let mounts: Vec<String> =
                c.volume_mounts.clone().unwrap_or_default().into_iter().map(|m| m.mount_path).collect();
            assert_eq!(mounts, ["/run/podtrace"], "{what}: mounts");
            let host_paths: Vec<String> = spec
                .volumes
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| v.host_path.map(|h| h.path))
                .collect();
            assert_eq!(host_paths, ["/run/podtrace"], "{what}: host paths");
            assert_ne!(spec.host_pid, Some(true), "{what}: no hostPID (liveness tokens instead)");
            // Every probe runs `podtrace healthz` with a timeout shorter than the probe's.
            for (name, probe) in [
                ("startup", c.startup_probe.clone()),
                ("readiness", c.readiness_probe.clone()),
                ("liveness", c.liveness_probe.clone()),
            ] {
                let p = probe.unwrap_or_else(|| panic!("{what}: no {name} probe"));
                let cmd = p.exec.and_then(|e| e.command).unwrap_or_default();
                assert_eq!(cmd[..2], ["podtrace", "healthz"], "{what}: {name} probe");
                let i = cmd.iter().position(|a| a == "--timeout").expect("healthz --timeout");
                let timeout: u64 = cmd[i + 1].trim_end_matches('s').parse().unwrap();
                let probe_timeout = p.timeout_seconds.unwrap_or(1) as u64;
                assert!(
                    timeout < probe_timeout,
                    "{what}: {name}: healthz --timeout {timeout}s, probe {probe_timeout}s"
                );
            }
            // The memory limit covers what the arguments make the agent take on a 16-CPU node.
            let arg = |flag: &str| -> u32 {
                let args = c.args.clone().unwrap_or_default();
                let i = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{what}: no {flag}"));
                args[i + 1].parse().unwrap()
            };
            let limit = &c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0;
            let limit: u64 = limit.strip_suffix("Mi").expect("a limit in Mi").parse::<u64>().unwrap() << 20;
            assert!(!c.args.clone().unwrap_or_default().iter().any(|a| a == "--flow-cache-bytes"));
            let needed = podtrace::cmd::agent::memory_budget(
                arg("--max-tracked-flows"),
                arg("--max-flows"),
                podtrace::kernel::load::DEFAULT_FLOW_CACHE_BYTES,
                // The capture path is armed unless --no-capture.
                (!c.args.clone().unwrap_or_default().iter().any(|a| a == "--no-capture")).then_some(
                    podtrace::kernel::load::CaptureLoad {
                        ring_bytes: podtrace::kernel::load::CaptureLoad::DEFAULT_RING_BYTES,
                    },
                ),
                16,
            );
            assert!(limit >= needed, "{what}: limit {} MiB < {} MiB needed", limit >> 20, needed >> 20);
            let env = c.env.clone().unwrap_or_default();
            let node = env.iter().find(|e| e.name == "NODE_NAME").expect("NODE_NAME env");
            let field =
                node.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
            assert_eq!(field, Some("spec.nodeName"), "{what}: NODE_NAME from the downward API");
            for name in ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
                assert!(env.iter().any(|e| e.name == name), "{what}: {name}");
            }
            // The API beyond the unix socket is authenticated, on the port named `api` that
            // kubectl podtrace reaches through pods/proxy.
            let args = c.args.clone().unwrap_or_default();
            let listen = args.iter().position(|a| a == "--listen").map(|i| args[i + 1].clone());
            let port =
                listen.as_deref().and_then(|l| l.rsplit_once(':')).map(|(_, p)| p.parse::<i32>().unwrap());
            assert!(args.iter().any(|a| a == "--authenticate"), "{what}: --listen without --authenticate");
            let api =
                c.ports.clone().unwrap_or_default().into_iter().find(|p| p.name.as_deref() == Some("api"));
            assert_eq!(api.map(|p| p.container_port), port, "{what}: the api port is the one listened on");
        }
        other => bail!("{what}: unexpected kind {other}"),
    }
    Ok(kind)
}

/// (group, resource, verb) of every rule, sorted; no resource names, no non-resource URLs.
fn grants(rules: &[PolicyRule]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for r in rules {
        assert!(r.resource_names.is_none() && r.non_resource_urls.is_none(), "{r:?}");
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    out.push((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out.sort();
    out
}

fn yaml(text: &str, what: &str) -> Result<Value> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| anyhow::anyhow!("{what}: YAML: {e}"))
}

#[test]
fn plain_manifests_are_valid_and_minimal() -> Result<()> {
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(deploy_dir())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let what = path.file_name().unwrap().to_string_lossy().to_string();
            kinds.push(check(&yaml(&std::fs::read_to_string(&path)?, &what)?, &what)?);
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Namespace",
            "Role",
            "ServiceAccount"
        ]
    );
    Ok(())
}

/// Renders the chart's plain value substitutions (`{{ .Values.a.b }}`, `{{ .Release.Namespace }}`,
/// `{{ .Chart.AppVersion }}`); anything else in a template is an error.
fn render(template: &str, values: &Value) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out += &rest[..start];
        let end = rest[start..].find("}}").context("unclosed {{")? + start;
        let expr = rest[start + 2..end].trim();
        let value = if let Some(path) = expr.strip_prefix(".Values.") {
            let v = path.split('.').fold(values, |v, k| &v[k]);
            match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => bail!("{{{{ {expr} }}}} has no scalar value"),
            }
        } else {
            match expr {
                ".Release.Namespace" => "podtrace".into(),
                ".Release.Name" => "podtrace".into(),
                ".Chart.AppVersion" => "0.1.0".into(),
                _ => bail!("unsupported template expression {expr}"),
            }
        };
        out += &value;
        rest = &rest[end + 2..];
    }
    out += rest;
    Ok(out)
}

#[test]
fn helm_chart_renders_to_the_same_valid_objects() -> Result<()> {
    let chart = deploy_dir().join("helm/podtrace");
    yaml(&std::fs::read_to_string(chart.join("Chart.yaml"))?, "Chart.yaml")?;
    let values = yaml(&std::fs::read_to_string(chart.join("values.yaml"))?, "values.yaml")?;
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(chart.join("templates"))? {
        let path = entry?.path();
        let what = format!("helm {}", path.file_name().unwrap().to_string_lossy());
        let rendered = render(&std::fs::read_to_string(&path)?, &values)?;
        let doc = yaml(&rendered, &what)?;
        kinds.push(check(&doc, &what)?);
        // The chart and the plain manifests describe the same objects.
        let plain = deploy_dir().join(path.file_name().unwrap());
        let plain = yaml(&std::fs::read_to_string(plain)?, "plain")?;
        assert_eq!(doc, plain, "{what} differs from deploy/{}", path.file_name().unwrap().to_string_lossy());
    }
    kinds.sort();
    assert_eq!(
        kinds,
        ["ClusterRole", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "Role", "ServiceAccount"]
    );
    Ok(())
}

#[test]
fn krew_manifest_installs_the_plugin_binary_of_this_version() -> Result<()> {
    let m = yaml(&std::fs::read_to_string(deploy_dir().join("krew/podtrace.yaml"))?, "krew")?;
    assert_eq!(m["apiVersion"], "krew.googlecontainertools.github.com/v1alpha2");
    assert_eq!(m["kind"], "Plugin");
    // `kubectl krew install podtrace` makes `kubectl podtrace`.
    assert_eq!(m["metadata"]["name"], "podtrace");
    let version = format!("v{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(m["spec"]["version"], version.as_str());
    let platforms = m["spec"]["platforms"].as_array().context("platforms")?;
    let mut arches = Vec::new();
    for p in platforms {
        assert_eq!(p["bin"], "kubectl-podtrace");
        assert!(p["files"].as_array().unwrap().iter().any(|f| f["from"] == "kubectl-podtrace"));
        assert_eq!(p["selector"]["matchLabels"]["os"], "linux");
        let arch = p["selector"]["matchLabels"]["arch"].as_str().context("arch")?;
        let uri = p["uri"].as_str().context("uri")?;
        assert!(
            uri.contains(&format!("/{version}/")) && uri.ends_with(&format!("_linux_{arch}.tar.gz")),
            "{uri}"
        );
        let sha = p["sha256"].as_str().context("sha256")?;
        assert!(sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()), "{sha}");
        arches.push(arch.to_string());
    }
    arches.sort();
    assert_eq!(arches, ["amd64", "arm64"]);
    Ok(())
}

/// The capabilities the DaemonSet adds, from the manifest.
fn manifest_capabilities() -> Result<Vec<String>> {
    let doc = yaml(&std::fs::read_to_string(deploy_dir().join("daemonset.yaml"))?, "daemonset.yaml")?;
    let ds = typed::<DaemonSet>(&doc, "daemonset.yaml")?;
    let c = &ds.spec.template.spec.unwrap().containers[0];
    Ok(c.security_context.clone().unwrap().capabilities.unwrap().add.unwrap_or_default())
}

/// The agent on the lab as the DaemonSet runs it: UID 0 with exactly the manifest's
/// capabilities (bounding, permitted and effective sets), no new privileges. It attaches,
/// serves flows, and names the NAT of what it traces from the rules it reads with them.
#[test]
fn the_agent_works_with_exactly_the_manifests_capabilities() -> Result<()> {
    use std::time::{Duration, Instant};
    let caps = manifest_capabilities()?;
    let set = caps.iter().map(|c| format!("+{}", c.to_lowercase())).collect::<Vec<_>>().join(",");
    let lab = tests::lab("capset", |_| {})?;
    let sock = xtask::lab::state_dir(lab.prefix()).join("agent.sock");
    let pods = lab.pods_file();
    let bounding = format!("--bounding-set=-all,{set}");
    let agent = tests::start_podtrace_via(
        &lab.ns("node-a"),
        &["setpriv", "--reuid=0", "--inh-caps=-all", &bounding, "--no-new-privs"],
        &tests::agent_args(&pods, &sock),
    )?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))?;
    let mask = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap()
    };
    let want: u64 = caps
        .iter()
        .map(|c| match c.as_str() {
            "NET_ADMIN" => 1u64 << 12,
            "SYSLOG" => 1 << 34,
            "PERFMON" => 1 << 38,
            "BPF" => 1 << 39,
            other => panic!("capability {other} not known to this test"),
        })
        .sum();
    assert_eq!(mask("CapBnd:"), want, "the bounding set is the manifest's");
    assert_eq!(mask("CapEff:") & !want, 0, "nothing beyond it is effective");
    let (code, text) = tests::agent_get(&sock, "GET", "/metrics")?;
    assert_eq!(code, 200);
    assert!(tests::metric(&text, "podtrace_attached_interfaces", &[])? >= 4.0, "{text}");

    // web-2 to the internet (SNAT by eth0) and to the api ClusterIP (DNAT): both named with
    // the chain of the rule, which the agent read with these capabilities alone.
    let inet = lab.addr("inet", 80);
    let svc = lab.addr("api", 80);
    traffic::tcp_request(&lab.ns("web-2"), inet, 10)?;
    traffic::tcp_request(&lab.ns("web-2"), svc, 10)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let flows = loop {
        let (code, body) = tests::agent_get(&sock, "GET", "/flows?pod=web-2")?;
        assert_eq!(code, 200, "{body}");
        let flows: Vec<tests::FlowReport> =
            body.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
        if [inet, svc].iter().all(|to| flows.iter().any(|f| f.dst == *to)) {
            break flows;
        }
        assert!(Instant::now() < deadline, "flows not served: {flows:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let to_inet = flows.iter().find(|f| f.dst == inet).unwrap();
    let snat = to_inet.snat.as_ref().unwrap_or_else(|| panic!("no SNAT: {to_inet:#?}"));
    assert_eq!(snat.kind, NatKind::PodEgressSnat);
    assert!(snat.chain.as_deref().is_some_and(|c| c.starts_with("AWS-SNAT-CHAIN")), "{to_inet:#?}");
    let to_svc = flows.iter().find(|f| f.dst == svc).unwrap();
    let dnat = to_svc.dnat.as_ref().unwrap_or_else(|| panic!("no DNAT: {to_svc:#?}"));
    assert_eq!(dnat.kind, NatKind::ServiceDnat);
    assert!(dnat.chain.as_deref().is_some_and(|c| c.starts_with("KUBE-SEP-")), "{to_svc:#?}");
    let out = agent.signal(nix::sys::signal::Signal::SIGTERM)?;
    assert!(out.status.success(), "{}", out.stderr);
    Ok(())
}
