//! A stand-in for EC2's instance metadata service (IMDSv2) inside every node namespace, at
//! http://169.254.169.254/ (the address sits on the node's `lo`, scope host: link-local, so
//! nothing takes it for an ENI, and never chosen as a source address).
//!
//! It serves, from the plan, what ipamd reads (amazon-vpc-cni-k8s pkg/awsutils/imds.go) in the
//! real IMDS text format: one item per line, no trailing newline, directories listed with a
//! trailing `/`. Tokens are required (http-tokens=required):
//! `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: 1..21600` returns one;
//! every GET must carry it in `X-aws-ec2-metadata-token` (401 otherwise).
//!
//! Paths under /latest/meta-data/:
//! ```text
//! instance-id  instance-type  local-ipv4  mac  ipv6 (IPv6 nodes)  placement/availability-zone
//! network/interfaces/macs/                      one `<mac>/` per ENI
//! network/interfaces/macs/<mac>/device-number   interface-id  local-ipv4s  mac  network-card
//!     ipv4-prefix (prefix delegation)  ipv6-prefix, ipv6s, subnet-ipv6-cidr-blocks,
//!     vpc-ipv6-cidr-blocks (ENIs with IPv6)  security-group-ids  subnet-id
//!     subnet-ipv4-cidr-block  vpc-id  vpc-ipv4-cidr-block  vpc-ipv4-cidr-blocks
//! ```
use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use sha1::{Digest, Sha1};

use super::{
    ipam_variants::Cidr6,
    plan::{Eni, Node, Plan},
    servers::{self, POLL, Servers},
};
use crate::netns;

pub const ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const PORT: u16 = 80;
pub const INSTANCE_TYPE: &str = "t3.medium";
pub const AVAILABILITY_ZONE: &str = "us-west-2a";
const TOKEN_TTL_MAX: u64 = 21600;
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";

/// An AWS-style resource ID (`eni-`, `i-`, `subnet-`, `vpc-`, `sg-` + 17 hex), derived from
/// `seed` so that every lab names the same things the same way.
pub fn aws_id(kind: &str, seed: &str) -> String {
    let d = Sha1::digest(format!("{kind}/{seed}").as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("{kind}-{}", &hex[..17])
}

/// `ip` batch line of a node: the IMDS address on `lo`.
pub fn node_ip_line() -> String {
    format!("addr add {ADDR}/32 dev lo scope host")
}

/// Every leaf of one node's metadata: path under /latest/meta-data/ → value.
pub fn metadata(plan: &Plan, node: &Node) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let primary = node.primary();
    m.insert("instance-id".into(), node.instance_id.clone());
    m.insert("instance-type".into(), node.instance_type.clone());
    m.insert("local-ipv4".into(), primary.ip.to_string());
    m.insert("mac".into(), primary.mac.clone());
    if let Some(v6) = plan.eni_ipv6(primary) {
        m.insert("ipv6".into(), v6.to_string());
    }
    m.insert("placement/availability-zone".into(), AVAILABILITY_ZONE.into());
    let vpc_id = aws_id("vpc", &plan.vpc_cidr);
    for eni in &node.enis {
        let k = |f: &str| format!("network/interfaces/macs/{}/{f}", eni.mac);
        let lines = |v: Vec<String>| v.join("\n");
        m.insert(k("device-number"), eni.device.to_string());
        m.insert(k("interface-id"), eni.interface_id.clone());
        m.insert(k("local-ipv4s"), lines(plan.owned_by(node, eni).iter().map(|i| i.to_string()).collect()));
        m.insert(k("mac"), eni.mac.clone());
        m.insert(k("network-card"), "0".into());
        m.insert(k("security-group-ids"), aws_id("sg", &format!("{}/cluster", plan.vpc_cidr)));
        m.insert(k("subnet-id"), aws_id("subnet", &eni.subnet()));
        m.insert(k("subnet-ipv4-cidr-block"), eni.subnet());
        m.insert(k("vpc-id"), vpc_id.clone());
        m.insert(k("vpc-ipv4-cidr-block"), plan.vpc_cidr.clone());
        m.insert(k("vpc-ipv4-cidr-blocks"), lines(plan.vpc_cidrs()));
        if !eni.ipv4_prefixes.is_empty() {
            m.insert(k("ipv4-prefix"), lines(eni.ipv4_prefixes.iter().map(|p| p.to_string()).collect()));
        }
        if let (Some(own), Some(vpc6)) = (plan.eni_ipv6(eni), &plan.vpc_cidr_v6) {
            m.insert(k("ipv6s"), lines(ipv6s(plan, node, eni, own)));
            m.insert(k("subnet-ipv6-cidr-blocks"), Cidr6::new(own, 64).to_string());
            m.insert(k("vpc-ipv6-cidr-blocks"), vpc6.clone());
            if !eni.ipv6_prefixes.is_empty() {
                m.insert(k("ipv6-prefix"), lines(eni.ipv6_prefixes.iter().map(|p| p.to_string()).collect()));
            }
        }
    }
    m
}

