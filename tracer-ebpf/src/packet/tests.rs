//! The parser on the host, reading frames from byte slices: the malformed-packet table the
//! end-to-end test sends through the loaded program, cut-off and corrupted frames, and the
//! signature's NAT invariance.
use std::collections::HashSet;

use test_frames::{malformed::cases, *};
use tracer_common::{FAMILY_V4, FAMILY_V6, Tuple, counter};

use super::*;
use crate::signature::Invariants;

/// A frame in memory. Reads past its end fail, as reads past the end of a packet do in the
/// kernel.
struct Bytes<'a>(&'a [u8]);

impl Reader for Bytes<'_> {
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        let b = self.0.get(off..off.checked_add(size_of::<T>())?)?;
        // SAFETY: `b` holds size_of::<T>() bytes, and the parser only reads byte arrays and
        // integers, for which any bytes are a valid value.
        Some(unsafe { core::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
    }

    fn read_into(&self, off: usize, dst: &mut [u8]) -> bool {
        match off.checked_add(dst.len()).and_then(|end| self.0.get(off..end)) {
            Some(b) => {
                dst.copy_from_slice(b);
                true
            }
            None => false,
        }
    }
}

/// The common-case parser's window: exactly the bytes it asked for, so a read past them panics
/// (in the kernel, the verifier would reject the program).
struct Prefix<'a>(&'a [u8]);

impl common::Window for Prefix<'_> {
    fn at<T: Copy>(&self, off: usize) -> T {
        let b = &self.0[off..off + size_of::<T>()];
        // SAFETY: as in `Bytes::read`.
        unsafe { core::ptr::read_unaligned(b.as_ptr().cast::<T>()) }
    }
}

impl<'a> common::Direct for Bytes<'a> {
    type Window = Prefix<'a>;

    fn window(&self, len: usize) -> Option<Prefix<'a>> {
        self.0.get(..len).map(Prefix)
    }
}

/// The counters raised, in order.
#[derive(Default)]
struct Raised(Vec<u32>);

impl Counters for Raised {
    fn count(&mut self, index: u32) {
        self.0.push(index);
    }
}

/// What a TC program makes of `frame`: the counters it raises (sorted) and, when it tracks the
/// frame, the tuple and signature.
fn classify(frame: &[u8]) -> (Vec<u32>, Option<(Tuple, u64)>) {
    let mut t = Tuple::default();
    let mut raised = Raised::default();
    let mut p = Parsed::default();
    let tracked = classify_frame(&Bytes(frame), &mut t, &mut p, &mut raised);
    raised.0.sort_unstable();
    (raised.0, tracked.then(|| (t, p.inv.signature())))
}

/// A tracked frame's tuple, invariants, TCP flags and note.
type Fields = (Tuple, Invariants, u8, u32);

/// Everything either parser makes of `frame`: the counters (sorted), and the fields when
/// tracked.
fn outcome(frame: &[u8], general_only: bool) -> (Vec<u32>, Option<Fields>) {
    let mut t = Tuple::default();
    let mut raised = Raised::default();
    let mut p = Parsed::default();
    let tracked = if general_only {
        classify_frame_general(&Bytes(frame), &mut t, &mut p, &mut raised)
    } else {
        classify_frame(&Bytes(frame), &mut t, &mut p, &mut raised)
    };
    raised.0.sort_unstable();
    (raised.0, tracked.then_some((t, p.inv, p.tcp_flags, p.note)))
}

/// Every frame the tests know, whole, cut off at each length, and with each byte set to 0x00,
/// 0xff and flipped in its top bit.
fn every_test_frame() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut whole: Vec<(String, Vec<u8>)> =
        cases().into_iter().map(|c| (c.name.to_string(), c.frame)).collect();
    whole.extend(common_case_frames());
    whole.push(("IPv4 UDP, 3-byte payload".into(), short_udp()));
    for (name, frame) in whole {
        for len in 0..frame.len() {
            out.push((format!("{name} cut to {len}"), frame[..len].to_vec()));
        }
        for i in 0..frame.len() {
            for value in [0x00, 0xff, frame[i] ^ 0x80] {
                let mut f = frame.clone();
                f[i] = value;
                out.push((format!("{name}, byte {i} = {value:#04x}"), f));
            }
        }
        out.push((name, frame));
    }
    out
}

