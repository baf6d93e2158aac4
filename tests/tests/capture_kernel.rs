//! The capture path of the real TC programs, through BPF_PROG_TEST_RUN (issue 20): which hooks
//! copy which packets across SNAT and a NodePort's DNAT, the copies' bytes, times and hooks,
//! the malformed-packet table, snaplens 0, 1, 64 and 65535, and a full ring counted to the
//! packet. The "pod veth" is `va` of a veth pair, the "ENI" the namespace's loopback.
use std::{net::IpAddr, os::fd::AsFd};

use anyhow::{Result, anyhow};
use aya::{
    maps::{MapData, RingBuf},
    programs::SchedClassifier,
};
use podtrace::kernel::{
    attach::{AttachMode, Tracer},
    capture::{self, CaptureRole, Copy},
    load::{CaptureLoad, LoadOptions},
    netlink,
};
use tests::{VethPair, bpf, packets::*};
use tracer_common::{
    CaptureHeader,
    capture::{PARSED, STASHED},
    hook, names,
};
use xtask::netns;

const POD: [u8; 4] = [198, 18, 2, 11];
const NODE: [u8; 4] = [198, 18, 1, 10];
const INET: [u8; 4] = [203, 0, 113, 10];
const ALB: [u8; 4] = [198, 18, 100, 10];
/// The loopback's ifindex: BPF_PROG_TEST_RUN runs on it when asked for ifindex 1.
const LO: u32 = 1;

/// A capture-armed object, its capture switched on for the pod veth `va` and the "ENI" lo.
struct Lab {
    tracer: Tracer,
    ring: RingBuf<MapData>,
    va: u32,
}

fn start(ring_bytes: u32, snaplen: u32, pod_addrs: &[IpAddr]) -> Result<Lab> {
    let opts = LoadOptions { capture: Some(CaptureLoad { ring_bytes }), ..LoadOptions::default() };
    let mut tracer = Tracer::load(&opts, AttachMode::Auto)?;
    let va = netlink::ifindex("va").ok_or_else(|| anyhow!("va missing"))?;
    capture::configure(&mut tracer.ebpf, &[(va, CaptureRole::PodVeth), (LO, CaptureRole::Node)], pod_addrs)?;
    capture::set_active(&mut tracer.ebpf, true, snaplen)?;
    let ring = capture::take_ring(&mut tracer.ebpf)?;
    Ok(Lab { tracer, ring, va })
}

impl Lab {
    /// Runs the ingress or egress program on `frame` at `ifindex`.
    fn send(&self, ifindex: u32, h: u8, frame: &[u8]) -> Result<()> {
        let name = if h == hook::INGRESS { names::PROG_TC_INGRESS } else { names::PROG_TC_EGRESS };
        let prog: &SchedClassifier = self.tracer.ebpf.program(name).unwrap().try_into()?;
        let fd = prog.fd()?.as_fd().try_clone_to_owned()?;
        let verdict = bpf::test_run(&fd, frame, ifindex)?;
        assert_eq!(verdict, -1, "TCX_NEXT on every path");
        Ok(())
    }

    fn drain(&mut self) -> Vec<Copy> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            out.push(capture::decode(&item).expect("a whole record"));
        }
        out
    }
}

fn v4(src: [u8; 4], dst: [u8; 4], id: u16, l4: &[u8]) -> Vec<u8> {
    eth(&[], ETH_IPV4, &ipv4(&V4 { src, dst, proto: 6, id, ..V4::default() }, l4))
}

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

/// (ifindex, hook, frame) of a copy, its flags aside.
fn seen(c: &Copy) -> (u32, u8, Vec<u8>) {
    (c.header.ifindex, c.header.hook, c.data.clone())
}

