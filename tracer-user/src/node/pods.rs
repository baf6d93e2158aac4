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

/// The branch ENIs a pod's annotations list. A malformed annotation names no branch ENI
/// (nothing is guessed from it).
fn branch_enis(annotations: Option<&BTreeMap<String, String>>) -> Vec<BranchEni> {
    annotations
        .and_then(|a| a.get(POD_ENI_ANNOTATION))
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

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
            branch_enis: branch_enis(meta.annotations.as_ref()),
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

/// Largest pods file read: a `kubectl get pods -A -o json` of a very large cluster. The file
/// is parsed as it is read, so memory follows the pods kept, not the file's size.
pub const MAX_PODS_FILE_BYTES: u64 = 1 << 30;

/// The parts of a Pod podtrace reads; everything else in the file is skipped unparsed.
#[derive(Deserialize)]
struct FilePod {
    metadata: FileMeta,
    #[serde(default)]
    spec: Option<FileSpec>,
    #[serde(default)]
    status: Option<FileStatus>,
}

#[derive(Deserialize)]
struct FileMeta {
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileSpec {
    node_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileStatus {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Option<Vec<FilePodIp>>,
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
}

#[derive(Deserialize)]
struct FilePodIp {
    ip: String,
}

impl FilePod {
    fn info(self) -> Option<PodInfo> {
        let status = self.status;
        let mut ips: Vec<IpAddr> = status
            .as_ref()
            .and_then(|s| s.pod_ips.as_ref())
            .map(|v| v.iter().filter_map(|i| i.ip.parse().ok()).collect())
            .unwrap_or_default();
        if let Some(ip) = status.as_ref().and_then(|s| s.pod_ip.as_ref()).and_then(|i| i.parse().ok())
            && !ips.contains(&ip)
        {
            ips.insert(0, ip);
        }
        Some(PodInfo {
            name: self.metadata.name?,
            namespace: self.metadata.namespace.unwrap_or_else(|| "default".into()),
            node: self.spec.and_then(|s| s.node_name),
            ips,
            host_ip: status.as_ref().and_then(|s| s.host_ip.as_ref()).and_then(|i| i.parse().ok()),
            phase: status.and_then(|s| s.phase),
            labels: self.metadata.labels.unwrap_or_default(),
            branch_enis: branch_enis(self.metadata.annotations.as_ref()),
        })
    }
}

/// A PodList whose items go one by one to a callback instead of into memory.
struct PodListSeed<'f, F>(&'f mut F);

impl<'de, F: FnMut(PodInfo)> serde::de::DeserializeSeed<'de> for PodListSeed<'_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(PodInfo)> serde::de::Visitor<'de> for PodListSeed<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a PodList object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut items = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                if items {
                    return Err(serde::de::Error::duplicate_field("items"));
                }
                items = true;
                map.next_value_seed(ItemsSeed(&mut *self.0))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        if !items {
            return Err(serde::de::Error::missing_field("items"));
        }
        Ok(())
    }
}

struct ItemsSeed<'f, F>(&'f mut F);

impl<'de, F: FnMut(PodInfo)> serde::de::DeserializeSeed<'de> for ItemsSeed<'_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(PodInfo)> serde::de::Visitor<'de> for ItemsSeed<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of pods")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(pod) = seq.next_element::<FilePod>()? {
            if let Some(info) = pod.info() {
                (self.0)(info);
            }
        }
        Ok(())
    }
}

/// Parses a PodList (`kubectl get pods -A -o json`) from `input`, handing each pod to `each`
/// as soon as it is read. Anything but whitespace after the list is an error. Errors name the
/// line, column and field.
fn parse_each(input: impl std::io::Read, mut each: impl FnMut(PodInfo)) -> Result<()> {
    let mut de = serde_json::Deserializer::from_reader(input);
    let mut track = serde_path_to_error::Track::new();
    let parsed = serde::de::DeserializeSeed::deserialize(
        PodListSeed(&mut each),
        serde_path_to_error::Deserializer::new(&mut de, &mut track),
    );
    if let Err(inner) = parsed {
        let msg = inner.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        bail!("line {} column {}: field `{}`: {msg}", inner.line(), inner.column(), track.path());
    }
    de.end().map_err(|e| {
        anyhow!("line {} column {}: trailing characters after the pod list", e.line(), e.column())
    })
}

