//! The IPAM variants of the lab (see ../shared/brief/eks-variants.md §6, §7, §8, §9); for now
//! the host veth name prefix (§9).
use anyhow::{Result, bail};

/// Host veth prefix check of the aws-node init container (amazon-vpc-cni-k8s
/// cmd/aws-vpc-cni/main.go, validateEnvVars): at most 4 characters, not `eth`, `lo`, `vlan`.
/// The lab also wants 1 or more lowercase letters/digits (an empty prefix would make the
/// CONNMARK rules' `-i +` match every interface).
pub fn check_veth_prefix(p: &str) -> Result<()> {
    if p.len() > 4 {
        bail!("veth prefix {p:?}: AWS_VPC_K8S_CNI_VETHPREFIX cannot be longer than 4 characters");
    }
    if matches!(p, "eth" | "lo" | "vlan") {
        bail!("veth prefix {p:?}: reserved values 'eth', 'vlan' and 'lo' are refused");
    }
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        bail!("veth prefix {p:?}: the lab wants 1 to 4 lowercase letters or digits");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan::{LabConfig, Plan};

    #[test]
    fn veth_prefix_is_checked_like_aws_node_does() {
        for ok in ["eni", "abc", "pod1", "x"] {
            check_veth_prefix(ok).unwrap();
        }
        for bad in ["abcde", "eth", "lo", "vlan", "", "A-b"] {
            assert!(check_veth_prefix(bad).is_err(), "{bad}");
        }
        let plan = Plan::new(&LabConfig { veth_prefix: "abc".into(), ..LabConfig::default() });
        for p in &plan.pods {
            assert!(p.veth.starts_with("abc") && p.veth.len() == 14, "{}", p.veth);
        }
    }
}