#[test]
fn the_pods_packets_are_copied_before_and_after_snat_and_dnat_and_no_others() -> Result<()> {
    let pair = VethPair::new("capk")?;
    netns::run_in(&pair.a, || {
        let mut lab = start(1 << 20, 0, &[ip(POD)])?;
        let va = lab.va;
        // Internet egress: the SYN leaves the pod, then the "ENI" SNATed (same IP id, seq, ...).
        let syn = v4(POD, INET, 0x101, &tcp(40000, 80, 0x02, b""));
        let syn_snat = v4(NODE, INET, 0x101, &tcp(47165, 80, 0x02, b""));
        let synack = v4(INET, NODE, 0x202, &tcp(80, 47165, 0x12, b""));
        let synack_pod = v4(INET, POD, 0x202, &tcp(80, 40000, 0x12, b""));
        // Other traffic of the node: never copied.
        let ssh = v4(ALB, NODE, 0x303, &tcp(1000, 22, 0x02, b""));
        let other_snat = v4(NODE, INET, 0x304, &tcp(5, 443, 0x02, b""));
        // A NodePort connection: the SYN for the node's port, then DNATed + MASQUERADEd.
        let np_syn = v4(ALB, NODE, 0x405, &tcp(35750, 30080, 0x02, b""));
        let np_syn_pod = v4(NODE, POD, 0x405, &tcp(2590, 8080, 0x02, b""));
        let np_ack = v4(ALB, NODE, 0x406, &tcp(35750, 30080, 0x10, b"x"));
        let steps = [
            (va, hook::INGRESS, &syn),
            (LO, hook::EGRESS, &syn_snat),
            (LO, hook::INGRESS, &synack),
            (va, hook::EGRESS, &synack_pod),
            (LO, hook::INGRESS, &ssh),
            (LO, hook::EGRESS, &other_snat),
            (LO, hook::INGRESS, &np_syn),
            (va, hook::EGRESS, &np_syn_pod),
            (LO, hook::INGRESS, &np_ack),
        ];
        for (i, h, f) in steps {
            lab.send(i, h, f)?;
        }
        let copies = lab.drain();
        let want: Vec<(u32, u8, Vec<u8>)> = [
            (va, hook::INGRESS, &syn),
            (LO, hook::EGRESS, &syn_snat),
            (LO, hook::INGRESS, &synack),
            (va, hook::EGRESS, &synack_pod),
            // Stashed at lo's ingress, written when the veth showed it was the pod's.
            (LO, hook::INGRESS, &np_syn),
            (va, hook::EGRESS, &np_syn_pod),
            (LO, hook::INGRESS, &np_ack),
        ]
        .into_iter()
        .map(|(i, h, f)| (i, h, f.clone()))
        .collect();
        assert_eq!(copies.iter().map(seen).collect::<Vec<_>>(), want);
        for c in &copies {
            assert_eq!(c.header.len as usize, c.data.len(), "whole frames at snaplen 0");
            assert_ne!(c.header.flags & PARSED, 0);
        }
        let stashed: Vec<bool> = copies.iter().map(|c| c.header.flags & STASHED != 0).collect();
        assert_eq!(stashed, [false, false, false, false, true, false, false]);
        // Kernel times: the order the hooks saw the packets in, the stashed copy keeping its own.
        let ts: Vec<u64> = copies.iter().map(|c| c.header.ts_ns).collect();
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "times grow along the path: {ts:?}");
        let stats = capture::read_stats(&lab.tracer.ebpf)?;
        // Slots: 0 = va, 1 = lo. Copies per hook, nothing lost, missed or truncated.
        let copied = |slot: u16, h: u8| stats.hooks.get(&(slot, h)).map_or(0, |s| s.copied);
        assert_eq!(
            [
                copied(0, hook::INGRESS),
                copied(0, hook::EGRESS),
                copied(1, hook::INGRESS),
                copied(1, hook::EGRESS)
            ],
            [1, 2, 3, 1]
        );
        assert!(stats.hooks.values().all(|s| s.ring_full == 0 && s.missed == 0 && s.truncated == 0));
        // The SNATed tuple and the NodePort's wire tuple were learned.
        assert_eq!(stats.learned, 2);
        Ok(())
    })
}