/// Frames of the common case: untagged IPv4 without options and IPv6 without extension
/// headers, carrying TCP (with and without payload) or UDP.
fn common_case_frames() -> Vec<(String, Vec<u8>)> {
    let v4 = |proto| V4 { proto, id: 0x1234, ..V4::default() };
    let seg = tcp(40000, 443, 0x18, b"0123456789abcdef");
    vec![
        ("IPv4 TCP".into(), eth(&[], ETH_IPV4, &ipv4(&v4(6), &seg))),
        ("IPv4 TCP, no payload".into(), eth(&[], ETH_IPV4, &ipv4(&v4(6), &tcp(40000, 443, 0x10, &[])))),
        ("IPv4 UDP".into(), eth(&[], ETH_IPV4, &ipv4(&v4(17), &udp(35750, 53, b"query payload")))),
        ("IPv6 TCP".into(), eth(&[], ETH_IPV6, &ipv6(6, V6_SRC, V6_DST, &seg, None))),
        (
            "IPv6 UDP".into(),
            eth(&[], ETH_IPV6, &ipv6(17, V6_SRC, V6_DST, &udp(35750, 53, b"query payload"), None)),
        ),
    ]
}

/// The common-case parser gives exactly what the general parser gives, on every test frame
/// (whole, cut off, corrupted), or leaves the frame to it.
#[test]
fn the_common_case_parser_agrees_with_the_general_one_on_every_frame() {
    let mut failures = Vec::new();
    let frames = every_test_frame();
    for (name, frame) in &frames {
        let (fast, general) = (outcome(frame, false), outcome(frame, true));
        if fast != general {
            failures.push(format!("{name}: {fast:?}, general parser {general:?}"));
        }
    }
    assert!(frames.len() > 10_000, "only {} frames", frames.len());
    assert!(failures.is_empty(), "{} frame(s):\n{}", failures.len(), failures.join("\n"));
}

/// The common case is taken by the common-case parser (so that the agreement above means
/// something) and every other kind of frame is left to the general one.
#[test]
fn the_common_case_parser_takes_exactly_the_common_case() {
    let parses = |frame: &[u8]| {
        let mut t = Tuple::default();
        let mut p = Parsed::default();
        let taken = common::parse_common(&Bytes(frame), &mut t, &mut p);
        if !taken {
            assert_eq!(
                (t, p.inv, p.tcp_flags, p.note),
                (Tuple::default(), Invariants::default(), 0, NO_NOTE),
                "left untouched"
            );
        }
        taken
    };
    for (name, frame) in common_case_frames() {
        assert!(parses(&frame), "{name}");
    }
    let seg = tcp(40000, 443, 0x18, b"0123456789abcdef");
    let tcp4 = V4 { proto: 6, ..V4::default() };
    let others = [
        ("VLAN-tagged", eth(&[ETH_8021Q], ETH_IPV4, &ipv4(&tcp4, &seg))),
        ("IPv4 options", eth(&[], ETH_IPV4, &ipv4(&V4 { ihl: 6, ..tcp4.clone() }, &seg))),
        ("a later IPv4 fragment", eth(&[], ETH_IPV4, &ipv4(&V4 { frag: 0x0010, ..tcp4.clone() }, &seg))),
        (
            "ICMP",
            eth(&[], ETH_IPV4, &ipv4(&V4 { proto: 1, ..V4::default() }, &icmp(8, 0, [0, 1, 0, 2], b"ping"))),
        ),
        (
            "IPv6 with a hop-by-hop header",
            eth(&[], ETH_IPV6, &ipv6(0, V6_SRC, V6_DST, &[ext8(6), seg.clone()].concat(), None)),
        ),
        ("ARP", eth(&[], ETH_ARP, &[0; 28])),
        ("IPv4 UDP shorter than the window (3-byte payload)", short_udp()),
        ("IPv4 TCP cut inside the window", eth(&[], ETH_IPV4, &ipv4(&tcp4, &seg))[..40].to_vec()),
    ];
    for (name, frame) in others {
        assert!(!parses(&frame), "{name}");
    }
}

