//! Hop events folded as they arrive: one entry per (sighting before, sighting after) pair with
//! its sampled delays, instead of every raw event. A long flow then costs one entry per hop it
//! crosses, however many of its packets were sampled.
use std::collections::{HashMap, VecDeque};

use tracer_common::{HopEvent, Sighting, Tuple};

/// Delays kept per hop pair: the most recent ones (enough for percentiles and charts).
pub const DELAYS_PER_PAIR: usize = 256;

/// A tuple as seen at one hook of one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct At {
    pub tuple: Tuple,
    pub ifindex: u32,
    pub hook: u8,
}

impl From<&Sighting> for At {
    fn from(s: &Sighting) -> At {
        At { tuple: s.tuple, ifindex: s.ifindex, hook: s.hook }
    }
}

/// The same packet seen at `from`, then at `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HopPair {
    pub from: At,
    pub to: At,
}

#[derive(Clone, Debug, Default)]
pub struct HopSamples {
    pub count: u64,
    /// Delays in ns, most recent last.
    pub delays_ns: VecDeque<u64>,
    /// Sequence number of the last event (for evicting the stalest pairs).
    last_seq: u64,
}

/// All hop pairs seen, bounded.
#[derive(Clone, Debug)]
pub struct HopTable {
    pairs: HashMap<HopPair, HopSamples>,
    max_pairs: usize,
    seq: u64,
    /// Pairs dropped because the table was full (oldest first).
    pub evicted: u64,
}

impl HopTable {
    pub fn new(max_pairs: usize) -> HopTable {
        HopTable { pairs: HashMap::new(), max_pairs, seq: 0, evicted: 0 }
    }

    pub fn add(&mut self, ev: &HopEvent) {
        self.seq += 1;
        let key = HopPair { from: At::from(&ev.from), to: At::from(&ev.to) };
        let s = self.pairs.entry(key).or_default();
        s.count += 1;
        s.last_seq = self.seq;
        if s.delays_ns.len() == DELAYS_PER_PAIR {
            s.delays_ns.pop_front();
        }
        s.delays_ns.push_back(ev.to.ts_ns.saturating_sub(ev.from.ts_ns));
        if self.pairs.len() > self.max_pairs {
            self.evict(self.pairs.len() - self.max_pairs * 9 / 10);
        }
    }

    fn evict(&mut self, n: usize) {
        let mut by_age: Vec<(u64, HopPair)> = self.pairs.iter().map(|(k, v)| (v.last_seq, *k)).collect();
        by_age.sort_unstable_by_key(|(seq, _)| *seq);
        for (_, k) in by_age.into_iter().take(n) {
            self.pairs.remove(&k);
        }
        self.evicted += n as u64;
    }

    pub fn iter(&self) -> impl Iterator<Item = (&HopPair, &HopSamples)> {
        self.pairs.iter()
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Keeps only the pairs for which `keep` is true (flow expiry).
    pub fn retain(&mut self, keep: impl Fn(&HopPair) -> bool) {
        self.pairs.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: u64, port: u16) -> HopEvent {
        let mut e = HopEvent::default();
        e.from.tuple.sport = port;
        e.to.tuple.sport = port;
        e.from.ifindex = 1;
        e.to.ifindex = 2;
        e.to.hook = 1;
        e.from.ts_ns = ts;
        e.to.ts_ns = ts + 1000;
        e
    }

    #[test]
    fn folds_events_per_pair_and_stays_bounded() {
        let mut t = HopTable::new(10);
        for i in 0..1000 {
            t.add(&ev(i, 7));
        }
        assert_eq!(t.len(), 1);
        let (_, s) = t.iter().next().unwrap();
        assert_eq!(s.count, 1000);
        assert_eq!(s.delays_ns.len(), DELAYS_PER_PAIR);
        for p in 0..100 {
            t.add(&ev(0, p));
        }
        assert!(t.len() <= 11);
        assert!(t.evicted > 0);
    }
}
