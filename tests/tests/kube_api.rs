//! The Kubernetes API client (pod lookup and the agent's pod watch) against recorded-format API
//! responses served by a small local HTTP server: the only test double podtrace accepts.
use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use podtrace::node::pod_source::{PodCache, follow_api};

const LIST: &str = include_str!("../fixtures/k8s/podlist.json");
const EVENTS: &str = include_str!("../fixtures/k8s/watch-events.jsonl");
const NODE: &str = "ip-198-18-1-10.ec2.internal";

/// Serves the fixtures: lists get the PodList, the first watch gets the events (then stays
/// open like a real watch), later watches just stay open.
fn fake_api() -> Result<(u16, Arc<Mutex<Vec<String>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        let mut watches = 0;
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Skip the headers.
            let mut h = String::new();
            while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            seen.lock().unwrap().push(line.trim().to_string());
            let mut s = stream;
            if line.contains("watch=true") || line.contains("watch=1") {
                watches += 1;
                let first = watches == 1;
                std::thread::spawn(move || {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    );
                    if first {
                        for ev in EVENTS.lines() {
                            let chunk = format!("{ev}\n");
                            let _ = write!(s, "{:x}\r\n{chunk}\r\n", chunk.len());
                            let _ = s.flush();
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                    std::thread::sleep(Duration::from_secs(30));
                });
            } else {
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{LIST}",
                    LIST.len()
                );
            }
        }
    });
    Ok((port, requests))
}

fn client(port: u16) -> Result<kube::Client> {
    let cfg = kube::Config::new(format!("http://127.0.0.1:{port}").parse()?);
    Ok(kube::Client::try_from(cfg)?)
}

#[test]
fn lists_pods_like_podtrace_pod_does() -> Result<()> {
    let (port, requests) = fake_api()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _in_runtime = rt.enter();
    let pods =
        rt.block_on(podtrace::node::pods::list(client(port)?, None, Some(&format!("spec.nodeName={NODE}"))))?;
    assert_eq!(pods.len(), 2);
    let p = podtrace::node::pods::find(&pods, "web-6d4cf56db6-p8q7r", Some("default"))?;
    assert_eq!(p.ips, vec!["198.18.2.11".parse::<std::net::IpAddr>()?]);
    assert_eq!(p.node.as_deref(), Some(NODE));
    assert_eq!(p.labels.get("app").map(String::as_str), Some("web"));
    let req = requests.lock().unwrap().join("\n");
    assert!(req.contains("GET /api/v1/pods?"), "{req}");
    assert!(req.contains("fieldSelector=spec.nodeName%3Dip-198-18-1-10.ec2.internal"), "{req}");
    Ok(())
}

#[test]
fn agent_watch_follows_added_modified_and_deleted_pods() -> Result<()> {
    let (port, requests) = fake_api()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let _in_runtime = rt.enter();
    let cache = PodCache::default();
    let c = cache.clone();
    let client = client(port)?;
    rt.spawn(async move {
        let _ = follow_api(client, NODE.to_string(), c).await;
    });
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Final state: web-...-2xk9v deleted, web-...-p8q7r kept, api-... Running with an IP.
    loop {
        let done = cache.get(&ip("198.18.1.12")).is_some_and(|p| p.name == "api-7b9f8c5d4-m2n4x")
            && cache.get(&ip("198.18.1.11")).is_none()
            && cache.get(&ip("198.18.2.11")).is_some();
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watch events not applied; requests: {:?}",
            requests.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cache.len(), 2);
    let req = requests.lock().unwrap().join("\n");
    assert!(req.contains("watch=true"), "{req}");
    assert!(req.contains("fieldSelector=spec.nodeName%3Dip-198-18-1-10.ec2.internal"), "{req}");
    assert!(req.contains("resourceVersion=4540"), "the watch resumes from the list's version: {req}");
    rt.shutdown_background();
    Ok(())
}
