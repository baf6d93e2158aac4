//! `cargo xtask lab ...`: bring the lab up and down, inspect it, run commands and traffic in it.
use std::{net::SocketAddr, os::unix::process::CommandExt, process::Command};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Subcommand, ValueEnum};
use xtask::lab::{
    self, CniConnmark, EniNames, Etp, IptablesBackend, KubeProxyMode, LabConfig, NatOptions, Plan,
    RandomizeSnat, Saved, Variant, plan::NODE_PORT, traffic,
};

#[derive(Subcommand)]
pub enum LabCmd {
    /// Build the lab (idempotent: an existing healthy lab is kept) and start its echo servers.
    Up {
        #[arg(long, default_value = "pt-")]
        prefix: String,
        /// externalTrafficPolicy of the NodePort service `web`.
        #[arg(long, value_enum, default_value = "cluster")]
        etp: Etp,
        /// ENI naming scheme: eth (eth0, eth1) or ens (ens5, ens6 as on AL2023).
        #[arg(long, value_enum, default_value = "eth")]
        eni_names: EniNames,
        /// Also give web-1 and db IPv6 addresses (2001:2::/48).
        #[arg(long)]
        ipv6: bool,
        /// Host veth name prefix (AWS_VPC_K8S_CNI_VETHPREFIX, at most 4 characters).
        #[arg(long, default_value = "eni")]
        veth_prefix: String,
        /// Datapath variants, comma-separated: sgp-strict | sgp-standard (Security Groups for
        /// Pods: trunk ENI, pod sgp-1 on a branch ENI), npa (network policy agent stand-in:
        /// tc filters dropping TCP to port 9090 on every pod veth), prefix-delegation,
        /// custom-networking, ipv6-egress (see eks-variants.md).
        #[arg(long = "variant", value_enum, value_delimiter = ',')]
        variants: Vec<Variant>,
        #[command(flatten)]
        nat: NatFlags,
    },
    /// Remove every namespace, link and rule of the lab (also after a half-failed `up`).
    Down {
        #[arg(long, default_value = "pt-")]
        prefix: String,
    },
    /// Namespaces, ENIs, pod IPs and which ENI owns which pod; VPC src/dst check drops.
    Status {
        #[arg(long, default_value = "pt-")]
        prefix: String,
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a lab member's namespace: `lab exec node-a -- ip rule`.
    Exec {
        #[arg(long, default_value = "pt-")]
        prefix: String,
        /// node-a, node-b, web-1, ..., alb, db, inet or vpc.
        member: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Generate traffic: `lab traffic --from alb --to web --via nodeport`.
    Traffic {
        #[arg(long, default_value = "pt-")]
        prefix: String,
        /// Lab member sending the traffic.
        #[arg(long)]
        from: String,
        /// Destination: a member (pod, host, node) or a service, optionally `:port`.
        #[arg(long)]
        to: String,
        /// For services: through a node's NodePort, the cluster IP, or straight to a pod IP.
        #[arg(long, value_enum)]
        via: Option<Via>,
        /// Node whose NodePort is used with `--via nodeport`.
        #[arg(long, default_value = "node-a")]
        node: String,
        #[arg(long, value_enum, default_value = "tcp")]
        proto: Proto,
        #[arg(long, default_value_t = 10)]
        count: u32,
        #[arg(long, default_value_t = 4)]
        concurrency: u32,
        /// Payload bytes per request.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Send to the member's IPv6 address (pods, hosts, nodes' primary ENI).
        #[arg(long)]
        v6: bool,
    },
    /// (internal) Serve the echo servers of a lab until terminated; started by `up`.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        prefix: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Via {
    Nodeport,
    /// The service's cluster IP.
    #[value(alias = "clusterip")]
    Service,
    PodIp,
}

/// How the nodes' NAT is written: kube-proxy mode, iptables backend, VPC CNI SNAT options.
#[derive(clap::Args)]
pub struct NatFlags {
    /// kube-proxy mode: KUBE-* iptables chains or the `ip kube-proxy` nftables table.
    #[arg(long, value_enum, default_value = "iptables")]
    kube_proxy: KubeProxyMode,
    /// iptables backend the nodes' iptables rules (ipamd, kube-proxy) are written with.
    #[arg(long, value_enum, default_value = "nft")]
    iptables: IptablesBackend,
    /// AWS_VPC_K8S_CNI_RANDOMIZESNAT: prng = --random-fully, hashrandom = --random, none.
    #[arg(long, value_enum, default_value = "prng")]
    randomize_snat: RandomizeSnat,
    /// AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: a destination CIDR never SNATed (repeatable).
    #[arg(long = "exclude-snat-cidr", value_name = "CIDR")]
    exclude_snat_cidrs: Vec<String>,
    /// AWS_VPC_K8S_CNI_EXTERNALSNAT=true: no SNAT and no connmark rules.
    #[arg(long)]
    external_snat: bool,
    /// Where the VPC CNI keeps its connmark rules: iptables (AWS-CONNMARK-CHAIN-0) or the
    /// v1.23 native `ip aws-cni` table (needs --iptables nft).
    #[arg(long, value_enum, default_value = "iptables")]
    cni_connmark: CniConnmark,
}

impl NatFlags {
    fn options(self) -> NatOptions {
        NatOptions {
            kube_proxy: self.kube_proxy,
            iptables: self.iptables,
            randomize_snat: self.randomize_snat,
            exclude_snat_cidrs: self.exclude_snat_cidrs,
            external_snat: self.external_snat,
            cni_connmark: self.cni_connmark,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
}

pub fn run(cmd: LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Up { prefix, etp, eni_names, ipv6, veth_prefix, variants, nat } => {
            let variants = lab::variant::normalize(&variants);
            let cfg = LabConfig {
                prefix,
                etp,
                eni_names,
                ipv6,
                veth_prefix,
                variants,
                nat: nat.options(),
                ..LabConfig::default()
            };
            up(&cfg)
        }
        LabCmd::Down { prefix } => {
            lab::down(&prefix)?;
            println!("lab {prefix:?} is down");
            Ok(())
        }
        LabCmd::Status { prefix, json } => {
            let st = lab::status(&prefix)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
            Ok(())
        }
        LabCmd::Exec { prefix, member, cmd } => {
            let plan = Plan::new(&Saved::load(&prefix)?.config());
            let ns = plan.netns_of(&member).ok_or_else(|| anyhow!("no lab member {member}"))?;
            let err = Command::new("ip").args(["netns", "exec", &ns]).args(&cmd).exec();
            Err(anyhow!(err).context("exec"))
        }
        LabCmd::Traffic { prefix, from, to, via, node, proto, count, concurrency, payload, v6 } => {
            let plan = Plan::new(&Saved::load(&prefix)?.config());
            let from_ns = plan.netns_of(&from).ok_or_else(|| anyhow!("no lab member {from}"))?;
            let targets = if v6 { resolve_v6(&plan, &to)? } else { resolve(&plan, &to, via, &node)? };
            for target in targets {
                match proto {
                    Proto::Tcp => {
                        let st = traffic::tcp_load(&from_ns, target, count, concurrency, payload)?;
                        println!(
                            "{from} -> {to} ({target}): {} ok, {} failed, served by {:?}, client IP preserved {}",
                            st.ok, st.failed, st.served_by, st.client_ip_preserved
                        );
                    }
                    Proto::Udp => {
                        let replies = traffic::udp_stream(&from_ns, target, count, payload, true)?;
                        println!("{from} -> {to} ({target}): {count} UDP datagrams, {replies} echoed");
                    }
                }
            }
            Ok(())
        }
        LabCmd::Serve { prefix } => serve(&prefix),
    }
}

fn up(cfg: &LabConfig) -> Result<()> {
    if let Ok(st) = lab::status(&cfg.prefix) {
        let same = Saved::load(&cfg.prefix).is_ok_and(|s| s.config() == *cfg);
        if st.up && same && server_alive(&cfg.prefix) {
            println!("lab {:?} is already up", cfg.prefix);
            return Ok(());
        }
    }
    let plan = lab::build(cfg)?;
    // The echo servers live in a detached daemon (this same binary) until `lab down`.
    let exe = std::env::current_exe()?;
    let mut child = unsafe {
        Command::new(exe)
            .args(["lab", "serve", "--prefix", &cfg.prefix])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .pre_exec(|| {
                libc::setsid();
                Ok(())
            })
            .spawn()
            .context("starting the lab echo servers")?
    };
    std::fs::write(lab::state_dir(&cfg.prefix).join("serve.pid"), child.id().to_string())?;
    // Return once every server listens, so that traffic right after `up` finds them.
    let ready = lab::state_dir(&cfg.prefix).join("serve.ready");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !ready.exists() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the lab echo servers exited ({status}); see `cargo xtask lab serve --prefix {}`",
                cfg.prefix
            );
        }
        if std::time::Instant::now() > deadline {
            bail!("the lab echo servers did not start within 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    print_status(&lab::status(&plan.prefix)?);
    Ok(())
}

fn server_alive(prefix: &str) -> bool {
    std::fs::read_to_string(lab::state_dir(prefix).join("serve.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

fn serve(prefix: &str) -> Result<()> {
    let plan = Plan::new(&Saved::load(prefix)?.config());
    let _servers = lab::start_servers(&plan)?;
    std::fs::write(lab::state_dir(prefix).join("serve.ready"), "")?;
    // Park until SIGTERM (default action ends the process; sockets close with it).
    loop {
        std::thread::park();
    }
}

/// `member[:port]` → the member's IPv6 address.
fn resolve_v6(plan: &Plan, to: &str) -> Result<Vec<SocketAddr>> {
    let (name, port) = match to.rsplit_once(':') {
        Some((n, p)) => (n, p.parse::<u16>().context("port")?),
        None => (to, 8080),
    };
    let ip = plan.ipv6_of(name).ok_or_else(|| anyhow!("lab member {name} has no IPv6 address"))?;
    Ok(vec![SocketAddr::new(ip.into(), port)])
}

/// `member[:port]` or a service name → the addresses to send to.
fn resolve(plan: &Plan, to: &str, via: Option<Via>, node: &str) -> Result<Vec<SocketAddr>> {
    let (name, port) = match to.rsplit_once(':') {
        Some((n, p)) => (n, Some(p.parse::<u16>().context("port")?)),
        None => (to, None),
    };
    if let Some(svc) = plan.service(name) {
        let sp = &svc.ports[0];
        return Ok(match via.unwrap_or(Via::Service) {
            Via::Service => vec![SocketAddr::new(svc.cluster_ip.into(), port.unwrap_or(sp.port))],
            Via::Nodeport => {
                let n = plan.node(node).ok_or_else(|| anyhow!("no node {node}"))?;
                vec![SocketAddr::new(n.primary_ip().into(), sp.node_port.unwrap_or(NODE_PORT))]
            }
            Via::PodIp => svc
                .endpoints
                .iter()
                .filter_map(|e| plan.pod(e))
                .map(|p| SocketAddr::new(p.ip.into(), sp.target_port))
                .collect(),
        });
    }
    if via == Some(Via::Nodeport) {
        bail!("--via nodeport needs a service name (web)");
    }
    let ip = plan.ip_of(name).ok_or_else(|| anyhow!("no lab member {name}"))?;
    Ok(vec![SocketAddr::new(ip, port.unwrap_or(8080))])
}

fn print_status(st: &lab::Status) {
    println!(
        "lab {:?}: {} (externalTrafficPolicy {:?})",
        st.prefix,
        if st.up { "up" } else { "DOWN or partial" },
        st.etp
    );
    if !st.plan.variants.is_empty() || st.plan.veth_prefix != "eni" {
        let v: Vec<String> = st.plan.variants.iter().map(ToString::to_string).collect();
        println!("  variants [{}], veth prefix {:?}", v.join(","), st.plan.veth_prefix);
    }
    if let Some(cn) = &st.plan.custom_networking {
        println!(
            "  custom networking: {} {} in ENIConfig {} subnet {} (VPC CIDR {})",
            cn.node, cn.eni, cn.eniconfig, cn.subnet, cn.vpc_cidr
        );
    }
    let nat = &st.plan.nat;
    println!(
        "  kube-proxy {:?}, iptables {:?}, SNAT {}, connmark {:?}{}",
        nat.kube_proxy,
        nat.iptables,
        if nat.external_snat { "external".to_string() } else { format!("{:?}", nat.randomize_snat) },
        nat.cni_connmark,
        if nat.exclude_snat_cidrs.is_empty() {
            String::new()
        } else {
            format!(", SNAT excluded for {}", nat.exclude_snat_cidrs.join(" "))
        }
    );
    for n in &st.plan.nodes {
        println!("  {} (netns {}, {}, IMDS http://169.254.169.254/)", n.name, n.netns, n.instance_type);
        for e in &n.enis {
            let table = e.table().map(|t| format!("table {t}")).unwrap_or_else(|| "main".into());
            println!("    {:<5} {} {:<15} {} {}", e.name, e.mac, e.ip, table, e.interface_id);
            for p in e
                .ipv4_prefixes
                .iter()
                .map(ToString::to_string)
                .chain(e.ipv6_prefixes.iter().map(ToString::to_string))
            {
                println!("      prefix {p}");
            }
            for p in st.plan.pods_on(&n.name).filter(|p| p.eni == e.name) {
                let ip = st.plan.ip_of(&p.name).map(|i| i.to_string()).unwrap_or_default();
                println!("      pod {:<6} {:<15} veth {}", p.name, ip, p.veth);
                if let Some(v4) = &p.v4_egress {
                    println!(
                        "        {} {}/{} host veth {} SNAT chain {} -> {}",
                        v4.ifname, v4.ip, v4.prefix_len, v4.host_veth, v4.snat_chain, v4.snat_to
                    );
                }
            }
        }
    }
    if let Some(s) = &st.plan.sgp {
        println!("  security groups for pods ({:?} mode) on {}:", s.mode, s.node);
        println!(
            "    trunk {} {} {} {} table {}",
            s.trunk.name, s.trunk.eni_id, s.trunk.mac, s.trunk.ip, s.trunk.table
        );
        for b in &s.branches {
            println!(
                "      branch {} vlan {} {} {} -> {} (on {}) table {}, pod {} veth {}",
                b.eni_id, b.vlan_id, b.mac, b.ip, b.vlan_link, b.parent, b.table, b.pod, b.veth
            );
        }
    }
    if !st.npa_filters.is_empty() {
        println!("  network policy stand-in (drops TCP to port {}):", lab::npa::DENIED_PORT);
        for f in &st.npa_filters {
            println!(
                "    {} {:<15} tc {:<7} prio {} handle {:#x} {} id {}",
                f.node,
                f.dev,
                f.hook,
                f.prio,
                f.handle,
                f.name,
                f.prog_id.map(|i| i.to_string()).unwrap_or_else(|| "?".into())
            );
        }
    }
    for h in &st.plan.hosts {
        println!("  {:<6} {}", h.name, h.ip);
    }
    for s in &st.plan.services {
        let np =
            s.ports.iter().filter_map(|p| p.node_port).map(|p| format!(" nodePort {p}")).collect::<String>();
        println!("  svc {:<4} {}:80{} -> {}", s.name, s.cluster_ip, np, s.endpoints.join(", "));
    }
    for (link, n) in &st.src_dst_check_drops {
        if *n > 0 {
            println!("  VPC src/dst check dropped {n} packets from {link}");
        }
    }
}
