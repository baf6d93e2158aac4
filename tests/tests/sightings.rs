//! How long a sampled packet's ingress sighting waits for its egress hook, through the real
//! classifiers with BPF_PROG_TEST_RUN on one CPU: each CPU keeps its last `SIGHTING_SLOTS`
//! ingress sightings whatever their signatures, a sighting makes one hop, and the hop carries
//! the ingress interface the skb itself names (`skb_iif`).
use anyhow::{Result, anyhow};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use podtrace::kernel::{
    attach::{AttachMode, Tracer},
    hop_log::HopLog,
    load::LoadOptions,
};
use tests::packets::*;
use tracer_common::{HopEvent, SIGHTING_SLOTS, hook, names};

/// An interface index no device has: only `skb_iif` can carry it into the ingress sighting.
const INGRESS_IIF: u32 = 4242;

/// A UDP packet of its own flow (a flow's first packet at each hook is always sampled) and of
/// its own signature (the IP id differs; ports are not in the signature, NAT rewrites them).
fn packet(sport: u16) -> Vec<u8> {
    eth(&[], ETH_IPV4, &ipv4(&V4 { id: sport, ..V4::default() }, &udp(sport, 53, b"sighting")))
}

/// Runs `prog` on `pkt` with `__sk_buff.ingress_ifindex` (offset 36) and `ifindex` (40).
fn run(prog: &SchedClassifier, pkt: &[u8], ingress_ifindex: u32, ifindex: u32) -> Result<()> {
    let mut ctx = [0u8; 192];
    ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let r = prog
        .test_run(TestRunOptions { data_in: Some(pkt), ctx_in: Some(&ctx), ..TestRunOptions::default() })
        .map_err(|e| anyhow!("test run: {e}"))?;
    assert_eq!(r.return_value as i32, -1, "the classifier passes every packet on");
    Ok(())
}

/// The hop events written so far (none lost: the log holds far more than these tests write).
fn hops(log: &mut HopLog) -> Vec<HopEvent> {
    let mut out = Vec::new();
    let drained = log.drain(|e| out.push(*e));
    assert_eq!(drained.lost, 0);
    out
}

/// Sends the tracked packet in at the ingress hook, `others` other sampled packets in after
/// it, then the tracked packet out at the egress hook (loopback, ifindex 1), twice. Returns
/// the hop events.
fn crossing_after(others: u16) -> Result<Vec<HopEvent>> {
    crossing(others, &LoadOptions::default())
}

fn crossing(others: u16, opts: &LoadOptions) -> Result<Vec<HopEvent>> {
    let tracer = Tracer::load(opts, AttachMode::Auto)?;
    let mut log = HopLog::map(&tracer.ebpf)?;
    let ingress: &SchedClassifier = tracer.ebpf.program(names::PROG_TC_INGRESS).unwrap().try_into()?;
    let egress: &SchedClassifier = tracer.ebpf.program(names::PROG_TC_EGRESS).unwrap().try_into()?;
    let tracked = packet(1000);
    run(ingress, &tracked, INGRESS_IIF, 1)?;
    for i in 0..others {
        run(ingress, &packet(2000 + i), INGRESS_IIF, 1)?;
    }
    run(egress, &tracked, 0, 1)?;
    // The same packet at a second egress hook (a VLAN device, then its trunk): not a hop.
    run(egress, &tracked, 0, 1)?;
    Ok(hops(&mut log))
}

/// The test thread stays on one CPU: sightings are per CPU, as a packet's hooks are in the
/// kernel.
fn pin_to_one_cpu() -> Result<()> {
    let mut one = nix::sched::CpuSet::new();
    one.set(0)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one)?;
    Ok(())
}

#[test]
fn a_sighting_outlives_the_slots_minus_one_later_sightings_and_makes_one_hop() -> Result<()> {
    pin_to_one_cpu()?;
    let events = crossing_after(SIGHTING_SLOTS as u16 - 1)?;
    assert_eq!(events.len(), 1, "one hop, not one per egress hook: {events:?}");
    let e = &events[0];
    assert_eq!((e.from.tuple.sport, e.to.tuple.sport), (1000, 1000));
    assert_eq!((e.from.hook, e.to.hook), (hook::INGRESS, hook::EGRESS));
    assert_eq!(
        (e.from.ifindex, e.to.ifindex),
        (INGRESS_IIF, 1),
        "ingress named by skb_iif, egress by its device"
    );
    assert!(e.to.ts_ns >= e.from.ts_ns, "the egress sighting is not older than the ingress one");
    Ok(())
}

#[test]
fn a_sighting_is_replaced_after_as_many_later_sightings_as_slots() -> Result<()> {
    pin_to_one_cpu()?;
    let events = crossing_after(SIGHTING_SLOTS as u16)?;
    assert!(events.is_empty(), "the tracked packet's sighting was overwritten, yet: {events:?}");
    Ok(())
}

/// Where the CPU does not keep stores in order for other CPUs (arm64), the hop log's sequence
/// words are written with atomic exchanges (BPF_XCHG): those programs load too and write the
/// same hop.
#[test]
fn the_log_written_with_exchanges_for_weakly_ordered_cpus_holds_the_same_hop() -> Result<()> {
    pin_to_one_cpu()?;
    let plain = crossing_after(0)?;
    let exchanged = crossing(0, &LoadOptions { ordered_stores: false, ..LoadOptions::default() })?;
    assert_eq!((plain.len(), exchanged.len()), (1, 1), "{plain:?} {exchanged:?}");
    let untimed = |e: &HopEvent| {
        let mut e = *e;
        (e.from.ts_ns, e.to.ts_ns) = (0, 0);
        e
    };
    assert_eq!(untimed(&exchanged[0]), untimed(&plain[0]));
    assert_eq!((exchanged[0].from.tuple.sport, exchanged[0].to.ifindex), (1000, 1));
    Ok(())
}
