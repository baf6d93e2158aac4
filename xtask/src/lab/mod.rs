//! The built-in EKS-node lab: a VPC router, two nodes with two ENIs each, pods, an ALB client,
//! a VPC host and an internet host, all in network namespaces named `<prefix><member>`.
//! Nothing outside those namespaces is touched.
pub mod aws_cni;
pub mod egress_cni;
pub mod imds;
pub mod ipam_variants;
pub mod kube_proxy_iptables;
pub mod kube_proxy_nft;
pub mod nat_config;
pub mod npa;
pub mod plan;
pub mod podlist;
pub mod render;
pub mod servers;
pub mod sgp;
pub mod traffic;
pub mod variant;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use nat_config::{CniConnmark, IptablesBackend, KubeProxyMode, NatOptions, RandomizeSnat};
pub use plan::{EniNames, Etp, LabConfig, Plan};
pub use variant::Variant;

use crate::netns;

/// Where a lab keeps its state (config, pods file, server daemon pid).
pub fn state_dir(prefix: &str) -> PathBuf {
    let safe: String =
        prefix.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    PathBuf::from("/run/podtrace-lab").join(if safe.is_empty() { "_".into() } else { safe })
}

/// What `lab up` persisted, enough to rebuild the plan for status/traffic/down.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Saved {
    pub prefix: String,
    pub etp: Etp,
    pub eni_names: EniNames,
    pub vpc: [u8; 2],
    pub ipv6: bool,
    /// Namespaces added after `up` (e.g. by tests creating pods); removed by `down`.
    #[serde(default)]
    pub extra_netns: Vec<String>,
    #[serde(default = "default_veth_prefix")]
    pub veth_prefix: String,
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// kube-proxy mode, iptables backend, VPC CNI SNAT options (absent in older state files).
    #[serde(default, flatten)]
    pub nat: NatOptions,
}

fn default_veth_prefix() -> String {
    plan::DEFAULT_VETH_PREFIX.into()
}

impl Saved {
    pub fn config(&self) -> LabConfig {
        LabConfig {
            prefix: self.prefix.clone(),
            etp: self.etp,
            eni_names: self.eni_names,
            vpc: self.vpc,
            ipv6: self.ipv6,
            veth_prefix: self.veth_prefix.clone(),
            variants: self.variants.clone(),
            nat: self.nat.clone(),
        }
    }

