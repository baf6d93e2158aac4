//! The capture decision on the paths a pod's packets take through the node, with the kernel's
//! tables replaced by plain memory: which hooks copy, what is learned, what is stashed and
//! what is counted missed.
use std::collections::HashSet;

use tracer_common::{
    FAMILY_V4, PROTO_TCP, PROTO_UDP, Tuple,
    capture::{ROLE_NODE, ROLE_POD},
    hook::{EGRESS, INGRESS},
};

use super::*;

const MAX_AGE: u64 = 1_000_000_000;
const SLOTS: usize = 64;

/// The kernel's maps as plain memory: the learn table stores both directions, as the kernel's.
struct Tables {
    pod: Vec<[u8; 16]>,
    tuples: HashSet<Tuple>,
    capacity: usize,
    sightings: Vec<CaptureSighting>,
}

impl Tables {
    fn new(pod: [u8; 4]) -> Tables {
        Tables {
            pod: vec![v4(pod)],
            tuples: HashSet::new(),
            capacity: 1024,
            sightings: vec![CaptureSighting::default(); SLOTS],
        }
    }
}

impl CaptureTables for Tables {
    fn pod_addr(&self, addr: &[u8; 16]) -> bool {
        self.pod.contains(addr)
    }
    fn known(&self, t: &Tuple) -> bool {
        self.tuples.contains(t)
    }
    fn learn(&mut self, t: &Tuple) -> bool {
        if self.tuples.len() + 2 > self.capacity {
            return false;
        }
        self.tuples.insert(*t);
        self.tuples.insert(t.reversed());
        true
    }
    fn sighting(&mut self, sig: u64) -> Option<&mut CaptureSighting> {
        self.sightings.get_mut(sig as usize % SLOTS)
    }
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&a);
    out
}

fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Tuple {
    Tuple { src: v4(src), dst: v4(dst), sport, dport, proto: PROTO_TCP, family: FAMILY_V4, _pad: [0; 2] }
}

const POD: [u8; 4] = [198, 18, 2, 11];
const NODE: [u8; 4] = [198, 18, 1, 10];
const INET: [u8; 4] = [203, 0, 113, 10];
const ALB: [u8; 4] = [198, 18, 100, 10];
const OTHER_POD: [u8; 4] = [198, 18, 2, 12];

const VETH: u32 = 7;
const ETH0: u32 = 2;
const ETH1: u32 = 3;

/// One packet at one hook: (interface, hook, tuple, signature, time, new flow).
struct At {
    ifindex: u32,
    hook: u8,
    tuple: Tuple,
    sig: u64,
    now: u64,
    new_flow: bool,
}

fn at(ifindex: u32, hook: u8, tuple: Tuple, sig: u64, now: u64) -> At {
    At { ifindex, hook, tuple, sig, now, new_flow: false }
}

fn run(t: &mut Tables, a: &At) -> Decision {
    let role = if a.ifindex == VETH { ROLE_POD } else { ROLE_NODE };
    let p = Packet {
        tuple: Some(&a.tuple),
        sig: a.sig,
        ifindex: a.ifindex,
        hook: a.hook,
        role,
        slot: a.ifindex as u16,
        now_ns: a.now,
        new_flow: a.new_flow,
    };
    decide(&p, t, MAX_AGE)
}

#[test]
fn internet_egress_is_copied_before_and_after_the_snat_and_its_replies_too() {
    let mut t = Tables::new(POD);
    let pod_side = tcp(POD, 40000, INET, 80);
    let wire = tcp(NODE, 47165, INET, 80);
    // The SYN leaves the pod, then eth0 after the SNAT: no pod address there.
    let d = run(&mut t, &at(VETH, INGRESS, pod_side, 11, 1000));
    assert!(d.copy && !d.stash && d.missed.is_none());
    let d = run(&mut t, &at(ETH0, EGRESS, wire, 11, 1200));
    assert!(d.copy, "the SNATed copy of a packet the veth copied");
    assert_eq!((d.learned, d.learn_failed), (1, 0));
    // The SYN-ACK enters eth0 addressed to the node: a learned tuple (reversed).
    let d = run(&mut t, &at(ETH0, INGRESS, wire.reversed(), 12, 5000));
    assert!(d.copy && d.learned == 0);
    let d = run(&mut t, &at(VETH, EGRESS, pod_side.reversed(), 12, 5100));
    assert!(d.copy && d.missed.is_none());
    // Later segments at eth0 are known without their veth sighting (another slot's packet
    // overwrote it: the tuple alone decides).
    t.sightings.iter_mut().for_each(|s| *s = CaptureSighting::default());
    assert!(run(&mut t, &at(ETH0, EGRESS, wire, 13, 9000)).copy);
}