/// IPv6 addresses assigned one by one to the ENI: its own, then pods' outside its prefixes.
fn ipv6s(plan: &Plan, node: &Node, eni: &Eni, own: std::net::Ipv6Addr) -> Vec<String> {
    let mut v = vec![own.to_string()];
    for p in plan.pods_on(&node.name).filter(|p| p.eni == eni.name) {
        if let Some(a) = p.ipv6.filter(|a| !eni.in_ipv6_prefix(*a)) {
            v.push(a.to_string());
        }
    }
    v
}

/// What GET `/latest/meta-data/<path>` returns: a value, or a listing (names, directories
/// with a trailing `/`) for a directory; `path` may end in `/` or not, like the real service.
pub fn lookup(md: &BTreeMap<String, String>, path: &str) -> Option<String> {
    let path = path.trim_matches('/');
    if let Some(v) = md.get(path) {
        return Some(v.clone());
    }
    let dir = if path.is_empty() { String::new() } else { format!("{path}/") };
    let mut items: Vec<String> = Vec::new();
    for key in md.keys().filter_map(|k| k.strip_prefix(&dir)) {
        let item = match key.split_once('/') {
            Some((d, _)) => format!("{d}/"),
            None => key.to_string(),
        };
        if items.last() != Some(&item) {
            items.push(item);
        }
    }
    (!items.is_empty()).then(|| items.join("\n"))
}

/// A parsed HTTP request (head only).
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub http10: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses a request head ending in an empty line; None if incomplete or malformed.
pub fn parse_request(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
    Some(Request { method: method.into(), path, headers, http10: version == "HTTP/1.0" })
}

#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    fn new(status: u16, body: impl Into<String>) -> Response {
        Response { status, headers: Vec::new(), body: body.into() }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Error",
        }
    }

    /// The response bytes; `head_only` for HEAD requests.
    pub fn to_bytes(&self, head_only: bool, close: bool) -> Vec<u8> {
        let mut s = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason());
        s += "Content-Type: text/plain\r\nServer: EC2ws\r\n";
        for (k, v) in &self.headers {
            s += &format!("{k}: {v}\r\n");
        }
        s += &format!("Content-Length: {}\r\n", self.body.len());
        s += if close { "Connection: close\r\n\r\n" } else { "Connection: keep-alive\r\n\r\n" };
        let mut out = s.into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// Issued session tokens and their expiry.
#[derive(Default)]
pub struct Tokens {
    issued: HashMap<String, Instant>,
    counter: u64,
}

impl Tokens {
    fn issue(&mut self, seed: &str, ttl: Duration, now: Instant) -> String {
        self.counter += 1;
        self.issued.retain(|_, exp| *exp > now);
        let d =
            Sha1::digest(format!("{seed}/{}/{:?}", self.counter, std::time::SystemTime::now()).as_bytes());
        let token: String =
            "AQAEA".chars().chain(d.iter().map(|b| format!("{b:02x}")).collect::<String>().chars()).collect();
        self.issued.insert(token.clone(), now + ttl);
        token
    }

    fn valid(&self, token: &str, now: Instant) -> bool {
        self.issued.get(token).is_some_and(|exp| *exp > now)
    }
}

