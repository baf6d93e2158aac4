//! Naming the rewrites of a flow from the node's rules: the rule whose statement maps to the
//! rewritten address names the kind, the chain (`KUBE-SEP-…`, `kube-proxy/endpoint-…`,
//! `AWS-SNAT-CHAIN-0`, `KUBE-POSTROUTING`, `kube-proxy/masquerading`) and the service. When no
//! rule read from the node matches (or several do), the chain and service stay unknown and the
//! kind says only what the tuples prove: a name podtrace did not read is never printed.
use std::net::SocketAddr;

use super::{
    context::NodeContext,
    model::{HopName, Nat, NatKind},
};
use crate::node::rules::{Action, Backend, NatTarget, Rule, Ruleset};

/// A rewrite observed between two places, not yet named.
pub struct Rewrite {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub after_hop: Option<HopName>,
    pub before_hop: Option<HopName>,
}

fn named(r: Rewrite, kind: NatKind, rule: Option<&Rule>, service: Option<String>) -> Nat {
    Nat {
        from: r.from,
        to: r.to,
        after_hop: r.after_hop,
        before_hop: r.before_hop,
        kind,
        chain: rule.map(Rule::chain_ref),
        service,
    }
}

/// kube-proxy's rules: iptables mode's `KUBE-*` chains, nftables mode's `kube-proxy` tables.
fn is_kube_proxy(r: &Rule) -> bool {
    match r.backend {
        Backend::Nftables => r.table == "kube-proxy",
        _ => r.chain.starts_with("KUBE-"),
    }
}

/// The VPC CNI's pod SNAT (`AWS-SNAT-CHAIN-*`) and the egress-cni plugin's SNAT of IPv6 pods'
/// IPv4 traffic (`CNI-E4-*`, `CNI-E6-*` for the reverse).
fn is_pod_egress_snat(r: &Rule) -> bool {
    r.backend != Backend::Nftables
        && (r.chain.starts_with("AWS-SNAT-CHAIN")
            || r.chain.starts_with("CNI-E4-")
            || r.chain.starts_with("CNI-E6-"))
}

/// The one rule among `candidates`, when they all sit in one chain (several rules of one
/// chain, e.g. a service's TCP and UDP ports with the same target, name the same place).
fn unique<'a>(candidates: &[&'a Rule]) -> Option<&'a Rule> {
    let first = *candidates.first()?;
    candidates.iter().all(|r| r.chain_ref() == first.chain_ref()).then_some(first)
}

fn nat_target(r: &Rule) -> Option<&NatTarget> {
    match &r.action {
        Action::Snat(t) | Action::Dnat(t) | Action::Masquerade(t) => Some(t),
        _ => None,
    }
}

/// The service a kube-proxy DNAT rule serves, `namespace/name[:port]`: iptables mode writes it
/// as the rule's comment, nftables mode in the chain name
/// (`endpoint-<hash>-<ns>/<name>/<proto>/<port name>__<ip>/<port>`).
fn service_of(r: &Rule) -> Option<String> {
    match r.backend {
        Backend::Nftables => {
            let rest = r.chain.strip_prefix("endpoint-")?;
            let (_, rest) = rest.split_once('-')?;
            let (svc, _) = rest.split_once("__")?;
            let mut parts = svc.split('/');
            let (ns, name, _proto, port) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            Some(if port.is_empty() { format!("{ns}/{name}") } else { format!("{ns}/{name}:{port}") })
        }
        _ => r.comment.clone().filter(|c| c.contains('/')),
    }
}

/// Whether kube-proxy's rules hold a NodePort for `(proto, port)`: iptables mode's
/// `KUBE-NODEPORTS -p <proto> --dport <port>`, nftables mode's `service-nodeports` map key
/// `<proto> . <port>` (each field padded to 4 bytes).
fn is_nodeport(rules: &Ruleset, backend: Backend, proto: u8, port: u16) -> bool {
    match backend {
        Backend::Nftables => rules.elements.iter().any(|e| {
            e.table == "kube-proxy"
                && e.set == "service-nodeports"
                && e.key.first() == Some(&proto)
                && e.key.get(4..6) == Some(&port.to_be_bytes()[..])
        }),
        _ => rules.rules.iter().any(|r| {
            r.backend == backend
                && r.chain == "KUBE-NODEPORTS"
                && r.dport == Some(port)
                && r.proto.is_none_or(|p| p == proto)
        }),
    }
}

