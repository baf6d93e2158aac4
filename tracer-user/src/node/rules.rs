//! The node's NAT rules as podtrace reads them: SNAT/DNAT/MASQUERADE targets and the chains
//! holding them.
use std::net::{IpAddr, SocketAddr};

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

    pub fn dnat_chain(&self, to: SocketAddr) -> Option<&str> {
        self.dnat
            .iter()
            .find(|(_, t)| {
                t.parse::<SocketAddr>().is_ok_and(|a| a == to)
                    || t.parse::<IpAddr>().is_ok_and(|a| a == to.ip())
            })
            .map(|(c, _)| c.as_str())
    }

    pub fn snat_chain(&self, to: SocketAddr) -> Option<&str> {
        self.snat.iter().find(|(_, a)| *a == to.ip()).map(|(c, _)| c.as_str())
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
        assert_eq!(r.dnat_chain("198.18.1.21:8080".parse().unwrap()), Some("KUBE-SEP-API-API-1"));
        assert_eq!(r.masquerade, vec!["KUBE-POSTROUTING".to_string()]);
    }
}
