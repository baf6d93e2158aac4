//! Naming the NAT a flow went through: pod-egress SNAT (AWS-SNAT-CHAIN), service DNAT
//! (KUBE-SEP), NodePort DNAT, MASQUERADE (KUBE-POSTROUTING), matched against the node's rules.
use super::{
    context::NodeContext,
    flows::Rewrite,
    model::{Direction, Nat, NatKind},
};

fn named(r: Rewrite, kind: NatKind, chain: Option<String>) -> Nat {
    Nat { from: r.from, to: r.to, after_hop: r.after_hop, before_hop: r.before_hop, kind, chain }
}

/// Names a flow's rewrites (source, destination).
pub fn name(
    snat: Option<Rewrite>,
    dnat: Option<Rewrite>,
    direction: Direction,
    ctx: &NodeContext,
) -> (Option<Nat>, Option<Nat>) {
    let is_node_ip = |a: std::net::SocketAddr| ctx.node_ips.contains(&a.ip());
    let had_dnat = dnat.is_some();
    let dnat = dnat.map(|d| {
        let chain = ctx.nat_rules.dnat_chain(d.to).map(str::to_string);
        let kind = if is_node_ip(d.from) {
            NatKind::NodeportDnat
        } else if chain.is_some() || direction == Direction::Egress {
            NatKind::ServiceDnat
        } else {
            NatKind::Dnat
        };
        named(d, kind, chain)
    });
    let snat = snat.map(|s| {
        let rule = ctx.nat_rules.snat_chain(s.to).map(str::to_string);
        if had_dnat && is_node_ip(s.to) {
            // kube-proxy marked the connection (KUBE-MARK-MASQ) and masqueraded it.
            let chain = ctx
                .nat_rules
                .masquerade
                .iter()
                .find(|c| c.starts_with("KUBE"))
                .cloned()
                .or(Some("KUBE-POSTROUTING".into()));
            named(s, NatKind::Masquerade, chain)
        } else if rule.as_deref().is_some_and(|c| c.starts_with("AWS-SNAT"))
            || (direction == Direction::Egress && is_node_ip(s.to))
        {
            named(s, NatKind::PodEgressSnat, rule.or(Some("AWS-SNAT-CHAIN-0".into())))
        } else {
            named(s, NatKind::Snat, rule)
        }
    });
    (snat, dnat)
}
