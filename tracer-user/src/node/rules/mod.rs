//! The node's packet-filter rules, read from every backend a node can have at once:
//! iptables-nft and native nftables tables (one nf_tables netlink dump, `nft`), and
//! iptables-legacy (x_tables, `legacy`). Each rule is reduced to what naming a rewrite and the
//! health checks need: its table and chain, a few matches, its comment, and its action.
//! Nothing here is guessed: a rule is in the set because the kernel returned it.
pub mod legacy;
pub mod nft;
pub mod xt;

use std::{fmt, net::IpAddr};

use serde::Serialize;

/// Where a rule lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// iptables through the nf_tables backend: tables `nat`, `filter`, `mangle`, `raw`,
    /// `security` of family ip/ip6, rules with xt compat expressions.
    IptablesNft,
    /// iptables-legacy: the x_tables tables (AL2023 EKS AMI).
    IptablesLegacy,
    /// Native nftables tables (`ip kube-proxy`, `ip aws-cni`, ...).
    Nftables,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::IptablesNft => "iptables-nft",
            Backend::IptablesLegacy => "iptables-legacy",
            Backend::Nftables => "nftables",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The address and port range a NAT statement maps to, and how it picks within it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatTarget {
    /// `--to-source`/`--to-destination`/`snat to`/`dnat to` address range, if any (a
    /// MASQUERADE takes the outgoing interface's address instead).
    pub addrs: Option<(IpAddr, IpAddr)>,
    pub ports: Option<(u16, u16)>,
    /// `--random` / `random`.
    pub random: bool,
    /// `--random-fully` / `fully-random`.
    pub fully_random: bool,
    pub persistent: bool,
}

impl NatTarget {
    pub fn maps_addr(&self, ip: IpAddr) -> bool {
        self.addrs.is_some_and(|(lo, hi)| match (lo, hi, ip) {
            (IpAddr::V4(lo), IpAddr::V4(hi), IpAddr::V4(ip)) => lo <= ip && ip <= hi,
            (IpAddr::V6(lo), IpAddr::V6(hi), IpAddr::V6(ip)) => lo <= ip && ip <= hi,
            _ => false,
        })
    }
    pub fn maps_port(&self, port: u16) -> bool {
        self.ports.is_none_or(|(lo, hi)| lo <= port && port <= hi)
    }
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Snat(NatTarget),
    Dnat(NatTarget),
    Masquerade(NatTarget),
    Jump(String),
    Goto(String),
    Return,
    Accept,
    Drop,
    /// Sets the connection mark (`CONNMARK --set-xmark`, `ct mark set ...`).
    SetConnmark,
    /// Anything else (counters, marks, logging ...), or no verdict at all.
    Other,
}

/// One rule, reduced to what podtrace reads from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub backend: Backend,
    pub ipv6: bool,
    pub table: String,
    pub chain: String,
    /// The L4 protocol the rule matches (`-p tcp`, `meta l4proto tcp`).
    pub proto: Option<u8>,
    /// The source network the rule matches (`-s 169.254.172.2/32`, `ip saddr ...`), not negated.
    pub src: Option<(IpAddr, u8)>,
    /// The destination network the rule matches (`-d 10.0.0.0/16`, `ip daddr 10.0.0.0/16`),
    /// not negated.
    pub dst: Option<(IpAddr, u8)>,
    /// The destination port the rule matches (`--dport 30080`).
    pub dport: Option<u16>,
    pub comment: Option<String>,
    pub action: Action,
}

impl Rule {
    /// How podtrace names the rule's chain: the iptables chain, or `table/chain` for a native
    /// nftables table.
    pub fn chain_ref(&self) -> String {
        match self.backend {
            Backend::Nftables => format!("{}/{}", self.table, self.chain),
            _ => self.chain.clone(),
        }
    }
}

/// An element of a native nftables map or set, as `(table, set, key bytes)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetElement {
    pub table: String,
    pub set: String,
    pub key: Vec<u8>,
}

/// What reading one backend gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendRead {
    pub backend: Backend,
    /// Tables found (`ip nat`, `ip6 kube-proxy`, `nat`), empty when the backend holds none.
    pub tables: Vec<String>,
    pub rules: usize,
    /// Why the backend could not be read, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every rule of every backend, and what reading each backend gave.
#[derive(Clone, Debug, Default)]
pub struct Ruleset {
    pub rules: Vec<Rule>,
    pub elements: Vec<SetElement>,
    pub backends: Vec<BackendRead>,
}

impl Ruleset {
    /// Reads every backend. A backend that cannot be read is reported in `backends`, never
    /// fatal: the others still name what they can.
    pub fn read() -> Ruleset {
        let mut set = Ruleset::default();
        nft::read_into(&mut set);
        legacy::read_into(&mut set);
        set
    }

    /// The rules of one chain, in order.
    pub fn chain<'a>(
        &'a self,
        backend: Backend,
        table: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Rule> {
        self.rules.iter().filter(move |r| r.backend == backend && r.table == table && r.chain == name)
    }

    /// The VPC CNI's pod SNAT rules (`AWS-SNAT-CHAIN-*`), as `chain: SNAT to <ip> [random]`.
    /// Empty when there is none (AWS_VPC_K8S_CNI_EXTERNALSNAT=true, or a broken node).
    pub fn pod_egress_snat(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| r.backend != Backend::Nftables && r.chain.starts_with("AWS-SNAT-CHAIN"))
            .filter_map(|r| match &r.action {
                Action::Snat(t) => {
                    let to =
                        t.addrs.map(|(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") });
                    let how = if t.fully_random {
                        " fully-random"
                    } else if t.random {
                        " random"
                    } else {
                        ""
                    };
                    Some(format!(
                        "{} ({}): SNAT to {}{how}",
                        r.chain,
                        r.backend,
                        to.unwrap_or_else(|| "?".into())
                    ))
                }
                _ => None,
            })
            .collect()
    }

    /// A one-line account of the backends read (see [`backends_text`]).
    pub fn backends_text(&self) -> String {
        backends_text(&self.backends)
    }
}

/// A one-line account of the backends, for summaries: `iptables-nft (ip nat, ip mangle: 23
/// rules), nftables (ip kube-proxy: 40 rules), iptables-legacy: no tables`.
pub fn backends_text(backends: &[BackendRead]) -> String {
    backends
        .iter()
        .map(|b| match (&b.error, b.tables.is_empty()) {
            (Some(e), _) => format!("{}: not read ({e})", b.backend),
            (None, true) => format!("{}: no tables", b.backend),
            (None, false) => format!("{} ({}: {} rules)", b.backend, b.tables.join(", "), b.rules),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
