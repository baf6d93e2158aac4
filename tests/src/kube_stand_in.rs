//! The Kubernetes API stand-in of the cluster tests (the only test double): serves pods, nodes,
//! the podtrace DaemonSet's pods, TokenReview and SubjectAccessReview in the API server's wire
//! format (templates in tests/fixtures/k8s/), authenticates bearer tokens, authorizes every
//! request with RBAC rules, and forwards `pods/proxy` to the real agents as kube-apiserver
//! does: after authentication the caller's `Authorization` header is removed, the pod is
//! dialled at its IP from the VPC (a lab namespace), TLS unverified, other headers kept.
//!
//! It listens on 127.0.0.1 of the root namespace (for kubectl-podtrace) and of each node's
//! namespace (for the agents' TokenReview/SubjectAccessReview), on the same port.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use axum::{
    Router,
    body::{Body, to_bytes},
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio_rustls::rustls;
use xtask::netns;

const AGENT_POD: &str = include_str!("../fixtures/k8s/agent-pod.json");
const NODE: &str = include_str!("../fixtures/k8s/node.json");
const FORBIDDEN: &str = include_str!("../fixtures/k8s/status-forbidden.json");
const UNAUTHORIZED: &str = include_str!("../fixtures/k8s/status-unauthorized.json");
const NOT_FOUND: &str = include_str!("../fixtures/k8s/status-not-found.json");
const TOKEN_REVIEW: &str = include_str!("../fixtures/k8s/tokenreview.json");
const SAR: &str = include_str!("../fixtures/k8s/subjectaccessreview.json");

/// One RBAC rule as a (Cluster)Role holds it, bound to a user cluster-wide (`namespace: None`)
/// or in one namespace (a RoleBinding).
#[derive(Clone, Debug)]
pub struct Rule {
    pub api_groups: Vec<&'static str>,
    /// `pods`, `pods/proxy`, ...
    pub resources: Vec<&'static str>,
    pub verbs: Vec<&'static str>,
    pub namespace: Option<&'static str>,
    pub non_resource_urls: Vec<&'static str>,
}

impl Rule {
    pub fn resource(group: &'static str, resources: &[&'static str], verbs: &[&'static str]) -> Rule {
        Rule {
            api_groups: vec![group],
            resources: resources.to_vec(),
            verbs: verbs.to_vec(),
            namespace: None,
            non_resource_urls: vec![],
        }
    }
    pub fn in_namespace(mut self, ns: &'static str) -> Rule {
        self.namespace = Some(ns);
        self
    }
    pub fn urls(urls: &[&'static str], verbs: &[&'static str]) -> Rule {
        Rule {
            api_groups: vec![],
            resources: vec![],
            verbs: verbs.to_vec(),
            namespace: None,
            non_resource_urls: urls.to_vec(),
        }
    }
}

/// A user the stand-in knows: bearer token, name, groups, RBAC.
#[derive(Clone, Debug)]
pub struct User {
    pub token: String,
    pub name: String,
    pub groups: Vec<String>,
    pub rules: Vec<Rule>,
}

/// What one request asks, in RBAC terms.
#[derive(Debug, Default)]
struct Attrs {
    verb: String,
    group: String,
    resource: String,
    subresource: String,
    namespace: Option<String>,
    name: Option<String>,
    path: Option<String>,
}

fn allowed(rules: &[Rule], a: &Attrs) -> bool {
    let full = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    rules.iter().any(|r| {
        let verb = r.verbs.iter().any(|v| *v == "*" || *v == a.verb);
        match &a.path {
            Some(p) => verb && r.non_resource_urls.iter().any(|u| u == p),
            None => {
                verb && r.api_groups.iter().any(|g| *g == a.group)
                    && r.resources.iter().any(|res| *res == full)
                    // A RoleBinding grants in its namespace only; a cluster-wide request needs
                    // a ClusterRoleBinding.
                    && r.namespace.is_none_or(|ns| a.namespace.as_deref() == Some(ns))
            }
        }
    })
}

