//! Every manifest in deploy/ (and the Helm chart, rendered) deserializes into the Kubernetes
//! API types without losing a field (a typo'd or misplaced field fails), and the permissions
//! are the minimum podtrace needs.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role},
};
use serde_json::Value;

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
                // The agent: its node's pods, and reviewing the requests of its authenticated
                // listener (what system:auth-delegator grants). Nothing else.
                Some("podtrace") => assert_eq!(
                    grants(&rules),
                    [
                        ("", "pods", "get"),
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
            let caps = sc.capabilities.unwrap();
            assert_eq!(caps.drop.unwrap_or_default(), vec!["ALL".to_string()]);
            for cap in caps.add.unwrap_or_default() {
                assert!(
                    ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYSLOG"].contains(&cap.as_str()),
                    "{what}: capability {cap}"
                );
            }
            let mounts: Vec<String> =
                c.volume_mounts.clone().unwrap_or_default().into_iter().map(|m| m.mount_path).collect();
            assert!(
                mounts.contains(&"/sys/fs/bpf".to_string()) && mounts.contains(&"/run/podtrace".to_string())
            );
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
