//! The final summary: every kernel counter (losses included) and user-space losses.
use serde::Serialize;
use tracer_common::counter;

use super::table::Style;
use crate::{
    assemble::session::{Session, Snapshot, UserCounters},
    node::rules::{BackendRead, Ruleset, backends_text},
};

/// Kernel counters of traffic podtrace could not record: red when non-zero.
pub const KERNEL_LOSSES: [&str; 2] = ["flow_map_full", "drop_map_full"];

#[derive(Serialize)]
pub struct Summary {
    pub flows: usize,
    pub interfaces: Vec<String>,
    pub counters: std::collections::BTreeMap<&'static str, u64>,
    pub user: UserCounters,
    /// Interfaces that disappeared while tracing.
    pub vanished: Vec<String>,
    /// The rule backends read to name rewrites, and why one could not be read.
    pub rule_backends: Vec<BackendRead>,
    /// The VPC CNI's pod SNAT rules found (empty: pods leave the VPC with their own IPs).
    pub pod_egress_snat: Vec<String>,
}

impl Summary {
    /// The summary of a session's last snapshot, with `flows` flows.
    pub fn new(
        flows: usize,
        session: &Session,
        snap: &Snapshot,
        vanished: Vec<String>,
        rules: &Ruleset,
    ) -> Summary {
        let counters = counter::NAMES.iter().zip(snap.counters.iter()).map(|(n, v)| (*n, *v)).collect();
        Summary {
            flows,
            interfaces: session.attached_names(),
            counters,
            user: session.user,
            vanished,
            rule_backends: rules.backends.clone(),
            pod_egress_snat: rules.pod_egress_snat(),
        }
    }

    pub fn text(&self, style: Style) -> String {
        let mut s = format!("{} flows on {}\n", self.flows, self.interfaces.join(", "));
        let parts: Vec<String> = self
            .counters
            .iter()
            .map(|(k, v)| {
                let t = format!("{k}={v}");
                if KERNEL_LOSSES.contains(k) && *v > 0 { style.bad(&t) } else { t }
            })
            .collect();
        s += &format!("counters: {}\n", parts.join(" "));
        s += &format!(
            "user: {} hop_events_evicted={} conntrack_evicted={} conntrack_events_dropped={} conntrack_dump_errors={}",
            {
                let t = format!("hop_events_lost={}", self.user.hop_events_lost);
                if self.user.hop_events_lost > 0 { style.bad(&t) } else { t }
            },
            self.user.hop_events_evicted,
            self.user.conntrack_evicted,
            self.user.conntrack_events_dropped,
            self.user.conntrack_dump_errors
        );
        s += &format!("\nrules: {}", backends_text(&self.rule_backends));
        if self.pod_egress_snat.is_empty() {
            s += "\npod egress SNAT: none (no AWS-SNAT-CHAIN rule): pods leave the VPC with their own IPs";
        } else {
            s += &format!("\npod egress SNAT: {}", self.pod_egress_snat.join("; "));
        }
        if !self.vanished.is_empty() {
            s += &format!(
                "\n{}",
                style.bad(&format!("interfaces gone while tracing: {}", self.vanished.join(", ")))
            );
        }
        s
    }
}
