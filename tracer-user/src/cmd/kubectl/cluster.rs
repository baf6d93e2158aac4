//! What `kubectl podtrace` reads from the cluster with the user's kubeconfig and RBAC: pods,
//! the podtrace agent pod of each node (DaemonSet label), node addresses; and the agents
//! themselves, through the API server's `pods/proxy` subresource (no port opened for the
//! user on the node network). Every refusal becomes one line that says what is missing.
use std::{collections::HashMap, net::IpAddr, path::PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use http::{Request, header};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Config,
    api::ListParams,
    client::{Body, ConfigExt},
    config::{KubeConfigOptions, Kubeconfig},
};
use tower::ServiceBuilder;

use crate::{cmd::agent::auth::FORWARDED_TOKEN_HEADER, node::pods::PodInfo};

#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current one).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace of the podtrace DaemonSet.
    #[arg(long, global = true, default_value = "podtrace")]
    pub agent_namespace: String,
    /// Label selector of the podtrace agent pods.
    #[arg(long, global = true, default_value = "app.kubernetes.io/name=podtrace")]
    pub agent_selector: String,
    /// Name of the agent container's port that serves the authenticated API.
    #[arg(long, global = true, default_value = "api")]
    pub agent_port_name: String,
}

/// A podtrace agent pod.
#[derive(Clone, Debug)]
pub struct AgentPod {
    pub name: String,
    pub node: String,
    pub port: Option<u16>,
    pub ready: bool,
    /// The node's addresses (the agent runs in the host network).
    pub host_ips: Vec<IpAddr>,
}

pub struct Cluster {
    pub client: kube::Client,
    pub args: ClusterArgs,
    pub default_namespace: String,
}

/// kube-apiserver drops the caller's `Authorization` once it has authenticated it, so the
/// agent behind `pods/proxy` would get no credential: repeat the bearer token (however the
/// kubeconfig obtains it: token, file, exec plugin, OIDC) in the header the agent reviews.
fn repeat_token_for_the_agent(mut req: Request<Body>) -> Request<Body> {
    if req.uri().path().contains("/proxy/")
        && let Some(v) = req.headers().get(header::AUTHORIZATION).cloned()
        && v.to_str().is_ok_and(|s| s.len() > 7 && s[..7].eq_ignore_ascii_case("bearer "))
    {
        req.headers_mut().insert(FORWARDED_TOKEN_HEADER, v);
    }
    req
}

/// The API server's refusal as one line, naming what the user lacks.
pub fn api_error(e: kube::Error, doing: &str) -> anyhow::Error {
    match e {
        kube::Error::Api(s) if s.code == 403 => anyhow!(
            "RBAC denied {doing}: {} (see README, \"kubectl podtrace\": the podtrace-viewer ClusterRole)",
            s.message
        ),
        kube::Error::Api(s) if s.code == 401 => {
            anyhow!("the API server did not accept your credentials {doing}: {}", s.message)
        }
        other => anyhow!("{doing}: {other}"),
    }
}

impl Cluster {
    pub async fn connect(args: &ClusterArgs) -> Result<Cluster> {
        let opts = KubeConfigOptions { context: args.context.clone(), ..Default::default() };
        let config = match &args.kubeconfig {
            Some(path) => {
                let kc =
                    Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
                Config::from_custom_kubeconfig(kc, &opts).await
            }
            None => Config::from_kubeconfig(&opts).await,
        }
        .context("no usable kubeconfig (KUBECONFIG, ~/.kube/config or --kubeconfig)")?;
        let https = config.rustls_https_connector().context("TLS setup for the API server")?;
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        let service = ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(config.auth_layer().context("kubeconfig credentials")?)
            .map_request(repeat_token_for_the_agent)
            .map_err(|e: hyper_util::client::legacy::Error| -> tower::BoxError { Box::new(e) })
            .service(http);
        let default_namespace = config.default_namespace.clone();
        let client = kube::Client::new(service, default_namespace.clone());
        Ok(Cluster { client, args: args.clone(), default_namespace })
    }

    pub fn namespace<'a>(&'a self, ns: Option<&'a str>) -> &'a str {
        ns.unwrap_or(&self.default_namespace)
    }

