//! Which flows a poll exports: every `--otlp-interval`, each flow whose packet count changed
//! since it was last exported (so an idle flow is not repeated, and a flow's last record holds
//! its final counters).
use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    time::Instant,
};

use super::{otlp::OtlpExport, otlp_record::flow_record};
use crate::{assemble::model::Flow, report::json::FlowReport};

pub struct ExportRounds {
    pub export: OtlpExport,
    next: Instant,
    /// Flow → packets when last exported.
    exported: HashMap<u64, u64>,
}

/// The flows of one round: those seen, and the packets each had.
pub struct Round {
    seen: HashMap<u64, u64>,
}

fn key(f: &Flow) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&f.pod, &f.namespace, f.id()).hash(&mut h);
    h.finish()
}

impl ExportRounds {
    pub fn new(export: OtlpExport) -> ExportRounds {
        let next = Instant::now() + export.args.interval;
        ExportRounds { export, next, exported: HashMap::new() }
    }

    /// A round when one is due.
    pub fn begin(&mut self) -> Option<Round> {
        let now = Instant::now();
        if now < self.next {
            return None;
        }
        self.next = now + self.export.args.interval;
        Some(Round { seen: HashMap::with_capacity(self.exported.len()) })
    }

    /// Exports the flow if it changed since its last record.
    pub fn offer(&self, round: &mut Round, f: &Flow) {
        let k = key(f);
        round.seen.insert(k, f.packets);
        if self.exported.get(&k) == Some(&f.packets) {
            return;
        }
        let record = flow_record(self.export.logger(), &FlowReport::from(f), self.export.node.as_deref());
        self.export.offer(record);
    }

    /// Flows gone since the previous round are forgotten.
    pub fn end(&mut self, round: Round) {
        self.exported = round.seen;
    }
}