#[test]
fn malformed_frames_are_copied_whole_at_the_pods_veth_and_at_the_eni_only_with_a_pod_flow() -> Result<()> {
    let pair = VethPair::new("capm")?;
    netns::run_in(&pair.a, || {
        let pod = [ip(V4::default().src), IpAddr::from(V6_SRC)];
        let mut lab = start(1 << 22, 0, &pod)?;
        let cases = test_frames::malformed::cases();
        let mut failures = Vec::new();
        for (ifindex, at) in [(lab.va, "pod veth"), (LO, "eni")] {
            for c in &cases {
                lab.send(ifindex, hook::INGRESS, &c.frame)?;
                let copies = lab.drain();
                // The pod's veth vouches for every frame; an ENI copies a frame only when it
                // parses into a flow of the pod's addresses (the table's tracked frames).
                let want = if ifindex == lab.va || c.entry.is_some() { 1 } else { 0 };
                if copies.len() != want {
                    failures.push(format!("{} at {at}: {} copies, want {want}", c.name, copies.len()));
                    continue;
                }
                if let Some(copy) = copies.first() {
                    let h: &CaptureHeader = &copy.header;
                    if copy.data != c.frame || h.len as usize != c.frame.len() {
                        failures.push(format!("{} at {at}: bytes differ", c.name));
                    }
                    if (h.flags & PARSED != 0) != c.entry.is_some() {
                        failures.push(format!("{} at {at}: flags {:#x}", c.name, h.flags));
                    }
                    if let Some(e) = c.entry
                        && h.tuple != e.tuple()
                    {
                        failures.push(format!("{} at {at}: tuple {:?}", c.name, h.tuple));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        let stats = capture::read_stats(&lab.tracer.ebpf)?;
        assert!(stats.hooks.values().all(|s| s.ring_full == 0 && s.truncated == 0));
        Ok(())
    })
}

#[test]
fn snaplen_cuts_copies_and_counts_each_cut_packet() -> Result<()> {
    let pair = VethPair::new("caps")?;
    netns::run_in(&pair.a, || {
        // 3 000 bytes: BPF_PROG_TEST_RUN takes at most a page of linear data.
        let big = eth(&[], ETH_IPV4, &ipv4(&V4::default(), &udp(1, 2, &[7u8; 2958])));
        let small = eth(&[], ETH_IPV4, &ipv4(&V4::default(), &udp(1, 2, b"hi")));
        assert_eq!(big.len(), 3000);
        for (snaplen, caplen_big) in [(0, 3000), (65535, 3000), (64, 64), (1, 1)] {
            let mut lab = start(1 << 20, snaplen, &[ip(V4::default().src)])?;
            for f in [&big, &small, &big] {
                lab.send(lab.va, hook::EGRESS, f)?;
            }
            let copies = lab.drain();
            let lens: Vec<(usize, u32)> = copies.iter().map(|c| (c.data.len(), c.header.len)).collect();
            let caplen_small = small.len().min(caplen_big);
            assert_eq!(
                lens,
                [(caplen_big, 3000), (caplen_small, small.len() as u32), (caplen_big, 3000)],
                "snaplen {snaplen}"
            );
            for c in &copies {
                let f = if c.header.len == 3000 { &big } else { &small };
                assert_eq!(c.data[..], f[..c.data.len()], "a copy is the frame's first bytes");
            }
            let cut = [big.len(), small.len(), big.len()].iter().filter(|l| **l > caplen_big).count() as u64;
            let stats = capture::read_stats(&lab.tracer.ebpf)?;
            assert_eq!(stats.hooks[&(0, hook::EGRESS)].truncated, cut, "snaplen {snaplen}");
            assert_eq!(stats.hooks[&(0, hook::EGRESS)].copied, 3);
        }
        Ok(())
    })
}

#[test]
fn a_full_ring_loses_copies_counted_to_the_packet() -> Result<()> {
    let pair = VethPair::new("capr")?;
    netns::run_in(&pair.a, || {
        // One page of ring; each record takes 8 (ring header) + 72 (CaptureHeader) + 100
        // bytes, rounded up to 8: 184 bytes, so 22 fit.
        let mut lab = start(4096, 0, &[ip(V4::default().src)])?;
        let frame = eth(&[], ETH_IPV4, &ipv4(&V4::default(), &udp(1, 2, &[0u8; 58])));
        assert_eq!(frame.len(), 100);
        let sent = 100u64;
        for _ in 0..sent {
            lab.send(lab.va, hook::INGRESS, &frame)?;
        }
        let fit = 4096 / (8 + 72 + 100usize).next_multiple_of(8) as u64;
        let copies = lab.drain();
        assert_eq!(copies.len() as u64, fit);
        let s = capture::read_stats(&lab.tracer.ebpf)?.hooks[&(0, hook::INGRESS)];
        assert_eq!((s.copied, s.ring_full), (fit, sent - fit), "every packet copied or counted lost");
        // Drained, the ring takes copies again.
        lab.send(lab.va, hook::INGRESS, &frame)?;
        assert_eq!(lab.drain().len(), 1);
        Ok(())
    })
}
