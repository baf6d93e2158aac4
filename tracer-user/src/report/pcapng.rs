//! pcapng output of `podtrace capture`, written with the `pcap-file` crate: a Section Header
//! Block, one Interface Description Block per (interface, hook) with nanosecond timestamps
//! (`if_tsresol` = 9), Enhanced Packet Blocks (with a comment where podtrace has something to
//! say about the packet's flow) and, at the end, an Interface Statistics Block per interface
//! with what was lost there.
use std::{borrow::Cow, io::Write, time::Duration};

use anyhow::{Context, Result};
use pcap_file::{
    DataLink, Endianness,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{
                InterfaceDescriptionBlock, InterfaceDescriptionOption, InterfaceTsResolution,
            },
            interface_statistics::{InterfaceStatisticsBlock, InterfaceStatisticsOption},
            opt_common::CommonOption,
            section_header::{SectionHeaderBlock, SectionHeaderOption},
        },
    },
};

/// One Interface Description Block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// `eni1a2b3c4d5e6/ingress`
    pub name: String,
    /// What it is to the node and what the hook sees.
    pub description: String,
    pub mac: Option<[u8; 6]>,
}

/// One Interface Statistics Block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// The pod's packets that reached the capture at this hook (written, cut off by the
    /// filter, lost).
    pub received: u64,
    /// The pod's packets lost at this hook (ring full, missed).
    pub dropped: u64,
    /// Packets the filter accepted (`None` without a filter).
    pub filter_accepted: Option<u64>,
    /// Packets written.
    pub delivered: u64,
    /// The losses by cause, one line.
    pub comment: String,
}

/// A pcapng stream being written.
pub struct Pcapng<W: Write> {
    w: PcapNgWriter<W>,
}

fn ts(unix_ns: u64) -> Duration {
    Duration::from_nanos(unix_ns)
}

impl<W: Write> Pcapng<W> {
    /// Writes the section header and every interface block (interface `i` of `ifaces` is
    /// interface id `i`).
    pub fn new(w: W, application: &str, comment: &str, snaplen: u32, ifaces: &[Interface]) -> Result<Self> {
        let os = nix::sys::utsname::uname()
            .map(|u| format!("{} {}", u.sysname().to_string_lossy(), u.release().to_string_lossy()))
            .unwrap_or_else(|_| "Linux".into());
        let shb = SectionHeaderBlock {
            endianness: Endianness::Little,
            options: vec![
                SectionHeaderOption::UserApplication(Cow::Owned(application.to_string())),
                SectionHeaderOption::OS(Cow::Owned(os)),
                SectionHeaderOption::Common(CommonOption::Comment(Cow::Owned(comment.to_string()))),
            ],
            ..Default::default()
        };
        let mut w = PcapNgWriter::with_section_header(w, shb).context("writing the pcapng header")?;
        for i in ifaces {
            let mut options = vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(i.name.clone())),
                InterfaceDescriptionOption::IfDescription(Cow::Owned(i.description.clone())),
                InterfaceDescriptionOption::IfTsResol(InterfaceTsResolution::NANO),
            ];
            if let Some(mac) = i.mac {
                options.push(InterfaceDescriptionOption::IfMacAddr(Cow::Owned(mac.to_vec())));
            }
            let idb = InterfaceDescriptionBlock { linktype: DataLink::ETHERNET, snaplen, options };
            w.write_pcapng_block(idb).context("writing a pcapng interface block")?;
        }
        Ok(Pcapng { w })
    }

    /// One packet: `data` is the copy (≤ `orig_len`), `unix_ns` when the hook saw it.
    pub fn packet(
        &mut self,
        iface: u32,
        unix_ns: u64,
        data: &[u8],
        orig_len: u32,
        comment: Option<&str>,
    ) -> Result<()> {
        let options = comment
            .map(|c| vec![EnhancedPacketOption::Common(CommonOption::Comment(Cow::Borrowed(c)))])
            .unwrap_or_default();
        let epb = EnhancedPacketBlock {
            interface_id: iface,
            timestamp: ts(unix_ns),
            original_len: orig_len.max(data.len() as u32),
            data: Cow::Borrowed(data),
            options,
        };
        self.w.write_pcapng_block(epb).context("writing a packet")?;
        Ok(())
    }

    /// The statistics of one interface (at the end of the capture).
    pub fn statistics(&mut self, iface: u32, s: &InterfaceStats) -> Result<()> {
        let mut options = vec![
            InterfaceStatisticsOption::IsbStartTime(ts(s.start_unix_ns)),
            InterfaceStatisticsOption::IsbEndTime(ts(s.end_unix_ns)),
            InterfaceStatisticsOption::IsbIfRecv(s.received),
            InterfaceStatisticsOption::IsbIfDrop(s.dropped),
        ];
        if let Some(n) = s.filter_accepted {
            options.push(InterfaceStatisticsOption::IsbFilterAccept(n));
        }
        options.push(InterfaceStatisticsOption::IsbUsrDeliv(s.delivered));
        if !s.comment.is_empty() {
            options.push(InterfaceStatisticsOption::Common(CommonOption::Comment(Cow::Owned(
                s.comment.clone(),
            ))));
        }
        let isb = InterfaceStatisticsBlock { interface_id: iface, timestamp: ts(s.end_unix_ns), options };
        self.w.write_pcapng_block(isb).context("writing interface statistics")?;
        Ok(())
    }

    pub fn get_mut(&mut self) -> &mut W {
        self.w.get_mut()
    }

    pub fn into_inner(self) -> W {
        self.w.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocks are what the pcapng spec lays out (checked here on the raw bytes; the
    /// end-to-end tests read whole captures with tshark).
    #[test]
    fn blocks_have_nanosecond_timestamps_names_and_comments() {
        let ifaces = [Interface {
            name: "eth0/egress".into(),
            description: "ENI".into(),
            mac: Some([2, 0, 0, 0, 0, 1]),
        }];
        let mut p = Pcapng::new(Vec::new(), "podtrace test", "a capture", 128, &ifaces).unwrap();
        let t = 1_700_000_000_123_456_789u64;
        p.packet(0, t, &[0xaa; 5], 60, Some("first of its flow")).unwrap();
        p.statistics(
            0,
            &InterfaceStats {
                start_unix_ns: t,
                end_unix_ns: t + 1,
                received: 3,
                dropped: 2,
                delivered: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let b = p.into_inner();
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        // Blocks in order: SHB, IDB, EPB, ISB.
        let mut types = Vec::new();
        let mut off = 0;
        let mut epb = 0;
        while off < b.len() {
            let (ty, len) = (u32_at(off), u32_at(off + 4) as usize);
            assert_eq!(u32_at(off + len - 4) as usize, len, "trailing length");
            if ty == 6 {
                epb = off;
            }
            types.push(ty);
            off += len;
        }
        assert_eq!(types, [0x0a0d0d0a, 1, 6, 5]);
        // EPB: interface 0, the timestamp in ns split high/low, caplen 5, original length 60.
        assert_eq!(u32_at(epb + 8), 0);
        assert_eq!(((u32_at(epb + 12) as u64) << 32) | u32_at(epb + 16) as u64, t);
        assert_eq!((u32_at(epb + 20), u32_at(epb + 24)), (5, 60));
        let text = String::from_utf8_lossy(&b);
        for s in ["eth0/egress", "first of its flow", "podtrace test", "a capture"] {
            assert!(text.contains(s), "{s} missing");
        }
        // if_tsresol (code 9, length 1) = 9.
        assert!(b.windows(5).any(|w| w == [9, 0, 1, 0, 9]));
    }
}
