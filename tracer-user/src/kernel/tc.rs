//! tc objects podtrace may own in `--attach-mode tc`: BPF filters on clsact and the clsact
//! qdisc itself (only when podtrace created it).
use anyhow::Result;
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};

use super::netlink::{dump, request};

/// Handles of podtrace's filters ("pt" and a flag): whether the podtrace that attached them
/// had created the clsact qdisc. The mark outlives a killed podtrace with its filters, so the
/// next one knows which empty qdiscs are podtrace's to remove.
pub const HANDLE_OWN: u32 = 0x7074_0001;
pub const HANDLE_CREATED_CLSACT: u32 = 0x7074_0002;

/// clsact's handle (ffff:0) and the ingress/egress parents below it.
const CLSACT: TcHandle = TcHandle { major: 0xffff, minor: 0 };
pub const PARENT_INGRESS: u32 = 0xffff_fff2;
pub const PARENT_EGRESS: u32 = 0xffff_fff3;

/// A BPF filter found on an interface's clsact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    pub ifindex: u32,
    pub parent: u32,
    /// Priority (upper 16 bits of `tcm_info`) and handle identify the filter for deletion.
    pub priority: u16,
    pub protocol: u16,
    pub handle: u32,
    /// The BPF program's name as the loader gave it (TCA_BPF_NAME).
    pub name: String,
    /// The kernel id of the attached program (TCA_BPF_ID).
    pub prog_id: Option<u32>,
    /// Direct-action mode: the program's return value is the verdict (TC_ACT_OK ends tc
    /// classification, TC_ACT_SHOT drops).
    pub direct_action: bool,
}

/// BPF filters on the ingress and egress parents of one interface.
pub fn bpf_filters(ifindex: u32) -> Result<Vec<BpfFilter>> {
    let mut out = Vec::new();
    for parent in [PARENT_INGRESS, PARENT_EGRESS] {
        let mut req = TcMessage::with_index(ifindex as i32);
        req.header.parent = parent.into();
        let msgs = match dump(RouteNetlinkMessage::GetTrafficFilter(req)) {
            Ok(m) => m,
            // No clsact (EINVAL) or interface gone (ENODEV): no filters.
            Err(_) => continue,
        };
        for m in msgs {
            let RouteNetlinkMessage::NewTrafficFilter(f) = m else {
                continue;
            };
            for a in &f.attributes {
                let TcAttribute::Options(opts) = a else {
                    continue;
                };
                let (mut name, mut prog_id, mut direct_action) = (None, None, false);
                for o in opts {
                    match o {
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.clone()),
                        TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => prog_id = Some(*i),
                        TcOption::Bpf(TcFilterBpfOption::Flags(f)) => {
                            direct_action = f.contains(TcBpfFlags::DirectAction)
                        }
                        _ => {}
                    }
                }
                if let Some(name) = name {
                    out.push(BpfFilter {
                        ifindex,
                        parent,
                        priority: (f.header.info >> 16) as u16,
                        protocol: (f.header.info & 0xffff) as u16,
                        handle: f.header.handle.into(),
                        name,
                        prog_id,
                        direct_action,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Deletes one filter (identified by parent, priority, protocol and handle).
pub fn delete_filter(f: &BpfFilter) -> Result<()> {
    let mut msg = TcMessage::with_index(f.ifindex as i32);
    msg.header.parent = f.parent.into();
    msg.header.handle = f.handle.into();
    msg.header.info = ((f.priority as u32) << 16) | f.protocol as u32;
    msg.attributes.push(TcAttribute::Kind("bpf".into()));
    request(RouteNetlinkMessage::DelTrafficFilter(msg))
}

/// Whether any filter of any kind sits on the interface's clsact ingress or egress parent.
pub fn has_filters(ifindex: u32) -> bool {
    [PARENT_INGRESS, PARENT_EGRESS].into_iter().any(|parent| {
        let mut req = TcMessage::with_index(ifindex as i32);
        req.header.parent = parent.into();
        dump(RouteNetlinkMessage::GetTrafficFilter(req))
            .is_ok_and(|m| m.iter().any(|m| matches!(m, RouteNetlinkMessage::NewTrafficFilter(_))))
    })
}

/// Deletes the clsact qdisc, but only if no filter of any kind is left on it (someone else's
/// filter keeps it alive: podtrace never removes what others use).
pub fn delete_clsact(ifindex: u32) -> Result<()> {
    if has_filters(ifindex) {
        return Ok(());
    }
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = CLSACT;
    msg.attributes.push(TcAttribute::Kind("clsact".into()));
    request(RouteNetlinkMessage::DelQueueDiscipline(msg))
}
