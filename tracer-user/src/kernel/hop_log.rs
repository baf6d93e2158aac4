//! The hop log as user space reads it: the kernel's `HOP_LOG` array mapped into our memory.
//! Each CPU writes its hop events in turn into its own records and overwrites the oldest; the
//! sequence word of a record (`tracer_common::HopRecord`) says which event it holds and
//! whether it is complete. A drain reads, per CPU, the records after the last one it read,
//! each copied between two reads of its sequence word (as a seqlock reader does), and counts
//! the events that were overwritten before it got to them.
use std::{
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering, fence},
};

use anyhow::{Result, bail};
use aya::Ebpf;
use tracer_common::{HOP_RECORD_BUSY, HopEvent, HopRecord, names};

use super::mapping::Mapping;

/// What one drain found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub events: u64,
    /// Events overwritten before they were read.
    pub lost: u64,
}

/// The memory the records live in: the kernel's map, or (in tests) our own, freed on drop.
enum Backing {
    Mapped(#[allow(dead_code)] Mapping),
    #[cfg(test)]
    Owned(*mut [HopRecord]),
}

#[cfg(test)]
impl Drop for Backing {
    fn drop(&mut self) {
        if let Backing::Owned(records) = *self {
            // SAFETY: made by `Box::into_raw` in `HopLog::owned`, freed only here.
            drop(unsafe { Box::from_raw(records) });
        }
    }
}

pub struct HopLog {
    base: NonNull<HopRecord>,
    _backing: Backing,
    slots: u32,
    /// Per CPU, the number of the next event to read (numbers start at 1).
    next: Vec<u64>,
}

// SAFETY: the records are shared memory that the kernel writes concurrently anyway; every
// access goes through `&mut self` or atomics.
unsafe impl Send for HopLog {}

impl HopLog {
    /// Maps the log of a loaded object. Its records are split evenly over the CPUs the
    /// counters are sized for (both are sized at load time, `kernel::load`).
    pub fn map(ebpf: &Ebpf) -> Result<HopLog> {
        let records = Mapping::new(ebpf, names::MAP_HOP_LOG, size_of::<HopRecord>())?;
        let cpus = match ebpf.map(names::MAP_COUNTERS) {
            Some(aya::maps::Map::Array(d)) => d.info()?.max_entries(),
            _ => bail!("COUNTERS map missing"),
        };
        let slots = records.entries / cpus.max(1);
        if slots == 0 || !slots.is_power_of_two() || slots * cpus != records.entries {
            bail!(
                "the hop log holds {} records, not a power of two for each of {cpus} CPUs",
                records.entries
            );
        }
        Ok(HopLog {
            base: records.ptr.cast(),
            _backing: Backing::Mapped(records),
            slots,
            next: vec![1; cpus as usize],
        })
    }

    /// A log in our own memory, written by a test in the kernel's way.
    #[cfg(test)]
    fn owned(cpus: u32, slots: u32) -> HopLog {
        // Raw, not a Box: records are written through `base` while the log is borrowed.
        let records = Box::into_raw(vec![HopRecord::default(); (cpus * slots) as usize].into_boxed_slice());
        let base = NonNull::new(records.cast::<HopRecord>()).unwrap();
        HopLog { base, _backing: Backing::Owned(records), slots, next: vec![1; cpus as usize] }
    }

    fn record(&self, cpu: usize, seq: u64) -> *mut HopRecord {
        let index = cpu * self.slots as usize + (seq & (self.slots as u64 - 1)) as usize;
        // SAFETY: index < cpus * slots, inside the records.
        unsafe { self.base.as_ptr().add(index) }
    }