/// A UDP datagram whose frame ends before the common case's window.
fn short_udp() -> Vec<u8> {
    eth(&[], ETH_IPV4, &ipv4(&V4::default(), &udp(35750, 53, b"abc")))
}

fn signature(frame: &[u8]) -> u64 {
    match classify(frame) {
        (_, Some((_, sig))) => sig,
        (counters, None) => panic!("frame not tracked, counters {counters:?}"),
    }
}

fn names(counters: &[u32]) -> Vec<&'static str> {
    counters.iter().map(|c| counter::NAMES[*c as usize]).collect()
}

#[test]
fn malformed_table_gives_the_counters_and_entry_the_kernel_test_expects() {
    let mut failures = Vec::new();
    for c in cases() {
        let (got, tracked) = classify(&c.frame);
        let mut want = c.counters.clone();
        want.sort_unstable();
        if got != want {
            failures.push(format!("{}: counters {:?}, want {:?}", c.name, names(&got), names(&want)));
        }
        let got_tuple = tracked.map(|(t, _)| t);
        let want_tuple = c.entry.map(|e| e.tuple());
        if got_tuple != want_tuple {
            failures.push(format!("{}: entry {got_tuple:?}, want {want_tuple:?}", c.name));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// A frame cut off anywhere is either still the same flow (the cut is past every header the
/// parser reads) or not tracked and counted as malformed; never another flow.
#[test]
fn a_cut_off_frame_is_the_same_flow_or_malformed() {
    let mut failures = Vec::new();
    for c in cases() {
        let (_, whole) = classify(&c.frame);
        for len in 0..c.frame.len() {
            let (counters, cut) = classify(&c.frame[..len]);
            let ok = match (&whole, &cut) {
                (Some((w, _)), Some((t, _))) => w == t,
                (_, None) => counters.contains(&counter::MALFORMED) || whole.is_none(),
                (None, Some(_)) => false,
            };
            if !ok {
                failures.push(format!(
                    "{} cut to {len} bytes: {:?} {:?}, whole {:?}",
                    c.name,
                    names(&counters),
                    cut.map(|(t, _)| t),
                    whole.map(|(t, _)| t)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every frame the kernel sees raises `packets`, then either `tracked` or exactly one reason
/// why not; the summary's totals add up only if that holds for any bytes. Checked on every
/// table frame with each byte in turn set to 0x00, 0xff and flipped in its top bit.
#[test]
fn a_corrupted_frame_is_tracked_or_counted_under_exactly_one_reason() {
    let reasons = [counter::MALFORMED, counter::NON_IP, counter::LOCAL_SCOPE];
    let notes = [counter::FRAGMENTS, counter::IPV6_EXT_LIMIT, counter::OTHER_L4];
    let mut failures = Vec::new();
    let mut frames = 0;
    for c in cases() {
        for i in 0..c.frame.len() {
            for value in [0x00, 0xff, c.frame[i] ^ 0x80] {
                let mut frame = c.frame.clone();
                frame[i] = value;
                frames += 1;
                let (counters, tracked) = classify(&frame);
                let count = |set: &[u32]| counters.iter().filter(|c| set.contains(c)).count();
                let vlan = counters.iter().filter(|c| **c == counter::VLAN).count();
                let ok = vlan <= 1
                    && count(&notes) <= 1
                    && match tracked {
                        Some((t, _)) => count(&reasons) == 0 && matches!(t.family, FAMILY_V4 | FAMILY_V6),
                        None => count(&reasons) == 1 && count(&notes) == 0,
                    }
                    && counters.len() == vlan + count(&notes) + count(&reasons);
                if !ok {
                    failures.push(format!("{}, byte {i} = {value:#04x}: {:?}", c.name, names(&counters)));
                }
            }
        }
    }
    assert!(frames > 10_000, "only {frames} frames");
    assert!(failures.is_empty(), "{} frame(s):\n{}", failures.len(), failures.join("\n"));
}

/// Offsets in a frame without VLAN tags.
const IP: usize = 14;
const V4_TTL: usize = IP + 8;
const V4_CHECKSUM: usize = IP + 10;
const V4_L4: usize = IP + 20;
const V6_HOP_LIMIT: usize = IP + 7;
const V6_L4: usize = IP + 40;

/// The same packet before and after each rewrite of the node's path (SNAT, DNAT, the TTL or
/// hop limit a router decrements, checksums, the echo identifier that NAT rewrites, a VLAN tag
/// on the way) has the same signature: that is what ties its sightings at different hooks
/// together and samples it at all of them or none.
#[test]
fn rewrites_on_the_node_path_keep_the_signature() {
    let pod = V4 { proto: 6, ..V4::default() };
    let seg = tcp(40000, 80, 0x18, b"GET / HTTP/1.1");
    let at_veth = eth(&[], ETH_IPV4, &ipv4(&pod, &seg));
    let mut snat_seg = tcp(47165, 80, 0x18, b"GET / HTTP/1.1");
    snat_seg[16..18].copy_from_slice(&[0xbe, 0xef]);
    let mut at_eni = eth(&[], ETH_IPV4, &ipv4(&V4 { src: [198, 18, 1, 10], ..pod.clone() }, &snat_seg));
    at_eni[V4_TTL] -= 1;
    at_eni[V4_CHECKSUM..V4_CHECKSUM + 2].copy_from_slice(&[0x12, 0x34]);
    assert_eq!(signature(&at_veth), signature(&at_eni), "TCP after SNAT");
    let tagged = eth(&[ETH_8021Q], ETH_IPV4, &ipv4(&pod, &seg));
    assert_eq!(signature(&at_veth), signature(&tagged), "TCP behind a VLAN tag");

    let client = V4 { src: [198, 18, 100, 10], dst: [198, 18, 1, 10], ..V4::default() };
    let at_node = eth(&[], ETH_IPV4, &ipv4(&client, &udp(35750, 30080, b"request")));
    let dnat = V4 { dst: [198, 18, 2, 11], ..client.clone() };
    let at_pod = eth(&[], ETH_IPV4, &ipv4(&dnat, &udp(35750, 8080, b"request")));
    assert_eq!(signature(&at_node), signature(&at_pod), "UDP after DNAT");

    let echo = |src, id: [u8; 2]| {
        let h = V4 { src, proto: 1, ..V4::default() };
        eth(&[], ETH_IPV4, &ipv4(&h, &icmp(8, 0, [id[0], id[1], 0, 9], b"ping")))
    };
    assert_eq!(
        signature(&echo([198, 18, 2, 11], [0x12, 0x34])),
        signature(&echo([198, 18, 1, 10], [0x56, 0x78])),
        "ICMP echo after SNAT with a new identifier"
    );

    let v6_pod = eth(&[], ETH_IPV6, &ipv6(6, V6_SRC, V6_DST, &seg, None));
    let mut v6_node_src = V6_SRC;
    v6_node_src[15] = 0x99;
    let mut v6_node = eth(&[], ETH_IPV6, &ipv6(6, v6_node_src, V6_DST, &snat_seg, None));
    v6_node[V6_HOP_LIMIT] -= 1;
    assert_eq!(signature(&v6_pod), signature(&v6_node), "IPv6 TCP after SNAT");
}

/// Packets of one flow that differ in any field the signature covers get different
/// signatures, so two packets are rarely mistaken for one.
#[test]
fn packets_of_one_flow_get_different_signatures() {
    let v4 = V4 { proto: 6, ..V4::default() };
    let base = eth(&[], ETH_IPV4, &ipv4(&v4, &tcp(40000, 80, 0x10, b"data")));
    let with = |at: usize, bytes: &[u8]| {
        let mut f = base.clone();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        f
    };
    let udp_frame = |payload: &[u8]| eth(&[], ETH_IPV4, &ipv4(&V4::default(), &udp(5000, 53, payload)));
    let v6_frame = |label: u8| {
        let mut f = eth(&[], ETH_IPV6, &ipv6(17, V6_SRC, V6_DST, &udp(5000, 53, b"q"), None));
        f[IP + 3] = label;
        f
    };
    let icmp_frame = |seq: u8| {
        let h = V4 { proto: 1, ..V4::default() };
        eth(&[], ETH_IPV4, &ipv4(&h, &icmp(8, 0, [0, 1, 0, seq], b"ping")))
    };
    let variants = [
        ("base", base.clone()),
        ("IPv4 id", with(IP + 4, &[0x12, 0x35])),
        ("TCP seq", with(V4_L4 + 7, &[0xe9])),
        ("TCP ack", with(V4_L4 + 11, &[0xd1])),
        ("TCP flags", with(V4_L4 + 13, &[0x18])),
        ("TCP window", with(V4_L4 + 14, &[0x7f])),
        ("L4 length", eth(&[], ETH_IPV4, &ipv4(&v4, &tcp(40000, 80, 0x10, b"data!")))),
        ("UDP payload a", udp_frame(b"aaaaaaaa")),
        ("UDP payload b", udp_frame(b"aaaaaaab")),
        ("IPv6 flow label 0x45", v6_frame(0x45)),
        ("IPv6 flow label 0x46", v6_frame(0x46)),
        ("ICMP seq 1", icmp_frame(1)),
        ("ICMP seq 2", icmp_frame(2)),
    ];
    let mut seen = HashSet::new();
    for (name, frame) in &variants {
        assert!(seen.insert(signature(frame)), "{name}: same signature as an earlier variant");
    }
    let v6 = eth(&[], ETH_IPV6, &ipv6(6, V6_SRC, V6_DST, &tcp(40000, 80, 0x10, b"data"), None));
    let mut v6_seq = v6.clone();
    v6_seq[V6_L4 + 7] ^= 1;
    assert_ne!(signature(&v6), signature(&v6_seq), "IPv6 TCP seq");
}

/// Whether the default sampling (mask 0xf) takes `frame`.
fn sampled(frame: &[u8]) -> bool {
    let mut t = Tuple::default();
    let mut p = Parsed::default();
    assert!(classify_frame(&Bytes(frame), &mut t, &mut p, &mut Raised::default()), "tracked");
    p.inv.sampled(0xf)
}

/// Sampling takes one packet in 16 with the default mask 0xf if its decision is evenly spread.
/// 4 096 packets of a bulk TCP transfer (IPv4 id + 1, seq + 1448 each) and of a UDP stream
/// (id + 1, a counter in the first payload bytes, as iperf3 sends): 256 expected each;
/// 192–320 is four standard deviations.
#[test]
fn default_sampling_takes_about_one_packet_in_sixteen() {
    let (mut tcp_sampled, mut udp_sampled) = (0, 0);
    for i in 0..4096u32 {
        let h = V4 { proto: 6, id: i as u16, ..V4::default() };
        let mut frame = eth(&[], ETH_IPV4, &ipv4(&h, &tcp(40000, 80, 0x10, &[0; 1448])));
        frame[V4_L4 + 4..V4_L4 + 8].copy_from_slice(&(1000 + i * 1448).to_be_bytes());
        tcp_sampled += sampled(&frame) as u32;
        let h = V4 { proto: 17, id: i as u16, ..V4::default() };
        let mut payload = [0u8; 64];
        payload[..4].copy_from_slice(&(i + 1).to_be_bytes());
        udp_sampled += sampled(&eth(&[], ETH_IPV4, &ipv4(&h, &udp(40000, 5201, &payload)))) as u32;
    }
    assert!((192..=320).contains(&tcp_sampled), "TCP: {tcp_sampled} of 4096 sampled");
    assert!((192..=320).contains(&udp_sampled), "UDP: {udp_sampled} of 4096 sampled");
}

/// The sampling decision is made from the invariant fields alone, so a packet rewritten by
/// SNAT is sampled at both hooks or at neither: over many packets, both cases occur and the
/// two hooks never disagree.
#[test]
fn sampling_agrees_across_snat() {
    let mut taken = 0;
    for i in 0..1024u32 {
        let at = |src: [u8; 4], sport: u16| {
            let h = V4 { src, proto: 6, id: i as u16, ..V4::default() };
            let mut f = eth(&[], ETH_IPV4, &ipv4(&h, &tcp(sport, 443, 0x18, &[7; 100])));
            f[V4_L4 + 4..V4_L4 + 8].copy_from_slice(&(i * 100).to_be_bytes());
            f
        };
        let (veth, eni) = (at([198, 18, 1, 10], 40000), at([198, 18, 0, 5], 61000));
        assert_eq!(sampled(&veth), sampled(&eni), "packet {i}");
        taken += sampled(&veth) as u32;
    }
    assert!(taken > 0 && taken < 1024, "{taken} of 1024 sampled");
}
