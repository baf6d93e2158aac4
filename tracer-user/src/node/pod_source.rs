//! Pod metadata for the agent: a Kubernetes watch of this node's pods, or a pods file that is
//! re-read when it changes. Kept as IP → pod.
use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};

use super::pods::{self, PodInfo};

/// A pod's name, as the agent keeps it per IP (labels and the rest are not needed there), and
/// its branch ENIs (Security Groups for Pods; `podtrace node` reads them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub name: String,
    pub namespace: String,
    /// The AWS id of the branch ENI carrying the pod's address (see [`PodInfo::branch_eni_id`]).
    pub branch_eni_id: Option<String>,
    pub branch_enis: Vec<pods::BranchEni>,
}

impl PodName {
    fn of(p: &PodInfo) -> PodName {
        PodName {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            branch_eni_id: p.branch_eni_id(),
            branch_enis: p.branch_enis.clone(),
        }
    }
}

/// IP → pod, shared with the agent loop, and how often the pods file could not be read.
#[derive(Clone, Default)]
pub struct PodCache {
    pods: Arc<RwLock<HashMap<IpAddr, PodName>>>,
    errors: Arc<AtomicU64>,
}

impl PodCache {
    pub fn get(&self, ip: &IpAddr) -> Option<PodName> {
        self.pods.read().ok()?.get(ip).cloned()
    }

    pub fn replace(&self, pods: Vec<PodInfo>) {
        let mut map = HashMap::new();
        for p in pods {
            insert(&mut map, p);
        }
        self.set(map);
    }

    fn set(&self, map: HashMap<IpAddr, PodName>) {
        if let Ok(mut g) = self.pods.write() {
            *g = map;
        }
    }

    fn apply(&self, p: PodInfo) {
        if let Ok(mut g) = self.pods.write() {
            g.retain(|_, old| !(old.name == p.name && old.namespace == p.namespace));
            insert(&mut g, p);
        }
    }

    fn delete(&self, p: &PodInfo) {
        if let Ok(mut g) = self.pods.write() {
            g.retain(|_, old| !(old.name == p.name && old.namespace == p.namespace));
        }
    }

    /// Every pod known, once each, with its addresses and branch ENIs (nothing else is kept).
    pub fn all(&self) -> Vec<PodInfo> {
        let Ok(g) = self.pods.read() else { return Vec::new() };
        let mut by_pod: std::collections::BTreeMap<(&str, &str), PodInfo> = Default::default();
        for (ip, p) in g.iter() {
            by_pod
                .entry((&p.namespace, &p.name))
                .or_insert_with(|| PodInfo {
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    node: None,
                    ips: Vec::new(),
                    host_ip: None,
                    phase: None,
                    labels: Default::default(),
                    branch_enis: p.branch_enis.clone(),
                })
                .ips
                .push(*ip);
        }
        by_pod
            .into_values()
            .map(|mut p| {
                p.ips.sort();
                p
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.pods.read().map(|g| g.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Versions of the pods file that could not be read.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

fn insert(map: &mut HashMap<IpAddr, PodName>, p: PodInfo) {
    let name = PodName::of(&p);
    for ip in p.ips {
        map.insert(ip, name.clone());
    }
}

/// Names by IP from a pods file: the pods with an address, on `node` when it is known (the
/// file may list the whole cluster). Built as the file is parsed.
fn read_names(path: &Path, node: Option<&str>) -> Result<HashMap<IpAddr, PodName>> {
    let mut map = HashMap::new();
    pods::for_each_in_file(path, |p| {
        if node.is_none_or(|n| p.node.as_deref() == Some(n)) {
            insert(&mut map, p);
        }
    })?;
    Ok(map)
}

/// Fills the cache from a pods file (see [`read_names`]).
pub fn load_file(cache: &PodCache, path: &Path, node: Option<&str>) -> Result<()> {
    cache.set(read_names(path, node)?);
    Ok(())
}

/// What identifies one version of a file: a new inode, size or modification time is a new
/// version; an unreadable path is its own version (its error).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Version {
    File { ino: u64, size: u64, mtime: Option<SystemTime> },
    Unreadable(String),
}

fn version(path: &Path) -> Version {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => Version::File { ino: m.ino(), size: m.len(), mtime: m.modified().ok() },
        Err(e) => Version::Unreadable(e.to_string()),
    }
}

/// Re-reads a pods file whenever it changes, on a thread of its own (reading a file can block:
/// it must never stall the agent's runtime). Each version is read once: a bad one is reported
/// and counted once, and the pods read before are kept until a good one appears.
pub fn follow_file(path: PathBuf, node: Option<String>, cache: PodCache) -> Result<()> {
    let mut seen = version(&path);
    std::thread::Builder::new().name("podtrace-podsfile".into()).spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(2));
            let now = version(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match load_file(&cache, &path, node.as_deref()) {
                Ok(()) => {
                    log::info!("pods file {} re-read", path.display());
                }
                Err(e) => {
                    cache.errors.fetch_add(1, Ordering::Relaxed);
                    log::warn!("{e:#} (keeping the pods read before; reported once per version of the file)");
                }
            }
        }
    })?;
    Ok(())
}

/// Watches the pods scheduled on `node` (field selector `spec.nodeName=<node>`) and keeps the
/// cache current. Returns only when the watch stream ends.
pub async fn follow_api(client: kube::Client, node: String, cache: PodCache) -> Result<()> {
    let api: kube::Api<Pod> = kube::Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut init: Vec<PodInfo> = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => init.clear(),
            Ok(watcher::Event::InitApply(p)) => init.extend(PodInfo::from_pod(&p)),
            Ok(watcher::Event::InitDone) => cache.replace(std::mem::take(&mut init)),
            Ok(watcher::Event::Apply(p)) => {
                if let Some(p) = PodInfo::from_pod(&p) {
                    cache.apply(p);
                }
            }
            Ok(watcher::Event::Delete(p)) => {
                if let Some(p) = PodInfo::from_pod(&p) {
                    cache.delete(&p);
                }
            }
            // The watcher retries by itself; keep the last known pods meanwhile.
            Err(e) => log::warn!("pod watch: {e}"),
        }
    }
    Ok(())
}
