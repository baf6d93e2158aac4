//! Pod metadata for the agent: a Kubernetes watch of this node's pods, or a pods file that is
//! re-read when it changes. Kept as IP → pod.
use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};

use super::pods::{self, PodInfo};

/// IP → pod, shared with the agent loop.
#[derive(Clone, Default)]
pub struct PodCache(Arc<RwLock<HashMap<IpAddr, PodInfo>>>);

impl PodCache {
    pub fn get(&self, ip: &IpAddr) -> Option<PodInfo> {
        self.0.read().ok()?.get(ip).cloned()
    }

    pub fn replace(&self, pods: Vec<PodInfo>) {
        let map =
            pods.into_iter().flat_map(|p| p.ips.clone().into_iter().map(move |ip| (ip, p.clone()))).collect();
        if let Ok(mut g) = self.0.write() {
            *g = map;
        }
    }

    fn apply(&self, p: PodInfo) {
        if let Ok(mut g) = self.0.write() {
            g.retain(|_, old| !(old.name == p.name && old.namespace == p.namespace));
            for ip in &p.ips {
                g.insert(*ip, p.clone());
            }
        }
    }

    fn delete(&self, p: &PodInfo) {
        if let Ok(mut g) = self.0.write() {
            g.retain(|_, old| !(old.name == p.name && old.namespace == p.namespace));
        }
    }

    /// Every pod known, once each.
    pub fn all(&self) -> Vec<PodInfo> {
        let Ok(g) = self.0.read() else { return Vec::new() };
        let mut pods: Vec<PodInfo> = g.values().cloned().collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pods.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        pods
    }

    pub fn len(&self) -> usize {
        self.0.read().map(|g| g.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Re-reads a pods file whenever its modification time changes.
pub async fn follow_file(path: PathBuf, cache: PodCache) {
    let mut seen: Option<SystemTime> = None;
    loop {
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if mtime != seen {
            match pods::load_file(&path) {
                Ok(p) => {
                    cache.replace(p);
                    seen = mtime;
                }
                Err(e) => log::warn!("{e:#}"),
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
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