    /// Hands every event written since the last drain to `sink`, in each CPU's order.
    pub fn drain(&mut self, mut sink: impl FnMut(&HopEvent)) -> Drained {
        let mut out = Drained::default();
        let slots = self.slots as u64;
        for cpu in 0..self.next.len() {
            let mut next = self.next[cpu];
            // Each look at a record reads it or moves past it, so a drain looks at 2 × slots
            // records of a CPU at most (at most one lap behind, then one lap of reads); a
            // CPU that writes faster than we read waits for the next drain.
            for _ in 0..2 * slots {
                let rec = self.record(cpu, next);
                // SAFETY: the record is inside the mapping; its first word is 8-byte aligned.
                let word = unsafe { AtomicU64::from_ptr(&raw mut (*rec).seq) };
                let before = word.load(Ordering::Acquire);
                let seq = before >> 1;
                if seq > next {
                    // The record holds (or is taking) a later event of the same slot: the
                    // kernel went round the log, and nothing older than one lap before that
                    // event is left. Those are counted lost; the records after this one are
                    // as new or newer, so the next look moves on.
                    let oldest = seq + 1 - slots;
                    out.lost += oldest - next;
                    next = oldest;
                    continue;
                }
                if seq < next || before & HOP_RECORD_BUSY != 0 {
                    break; // not written yet, or being written
                }
                // SAFETY: inside the mapping; the kernel may be overwriting it, which the
                // second read of the sequence word finds out.
                let event = unsafe { std::ptr::read_volatile(&raw const (*rec).event) };
                fence(Ordering::Acquire);
                if word.load(Ordering::Relaxed) != before {
                    continue; // overwritten while copied: the next look counts it lost
                }
                sink(&event);
                out.events += 1;
                next += 1;
            }
            self.next[cpu] = next;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// The kernel's way of writing event `seq` of `cpu` (`hooks::tc`, with ordered stores):
    /// busy mark, event, sequence.
    fn write(log: &HopLog, cpu: usize, seq: u64) {
        write_at(Records(log.base.as_ptr(), log.slots), cpu, seq);
    }

    /// Where a writer on another thread writes: the records, not the reader's state.
    #[derive(Clone, Copy)]
    struct Records(*mut HopRecord, u32);
    // SAFETY: the writer thread only writes records, through the kernel's protocol.
    unsafe impl Send for Records {}

    fn write_at(Records(base, slots): Records, cpu: usize, seq: u64) {
        let rec = unsafe { base.add(cpu * slots as usize + (seq % slots as u64) as usize) };
        let word = unsafe { AtomicU64::from_ptr(&raw mut (*rec).seq) };
        word.store(seq << 1 | HOP_RECORD_BUSY, Ordering::Release);
        fence(Ordering::Release);
        unsafe { std::ptr::write_volatile(&raw mut (*rec).event, event(cpu, seq)) };
        word.store(seq << 1, Ordering::Release);
    }

    /// An event whose every word tells which (cpu, seq) it is.
    fn event(cpu: usize, seq: u64) -> HopEvent {
        let mut e = HopEvent::default();
        e.from.ts_ns = seq;
        e.to.ts_ns = seq * 3 + cpu as u64;
        e.from.tuple.src = [cpu as u8; 16];
        e.to.tuple.dst = [seq as u8; 16];
        e.from.tuple.sport = seq as u16;
        e.to.tuple.dport = !(seq as u16);
        e.from.ifindex = cpu as u32;
        e.to.ifindex = (seq >> 16) as u32;
        e
    }

    fn whole(e: &HopEvent) -> Option<(usize, u64)> {
        let (cpu, seq) = (e.from.ifindex as usize, e.from.ts_ns);
        (*e == event(cpu, seq)).then_some((cpu, seq))
    }

    #[test]
    fn reads_every_event_once_in_order_per_cpu() {
        let mut log = HopLog::owned(3, 8);
        for seq in 1..=5 {
            write(&log, 0, seq);
        }
        write(&log, 2, 1);
        let mut seen = Vec::new();
        let d = log.drain(|e| seen.push(whole(e).unwrap()));
        assert_eq!(d, Drained { events: 6, lost: 0 });
        assert_eq!(seen, vec![(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (2, 1)]);
        // Nothing new: nothing read.
        assert_eq!(log.drain(|_| panic!("read twice")), Drained::default());
        write(&log, 0, 6);
        let mut seen = Vec::new();
        log.drain(|e| seen.push(whole(e).unwrap()));
        assert_eq!(seen, vec![(0, 6)]);
    }

    #[test]
    fn counts_exactly_the_events_overwritten_before_a_drain() {
        let mut log = HopLog::owned(1, 8);
        for seq in 1..=8 {
            write(&log, 0, seq);
        }
        log.drain(|_| {});
        // 29 more events into 8 records: the last 8 (30..=37) are still there.
        for seq in 9..=37 {
            write(&log, 0, seq);
        }
        let mut seen = Vec::new();
        let d = log.drain(|e| seen.push(whole(e).unwrap().1));
        assert_eq!(d, Drained { events: 8, lost: 21 });
        assert_eq!(seen, (30..=37).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_being_written_waits_for_the_next_drain() {
        let mut log = HopLog::owned(1, 8);
        write(&log, 0, 1);
        let rec = log.record(0, 2);
        unsafe { AtomicU64::from_ptr(&raw mut (*rec).seq) }
            .store(2 << 1 | HOP_RECORD_BUSY, Ordering::Release);
        assert_eq!(log.drain(|_| {}), Drained { events: 1, lost: 0 });
        write(&log, 0, 2);
        assert_eq!(log.drain(|e| assert_eq!(whole(e), Some((0, 2)))), Drained { events: 1, lost: 0 });
    }

    /// A CPU that writes two events for each one read laps the reader again and again: a
    /// drain still ends, and read plus lost is what was written.
    #[test]
    fn a_writer_faster_than_the_reader_does_not_hold_a_drain() {
        let mut log = HopLog::owned(1, 64);
        let records = Records(log.base.as_ptr(), log.slots);
        let mut written = 100;
        for seq in 1..=written {
            write(&log, 0, seq);
        }
        let (mut read, mut lost) = (0, 0);
        for _ in 0..10 {
            let mut calls = 0;
            let d = log.drain(|_| {
                calls += 1;
                for _ in 0..2 {
                    written += 1;
                    write_at(records, 0, written);
                }
            });
            assert!(calls <= 2 * 64, "{calls} records read in one drain of a 64-record log");
            (read, lost) = (read + d.events, lost + d.lost);
        }
        let d = log.drain(|_| {});
        (read, lost) = (read + d.events, lost + d.lost);
        assert_eq!(read + lost, written, "read {read}, lost {lost}");
        assert!(read >= 10 && lost > 0);
    }

    /// A writer on another thread overwrites records while they are read: every event read is
    /// whole, in order, and read plus lost is what was written.
    #[test]
    fn a_concurrent_writer_never_yields_a_torn_event_and_loses_nothing_uncounted() {
        const EVENTS: u64 = 1_000_000;
        let mut log = HopLog::owned(1, 8);
        let done = AtomicBool::new(false);
        let records = Records(log.base.as_ptr(), log.slots);
        let (mut read, mut lost, mut last, mut copied) = (0, 0, 0, 0u64);
        std::thread::scope(|s| {
            let done = &done;
            s.spawn(move || {
                for seq in 1..=EVENTS {
                    write_at(records, 0, seq);
                }
                done.store(true, Ordering::Release);
            });
            loop {
                let finished = done.load(Ordering::Acquire);
                let d = log.drain(|e| {
                    let (_, seq) = whole(e).expect("a torn event");
                    assert!(seq > last, "out of order: {seq} after {last}");
                    last = seq;
                    // Now and then a slow reader, so that the writer laps it.
                    copied += 1;
                    if copied % 2_000 == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                });
                read += d.events;
                lost += d.lost;
                if finished && d == Drained::default() {
                    break;
                }
            }
        });
        assert_eq!(read + lost, EVENTS, "read {read}, lost {lost}");
        assert_eq!(last, EVENTS, "the newest event is read");
        assert!(read > 0 && lost > 0, "the writer lapped the slow reader");
    }
}