    pub async fn pod(&self, namespace: &str, name: &str) -> Result<PodInfo> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(p)) => PodInfo::from_pod(&p).context("pod without a name"),
            Ok(None) => bail!("pod {name} not found in namespace {namespace}"),
            Err(e) => Err(api_error(e, &format!("getting pod {namespace}/{name}"))),
        }
    }

    /// Pods matching a label selector (in `namespace`, else every namespace).
    pub async fn pods(&self, namespace: Option<&str>, selector: &str) -> Result<Vec<PodInfo>> {
        let api: Api<Pod> = match namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let list = api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| api_error(e, "listing pods"))?;
        Ok(list.items.iter().filter_map(PodInfo::from_pod).collect())
    }

    /// The pod that has this IP, if the user may look it up.
    pub async fn pod_by_ip(&self, ip: IpAddr) -> Option<PodInfo> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default().fields(&format!("status.podIP={ip}"));
        match api.list(&lp).await {
            Ok(list) => list
                .items
                .iter()
                .filter_map(PodInfo::from_pod)
                // Host-network pods share the node's IP: they are not the pod behind it.
                .find(|p| p.host_ip != Some(ip)),
            Err(e) => {
                log::warn!("{:#}", api_error(e, &format!("looking up the pod with IP {ip}")));
                None
            }
        }
    }

    /// Every podtrace agent pod, by node.
    pub async fn agents(&self) -> Result<HashMap<String, AgentPod>> {
        let ns = &self.args.agent_namespace;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let list = api
            .list(&ListParams::default().labels(&self.args.agent_selector))
            .await
            .map_err(|e| api_error(e, &format!("listing the podtrace agent pods in namespace {ns}")))?;
        let mut out = HashMap::new();
        for p in &list.items {
            let (Some(name), Some(node)) =
                (p.metadata.name.clone(), p.spec.as_ref().and_then(|s| s.node_name.clone()))
            else {
                continue;
            };
            let port =
                p.spec.iter().flat_map(|s| &s.containers).flat_map(|c| c.ports.iter().flatten()).find_map(
                    |cp| {
                        (cp.name.as_deref() == Some(self.args.agent_port_name.as_str()))
                            .then_some(cp.container_port as u16)
                    },
                );
            let status = p.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let host_ips = status
                .and_then(|s| s.host_ips.as_ref())
                .map(|v| v.iter().filter_map(|h| h.ip.parse().ok()).collect())
                .or_else(|| {
                    status.and_then(|s| s.host_ip.as_ref()).and_then(|h| h.parse().ok()).map(|h| vec![h])
                })
                .unwrap_or_default();
            out.insert(node.clone(), AgentPod { name, node, port, ready, host_ips });
        }
        Ok(out)
    }

    /// Node name by address: the nodes' addresses when the user may list nodes, and the agents'
    /// host IPs (the agents run in the host network) in any case.
    pub async fn node_addresses(&self, agents: &HashMap<String, AgentPod>) -> HashMap<IpAddr, String> {
        let mut out: HashMap<IpAddr, String> = HashMap::new();
        for a in agents.values() {
            for ip in &a.host_ips {
                out.insert(*ip, a.node.clone());
            }
        }
        let api: Api<Node> = Api::all(self.client.clone());
        match api.list(&ListParams::default()).await {
            Ok(nodes) => {
                for n in &nodes.items {
                    let Some(name) = &n.metadata.name else { continue };
                    for a in n.status.iter().flat_map(|s| s.addresses.iter().flatten()) {
                        if let Ok(ip) = a.address.parse() {
                            out.insert(ip, name.clone());
                        }
                    }
                }
            }
            Err(e) => log::info!("{:#}", api_error(e, "listing nodes (their agents' addresses are used)")),
        }
        out
    }

    /// The agent pod of `node`, or why there is none.
    pub fn agent_on<'a>(&self, agents: &'a HashMap<String, AgentPod>, node: &str) -> Result<&'a AgentPod> {
        let a = agents.get(node).ok_or_else(|| {
            anyhow!(
                "no podtrace agent on node {node}: no pod labelled {} in namespace {} runs there (is the DaemonSet installed and scheduled on it?)",
                self.args.agent_selector,
                self.args.agent_namespace
            )
        })?;
        if a.port.is_none() {
            bail!(
                "the podtrace agent {} on node {node} has no container port named {:?}: it does not serve the authenticated API (podtrace agent --listen ... --authenticate)",
                a.name,
                self.args.agent_port_name
            );
        }
        Ok(a)
    }

    /// GETs `path` (with its query) from an agent through `pods/proxy`.
    pub async fn agent_get(&self, agent: &AgentPod, path: &str) -> Result<String> {
        let ns = &self.args.agent_namespace;
        let port = agent.port.context("agent without API port")?;
        let uri = format!("/api/v1/namespaces/{ns}/pods/https:{}:{port}/proxy{path}", agent.name);
        let req = Request::get(&uri).body(Body::empty()).expect("a valid request");
        let resp = self.client.send(req).await.map_err(|e| {
            anyhow!("the podtrace agent {} on node {} is unreachable: {e}", agent.name, agent.node)
        })?;
        let status = resp.status();
        let is_status_object = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        if status.is_success() {
            return Ok(body);
        }
        let text = body.trim().replace('\n', " ");
        // The API server's own answers are Status objects; the agent's are plain text.
        if is_status_object && let Ok(s) = serde_json::from_str::<kube::core::Status>(&body) {
            return Err(match status.as_u16() {
                403 => anyhow!(
                    "RBAC denied reaching the podtrace agent on node {}: {} (see README, \"kubectl podtrace\")",
                    agent.node,
                    s.message
                ),
                _ => anyhow!(
                    "podtrace agent {} on node {} is unhealthy: the API server could not reach it: {}",
                    agent.name,
                    agent.node,
                    s.message
                ),
            });
        }
        Err(match status.as_u16() {
            403 => anyhow!("RBAC denied by the podtrace agent on node {}: {text}", agent.node),
            401 => {
                anyhow!("the podtrace agent on node {} did not accept your credentials: {text}", agent.node)
            }
            _ => {
                anyhow!("podtrace agent {} on node {} is unhealthy: {status}: {text}", agent.name, agent.node)
            }
        })
    }

    /// Fails with one line unless the agent answers `/healthz`.
    pub async fn check_agent(&self, agent: &AgentPod) -> Result<()> {
        if !agent.ready {
            bail!("podtrace agent {} on node {} is unhealthy: its pod is not Ready", agent.name, agent.node);
        }
        self.agent_get(agent, "/healthz").await.map(drop)
    }
}
