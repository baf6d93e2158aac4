//! The first kernel program end to end: a TC classifier attached by tracer-user code to one
//! end of a veth pair counts exactly the packets that crossed it.
use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Result, anyhow};
use podtrace::kernel::{
    addr,
    attach::{AttachMode, Tracer},
    load::LoadOptions,
    maps, netlink,
};
use tests::VethPair;
use tracer_common::{PROTO_UDP, hook};
use xtask::netns;

const PACKETS: u32 = 100;

#[test]
fn tc_program_counts_every_udp_packet_crossing_a_veth() -> Result<()> {
    let pair = VethPair::new("found")?;
    let (tracer, va) = netns::run_in(&pair.a, || {
        let mut t = Tracer::load(&LoadOptions::default(), AttachMode::Auto)?;
        let va = netlink::ifindex("va").ok_or_else(|| anyhow!("va missing"))?;
        t.attach(va, "va")?;
        Ok((t, va))
    })?;

    let server = netns::run_in(&pair.b, || Ok(UdpSocket::bind("198.18.250.2:9999")?))?;
    server.set_read_timeout(Some(Duration::from_secs(2)))?;
    let client = netns::run_in(&pair.a, || Ok(UdpSocket::bind("198.18.250.1:0")?))?;
    let to: SocketAddr = "198.18.250.2:9999".parse()?;
    for i in 0..PACKETS {
        client.send_to(&i.to_be_bytes(), to)?;
    }
    let mut buf = [0u8; 16];
    for _ in 0..PACKETS {
        server.recv_from(&mut buf)?;
    }

    let want = addr::tuple(PROTO_UDP, client.local_addr()?, to);
    let flows = maps::read_flows(&tracer.ebpf)?;
    let seen = |h: u8| {
        flows
            .iter()
            .filter(|(k, _)| k.tuple == want && k.ifindex == va && k.hook == h)
            .map(|(_, s)| s.packets)
            .sum::<u64>()
    };
    assert_eq!(seen(hook::EGRESS), PACKETS as u64, "packets seen leaving va");
    assert_eq!(seen(hook::INGRESS), 0, "nothing of this flow enters va");
    let counters = maps::read_counters(&tracer.ebpf)?;
    assert!(counters[tracer_common::counter::PACKETS as usize] >= PACKETS as u64);
    Ok(())
}
