//! Which rule backends the lab's NAT is written with, and the VPC CNI's SNAT options.
//! Every option names the upstream switch it stands for; the defaults are an EKS node's.
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// kube-proxy's `mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KubeProxyMode {
    /// KUBE-* chains in iptables (kubernetes pkg/proxy/iptables).
    #[default]
    Iptables,
    /// The native `ip kube-proxy` table (kubernetes pkg/proxy/nftables).
    Nftables,
}

/// Which iptables backend ipamd's and kube-proxy's iptables rules are written with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IptablesBackend {
    /// iptables-nft: the rules live in nf_tables tables `ip nat`, `ip mangle` (Bottlerocket).
    #[default]
    Nft,
    /// iptables-legacy: x_tables, invisible to `nft` and `iptables-nft-save` (AL2023 AMI).
    Legacy,
}

impl IptablesBackend {
    /// The restore tool for this backend.
    pub fn restore_tool(self) -> &'static str {
        match self {
            IptablesBackend::Nft => "iptables-restore",
            IptablesBackend::Legacy => "iptables-legacy-restore",
        }
    }
}

/// `AWS_VPC_K8S_CNI_RANDOMIZESNAT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RandomizeSnat {
    /// `--random-fully` (the default).
    #[default]
    Prng,
    /// `--random`.
    Hashrandom,
    /// Neither flag.
    None,
}

/// Where the VPC CNI keeps its connmark rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CniConnmark {
    /// nat PREROUTING -> AWS-CONNMARK-CHAIN-0 (pkg/networkutils/iptables_connmark.go; CNI < 1.23
    /// or an iptables-legacy host).
    #[default]
    Iptables,
    /// The native table `ip aws-cni` (pkg/networkutils/nftables_connmark.go; CNI >= 1.23 on an
    /// iptables-nft host).
    Nft,
}

/// The NAT-related choices of one lab.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatOptions {
    pub kube_proxy: KubeProxyMode,
    pub iptables: IptablesBackend,
    pub randomize_snat: RandomizeSnat,
    /// `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`, in the order given.
    pub exclude_snat_cidrs: Vec<String>,
    /// `AWS_VPC_K8S_CNI_EXTERNALSNAT=true`: no SNAT and no connmark rules.
    pub external_snat: bool,
    pub cni_connmark: CniConnmark,
}

impl NatOptions {
    /// Rejects combinations the upstream components never produce.
    pub fn validate(&self) -> Result<()> {
        // NewConnmark (nftables_connmark.go) picks the nft table only when the iptables mode
        // it detects is nf_tables.
        if self.cni_connmark == CniConnmark::Nft && self.iptables == IptablesBackend::Legacy {
            bail!(
                "--cni-connmark nft needs --iptables nft: the VPC CNI uses its nft table only on iptables-nft hosts"
            );
        }
        for c in &self.exclude_snat_cidrs {
            let ok = c.split_once('/').is_some_and(|(ip, len)| {
                ip.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32)
            });
            if !ok {
                bail!("--exclude-snat-cidr {c:?} is not an IPv4 CIDR");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{LabConfig, Plan, Saved, render};

    fn node_config(nat: NatOptions) -> render::NsConfig {
        render::node(&Plan::new(&LabConfig { nat, ..LabConfig::default() }), "node-a")
    }

    #[test]
    fn legacy_backend_changes_only_the_tool() {
        let nft = node_config(NatOptions::default());
        let legacy = node_config(NatOptions { iptables: IptablesBackend::Legacy, ..NatOptions::default() });
        assert_eq!(nft.iptables, legacy.iptables);
        assert_eq!(nft.nft, legacy.nft);
        assert_eq!(nft.iptables_backend.restore_tool(), "iptables-restore");
        assert_eq!(legacy.iptables_backend.restore_tool(), "iptables-legacy-restore");
    }

    #[test]
    fn nftables_mode_leaves_no_kube_rules_in_iptables() {
        let c = node_config(NatOptions { kube_proxy: KubeProxyMode::Nftables, ..NatOptions::default() });
        assert!(!c.iptables.as_deref().unwrap().contains("KUBE-"));
        assert!(c.iptables.as_deref().unwrap().contains("AWS-SNAT-CHAIN-0"));
        assert!(c.nft.as_deref().unwrap().starts_with("add table ip kube-proxy"));
        let c = node_config(NatOptions::default());
        assert!(c.nft.is_none());
        assert!(c.iptables.as_deref().unwrap().contains("-j KUBE-SERVICES"));
    }

    #[test]
    fn nft_connmark_needs_the_nft_backend() {
        let bad = NatOptions {
            cni_connmark: CniConnmark::Nft,
            iptables: IptablesBackend::Legacy,
            ..NatOptions::default()
        };
        assert!(bad.validate().is_err());
        assert!(
            NatOptions { exclude_snat_cidrs: vec!["203.0.113.0".into()], ..NatOptions::default() }
                .validate()
                .is_err()
        );
        assert!(
            NatOptions { exclude_snat_cidrs: vec!["203.0.113.0/24".into()], ..NatOptions::default() }
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn older_state_files_load_with_the_defaults() {
        let old = r#"{"prefix":"pt-","etp":"cluster","eni_names":"eth","vpc":[198,18],"ipv6":false}"#;
        let saved: Saved = serde_json::from_str(old).unwrap();
        assert_eq!(saved.nat, NatOptions::default());
        let new = r#"{"prefix":"pt-","etp":"local","eni_names":"eth","vpc":[198,18],"ipv6":false,
            "kube_proxy":"nftables","iptables":"legacy","exclude_snat_cidrs":["203.0.113.0/24"]}"#;
        let saved: Saved = serde_json::from_str(new).unwrap();
        assert_eq!(saved.nat.kube_proxy, KubeProxyMode::Nftables);
        assert_eq!(saved.nat.iptables, IptablesBackend::Legacy);
        assert_eq!(saved.nat.randomize_snat, RandomizeSnat::Prng);
        assert_eq!(saved.config().nat.exclude_snat_cidrs, vec!["203.0.113.0/24".to_string()]);
    }
}
