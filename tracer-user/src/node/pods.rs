//! Where pods come from: a `kubectl get pods -A -o json` file or the Kubernetes API.
use std::{collections::BTreeMap, net::IpAddr, path::Path};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

/// What podtrace needs to know about a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub node: Option<String>,
    pub ips: Vec<IpAddr>,
    pub host_ip: Option<IpAddr>,
    pub phase: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Branch ENIs of a Security Groups for Pods pod (`vpc.amazonaws.com/pod-eni`).
    pub branch_enis: Vec<BranchEni>,
}

/// One entry of the `vpc.amazonaws.com/pod-eni` annotation the VPC resource controller writes
/// on a Security Groups for Pods pod (a JSON list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchEni {
    pub eni_id: String,
    #[serde(default)]
    pub if_address: Option<String>,
    #[serde(default)]
    pub private_ip: Option<String>,
    #[serde(default)]
    pub vlan_id: Option<u16>,
    #[serde(default)]
    pub subnet_cidr: Option<String>,
}

/// The pod annotation listing a pod's branch ENIs.
pub const POD_ENI_ANNOTATION: &str = "vpc.amazonaws.com/pod-eni";

impl PodInfo {
    pub fn from_pod(p: &Pod) -> Option<PodInfo> {
        let meta = &p.metadata;
        let status = p.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|v| v.iter().filter_map(|i| i.ip.parse().ok()).collect())
            .unwrap_or_default();
        if let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()).and_then(|i| i.parse().ok())
            && !ips.contains(&ip)
        {
            ips.insert(0, ip);
        }
        Some(PodInfo {
            name: meta.name.clone()?,
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            ips,
            host_ip: status.and_then(|s| s.host_ip.as_ref()).and_then(|i| i.parse().ok()),
            phase: status.and_then(|s| s.phase.clone()),
            labels: meta.labels.clone().unwrap_or_default(),
            // A malformed annotation names no branch ENI (nothing is guessed from it).
            branch_enis: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(POD_ENI_ANNOTATION))
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
        })
    }

    /// The AWS id of the branch ENI that carries one of the pod's IPs.
    pub fn branch_eni_id(&self) -> Option<String> {
        self.branch_enis
            .iter()
            .find(|b| {
                b.private_ip.as_deref().and_then(|i| i.parse().ok()).is_some_and(|ip| self.ips.contains(&ip))
            })
            .map(|b| b.eni_id.clone())
    }

    /// `namespace/name`
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the pod carries all labels of a `k=v[,k2=v2]` selector.
    pub fn matches(&self, selector: &[(String, String)]) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

#[derive(Deserialize)]
struct PodList {
    items: Vec<Pod>,
}

/// Reads a PodList (`kubectl get pods -A -o json`). Errors name the line, column and field.
pub fn load_file(path: &Path) -> Result<Vec<PodInfo>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read pods file {}", path.display()))?;
    parse_pod_list(&text).with_context(|| format!("pods file {}", path.display()))
}

pub fn parse_pod_list(text: &str) -> Result<Vec<PodInfo>> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let list: PodList = serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner();
        let msg = inner.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        anyhow!("line {} column {}: field `{}`: {msg}", inner.line(), inner.column(), e.path())
    })?;
    Ok(list.items.iter().filter_map(PodInfo::from_pod).collect())
}

/// Parses `app=web,tier=front` into pairs.
pub fn parse_selector(s: &str) -> Result<Vec<(String, String)>> {
    s.split(',')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => bail!("bad label selector {s:?}: expected key=value[,key=value]"),
        })
        .collect()
}

/// Lists pods from the Kubernetes API (in-cluster config or KUBECONFIG).
pub async fn from_api(namespace: Option<&str>, field_selector: Option<&str>) -> Result<Vec<PodInfo>> {
    let client = kube::Client::try_default()
        .await
        .context("no pods file given and no Kubernetes API reachable (in-cluster config or KUBECONFIG); use --pods-file")?;
    list(client, namespace, field_selector).await
}

/// Lists pods with a given client.
pub async fn list(
    client: kube::Client,
    namespace: Option<&str>,
    field_selector: Option<&str>,
) -> Result<Vec<PodInfo>> {
    use kube::api::{Api, ListParams};
    let api: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let mut lp = ListParams::default();
    if let Some(f) = field_selector {
        lp = lp.fields(f);
    }
    let list = api.list(&lp).await.context("listing pods from the Kubernetes API")?;
    Ok(list.items.iter().filter_map(PodInfo::from_pod).collect())
}

/// Finds one pod by name (in `namespace` if given, else in any namespace if unambiguous).
pub fn find<'a>(pods: &'a [PodInfo], name: &str, namespace: Option<&str>) -> Result<&'a PodInfo> {
    let found: Vec<&PodInfo> =
        pods.iter().filter(|p| p.name == name && namespace.is_none_or(|n| p.namespace == n)).collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => match namespace {
            Some(ns) => bail!("pod {name} not found in namespace {ns}"),
            None => bail!("pod {name} not found"),
        },
        many => bail!(
            "pod {name} exists in several namespaces ({}): pass -n NAMESPACE",
            many.iter().map(|p| p.namespace.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The pod's IPs, or the reason it has none.
pub fn require_ips(p: &PodInfo) -> Result<&[IpAddr]> {
    if p.ips.is_empty() {
        bail!(
            "pod {} has no IP yet (phase {}): nothing to trace",
            p.id(),
            p.phase.as_deref().unwrap_or("unknown")
        );
    }
    Ok(&p.ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"apiVersion":"v1","kind":"List","items":[
      {"metadata":{"name":"web-1","namespace":"default","labels":{"app":"web"}},
       "spec":{"nodeName":"node-a","containers":[{"name":"c"}]},
       "status":{"phase":"Running","podIP":"198.18.1.11","podIPs":[{"ip":"198.18.1.11"},{"ip":"2001:2::11"}],"hostIP":"198.18.1.10"}},
      {"metadata":{"name":"pending","namespace":"kube-system"},
       "spec":{"containers":[{"name":"c"}]},"status":{"phase":"Pending"}}]}"#;

    #[test]
    fn parses_kubectl_pod_lists() {
        let pods = parse_pod_list(LIST).unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[0].ips.len(), 2);
        assert_eq!(pods[0].node.as_deref(), Some("node-a"));
        assert!(pods[0].matches(&parse_selector("app=web").unwrap()));
        assert!(!pods[0].matches(&parse_selector("app=api").unwrap()));
        let err = require_ips(&pods[1]).unwrap_err().to_string();
        assert!(err.contains("no IP yet (phase Pending)"), "{err}");
    }

    #[test]
    fn malformed_files_say_where() {
        let bad = LIST.replace(r#""podIP":"198.18.1.11""#, r#""podIP":7"#);
        let err = parse_pod_list(&bad).unwrap_err().to_string();
        assert!(err.starts_with("line 4 column 44: field `items[0].status.podIP`: invalid type"), "{err}");
    }

    #[test]
    fn finds_pods_and_explains_misses() {
        let pods = parse_pod_list(LIST).unwrap();
        assert_eq!(find(&pods, "web-1", None).unwrap().name, "web-1");
        assert!(find(&pods, "web-1", Some("other")).unwrap_err().to_string().contains("namespace other"));
        assert_eq!(find(&pods, "nope", None).unwrap_err().to_string(), "pod nope not found");
    }
}