/// The service's answer to one request.
pub fn respond(md: &BTreeMap<String, String>, tokens: &mut Tokens, req: &Request, now: Instant) -> Response {
    match req.method.as_str() {
        "PUT" if req.path == "/latest/api/token" => {
            // IMDSv2 refuses token requests that went through a proxy.
            if req.header("x-forwarded-for").is_some() {
                return Response::new(403, "Forbidden");
            }
            let ttl = req.header(TTL_HEADER).and_then(|t| t.parse::<u64>().ok());
            match ttl.filter(|t| (1..=TOKEN_TTL_MAX).contains(t)) {
                Some(ttl) => {
                    let token = tokens.issue(&md["instance-id"], Duration::from_secs(ttl), now);
                    let mut r = Response::new(200, token);
                    r.headers.push(("X-Aws-Ec2-Metadata-Token-Ttl-Seconds".into(), ttl.to_string()));
                    r
                }
                None => Response::new(400, "Bad Request"),
            }
        }
        "GET" | "HEAD" => {
            if !req.header(TOKEN_HEADER).is_some_and(|t| tokens.valid(t, now)) {
                return Response::new(401, "Unauthorized");
            }
            let p = req.path.as_str();
            let found = match p.trim_end_matches('/') {
                "" => Some("latest".to_string()),
                "/latest" => Some("meta-data/".to_string()),
                _ => p.strip_prefix("/latest/meta-data").and_then(|rest| lookup(md, rest)),
            };
            match found {
                Some(body) => Response::new(200, body),
                None => Response::new(404, "Not Found"),
            }
        }
        _ => {
            let mut r = Response::new(405, "Method Not Allowed");
            r.headers.push(("Allow".into(), "GET, HEAD, PUT".into()));
            r
        }
    }
}

/// Starts the IMDS stand-in of every node (in its namespace) under `servers`.
pub fn start(plan: &Plan, servers: &mut Servers) -> Result<()> {
    for node in &plan.nodes {
        let md = Arc::new(metadata(plan, node));
        let listener = netns::run_in(&node.netns, || {
            TcpListener::bind(SocketAddr::new(IpAddr::V4(ADDR), PORT))
                .with_context(|| format!("IMDS {ADDR}:{PORT} in {}", node.netns))
        })?;
        servers::set_accept_timeout(&listener)?;
        let tokens = Arc::new(Mutex::new(Tokens::default()));
        servers.spawn(move |stop| serve(listener, md, tokens, stop));
    }
    Ok(())
}

fn serve(l: TcpListener, md: Arc<BTreeMap<String, String>>, tokens: Arc<Mutex<Tokens>>, stop: &AtomicBool) {
    let stop_flag = Arc::new(AtomicBool::new(false));
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok((s, _)) = l.accept() {
            let (md, tokens, st) = (md.clone(), tokens.clone(), stop_flag.clone());
            conns.push(std::thread::spawn(move || serve_conn(s, &md, &tokens, &st)));
            conns.retain(|c| !c.is_finished());
        }
    }
    stop_flag.store(true, Ordering::Relaxed);
    for c in conns {
        let _ = c.join();
    }
}

