//! EC2's instance metadata service (IMDSv2), the facts the VPC CNI's ipamd reads too
//! (amazon-vpc-cni-k8s `pkg/awsutils/imds.go`): the instance type, and per ENI its device
//! number, id, subnet, VPC CIDRs and delegated prefixes. Optional: off EC2, or with IMDS
//! blocked, `podtrace node` says so and shows what the kernel alone tells.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

const ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Answers are a few lines; more is not IMDS.
const MAX_ANSWER: usize = 64 << 10;
const TIMEOUT: Duration = Duration::from_secs(1);

/// One ENI as IMDS describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImdsEni {
    pub mac: String,
    pub device_number: Option<u32>,
    pub interface_id: Option<String>,
    pub subnet: Option<String>,
    /// Delegated IPv4 prefixes (prefix delegation), e.g. `10.0.1.32/28`.
    pub ipv4_prefixes: Vec<String>,
    pub local_ipv4s: Vec<String>,
}

/// What IMDS says about this instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Imds {
    pub instance_type: Option<String>,
    pub vpc_ipv4_cidrs: Vec<String>,
    pub enis: Vec<ImdsEni>,
}

/// One HTTP/1.1 request; returns the status code and body.
fn http(method: &str, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::from((ADDR, 80)), TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {ADDR}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "Content-Length: 0\r\n\r\n";
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    s.take(MAX_ANSWER as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > MAX_ANSWER {
        bail!("IMDS answer to {path} is larger than {MAX_ANSWER} bytes");
    }
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed IMDS answer")?;
    let code =
        head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("malformed IMDS status")?;
    Ok((code, body.to_string()))
}

struct Session {
    token: String,
}

impl Session {
    fn open() -> Result<Session> {
        let (code, token) =
            http("PUT", "/latest/api/token", &[("X-aws-ec2-metadata-token-ttl-seconds", "60")])?;
        if code != 200 {
            bail!("IMDS refused a token ({code})");
        }
        Ok(Session { token: token.trim().to_string() })
    }

    /// A metadata item; `None` when IMDS has no such path (404).
    fn get(&self, item: &str) -> Result<Option<String>> {
        let path = format!("/latest/meta-data/{item}");
        let (code, body) = http("GET", &path, &[("X-aws-ec2-metadata-token", &self.token)])?;
        match code {
            200 => Ok(Some(body)),
            404 => Ok(None),
            c => bail!("IMDS answered {c} for {path}"),
        }
    }

    fn lines(&self, item: &str) -> Result<Vec<String>> {
        Ok(self
            .get(item)?
            .map(|b| b.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
            .unwrap_or_default())
    }
}

/// Reads the instance's metadata, or says why it cannot.
pub fn read() -> Result<Imds> {
    let s = Session::open().context("instance metadata (IMDSv2) not reachable")?;
    let mut imds =
        Imds { instance_type: s.get("instance-type")?.map(|t| t.trim().to_string()), ..Imds::default() };
    for dir in s.lines("network/interfaces/macs/")? {
        let mac = dir.trim_end_matches('/').to_string();
        let item = |name: &str| format!("network/interfaces/macs/{mac}/{name}");
        if imds.vpc_ipv4_cidrs.is_empty() {
            imds.vpc_ipv4_cidrs = s.lines(&item("vpc-ipv4-cidr-blocks"))?;
        }
        imds.enis.push(ImdsEni {
            device_number: s.get(&item("device-number"))?.and_then(|d| d.trim().parse().ok()),
            interface_id: s.get(&item("interface-id"))?.map(|i| i.trim().to_string()),
            subnet: s.get(&item("subnet-ipv4-cidr-block"))?.map(|c| c.trim().to_string()),
            ipv4_prefixes: s.lines(&item("ipv4-prefix"))?,
            local_ipv4s: s.lines(&item("local-ipv4s"))?,
            mac,
        });
    }
    Ok(imds)
}
