//! Request authentication of the agent's TCP API, as kube-rbac-proxy and metrics-server do it:
//! every request carries a bearer token that the API server accepts (TokenReview) for a user the
//! API server authorizes (SubjectAccessReview) for what the request reads. The unix socket
//! (root only, mode 0600) needs none of this; anything on the node network does.
//!
//! Through the API server's `pods/proxy` subresource the caller's `Authorization` header never
//! arrives: kube-apiserver removes it once it has authenticated the caller, and its proxy
//! reaches pods without a client certificate. So `kubectl podtrace` repeats its bearer token in
//! `X-Podtrace-Authorization`, and the agent reviews that token exactly like a direct one: the
//! API server authorized `pods/proxy` for the caller, the agent authorizes what it serves.
use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use clap::Args;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec, UserInfo},
    authorization::v1::{
        NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    },
};
use kube::{Api, api::PostParams};
use sha1::{Digest, Sha1};

use super::{api, tls};

/// The header `kubectl podtrace` repeats its bearer token in (see the module comment).
pub const FORWARDED_TOKEN_HEADER: &str = "x-podtrace-authorization";
/// The API group of the virtual resources the agent authorizes (RBAC needs no CRD for them).
pub const API_GROUP: &str = "podtrace.io";

#[derive(Args, Clone, Debug, Default)]
pub struct AuthArgs {
    /// Authenticate and authorize every request on the TCP listener (--listen) with the
    /// Kubernetes API (TokenReview of the bearer token, SubjectAccessReview of the user), and
    /// serve it over TLS. The unix socket is not affected.
    #[arg(long, requires = "listen")]
    pub authenticate: bool,
    /// TLS certificate (PEM) of the authenticated listener; a self-signed one is made otherwise
    /// (the API server's pod proxy does not verify pod certificates).
    #[arg(long, value_name = "FILE", requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
}

/// What a request reads, in RBAC terms (always the verb `get`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `flows.podtrace.io` in a namespace (`None`: flows of every namespace).
    Flows { namespace: Option<String> },
    /// `nodes.podtrace.io` named after this node (`/node`).
    Node { name: Option<String> },
    /// A non-resource URL (`/metrics`, `/healthz`), as Prometheus' ClusterRoles grant it.
    Path(String),
}

impl Access {
    /// From the request's path and query. A query that does not parse asks for every
    /// namespace (the handler then answers 400). So does one by `ip`: the flows of another
    /// node's pod are named with the namespace the caller gives, which the agent cannot check.
    pub fn of(path: &str, query: Option<&str>, node: Option<&str>) -> Access {
        match path {
            "/flows" => Access::Flows {
                namespace: api::parse_flow_query(query.unwrap_or(""))
                    .ok()
                    .filter(|q| q.ip.is_none())
                    .and_then(|q| q.namespace),
            },
            "/node" => Access::Node { name: node.map(str::to_string) },
            other => Access::Path(other.to_string()),
        }
    }

    /// `get flows.podtrace.io in namespace "default"`, as a refusal names it.
    pub fn describe(&self) -> String {
        match self {
            Access::Flows { namespace: Some(ns) } => {
                format!("get flows.{API_GROUP} in namespace {ns:?}")
            }
            Access::Flows { namespace: None } => format!("get flows.{API_GROUP} in all namespaces"),
            Access::Node { name: Some(n) } => format!("get nodes.{API_GROUP} {n:?}"),
            Access::Node { name: None } => format!("get nodes.{API_GROUP}"),
            Access::Path(p) => format!("get path {p:?}"),
        }
    }