    pub fn load(prefix: &str) -> Result<Saved> {
        let path = state_dir(prefix).join("state.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("no lab with prefix {prefix:?} is up (cargo xtask lab up)"))?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }

    fn store(&self) -> Result<()> {
        let dir = state_dir(&self.prefix);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("state.json"), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }
}

/// A running lab owned by this process: dropping it stops the servers and tears it down,
/// also when a test panics.
pub struct Lab {
    pub plan: Plan,
    servers: Option<servers::Servers>,
}

impl Lab {
    /// Builds the lab (tearing down any leftover with the same prefix first) and starts the
    /// echo servers in this process.
    pub fn start(cfg: &LabConfig) -> Result<Lab> {
        let plan = build(cfg)?;
        let mut lab = Lab { plan, servers: None };
        lab.servers = Some(start_servers(&lab.plan)?);
        Ok(lab)
    }

    pub fn prefix(&self) -> &str {
        &self.plan.prefix
    }

    /// Namespace of a lab member (node, pod, host or "vpc").
    pub fn ns(&self, member: &str) -> String {
        self.plan.netns_of(member).unwrap_or_else(|| panic!("no lab member {member}"))
    }

    /// Address of a lab member (pod, host, node primary IP or service cluster IP) and port.
    pub fn addr(&self, member: &str, port: u16) -> SocketAddr {
        let ip: IpAddr = self.plan.ip_of(member).unwrap_or_else(|| panic!("no lab member {member}"));
        SocketAddr::new(ip, port)
    }

    pub fn pods_file(&self) -> PathBuf {
        state_dir(&self.plan.prefix).join("pods.json")
    }

    /// Records a namespace created outside the plan so that teardown removes it too.
    pub fn adopt_netns(&self, ns: &str) -> Result<()> {
        let mut saved = Saved::load(&self.plan.prefix)?;
        saved.extra_netns.push(ns.to_string());
        saved.store()
    }
}

/// A pod created after the lab is up (churn tests, benchmarks), wired exactly like the plan's
/// pods: namespace, veth, routes, rules, and the VPC's route and source check for its IP.
pub struct ExtraPod {
    pub pod: plan::Pod,
    node_netns: String,
    vpc_netns: String,
    vpc_link: String,
    eni_ip: std::net::Ipv4Addr,
    table: Option<u32>,
}

impl Lab {
    /// Creates pod `name` on `node` with the `host`-th address of the ENI with device number
    /// `device` (e.g. device 0, host 50 on node-a: 198.18.1.50 on eth0).
    pub fn add_pod(&self, name: &str, node: &str, device: u8, host: u8) -> Result<ExtraPod> {
        let n = self.plan.node(node).with_context(|| format!("no node {node}"))?;
        let eni = n
            .enis
            .iter()
            .find(|e| e.device == device)
            .with_context(|| format!("{node} has no ENI {device}"))?;
        if self.plan.is_trunk(node, &eni.name) {
            bail!("ENI {device} of {node} is the trunk ENI: ipamd never gives its IPs to pods");
        }
        let o = eni.ip.octets();
        let pod = plan::Pod {
            name: name.into(),
            namespace: "default".into(),
            netns: format!("{}{name}", self.plan.prefix),
            node: node.into(),
            ip: std::net::Ipv4Addr::new(o[0], o[1], o[2], host),
            ipv6: None,
            eni: eni.name.clone(),
            veth: plan::host_veth_name(&self.plan.veth_prefix, "default", name),
            labels: vec![],
            v4_egress: None,
        };
        netns::add(&pod.netns)?;
        self.adopt_netns(&pod.netns)?;
        let extra = ExtraPod {
            node_netns: n.netns.clone(),
            vpc_netns: self.plan.vpc_netns.clone(),
            vpc_link: eni.vpc_link.clone(),
            eni_ip: eni.ip,
            table: eni.table(),
            pod,
        };
        netns::ip_batch(&extra.node_netns, &render::pod_on_node(n, &extra.pod))?;
        netns::ip_batch(&extra.pod.netns, &render::pod(&extra.pod).ip)?;
        let ip = extra.pod.ip.to_string();
        netns::ip_batch(
            &extra.vpc_netns,
            &[format!("route add {ip}/32 via {} dev {}", extra.eni_ip, extra.vpc_link)],
        )?;
        let check =
            ["-t", "raw", "-I", "VPC-SRC-DST-CHECK", "-i", &extra.vpc_link, "-s", &ip, "-j", "RETURN"];
        netns::run("ip", &[&["netns", "exec", &extra.vpc_netns, "iptables"][..], &check[..]].concat())?;
        if self.plan.has(Variant::Npa) {
            npa::attach(&extra.node_netns, &extra.pod.veth)?;
        }
        Ok(extra)
    }
}

impl ExtraPod {
    /// Deletes the pod like the CNI's DEL: its namespace (and so its veth pair), its rules,
    /// and the VPC's route and check for its IP.
    pub fn delete(&self) -> Result<()> {
        netns::del(&self.pod.netns)?;
        let ip = self.pod.ip.to_string();
        let mut node = vec![format!("rule del to {ip}/32 lookup main pref 512")];
        if let Some(t) = self.table {
            node.push(format!("rule del from {ip}/32 lookup {t} pref 1536"));
        }
        netns::ip_batch(&self.node_netns, &node)?;
        netns::ip_batch(
            &self.vpc_netns,
            &[format!("route del {ip}/32 via {} dev {}", self.eni_ip, self.vpc_link)],
        )?;
        let check = ["-t", "raw", "-D", "VPC-SRC-DST-CHECK", "-i", &self.vpc_link, "-s", &ip, "-j", "RETURN"];
        netns::run("ip", &[&["netns", "exec", &self.vpc_netns, "iptables"][..], &check[..]].concat())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut s) = self.servers.take() {
            s.stop();
        }
        if let Err(e) = down(&self.plan.prefix) {
            eprintln!("lab teardown: {e:#}");
        }
    }
}

/// Creates every namespace, link, address, route, rule and iptables rule of the plan.
/// On failure, everything created so far is removed again.
pub fn build(cfg: &LabConfig) -> Result<Plan> {
    variant::validate(&cfg.variants)?;
    ipam_variants::check_veth_prefix(&cfg.veth_prefix)?;
    cfg.nat.validate()?;
    let plan = Plan::new(cfg);
    down(&cfg.prefix)?;
    let saved = Saved {
        prefix: cfg.prefix.clone(),
        etp: cfg.etp,
        eni_names: cfg.eni_names,
        vpc: cfg.vpc,
        ipv6: cfg.ipv6,
        extra_netns: Vec::new(),
        veth_prefix: cfg.veth_prefix.clone(),
        variants: cfg.variants.clone(),
        nat: cfg.nat.clone(),
    };
    saved.store()?;
    let result = (|| -> Result<()> {
        for ns in plan.namespaces() {
            netns::add(&ns)?;
        }
        for c in render::all(&plan) {
            // Sysctls that name an interface must wait until the link exists.
            let (global, per_link): (Vec<_>, Vec<_>) =
                c.sysctls.iter().cloned().partition(|(k, _)| {
                    k.contains(".all.") || k.contains(".default.") || !k.contains(".conf.")
                });
            netns::sysctls(&c.netns, &global)?;
            netns::ip_batch(&c.netns, &c.ip)?;
            netns::sysctls(&c.netns, &per_link)?;
            if let Some(rules) = &c.iptables {
                netns::iptables_restore_with(&c.netns, rules, c.iptables_backend.restore_tool())?;
            }
            if let Some(tables) = &c.nft {
                netns::nft_apply(&c.netns, tables)?;
            }
            if let Some(rules) = &c.ip6tables {
                netns::iptables_restore(&c.netns, rules, true)?;
            }
        }
        ipam_variants::apply_post(&plan)?;
        sgp::apply_link_sysctls(&plan)?;
        if plan.has(Variant::Npa) {
            npa::attach_all(&plan)?;
        }
        let pods = podlist::render(&plan);
        std::fs::write(state_dir(&cfg.prefix).join("pods.json"), serde_json::to_string_pretty(&pods)?)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = down(&cfg.prefix);
        return Err(e.context(format!("building lab {:?} (rolled back)", cfg.prefix)));
    }
    Ok(plan)
}

/// Echo servers in every pod, the db host and the internet host.
pub fn start_servers(plan: &Plan) -> Result<servers::Servers> {
    let mut targets: Vec<(String, String)> =
        plan.pods.iter().map(|p| (p.name.clone(), p.netns.clone())).collect();
    for h in plan.hosts.iter().filter(|h| h.name != "alb") {
        targets.push((h.name.clone(), h.netns.clone()));
    }
    let mut s = servers::start(&targets, &plan::SERVER_PORTS)?;
    imds::start(plan, &mut s)?;
    Ok(s)
}

/// Removes everything a lab with this prefix created, also after a half-failed `up`.
pub fn down(prefix: &str) -> Result<()> {
    let dir = state_dir(prefix);
    let saved = Saved::load(prefix).ok();
    let extra = saved.as_ref().map(|s| s.extra_netns.clone()).unwrap_or_default();
    if let Some(pid) =
        std::fs::read_to_string(dir.join("serve.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM);
    }
    // Namespace names depend on the variants only (which add pods); without a state file,
    // remove those of every variant.
    let cfg = saved.map(|s| s.config()).unwrap_or_else(|| LabConfig {
        prefix: prefix.to_string(),
        variants: Variant::ALL.iter().copied().filter(|v| *v != Variant::SgpStandard).collect(),
        ..LabConfig::default()
    });
    let plan = Plan::new(&cfg);
    let mut errors = Vec::new();
    for ns in plan.namespaces().into_iter().chain(extra) {
        if let Err(e) = netns::del(&ns) {
            errors.push(format!("{e:#}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if !errors.is_empty() {
        bail!("lab down left namespaces behind: {}", errors.join("; "));
    }
    Ok(())
}

/// Live facts for `lab status`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub prefix: String,
    pub up: bool,
    pub etp: Etp,
    /// Every namespace of the lab and whether it exists.
    pub namespaces: Vec<(String, bool)>,
    pub plan: Plan,
    /// Packets dropped by the VPC source/destination check, per VPC-side ENI link.
    pub src_dst_check_drops: Vec<(String, u64)>,
    /// The network policy stand-in's tc filters on the pod veths (`--variant npa`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub npa_filters: Vec<npa::Filter>,
}

pub fn status(prefix: &str) -> Result<Status> {
    let saved = Saved::load(prefix)?;
    let plan = Plan::new(&saved.config());
    let namespaces: Vec<(String, bool)> = plan
        .namespaces()
        .into_iter()
        .map(|n| {
            let e = netns::exists(&n);
            (n, e)
        })
        .collect();
    let up = namespaces.iter().all(|(_, e)| *e);
    let src_dst_check_drops = if up { src_dst_drops(&plan)? } else { Vec::new() };
    let npa_filters = if up && plan.has(Variant::Npa) { npa::all_filters(&plan)? } else { Vec::new() };
    Ok(Status {
        prefix: prefix.into(),
        up,
        etp: saved.etp,
        namespaces,
        plan,
        src_dst_check_drops,
        npa_filters,
    })
}

/// Reads the DROP counters of the VPC source/destination check chain.
pub fn src_dst_drops(plan: &Plan) -> Result<Vec<(String, u64)>> {
    let out = netns::output("ip", &["netns", "exec", &plan.vpc_netns, "iptables-save", "-c", "-t", "raw"])?;
    let mut v = Vec::new();
    for line in out.lines().filter(|l| l.contains("-A VPC-SRC-DST-CHECK") && l.ends_with("-j DROP")) {
        // [packets:bytes] -A VPC-SRC-DST-CHECK -i <link> ...
        let packets = line
            .strip_prefix('[')
            .and_then(|l| l.split(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let link = line.split_whitespace().skip_while(|w| *w != "-i").nth(1).unwrap_or("?");
        v.push((link.to_string(), packets));
    }
    Ok(v)
}