fn name_dnat(d: Rewrite, proto: u8, ctx: &NodeContext) -> (Nat, Option<Backend>) {
    let rules = &ctx.rules;
    let to = d.to;
    let candidates: Vec<&Rule> = rules
        .rules
        .iter()
        .filter(|r| {
            matches!(r.action, Action::Dnat(_))
                && r.ipv6 == to.is_ipv6()
                && r.proto.is_none_or(|p| p == proto)
        })
        .filter(|r| nat_target(r).is_some_and(|t| t.maps_addr(to.ip()) && t.maps_port(to.port())))
        .collect();
    let Some(rule) = unique(&candidates) else {
        return (named(d, NatKind::Dnat, None, None), None);
    };
    let kind = if !is_kube_proxy(rule) {
        NatKind::Dnat
    } else if ctx.node_ips.contains(&d.from.ip()) && is_nodeport(rules, rule.backend, proto, d.from.port()) {
        NatKind::NodeportDnat
    } else {
        NatKind::ServiceDnat
    };
    let service = is_kube_proxy(rule).then(|| service_of(rule)).flatten();
    (named(d, kind, Some(rule), service), Some(rule.backend))
}

fn name_snat(s: Rewrite, dnat: Option<&Nat>, dnat_backend: Option<Backend>, ctx: &NodeContext) -> Nat {
    let rules = &ctx.rules;
    let to: SocketAddr = s.to;
    if s.from.ip() == to.ip() {
        // Only the port changed: the NAT core remapped a clashing tuple, no rule did.
        return named(s, NatKind::Snat, None, None);
    }
    let to_node = ctx.node_ips.contains(&to.ip());
    let family = |r: &&Rule| r.ipv6 == to.is_ipv6();
    if let Some(d) = dnat.filter(|_| to_node) {
        // kube-proxy marked the connection for masquerade when it DNATed it: its masquerade
        // rule, in the backend that holds the DNAT when known.
        let masq: Vec<&Rule> = rules
            .rules
            .iter()
            .filter(family)
            .filter(|r| matches!(r.action, Action::Masquerade(_)) && is_kube_proxy(r))
            .filter(|r| {
                dnat_backend.is_none_or(|b| (b == Backend::Nftables) == (r.backend == Backend::Nftables))
            })
            .collect();
        let rule = unique(&masq);
        return named(s, NatKind::Masquerade, rule, rule.and(d.service.clone()));
    }
    let snat: Vec<&Rule> = rules
        .rules
        .iter()
        .filter(family)
        .filter(|r| {
            matches!(r.action, Action::Snat(_)) && nat_target(r).is_some_and(|t| t.maps_addr(to.ip()))
        })
        .collect();
    // Several chains SNAT to this address (the VPC CNI's and egress-cni's both to the node
    // IP): the one a rule sends this very source to.
    let own: Vec<&Rule> =
        snat.iter().copied().filter(|r| is_sent_from(rules, &r.chain, s.from.ip())).collect();
    if let Some(rule) = unique(&snat).or_else(|| unique(&own)) {
        let kind = if is_pod_egress_snat(rule) { NatKind::PodEgressSnat } else { NatKind::Snat };
        return named(s, kind, Some(rule), None);
    }
    if snat.is_empty() && to_node {
        let masq: Vec<&Rule> = rules
            .rules
            .iter()
            .filter(family)
            .filter(|r| matches!(r.action, Action::Masquerade(_)) && !is_kube_proxy(r))
            .collect();
        if let Some(rule) = unique(&masq) {
            return named(s, NatKind::Masquerade, Some(rule), None);
        }
    }
    named(s, NatKind::Snat, None, None)
}

/// Whether a rule jumps (or goes) to `chain` for packets from `src` only (a per-pod chain).
fn is_sent_from(rules: &Ruleset, chain: &str, src: std::net::IpAddr) -> bool {
    rules.rules.iter().any(|r| {
        matches!(&r.action, Action::Jump(c) | Action::Goto(c) if c == chain)
            && r.src.is_some_and(|(net, len)| crate::node::addr_math::in_subnet(src, net, len))
    })
}

/// Names a flow's rewrites (source, destination) of a flow of protocol `proto`.
pub fn name(
    snat: Option<Rewrite>,
    dnat: Option<Rewrite>,
    proto: u8,
    ctx: &NodeContext,
) -> (Option<Nat>, Option<Nat>) {
    let (dnat, backend) = match dnat.map(|d| name_dnat(d, proto, ctx)) {
        Some((n, b)) => (Some(n), b),
        None => (None, None),
    };
    let snat = snat.map(|s| name_snat(s, dnat.as_ref(), backend, ctx));
    (snat, dnat)
}

#[cfg(test)]
mod tests;