    fn review(&self, user: &UserInfo) -> SubjectAccessReview {
        let mut spec = SubjectAccessReviewSpec {
            user: user.username.clone(),
            groups: user.groups.clone(),
            uid: user.uid.clone(),
            extra: user.extra.clone(),
            ..Default::default()
        };
        let resource = |resource: &str, namespace: Option<String>, name: Option<String>| ResourceAttributes {
            group: Some(API_GROUP.into()),
            resource: Some(resource.into()),
            verb: Some("get".into()),
            namespace,
            name,
            ..Default::default()
        };
        match self {
            Access::Flows { namespace } => {
                spec.resource_attributes = Some(resource("flows", namespace.clone(), None))
            }
            Access::Node { name } => spec.resource_attributes = Some(resource("nodes", None, name.clone())),
            Access::Path(p) => {
                spec.non_resource_attributes =
                    Some(NonResourceAttributes { path: Some(p.clone()), verb: Some("get".into()) })
            }
        }
        SubjectAccessReview { spec, ..Default::default() }
    }
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NoToken,
    Unauthenticated,
    Forbidden(String),
    /// The API server could not be asked: nothing is served meanwhile.
    Unavailable(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (code, text) = match self {
            Refusal::NoToken => (
                StatusCode::UNAUTHORIZED,
                "no bearer token: send Authorization: Bearer <token>, or X-Podtrace-Authorization through the API server's proxy".to_string(),
            ),
            Refusal::Unauthenticated => {
                (StatusCode::UNAUTHORIZED, "the API server rejected the bearer token (TokenReview)".into())
            }
            Refusal::Forbidden(why) => (StatusCode::FORBIDDEN, why),
            Refusal::Unavailable(why) => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("cannot review the request: {why}"))
            }
        };
        (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text + "\n").into_response()
    }
}

/// How long answers are kept (kube-rbac-proxy's figures): a token for 2 minutes (10 s when
/// rejected), an allowed access for 5 minutes, a denied one for 30 s.
const TOKEN_OK_TTL: Duration = Duration::from_secs(120);
const TOKEN_BAD_TTL: Duration = Duration::from_secs(10);
const ALLOW_TTL: Duration = Duration::from_secs(300);
const DENY_TTL: Duration = Duration::from_secs(30);
/// Bounds each cache: beyond it, the cache starts over.
const CACHE_ENTRIES: usize = 4096;

type Cache<K, V> = Mutex<HashMap<K, (V, Instant)>>;

fn cached<K: Eq + Hash, V: Clone>(c: &Cache<K, V>, k: &K) -> Option<V> {
    let g = c.lock().expect("auth cache");
    g.get(k).filter(|(_, until)| Instant::now() < *until).map(|(v, _)| v.clone())
}

fn remember<K: Eq + Hash, V>(c: &Cache<K, V>, k: K, v: V, ttl: Duration) {
    let mut g = c.lock().expect("auth cache");
    if g.len() >= CACHE_ENTRIES {
        g.clear();
    }
    g.insert(k, (v, Instant::now() + ttl));
}

/// Reviews tokens and accesses with the API server, caching the answers.
pub struct Authenticator {
    client: kube::Client,
    node: Option<String>,
    /// SHA-1 of the token (tokens themselves are not kept) → the user, if authenticated.
    users: Cache<[u8; 20], Option<UserInfo>>,
    /// (user, access) → allowed, or the refusal's text.
    decisions: Cache<(u64, Access), Result<(), String>>,
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    [header::AUTHORIZATION.as_str(), FORWARDED_TOKEN_HEADER].iter().find_map(|h| {
        let v = headers.get(*h)?.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim().to_string())
    })
}

fn user_key(u: &UserInfo) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&u.username, &u.uid, &u.groups).hash(&mut h);
    if let Some(extra) = &u.extra {
        extra.iter().collect::<Vec<_>>().hash(&mut h);
    }
    h.finish()
}

impl Authenticator {
    pub fn new(client: kube::Client, node: Option<String>) -> Authenticator {
        Authenticator { client, node, users: Mutex::default(), decisions: Mutex::default() }
    }