/// Opens a pods file: a regular file (a FIFO or a device would block or never end) of at
/// most [`MAX_PODS_FILE_BYTES`], checked before and after opening.
fn open_regular(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let regular = |m: &std::fs::Metadata| -> Result<()> {
        if !m.is_file() {
            bail!("pods file {} is not a regular file", path.display());
        }
        if m.len() > MAX_PODS_FILE_BYTES {
            bail!("pods file {} is larger than {} MiB", path.display(), MAX_PODS_FILE_BYTES >> 20);
        }
        Ok(())
    };
    regular(&std::fs::metadata(path).with_context(|| format!("cannot read pods file {}", path.display()))?)?;
    // O_NONBLOCK: should it have become a FIFO in between, opening does not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot read pods file {}", path.display()))?;
    regular(&file.metadata()?)?;
    Ok(file)
}

/// Reads a pods file, handing each pod to `each` as it is parsed (memory follows what the
/// caller keeps, not the file).
pub fn for_each_in_file(path: &Path, each: impl FnMut(PodInfo)) -> Result<()> {
    use std::io::Read;
    let file = open_regular(path)?;
    let reader = std::io::BufReader::with_capacity(1 << 16, file.take(MAX_PODS_FILE_BYTES + 1));
    parse_each(reader, each).with_context(|| format!("pods file {}", path.display()))
}

/// Reads a pods file, keeping the pods `keep` wants.
pub fn read_file(path: &Path, mut keep: impl FnMut(&PodInfo) -> bool) -> Result<Vec<PodInfo>> {
    let mut out = Vec::new();
    for_each_in_file(path, |p| {
        if keep(&p) {
            out.push(p)
        }
    })?;
    Ok(out)
}

/// Reads every pod of a pods file.
pub fn load_file(path: &Path) -> Result<Vec<PodInfo>> {
    read_file(path, |_| true)
}

/// Parses a PodList held in memory (tests, fuzzing).
pub fn parse_pod_list(text: &str) -> Result<Vec<PodInfo>> {
    let mut out = Vec::new();
    parse_each(text.as_bytes(), |p| out.push(p))?;
    Ok(out)
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
        // Read as a stream, the position is the byte after the offending value.
        assert!(err.starts_with("line 4 column 45: field `items[0].status.podIP`: invalid type"), "{err}");
        let one_line = r#"{"items": [{"metadata": {"name": "x"}, "status": {"podIP": 7}}]}"#;
        let err = parse_pod_list(one_line).unwrap_err().to_string();
        assert!(err.starts_with("line 1 column 61: field `items[0].status.podIP`"), "{err}");
    }

    #[test]
    fn trailing_garbage_and_duplicate_lists_are_refused() {
        let err = parse_pod_list("{\"items\":[]}\0\0").unwrap_err().to_string();
        assert_eq!(err, "line 1 column 13: trailing characters after the pod list");
        assert!(parse_pod_list("{\"items\":[]}\n  \n").unwrap().is_empty());
        assert!(parse_pod_list("{\"items\":[],\"items\":[]}").unwrap_err().to_string().contains("duplicate"));
        assert!(
            parse_pod_list("{\"kind\":\"List\"}").unwrap_err().to_string().contains("missing field `items`")
        );
    }

    #[test]
    fn only_regular_files_are_read() {
        for dev in ["/dev/zero", "/dev/null", "/proc/self"] {
            let err = load_file(Path::new(dev)).unwrap_err().to_string();
            assert!(err.contains("is not a regular file"), "{dev}: {err}");
        }
    }

    #[test]
    fn finds_pods_and_explains_misses() {
        let pods = parse_pod_list(LIST).unwrap();
        assert_eq!(find(&pods, "web-1", None).unwrap().name, "web-1");
        assert!(find(&pods, "web-1", Some("other")).unwrap_err().to_string().contains("namespace other"));
        assert_eq!(find(&pods, "nope", None).unwrap_err().to_string(), "pod nope not found");
    }
}
