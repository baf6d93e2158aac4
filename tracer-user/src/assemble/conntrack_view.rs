//! The session's bounded view of the node's conntrack table, merged from events and dumps.
use std::{collections::HashMap, time::Instant};

use tracer_common::Tuple;

use crate::node::conntrack::CtEntry;

/// Conntrack entries by original tuple, with when each was last seen.
pub type CtView = HashMap<Tuple, (CtEntry, Instant)>;

/// Merges `fresh` entries, seen at `now`, into `view` without ever letting it hold more than
/// `cap`: an entry already there is refreshed in place; a new one takes the place of the entry
/// seen longest ago (before `now`), or is left out when every entry is as fresh as it. Returns
/// how many entries were displaced or left out.
///
/// Inserting everything and trimming afterwards made the map, and the capacity it keeps, as
/// large as a full dump of the node's table: during a SYN flood that was the agent's peak.
pub fn merge_bounded(
    view: &mut CtView,
    fresh: impl IntoIterator<Item = CtEntry>,
    now: Instant,
    cap: usize,
) -> u64 {
    // Built at the first entry that finds the view full: oldest first.
    let mut by_age: Option<std::vec::IntoIter<(Instant, Tuple)>> = None;
    let mut evicted = 0;
    for c in fresh {
        if let Some(slot) = view.get_mut(&c.orig) {
            *slot = (c, now);
            continue;
        }
        if view.len() >= cap {
            evicted += 1;
            let oldest = by_age.get_or_insert_with(|| {
                let mut v: Vec<_> =
                    view.iter().filter(|(_, (_, t))| *t < now).map(|(k, (_, t))| (*t, *k)).collect();
                v.sort_unstable();
                v.into_iter()
            });
            // Skip entries refreshed since the list was made (their time is `now` now).
            match oldest.find(|(t, k)| view.get(k).is_some_and(|(_, seen)| seen == t)) {
                Some((_, k)) => view.remove(&k),
                None => continue,
            };
        }
        view.insert(c.orig, (c, now));
    }
    evicted
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry(port: u16) -> CtEntry {
        let orig =
            Tuple { sport: port, dport: 80, proto: 6, family: tracer_common::FAMILY_V4, ..Tuple::default() };
        CtEntry { orig, reply: orig.reversed(), status: 0, mark: 0, id: port as u32 }
    }

    /// A dump larger than the cap never grows the view past it; what did not fit is counted.
    #[test]
    fn a_dump_larger_than_the_cap_stays_within_it() {
        let mut view = CtView::new();
        let evicted = merge_bounded(&mut view, (0..1000).map(entry), Instant::now(), 100);
        assert_eq!(view.len(), 100);
        assert_eq!(evicted, 900);
        assert!(view.capacity() < 1000, "capacity {} follows the dump, not the cap", view.capacity());
    }

    /// New entries displace the ones seen longest ago, never a refreshed one.
    #[test]
    fn new_entries_displace_the_oldest_first() {
        let t0 = Instant::now();
        let (t1, t2) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
        let mut view = CtView::new();
        assert_eq!(merge_bounded(&mut view, (0..3).map(entry), t0, 4), 0);
        assert_eq!(merge_bounded(&mut view, [entry(3)], t1, 4), 0);
        // Full: 0 is refreshed, then 10 and 11 displace 1 and 2 (seen at t0), not 0 or 3.
        let evicted = merge_bounded(&mut view, [entry(0), entry(10), entry(11)], t2, 4);
        assert_eq!(evicted, 2);
        let mut ports: Vec<u16> = view.keys().map(|k| k.sport).collect();
        ports.sort();
        assert_eq!(ports, [0, 3, 10, 11]);
        assert_eq!(view[&entry(0).orig].1, t2);
        assert_eq!(view[&entry(3).orig].1, t1);
        // Full of entries as fresh as a newcomer: the newcomer is left out.
        assert_eq!(
            merge_bounded(
                &mut view,
                [entry(0), entry(3), entry(10), entry(11), entry(12)],
                t2 + Duration::from_secs(1),
                4
            ),
            1
        );
        assert!(!view.contains_key(&entry(12).orig));
    }
}