    async fn user(&self, token: &str) -> Result<Option<UserInfo>, Refusal> {
        let key: [u8; 20] = Sha1::digest(token.as_bytes()).into();
        if let Some(u) = cached(&self.users, &key) {
            return Ok(u);
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_string(), audiences: None },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(format!("TokenReview: {e}")))?;
        let status = answer.status.unwrap_or_default();
        let user = status.authenticated.unwrap_or(false).then(|| status.user.unwrap_or_default());
        let ttl = if user.is_some() { TOKEN_OK_TTL } else { TOKEN_BAD_TTL };
        remember(&self.users, key, user.clone(), ttl);
        Ok(user)
    }

    async fn authorize(&self, user: &UserInfo, access: &Access) -> Result<(), Refusal> {
        let key = (user_key(user), access.clone());
        if let Some(d) = cached(&self.decisions, &key) {
            return d.map_err(Refusal::Forbidden);
        }
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &access.review(user))
            .await
            .map_err(|e| Refusal::Unavailable(format!("SubjectAccessReview: {e}")))?;
        let status = answer.status.unwrap_or_default();
        let decision = if status.allowed && !status.denied.unwrap_or(false) {
            Ok(())
        } else {
            Err(format!(
                "forbidden: User {:?} cannot {}",
                user.username.as_deref().unwrap_or(""),
                access.describe()
            ))
        };
        let ttl = if decision.is_ok() { ALLOW_TTL } else { DENY_TTL };
        remember(&self.decisions, key, decision.clone(), ttl);
        decision.map_err(Refusal::Forbidden)
    }

    /// The whole review of one request.
    pub async fn check(&self, headers: &HeaderMap, access: &Access) -> Result<(), Refusal> {
        let token = bearer(headers).ok_or(Refusal::NoToken)?;
        let user = self.user(&token).await?.ok_or(Refusal::Unauthenticated)?;
        self.authorize(&user, access).await
    }
}

async fn require(State(auth): State<Arc<Authenticator>>, req: Request, next: Next) -> Response {
    let access = Access::of(req.uri().path(), req.uri().query(), auth.node.as_deref());
    match auth.check(req.headers(), &access).await {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            log::debug!("refused {} {}: {refusal:?}", req.method(), req.uri());
            refusal.into_response()
        }
    }
}

/// The authenticated TCP listener: its reviewer and its TLS configuration.
#[derive(Clone)]
pub struct Protection {
    pub auth: Arc<Authenticator>,
    pub tls: Arc<tokio_rustls::rustls::ServerConfig>,
}

impl Protection {
    /// Needs the Kubernetes API (in-cluster config or KUBECONFIG) to review requests.
    pub async fn new(args: &AuthArgs, node: Option<String>) -> Result<Protection> {
        let client = kube::Client::try_default()
            .await
            .context("--authenticate needs the Kubernetes API (in-cluster config or KUBECONFIG)")?;
        let cert = args.tls_cert_file.as_deref().zip(args.tls_private_key_file.as_deref());
        Ok(Protection {
            auth: Arc::new(Authenticator::new(client, node)),
            tls: Arc::new(tls::server_config(cert)?),
        })
    }

    /// `app` with every request reviewed first (serve it over [`tls::accepting`]).
    pub fn guard(&self, app: Router) -> Router {
        app.layer(axum::middleware::from_fn_with_state(self.auth.clone(), require))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_names_the_namespace_and_the_path() {
        assert_eq!(
            Access::of("/flows", Some("pod=web-1&namespace=team-a"), None),
            Access::Flows { namespace: Some("team-a".into()) }
        );
        assert_eq!(Access::of("/flows", None, None), Access::Flows { namespace: None });
        assert_eq!(
            Access::of("/flows", Some("ip=198.18.2.21&namespace=team-a"), None),
            Access::Flows { namespace: None },
            "another node's pod: its namespace is the caller's word"
        );
        assert_eq!(Access::of("/node", None, Some("node-a")), Access::Node { name: Some("node-a".into()) });
        assert_eq!(Access::of("/metrics", None, None), Access::Path("/metrics".into()));
        let u = UserInfo { username: Some("bob".into()), ..Default::default() };
        let r = Access::Flows { namespace: Some("default".into()) }.review(&u);
        let attrs = r.spec.resource_attributes.unwrap();
        assert_eq!(
            (attrs.group.as_deref(), attrs.resource.as_deref(), attrs.verb.as_deref()),
            (Some("podtrace.io"), Some("flows"), Some("get"))
        );
        assert_eq!(r.spec.user.as_deref(), Some("bob"));
    }

    #[test]
    fn tokens_come_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(FORWARDED_TOKEN_HEADER, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer xyz".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("xyz"));
        h.insert(header::AUTHORIZATION, "Basic Zm9v".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
    }
}