#[test]
fn nodeport_ingress_is_stashed_before_the_dnat_and_written_when_the_veth_sees_it() {
    let mut t = Tables::new(POD);
    let wire = tcp(ALB, 35750, NODE, 30080);
    let pod_side = tcp(NODE, 2590, POD, 8080);
    // The SYN enters eth0 for the node's NodePort: nothing says it is the pod's yet.
    let syn = At { new_flow: true, ..at(ETH0, INGRESS, wire, 21, 1000) };
    let d = run(&mut t, &syn);
    assert!(!d.copy && d.stash, "first packet of a new flow at an ENI's ingress is stashed");
    // After DNAT + MASQUERADE it reaches the pod's veth: the eth0 sighting was the pod's.
    let d = run(&mut t, &at(VETH, EGRESS, pod_side, 21, 1300));
    assert!(d.copy);
    assert_eq!(d.missed, Some(Missed { ts_ns: 1000, ifindex: ETH0, hook: INGRESS, slot: ETH0 as u16 }));
    assert_eq!(d.learned, 1);
    // Everything after: the wire tuple is known both ways.
    let d = run(&mut t, &at(VETH, INGRESS, pod_side.reversed(), 22, 2000));
    assert!(d.copy);
    let d = run(&mut t, &at(ETH0, EGRESS, wire.reversed(), 22, 2100));
    assert!(d.copy && d.missed.is_none());
    let d = run(&mut t, &At { new_flow: false, ..at(ETH0, INGRESS, wire, 23, 3000) });
    assert!(d.copy && !d.stash);
}

#[test]
fn only_new_flows_at_an_eni_ingress_are_stashed() {
    let mut t = Tables::new(POD);
    let foreign = tcp(ALB, 1000, NODE, 22);
    for (ifindex, hook, new_flow, stash) in [
        (ETH0, INGRESS, true, true),
        (ETH0, INGRESS, false, false),
        (ETH0, EGRESS, true, false),
        (ETH1, INGRESS, true, true),
    ] {
        let d = run(&mut t, &At { new_flow, ..at(ifindex, hook, foreign, 31, 100) });
        assert_eq!((d.copy, d.stash), (false, stash), "{ifindex}/{hook} new={new_flow}");
    }
}

#[test]
fn other_traffic_is_never_copied() {
    let mut t = Tables::new(POD);
    // Another pod's SNATed egress: its veth is not traced, the eth0 sighting ties to nothing.
    let other = tcp(NODE, 50000, INET, 443);
    assert!(!run(&mut t, &at(ETH0, EGRESS, other, 41, 100)).copy);
    assert!(!run(&mut t, &at(ETH0, INGRESS, other.reversed(), 42, 200)).copy);
    // Another pod's VPC traffic by eth1, and NodePort traffic served by another node.
    assert!(!run(&mut t, &at(ETH1, EGRESS, tcp(OTHER_POD, 1, ALB, 2), 43, 300)).copy);
    let fwd_in = At { new_flow: true, ..at(ETH0, INGRESS, tcp(ALB, 3, NODE, 30080), 44, 400) };
    assert!(!run(&mut t, &fwd_in).copy);
    assert!(!run(&mut t, &at(ETH0, EGRESS, tcp(NODE, 4, [198, 18, 3, 11], 8080), 44, 450)).copy);
    assert!(t.tuples.is_empty(), "nothing learned from other traffic");
}

#[test]
fn a_shared_signature_ties_only_one_packet_crossing_from_ingress_to_egress() {
    let pod_side = tcp(POD, 40000, INET, 80);
    let wire = tcp(NODE, 47165, INET, 80);
    let mut udp_wire = wire;
    udp_wire.proto = PROTO_UDP;
    let cases: [(&str, At, At); 5] = [
        ("same interface", at(VETH, INGRESS, pod_side, 51, 100), at(VETH, EGRESS, wire, 51, 200)),
        ("egress then egress", at(VETH, EGRESS, pod_side, 51, 100), at(ETH0, EGRESS, wire, 51, 200)),
        ("too old", at(VETH, INGRESS, pod_side, 51, 100), at(ETH0, EGRESS, wire, 51, 100 + MAX_AGE)),
        ("another protocol", at(VETH, INGRESS, pod_side, 51, 100), at(ETH0, EGRESS, udp_wire, 51, 200)),
        ("another signature", at(VETH, INGRESS, pod_side, 51, 100), at(ETH0, EGRESS, wire, 52, 200)),
    ];
    for (what, first, second) in cases {
        let mut t = Tables::new(POD);
        run(&mut t, &first);
        let d = run(&mut t, &second);
        // A VETH second sighting is copied for being the pod's veth; nothing is learned.
        assert_eq!(d.copy, second.ifindex == VETH, "{what}");
        assert_eq!(d.learned, 0, "{what}");
    }
}

#[test]
fn frames_without_a_tuple_are_copied_on_the_pods_veth_only() {
    let mut t = Tables::new(POD);
    for (role, copy) in [(ROLE_POD, true), (ROLE_NODE, false)] {
        let p = Packet {
            tuple: None,
            sig: 0,
            ifindex: 9,
            hook: INGRESS,
            role,
            slot: 0,
            now_ns: 1,
            new_flow: false,
        };
        let d = decide(&p, &mut t, MAX_AGE);
        assert_eq!((d.copy, d.stash, d.missed), (copy, false, None));
    }
}

#[test]
fn a_full_learn_table_is_counted_and_the_packet_still_copied() {
    let mut t = Tables::new(POD);
    t.capacity = 0;
    run(&mut t, &at(VETH, INGRESS, tcp(POD, 1, INET, 80), 61, 100));
    let d = run(&mut t, &at(ETH0, EGRESS, tcp(NODE, 2, INET, 80), 61, 200));
    assert!(d.copy);
    assert_eq!((d.learned, d.learn_failed), (0, 1));
}

#[test]
fn reverse_into_is_reversed() {
    let t = Tuple { _pad: [0; 2], ..tcp(POD, 40000, INET, 80) };
    let mut out = tcp([9; 4], 9, [9; 4], 9);
    reverse_into(&mut out, &t);
    assert_eq!(out, t.reversed());
}