/// kube-apiserver's wording of an RBAC refusal.
fn forbidden(user: &str, a: &Attrs) -> Response {
    let full = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let what = match &a.name {
        Some(n) => format!("{} {n:?}", a.resource),
        None => a.resource.clone(),
    };
    let scope = match &a.namespace {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".into(),
    };
    let message = format!(
        "{what} is forbidden: User {user:?} cannot {} resource {full:?} in API group {:?} {scope}",
        a.verb, a.group
    );
    let details = match &a.name {
        Some(n) => format!(r#""name":{},"kind":{}"#, json!(n), json!(a.resource)),
        None => format!(r#""kind":{}"#, json!(a.resource)),
    };
    let body = FORBIDDEN
        .trim()
        .replace("${MESSAGE}", message.replace('"', "\\\"").as_str())
        .replace("${DETAILS}", &details);
    status_json(StatusCode::FORBIDDEN, body)
}

fn status_json(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn not_found(resource: &str, name: &str) -> Response {
    let body = NOT_FOUND
        .trim()
        .replace("${MESSAGE}", &format!("{resource} \\\"{name}\\\" not found"))
        .replace("${DETAILS}", &format!(r#""name":{},"kind":{}"#, json!(name), json!(resource)));
    status_json(StatusCode::NOT_FOUND, body)
}

struct Inner {
    users: Vec<User>,
    pods: Vec<Value>,
    nodes: Vec<Value>,
    /// Where the "API server" dials pods from (a namespace on the VPC).
    proxy_netns: String,
    /// `user METHOD path?query` of every request, and the headers of proxied ones.
    log: Mutex<Vec<String>>,
}

pub struct KubeStandIn {
    pub port: u16,
    inner: Arc<Inner>,
    _rt: tokio::runtime::Runtime,
}

fn fill(template: &str, vars: &[(&str, String)]) -> Value {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("${{{k}}}"), v);
    }
    serde_json::from_str(&s).expect("fixture is JSON")
}

impl KubeStandIn {
    /// Serves `lab`'s pods and nodes, plus a podtrace agent pod on each node in `agent_nodes`
    /// (`ready: false` makes one unready), to `users`.
    pub fn start(lab: &xtask::lab::Lab, agents: &[(&str, bool)], users: Vec<User>) -> Result<KubeStandIn> {
        let list: Value = serde_json::from_str(&std::fs::read_to_string(lab.pods_file())?)?;
        let mut pods: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
        let mut nodes = Vec::new();
        for (i, n) in lab.plan.nodes.iter().enumerate() {
            let ip = n.primary_ip().to_string();
            nodes.push(fill(
                NODE,
                &[
                    ("NODE", n.name.clone()),
                    ("UID", format!("6a1e0c52-0000-4000-8000-{:012x}", i + 1)),
                    ("IP", ip.clone()),
                    ("INSTANCE", n.instance_id.clone()),
                ],
            ));
            if let Some((_, ready)) = agents.iter().find(|(a, _)| *a == n.name) {
                pods.push(fill(
                    AGENT_POD,
                    &[
                        ("NAME", format!("podtrace-{}", n.name)),
                        ("UID", format!("9b7c1d20-0000-4000-8000-{:012x}", i + 1)),
                        ("NODE", n.name.clone()),
                        ("IP", ip),
                        ("READY", if *ready { "True" } else { "False" }.into()),
                    ],
                ));
            }
        }
        let inner = Arc::new(Inner { users, pods, nodes, proxy_netns: lab.ns("alb"), log: Mutex::default() });
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let root = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = root.local_addr()?.port();
        let mut listeners = vec![root];
        for n in &lab.plan.nodes {
            listeners
                .push(netns::run_in(&n.netns, || Ok(std::net::TcpListener::bind(("127.0.0.1", port))?))?);
        }
        for l in listeners {
            l.set_nonblocking(true)?;
            let app = Router::new().fallback(handle).with_state(inner.clone());
            let _guard = rt.enter();
            let l = tokio::net::TcpListener::from_std(l)?;
            rt.spawn(async move {
                let _ = axum::serve(l, app).await;
            });
        }
        Ok(KubeStandIn { port, inner, _rt: rt })
    }

    /// A kubeconfig for `token` (written to `path`).
    pub fn kubeconfig(&self, path: &std::path::Path, token: &str) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: http://127.0.0.1:{}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: user\n    namespace: default\ncurrent-context: lab\n",
            self.port
        );
        std::fs::write(path, text)?;
        Ok(())
    }

    pub fn log(&self) -> Vec<String> {
        self.inner.log.lock().unwrap().clone()
    }
}

fn query_param(q: &str, key: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(x)) => {
                out.push(x);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k=v,k2=v2` selectors (labels, or the fields the API server indexes for pods).
fn matches(obj: &Value, labels: Option<&str>, fields: Option<&str>) -> bool {
    let pairs = |s: &str| -> Vec<(String, String)> {
        s.split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    };
    let label_ok = labels.is_none_or(|l| {
        pairs(l).iter().all(|(k, v)| obj["metadata"]["labels"][k].as_str() == Some(v.as_str()))
    });
    let field_ok = fields.is_none_or(|f| {
        pairs(f).iter().all(|(k, v)| {
            let got = match k.as_str() {
                "spec.nodeName" => obj["spec"]["nodeName"].as_str(),
                "status.podIP" => obj["status"]["podIP"].as_str(),
                "metadata.name" => obj["metadata"]["name"].as_str(),
                "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
                _ => None,
            };
            got == Some(v.as_str())
        })
    });
    label_ok && field_ok
}

fn list(kind: &str, items: Vec<Value>) -> Response {
    let body = json!({ "kind": kind, "apiVersion": "v1", "metadata": { "resourceVersion": "5200" }, "items": items });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn user_of<'a>(inner: &'a Inner, headers: &HeaderMap) -> Option<&'a User> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = v.strip_prefix("Bearer ")?;
    inner.users.iter().find(|u| u.token == token)
}

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let Some(user) = user_of(&inner, &parts.headers).cloned() else {
        inner.log.lock().unwrap().push(format!("- {} {path}?{query}", parts.method));
        return status_json(StatusCode::UNAUTHORIZED, UNAUTHORIZED.trim().to_string());
    };
    inner.log.lock().unwrap().push(format!("{} {} {path}?{query}", user.name, parts.method));
    let body = to_bytes(body, 1 << 20).await.unwrap_or_default();
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let verb_of = |item: bool| match parts.method {
        Method::GET if item => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "get",
    };
    let core = |resource: &str, sub: &str, ns: Option<&str>, name: Option<&str>, verb: &str| Attrs {
        verb: verb.into(),
        group: String::new(),
        resource: resource.into(),
        subresource: sub.into(),
        namespace: ns.map(str::to_string),
        name: name.map(str::to_string),
        path: None,
    };
    let labels = query_param(&query, "labelSelector");
    let fields = query_param(&query, "fieldSelector");
    let check = |a: &Attrs| allowed(&user.rules, a);
    match seg.as_slice() {
        ["api", "v1", "pods"] => {
            let a = core("pods", "", None, None, "list");
            if !check(&a) {
                return forbidden(&user.name, &a);
            }
            list(
                "PodList",
                inner
                    .pods
                    .iter()
                    .filter(|p| matches(p, labels.as_deref(), fields.as_deref()))
                    .cloned()
                    .collect(),
            )
        }
        ["api", "v1", "namespaces", ns, "pods"] => {
            let a = core("pods", "", Some(ns), None, "list");
            if !check(&a) {
                return forbidden(&user.name, &a);
            }
            list(
                "PodList",
                inner
                    .pods
                    .iter()
                    .filter(|p| {
                        p["metadata"]["namespace"] == *ns && matches(p, labels.as_deref(), fields.as_deref())
                    })
                    .cloned()
                    .collect(),
            )
        }
        ["api", "v1", "namespaces", ns, "pods", name] => {
            let a = core("pods", "", Some(ns), Some(name), "get");
            if !check(&a) {
                return forbidden(&user.name, &a);
            }
            match inner
                .pods
                .iter()
                .find(|p| p["metadata"]["namespace"] == *ns && p["metadata"]["name"] == *name)
            {
                Some(p) => ([(header::CONTENT_TYPE, "application/json")], p.to_string()).into_response(),
                None => not_found("pods", name),
            }
        }
        ["api", "v1", "namespaces", ns, "pods", target, "proxy", rest @ ..] => {
            let a = core("pods", "proxy", Some(ns), Some(target), verb_of(true));
            // The name in the RBAC check is the pod's, without scheme and port.
            let (scheme, pod, port) = match target.split(':').collect::<Vec<_>>().as_slice() {
                [s, p, port] => (s.to_string(), p.to_string(), port.to_string()),
                [p, port] => ("http".into(), p.to_string(), port.to_string()),
                _ => ("http".into(), target.to_string(), String::new()),
            };
            let a = Attrs { name: Some(pod.clone()), ..a };
            if !check(&a) {
                return forbidden(&user.name, &a);
            }
            let Some(p) = inner
                .pods
                .iter()
                .find(|p| p["metadata"]["namespace"] == *ns && p["metadata"]["name"] == pod.as_str())
            else {
                return not_found("pods", &pod);
            };
            let Some(ip) = p["status"]["podIP"].as_str().and_then(|i| i.parse::<IpAddr>().ok()) else {
                return status_json(StatusCode::SERVICE_UNAVAILABLE, "{}".into());
            };
            let mut headers: Vec<(String, String)> = Vec::new();
            for (k, v) in parts.headers.iter() {
                // Removed once authenticated (WithAuthentication); hop-by-hop ones by the proxy.
                if [header::AUTHORIZATION, header::HOST, header::CONNECTION].contains(k) {
                    continue;
                }
                headers.push((k.to_string(), v.to_str().unwrap_or("").to_string()));
            }
            inner.log.lock().unwrap().push(format!(
                "proxied headers: {}",
                headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(",")
            ));
            let target = SocketAddr::new(ip, port.parse().unwrap_or(80));
            let path_q = format!(
                "/{}{}",
                rest.join("/"),
                if query.is_empty() { String::new() } else { format!("?{query}") }
            );
            let ns_dial = inner.proxy_netns.clone();
            let https = scheme == "https";
            let result = match tokio::task::spawn_blocking(move || {
                forward(&ns_dial, target, https, &path_q, &headers)
            })
            .await
            {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!(e)),
            };
            match result {
                Ok((code, ctype, body)) => {
                    let mut r = Response::builder().status(code);
                    if let Some(c) = ctype {
                        r = r.header(header::CONTENT_TYPE, c);
                    }
                    r.body(Body::from(body)).unwrap()
                }
                // kube-apiserver's answer when the pod cannot be reached.
                Err(e) => {
                    let msg = format!("error trying to reach service: {e:#}");
                    let body = json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":msg,"reason":"ServiceUnavailable","code":503});
                    status_json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
                }
            }
        }
        ["api", "v1", "nodes"] => {
            let a = core("nodes", "", None, None, "list");
            if !check(&a) {
                return forbidden(&user.name, &a);
            }
            list("NodeList", inner.nodes.clone())
        }
        ["api", "v1", "nodes", name] => {
            let a = core("nodes", "", None, Some(name), "get");
            if !check(&a) {
                return forbidden(&user.name, &a);
            }
            match inner.nodes.iter().find(|n| n["metadata"]["name"] == *name) {
                Some(n) => ([(header::CONTENT_TYPE, "application/json")], n.to_string()).into_response(),
                None => not_found("nodes", name),
            }
        }
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] => {
            let a = Attrs {
                group: "authentication.k8s.io".into(),
                ..core("tokenreviews", "", None, None, "create")
            };
            if !check(&a) {
                return forbidden(&user.name, &a);
            }
            let review: Value = serde_json::from_slice(&body).unwrap_or_default();
            let token = review["spec"]["token"].as_str().unwrap_or_default();
            let status = match inner.users.iter().find(|u| u.token == token) {
                Some(u) => {
                    json!({ "authenticated": true, "user": { "username": u.name, "uid": format!("uid-{}", u.name), "groups": u.groups }, "audiences": ["https://kubernetes.default.svc"] })
                }
                None => json!({ "user": {}, "error": "[invalid bearer token, token lookup failed]" }),
            };
            let out =
                TOKEN_REVIEW.trim().replace("${TOKEN}", token).replace("${STATUS}", &status.to_string());
            (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], out).into_response()
        }
        ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"] => {
            let a = Attrs {
                group: "authorization.k8s.io".into(),
                ..core("subjectaccessreviews", "", None, None, "create")
            };
            if !check(&a) {
                return forbidden(&user.name, &a);
            }
            let review: Value = serde_json::from_slice(&body).unwrap_or_default();
            let spec = &review["spec"];
            let subject = inner.users.iter().find(|u| spec["user"].as_str() == Some(u.name.as_str()));
            let attrs = if let Some(r) = spec.get("resourceAttributes") {
                Attrs {
                    verb: r["verb"].as_str().unwrap_or_default().into(),
                    group: r["group"].as_str().unwrap_or_default().into(),
                    resource: r["resource"].as_str().unwrap_or_default().into(),
                    subresource: r["subresource"].as_str().unwrap_or_default().into(),
                    namespace: r["namespace"].as_str().filter(|n| !n.is_empty()).map(str::to_string),
                    name: r["name"].as_str().map(str::to_string),
                    path: None,
                }
            } else {
                let n = &spec["nonResourceAttributes"];
                Attrs {
                    verb: n["verb"].as_str().unwrap_or_default().into(),
                    path: n["path"].as_str().map(str::to_string),
                    ..Default::default()
                }
            };
            let ok = subject.is_some_and(|s| allowed(&s.rules, &attrs));
            let status = if ok {
                json!({ "allowed": true, "reason": format!("RBAC: allowed by ClusterRoleBinding \"podtrace-viewer\" of ClusterRole \"podtrace-viewer\" to User \"{}\"", spec["user"].as_str().unwrap_or_default()) })
            } else {
                json!({ "allowed": false })
            };
            let out =
                SAR.trim().replace("${SPEC}", &spec.to_string()).replace("${STATUS}", &status.to_string());
            (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], out).into_response()
        }
        _ => not_found("", &path),
    }
}

/// Accepts any certificate, as kube-apiserver's proxy transport does (InsecureSkipVerify:
/// pods are dialled by IP).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One GET dialled from namespace `ns` (TLS unverified when `https`), as the API server's
/// proxy sends it: (status, content type, body).
pub fn forward(
    ns: &str,
    to: SocketAddr,
    https: bool,
    path_q: &str,
    headers: &[(String, String)],
) -> Result<(u16, Option<String>, Vec<u8>)> {
    let tcp = netns::run_in(ns, || Ok(std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))?))
        .with_context(|| format!("dial tcp {to}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!("GET {path_q} HTTP/1.0\r\nHost: {to}\r\n");
    for (k, v) in headers {
        request += &format!("{k}: {v}\r\n");
    }
    request += "X-Forwarded-For: 127.0.0.1\r\n\r\n";
    let mut raw = Vec::new();
    if https {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::IpAddress(to.ip().into()),
        )?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(request.as_bytes())?;
        match tls.read_to_end(&mut raw) {
            Ok(_) => {}
            // Servers often close without close_notify: the body is complete at EOF.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e.into()),
        }
    } else {
        let mut tcp = tcp;
        tcp.write_all(request.as_bytes())?;
        tcp.read_to_end(&mut raw)?;
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").context("malformed answer")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no status")?;
    let mut ctype = None;
    let mut hdrs = BTreeMap::new();
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            hdrs.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    if let Some(c) = hdrs.get("content-type") {
        ctype = Some(c.clone());
    }
    Ok((code, ctype, raw[split + 4..].to_vec()))
}
