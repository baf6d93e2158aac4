//! Naming the NAT a flow went through: pod-egress SNAT (AWS-SNAT-CHAIN), service DNAT
//! (KUBE-SEP), NodePort DNAT, MASQUERADE (KUBE-POSTROUTING). Rewrites are matched against the
//! node's own nat table (`iptables-save -t nat`) when it can be read, else named from facts
//! about the node (its addresses).
use std::net::{IpAddr, SocketAddr};

use crate::flows::{Nat, NodeContext};

/// SNAT/DNAT/MASQUERADE targets of the node's nat table.
#[derive(Clone, Debug, Default)]
pub struct NatRules {
    /// (chain, --to-source address)
    pub snat: Vec<(String, IpAddr)>,
    /// (chain, --to-destination address[:port])
    pub dnat: Vec<(String, String)>,
    /// Chains with a MASQUERADE rule.
    pub masquerade: Vec<String>,
}

impl NatRules {
    /// Parses `iptables-save -t nat` output.
    pub fn parse(text: &str) -> NatRules {
        let mut r = NatRules::default();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (Some(&"-A"), Some(chain)) = (words.first(), words.get(1)) else { continue };
            let arg = |flag: &str| words.iter().position(|w| *w == flag).and_then(|i| words.get(i + 1));
            match arg("-j") {
                Some(&"SNAT") => {
                    if let Some(ip) =
                        arg("--to-source").and_then(|v| v.split([':', '-']).next()?.parse().ok())
                    {
                        r.snat.push((chain.to_string(), ip));
                    }
                }
                Some(&"DNAT") => {
                    if let Some(to) = arg("--to-destination") {
                        r.dnat.push((chain.to_string(), to.to_string()));
                    }
                }
                Some(&"MASQUERADE") => r.masquerade.push(chain.to_string()),
                _ => {}
            }
        }
        r
    }

    /// Reads the node's nat table; empty when iptables-save is missing or fails.
    pub fn read() -> NatRules {
        let out = std::process::Command::new("iptables-save").args(["-t", "nat"]).output();
        match out {
            Ok(o) if o.status.success() => NatRules::parse(&String::from_utf8_lossy(&o.stdout)),
            _ => NatRules::default(),
        }
    }

    fn dnat_chain(&self, to: &str) -> Option<&str> {
        let ip = to.parse::<SocketAddr>().ok()?;
        self.dnat
            .iter()
            .find(|(_, t)| *t == to || t.parse::<IpAddr>().is_ok_and(|a| a == ip.ip()))
            .map(|(c, _)| c.as_str())
    }

    fn snat_chain(&self, to: &str) -> Option<&str> {
        let ip = to.parse::<SocketAddr>().ok()?.ip();
        self.snat.iter().find(|(_, a)| *a == ip).map(|(c, _)| c.as_str())
    }
}

/// Fills in `kind` and `chain` of a flow's rewrites.
pub fn classify(snat: &mut Option<Nat>, dnat: &mut Option<Nat>, direction: &str, ctx: &NodeContext) {
    let ip_of = |s: &str| s.parse::<SocketAddr>().ok().map(|a| a.ip());
    let is_node_ip = |s: &str| ip_of(s).is_some_and(|ip| ctx.node_ips.contains(&ip));
    if let Some(d) = dnat.as_mut() {
        d.chain = ctx.nat_rules.dnat_chain(&d.to).map(str::to_string);
        d.kind = if is_node_ip(&d.from) {
            "nodeport-dnat"
        } else if d.chain.is_some() || direction == "egress" {
            "service-dnat"
        } else {
            "dnat"
        }
        .into();
    }
    if let Some(s) = snat.as_mut() {
        let rule = ctx.nat_rules.snat_chain(&s.to).map(str::to_string);
        if dnat.is_some() && is_node_ip(&s.to) {
            // kube-proxy marked the connection (KUBE-MARK-MASQ) and masqueraded it.
            s.kind = "masquerade".into();
            s.chain = ctx
                .nat_rules
                .masquerade
                .iter()
                .find(|c| c.starts_with("KUBE"))
                .cloned()
                .or(Some("KUBE-POSTROUTING".into()));
        } else if rule.as_deref().is_some_and(|c| c.starts_with("AWS-SNAT"))
            || (direction == "egress" && is_node_ip(&s.to))
        {
            s.kind = "pod-egress-snat".into();
            s.chain = rule.or(Some("AWS-SNAT-CHAIN-0".into()));
        } else {
            s.kind = "snat".into();
            s.chain = rule;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_chains_that_rewrite() {
        let r = NatRules::parse(
            "*nat\n-A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment \"AWS, SNAT\" -j SNAT --to-source 198.18.1.10 --random-fully\n\
             -A KUBE-SEP-API-API-1 -p tcp -m tcp -j DNAT --to-destination 198.18.1.21:8080\n\
             -A KUBE-POSTROUTING -j MASQUERADE --random-fully\nCOMMIT\n",
        );
        assert_eq!(r.snat, vec![("AWS-SNAT-CHAIN-0".to_string(), "198.18.1.10".parse().unwrap())]);
        assert_eq!(r.dnat_chain("198.18.1.21:8080"), Some("KUBE-SEP-API-API-1"));
        assert_eq!(r.masquerade, vec!["KUBE-POSTROUTING".to_string()]);
    }
}
