//! Every manifest in deploy/ (and the Helm chart, rendered) deserializes into the Kubernetes
//! API types without losing a field (a typo'd or misplaced field fails), and the permissions
//! are the minimum podtrace needs.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
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
            assert_eq!(rules.len(), 1, "{what}: one rule only");
            let rule = &rules[0];
            assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]), "{what}: core group only");
            assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]), "{what}: pods only");
            for verb in &rule.verbs {
                assert!(["get", "list", "watch"].contains(&verb.as_str()), "{what}: verb {verb} not allowed");
            }
            assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
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
        }
        other => bail!("{what}: unexpected kind {other}"),
    }
    Ok(kind)
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
    assert_eq!(kinds, ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "Namespace", "ServiceAccount"]);
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
    assert_eq!(kinds, ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount"]);
    Ok(())
}