fn serve_conn(mut s: TcpStream, md: &BTreeMap<String, String>, tokens: &Mutex<Tokens>, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(POLL));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut idle = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) && idle < Duration::from_secs(10) {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            buf.drain(..end + 4);
            let Some(req) = parse_request(&head) else { return };
            // Request bodies (none are expected) are read and ignored.
            let len: usize = req
                .headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < len {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..len);
            let close = req.http10
                || req.headers.iter().any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
            let resp = respond(md, &mut tokens.lock().expect("tokens lock"), &req, Instant::now());
            if s.write_all(&resp.to_bytes(req.method == "HEAD", close)).is_err() || close {
                return;
            }
            idle = Duration::ZERO;
            continue;
        }
        if buf.len() > 16 * 1024 {
            return;
        }
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                idle += POLL;
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan::{LabConfig, Variant};

    fn get(md: &BTreeMap<String, String>, tokens: &mut Tokens, path: &str, token: Option<&str>) -> Response {
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n");
        if let Some(t) = token {
            head += &format!("X-aws-ec2-metadata-token: {t}\r\n");
        }
        respond(md, tokens, &parse_request(&(head + "\r\n")).unwrap(), Instant::now())
    }

    fn token(md: &BTreeMap<String, String>, tokens: &mut Tokens) -> String {
        let req = parse_request(
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n",
        );
        let r = respond(md, tokens, &req.unwrap(), Instant::now());
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers,
            vec![("X-Aws-Ec2-Metadata-Token-Ttl-Seconds".to_string(), "21600".to_string())]
        );
        r.body
    }

    #[test]
    fn serves_the_real_text_format_with_imdsv2_tokens() {
        let plan = Plan::new(&LabConfig::default());
        let md = metadata(&plan, plan.node("node-a").unwrap());
        let mut tokens = Tokens::default();
        assert_eq!(get(&md, &mut tokens, "/latest/meta-data/instance-type", None).status, 401);
        assert_eq!(get(&md, &mut tokens, "/latest/meta-data/instance-type", Some("bogus")).status, 401);
        let t = token(&md, &mut tokens);
        let body = |p: &str, tokens: &mut Tokens| {
            let r = get(&md, tokens, p, Some(&t));
            assert_eq!(r.status, 200, "{p}");
            r.body
        };
        assert_eq!(body("/latest/meta-data/instance-type", &mut tokens), "t3.medium");
        assert_eq!(
            body("/latest/meta-data/", &mut tokens),
            "instance-id\ninstance-type\nlocal-ipv4\nmac\nnetwork/\nplacement/"
        );
        assert_eq!(
            body("/latest/meta-data/network/interfaces/macs/", &mut tokens),
            "02:00:00:0a:00:01/\n02:00:00:0a:01:01/"
        );
        let eth1 = "/latest/meta-data/network/interfaces/macs/02:00:00:0a:01:01";
        assert_eq!(
            body(&format!("{eth1}/"), &mut tokens),
            "device-number\ninterface-id\nlocal-ipv4s\nmac\nnetwork-card\nsecurity-group-ids\nsubnet-id\n\
             subnet-ipv4-cidr-block\nvpc-id\nvpc-ipv4-cidr-block\nvpc-ipv4-cidr-blocks"
        );
        assert_eq!(body(&format!("{eth1}/device-number"), &mut tokens), "1");
        assert_eq!(body(&format!("{eth1}/local-ipv4s"), &mut tokens), "198.18.2.10\n198.18.2.11");
        assert_eq!(body(&format!("{eth1}/subnet-ipv4-cidr-block"), &mut tokens), "198.18.2.0/24");
        let id = body(&format!("{eth1}/interface-id"), &mut tokens);
        assert!(id.starts_with("eni-") && id.len() == 21, "{id}");
        assert_eq!(id, plan.node("node-a").unwrap().enis[1].interface_id);
        assert_eq!(get(&md, &mut tokens, &format!("{eth1}/ipv4-prefix"), Some(&t)).status, 404);
        assert_eq!(get(&md, &mut tokens, "/latest/meta-data/nothing", Some(&t)).status, 404);
        // No proxies for tokens; the TTL header is mandatory and bounded.
        for head in [
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
            "PUT /latest/api/token HTTP/1.1\r\n\r\n",
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21601\r\n\r\n",
        ] {
            let r = respond(&md, &mut tokens, &parse_request(head).unwrap(), Instant::now());
            assert!(matches!(r.status, 400 | 403), "{head}: {r:?}");
        }
        let r = Response::new(200, "t3.medium").to_bytes(false, false);
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\nt3.medium"), "{text}");
    }

    #[test]
    fn variants_show_up_in_the_metadata() {
        let plan = Plan::new(&LabConfig {
            variants: vec![Variant::PrefixDelegation, Variant::CustomNetworking, Variant::Ipv6Egress],
            ..LabConfig::default()
        });
        let a = metadata(&plan, plan.node("node-a").unwrap());
        let eth0 = "network/interfaces/macs/02:00:00:0a:00:01";
        assert_eq!(a[&format!("{eth0}/ipv4-prefix")], "198.18.1.32/28");
        assert_eq!(a[&format!("{eth0}/local-ipv4s")], "198.18.1.10", "prefix pods are not secondary IPs");
        assert_eq!(a[&format!("{eth0}/ipv6-prefix")], "2001:2:0:1:a::/80");
        assert_eq!(a[&format!("{eth0}/ipv6s")], "2001:2:0:1::a");
        assert_eq!(a[&format!("{eth0}/subnet-ipv6-cidr-blocks")], "2001:2:0:1::/64");
        assert_eq!(a["ipv6"], "2001:2:0:1::a");
        assert_eq!(a[&format!("{eth0}/vpc-ipv4-cidr-blocks")], "198.18.0.0/16\n198.19.128.0/17");
        let b = metadata(&plan, plan.node("node-b").unwrap());
        let eth1 = "network/interfaces/macs/02:00:00:0b:01:01";
        assert_eq!(b[&format!("{eth1}/subnet-ipv4-cidr-block")], "198.19.128.0/24");
        assert_eq!(b[&format!("{eth1}/local-ipv4s")], "198.19.128.20\n198.19.128.21\n198.19.128.22");
        assert_eq!(b[&format!("{eth1}/vpc-ipv4-cidr-block")], "198.18.0.0/16");
        assert_eq!(b["network/interfaces/macs/02:00:00:0b:00:01/local-ipv4s"], "198.18.1.20");
        assert!(
            !b.contains_key("network/interfaces/macs/02:00:00:0b:00:01/ipv6-prefix"),
            "only node-a has IPv6 pods"
        );
    }
}
