//! A stand-in for aws-network-policy-agent on the lab's pod veths (`--variant npa`).
//!
//! What it imitates, from the upstream sources:
//! - aws-network-policy-agent pkg/ebpf/bpf_client.go (attachIngressBPFProbe /
//!   attachEgressBPFProbe): the pod-ingress program `handle_ingress` (pkg/ebpf/c/tc.v4ingress.bpf.c)
//!   goes on the host veth's tc **egress** (TCEgressAttach), the pod-egress program
//!   `handle_egress` (tc.v4egress.bpf.c) on its tc **ingress** (TCIngressAttach); the veth is
//!   `eni`/`vlan` + sha1 of the pod (utils.GetHostVethName with POD_VETH_PREFIX and
//!   BRANCH_ENI_VETH_PREFIX); both programs are GPL, section tc_cls, and return TC_ACT_OK or
//!   TC_ACT_SHOT.
//! - aws-ebpf-sdk-go pkg/tc/tc.go (TCIngressAttach / TCEgressAttach): a clsact qdisc (handle
//!   ffff:, added unless one exists) and a cls_bpf filter with Parent HANDLE_MIN_INGRESS or
//!   HANDLE_MIN_EGRESS, Handle 0x1 (DEFAULT_BPF_FILTER_HANDLE), Protocol ETH_P_ALL, Priority 1,
//!   the program fd, Name = the function name and DirectAction; only on devices whose name
//!   starts with one of the prefixes.
//!
//! The programs are this project's own: a handful of hand-written instructions, loaded with the
//! raw bpf(BPF_PROG_LOAD) syscall. They read the ethertype, the IPv4 header and the TCP
//! destination port with bpf_skb_load_bytes and drop TCP to `DENIED_PORT` (TC_ACT_SHOT); all
//! else gets TC_ACT_OK. Nothing is pinned: the filter holds the only reference to its program,
//! and both go away with the veth (and so with the lab's namespaces).
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use serde::Serialize;

use super::plan::Plan;
use crate::netns;

/// TCP port both programs drop: `handle_egress` drops pod → *:9090, `handle_ingress` drops
/// * → pod:9090. Every lab server listens on it (`plan::SERVER_PORTS`).
pub const DENIED_PORT: u16 = 9090;
/// Names upstream gives the programs and the filters (pkg/utils/utils.go TC_INGRESS_PROG,
/// TC_EGRESS_PROG).
pub const INGRESS_PROG: &str = "handle_ingress";
pub const EGRESS_PROG: &str = "handle_egress";
/// Host veth prefixes the agent attaches to (bpf_client.go POD_VETH_PREFIX,
/// BRANCH_ENI_VETH_PREFIX).
pub const VETH_PREFIXES: [&str; 2] = ["eni", "vlan"];
/// Priority and handle of every filter (tc.go; constants.go DEFAULT_BPF_FILTER_HANDLE).
pub const PRIO: u16 = 1;
pub const HANDLE: u32 = 0x1;

const TC_H_CLSACT: u32 = 0xffff_fff1;
pub const PARENT_INGRESS: u32 = 0xffff_fff2;
pub const PARENT_EGRESS: u32 = 0xffff_fff3;
const ETH_P_ALL: u16 = 0x0003;

// ---- the programs ------------------------------------------------------------------------

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R10: u8 = 10;

// Opcodes (class | op | source), linux/bpf_common.h and linux/bpf.h.
const MOV64_K: u8 = 0x07 | 0xb0; // BPF_ALU64 | BPF_MOV | BPF_K
const MOV64_X: u8 = 0x07 | 0xb0 | 0x08;
const ADD64_K: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
const AND64_K: u8 = 0x07 | 0x50;
const LSH64_K: u8 = 0x07 | 0x60;
const LDX_B: u8 = 0x01 | 0x60 | 0x10; // BPF_LDX | BPF_MEM | BPF_B
const LDX_H: u8 = 0x01 | 0x60 | 0x08; // BPF_LDX | BPF_MEM | BPF_H
const JNE_K: u8 = 0x05 | 0x50; // BPF_JMP | BPF_JNE | BPF_K
const JLT_K: u8 = 0x05 | 0xa0;
const JSET_K: u8 = 0x05 | 0x40;
const CALL: u8 = 0x05 | 0x80;
const EXIT: u8 = 0x05 | 0x90;

/// BPF_FUNC_skb_load_bytes.
const SKB_LOAD_BYTES: i32 = 26;
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

/// A 16-bit network-order field as a little-endian half-word load sees it.
fn wire_u16(v: u16) -> i32 {
    u16::from_le_bytes(v.to_be_bytes()) as i32
}

/// The program: TC_ACT_SHOT for IPv4 TCP (first fragment or unfragmented) to `denied_port`,
/// TC_ACT_OK for everything else, including anything it cannot read.
///
/// ```text
///  r6 = skb
///  skb_load_bytes(skb, 12, fp-16, 12)   ; ethertype + first 10 bytes of the IPv4 header
///  ethertype != 0x0800 -> ok; protocol (fp-5) != 6 -> ok; fragment offset != 0 -> ok
///  r2 = (ver_ihl & 0xf) << 2; r2 < 20 -> ok     ; honours IP options
///  skb_load_bytes(skb, 14 + ihl + 2, fp-24, 2)   ; TCP destination port
///  port != denied -> ok; r0 = TC_ACT_SHOT; exit
///  ok: r0 = TC_ACT_OK; exit
/// ```
pub fn program(denied_port: u16) -> Vec<Insn> {
    const OK: i16 = 28; // index of the `ok` label
    let mut p = vec![
        insn(MOV64_X, R6, R1, 0, 0),                  // 0
        insn(MOV64_K, R2, 0, 0, 12),                  // 1: offset of the ethertype
        insn(MOV64_X, R3, R10, 0, 0),                 // 2
        insn(ADD64_K, R3, 0, 0, -16),                 // 3: to = fp - 16
        insn(MOV64_K, R4, 0, 0, 12),                  // 4: len
        insn(CALL, 0, 0, 0, SKB_LOAD_BYTES),          // 5
        insn(JNE_K, R0, 0, 0, 0),                     // 6: -> ok
        insn(LDX_H, R1, R10, -16, 0),                 // 7: ethertype
        insn(JNE_K, R1, 0, 0, wire_u16(0x0800)),      // 8: -> ok
        insn(LDX_B, R1, R10, -5, 0),                  // 9: IPv4 protocol (header byte 9)
        insn(JNE_K, R1, 0, 0, 6),                     // 10: not TCP -> ok
        insn(LDX_H, R1, R10, -8, 0),                  // 11: flags + fragment offset (bytes 6-7)
        insn(JSET_K, R1, 0, 0, wire_u16(0x1fff)),     // 12: a later fragment -> ok
        insn(LDX_B, R2, R10, -14, 0),                 // 13: version + IHL
        insn(AND64_K, R2, 0, 0, 0x0f),                // 14
        insn(LSH64_K, R2, 0, 0, 2),                   // 15: header length in bytes
        insn(JLT_K, R2, 0, 0, 20),                    // 16: malformed -> ok
        insn(ADD64_K, R2, 0, 0, 14 + 2),              // 17: Ethernet + IP header + dport offset
        insn(MOV64_X, R1, R6, 0, 0),                  // 18
        insn(MOV64_X, R3, R10, 0, 0),                 // 19
        insn(ADD64_K, R3, 0, 0, -24),                 // 20: to = fp - 24
        insn(MOV64_K, R4, 0, 0, 2),                   // 21
        insn(CALL, 0, 0, 0, SKB_LOAD_BYTES),          // 22
        insn(JNE_K, R0, 0, 0, 0),                     // 23: -> ok
        insn(LDX_H, R1, R10, -24, 0),                 // 24: TCP destination port
        insn(JNE_K, R1, 0, 0, wire_u16(denied_port)), // 25: -> ok
        insn(MOV64_K, R0, 0, 0, TC_ACT_SHOT),         // 26
        insn(EXIT, 0, 0, 0, 0),                       // 27
        insn(MOV64_K, R0, 0, 0, TC_ACT_OK),           // 28: ok
        insn(EXIT, 0, 0, 0, 0),                       // 29
    ];
    // Jump offsets are relative to the next instruction.
    for (i, ins) in p.iter_mut().enumerate() {
        if matches!(ins.code, JNE_K | JLT_K | JSET_K) {
            ins.off = OK - i as i16 - 1;
        }
    }
    p
}

/// union bpf_attr for BPF_PROG_LOAD, up to expected_attach_type; the rest stays zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 8],
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// Loads a SCHED_CLS program; on a verifier refusal the error carries the verifier's log.
pub fn load(name: &str, insns: &[Insn]) -> Result<OwnedFd> {
    let license = CString::new("GPL").expect("no NUL");
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let try_load = |log: Option<&mut Vec<u8>>| -> io::Result<OwnedFd> {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SCHED_CLS,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name,
            ..ProgLoadAttr::default()
        };
        if let Some(buf) = log {
            attr.log_level = 1;
            attr.log_size = buf.len() as u32;
            attr.log_buf = buf.as_mut_ptr() as u64;
        }
        // SAFETY: attr is a valid, fully initialised bpf_attr prefix; the pointers it holds
        // (instructions, license, log buffer) outlive the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &mut attr as *mut ProgLoadAttr,
                size_of::<ProgLoadAttr>() as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    };
    match try_load(None) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let mut log = vec![0u8; 64 * 1024];
            let again = try_load(Some(&mut log));
            let text =
                String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)]).into_owned();
            match again {
                Ok(fd) => Ok(fd),
                Err(_) => bail!("loading {name}: {e}; verifier log:\n{text}"),
            }
        }
    }
}

// ---- tc over rtnetlink --------------------------------------------------------------------

fn nl_socket() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    Ok(sock)
}

/// Sends one message and collects the replies until DONE or the ACK; errors carry errno.
fn nl_call(msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>> {
    let sock = nl_socket().context("netlink socket")?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    sock.send(&buf, 0).context("netlink send")?;
    let mut out = Vec::new();
    loop {
        let (buf, _) = sock.recv_from_full().context("netlink receive")?;
        let mut offset = 0;
        while offset < buf.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                .context("decoding a netlink message")?;
            let len = msg.header.length as usize;
            if len == 0 {
                bail!("netlink message with zero length");
            }
            offset += len;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => match e.code {
                    None => return Ok(out),
                    Some(code) => return Err(io::Error::from_raw_os_error(-code.get()).into()),
                },
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
        }
    }
}

fn ifindex(dev: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(dev).with_context(|| format!("no interface {dev}"))
}

/// Adds clsact unless it is there (tc.go enableQdisc + QdiscAdd). Call inside the namespace.
fn ensure_clsact(ifindex: u32) -> Result<()> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TC_H_CLSACT.into();
    msg.header.handle = TcHandle { major: 0xffff, minor: 0 };
    msg.attributes.push(TcAttribute::Kind("clsact".into()));
    match nl_call(
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.downcast_ref::<io::Error>().and_then(|e| e.raw_os_error()) == Some(libc::EEXIST) => {
            Ok(())
        }
        Err(e) => Err(e.context("adding clsact")),
    }
}

/// Adds the cls_bpf filter exactly as tc.go's FilterAdd does. Call inside the namespace.
fn add_filter(ifindex: u32, parent: u32, prog: &OwnedFd, name: &str) -> Result<()> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = parent.into();
    msg.header.handle = HANDLE.into();
    msg.header.info = ((PRIO as u32) << 16) | ETH_P_ALL.to_be() as u32;
    msg.attributes.push(TcAttribute::Kind("bpf".into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    nl_call(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
        .with_context(|| format!("adding {name} filter"))
        .map(|_| ())
}

/// Whether the agent would attach to this device.
pub fn wants(dev: &str) -> bool {
    VETH_PREFIXES.iter().any(|p| dev.starts_with(p))
}

/// Attaches both programs to one pod host veth in namespace `ns` (a fresh pair of programs per
/// pod, as the agent loads one pair per pod identifier).
pub fn attach(ns: &str, veth: &str) -> Result<()> {
    if !wants(veth) {
        bail!("{veth}: the network policy agent only attaches to {VETH_PREFIXES:?}* devices");
    }
    let ingress = load(INGRESS_PROG, &program(DENIED_PORT))?;
    let egress = load(EGRESS_PROG, &program(DENIED_PORT))?;
    netns::run_in(ns, || {
        let idx = ifindex(veth)?;
        ensure_clsact(idx)?;
        // Pod ingress = traffic leaving the host veth towards the pod: tc egress.
        add_filter(idx, PARENT_EGRESS, &ingress, INGRESS_PROG)?;
        // Pod egress = traffic the pod sends, entering the host veth: tc ingress.
        add_filter(idx, PARENT_INGRESS, &egress, EGRESS_PROG)
    })
    .with_context(|| format!("attaching the network policy stand-in to {veth} in {ns}"))
    // The fds close here; each filter keeps its program.
}

/// Attaches to every pod host veth of the plan (both nodes).
pub fn attach_all(plan: &Plan) -> Result<()> {
    for pod in &plan.pods {
        let node = plan.node(&pod.node).with_context(|| format!("node of {}", pod.name))?;
        attach(&node.netns, &pod.veth)?;
    }
    Ok(())
}

/// One tc BPF filter as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Filter {
    pub node: String,
    pub dev: String,
    /// "ingress" or "egress" (the tc hook of the host veth).
    pub hook: String,
    pub prio: u16,
    pub handle: u32,
    /// TCA_BPF_NAME.
    pub name: String,
    pub prog_id: Option<u32>,
    pub direct_action: bool,
}

/// The BPF filters on a device's clsact hooks, inside namespace `ns`.
pub fn filters(ns: &str, node: &str, dev: &str) -> Result<Vec<Filter>> {
    netns::run_in(ns, || {
        let idx = ifindex(dev)?;
        let mut out = Vec::new();
        for (parent, hook) in [(PARENT_INGRESS, "ingress"), (PARENT_EGRESS, "egress")] {
            let mut req = TcMessage::with_index(idx as i32);
            req.header.parent = parent.into();
            let msgs = match nl_call(RouteNetlinkMessage::GetTrafficFilter(req), NLM_F_REQUEST | NLM_F_DUMP) {
                Ok(m) => m,
                // No clsact on this device: no filters.
                Err(_) => continue,
            };
            for m in msgs {
                let RouteNetlinkMessage::NewTrafficFilter(f) = m else { continue };
                let (mut name, mut prog_id, mut da) = (None, None, false);
                for a in &f.attributes {
                    let TcAttribute::Options(opts) = a else { continue };
                    for o in opts {
                        match o {
                            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.clone()),
                            TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => prog_id = Some(*i),
                            TcOption::Bpf(TcFilterBpfOption::Flags(fl)) => {
                                da = fl.contains(TcBpfFlags::DirectAction)
                            }
                            _ => {}
                        }
                    }
                }
                // The dump also lists the chain head (handle 0) of each priority: skip it.
                let handle: u32 = f.header.handle.into();
                if let (Some(name), true) = (name, handle != 0) {
                    out.push(Filter {
                        node: node.into(),
                        dev: dev.into(),
                        hook: hook.into(),
                        prio: (f.header.info >> 16) as u16,
                        handle,
                        name,
                        prog_id,
                        direct_action: da,
                    });
                }
            }
        }
        Ok(out)
    })
}

/// Every stand-in filter of a lab: the filters of each pod veth (both hooks).
pub fn all_filters(plan: &Plan) -> Result<Vec<Filter>> {
    let mut v = Vec::new();
    for pod in &plan.pods {
        let node = plan.node(&pod.node).with_context(|| format!("node of {}", pod.name))?;
        v.extend(filters(&node.netns, &node.name, &pod.veth)?);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_shape() {
        let p = program(DENIED_PORT);
        assert_eq!(p.len(), 30);
        assert_eq!(size_of::<Insn>(), 8);
        // Two helper calls, both bpf_skb_load_bytes; no direct packet access (no loads from r1/r6).
        let calls: Vec<_> = p.iter().filter(|i| i.code == CALL).collect();
        assert_eq!(calls.len(), 2);
        assert!(calls.iter().all(|c| c.imm == SKB_LOAD_BYTES));
        for i in p.iter().filter(|i| i.code == LDX_B || i.code == LDX_H) {
            assert_eq!(i.regs >> 4, R10, "loads only from the stack: {i:?}");
        }
        // Ends in two exits: SHOT then OK; every conditional jump lands on the OK block.
        assert_eq!((p[26].imm, p[27].code, p[28].imm, p[29].code), (TC_ACT_SHOT, EXIT, TC_ACT_OK, EXIT));
        for (i, ins) in p.iter().enumerate().filter(|(_, i)| matches!(i.code, JNE_K | JLT_K | JSET_K)) {
            assert_eq!(i as i16 + 1 + ins.off, 28, "jump at {i}");
        }
        // The denied port, the ethertype and the fragment mask as a little-endian load sees them.
        assert_eq!(p[25].imm, 0x8223); // 9090 = 0x2382
        assert_eq!(p[8].imm, 0x0008);
        assert_eq!(p[12].imm, 0xff1f);
        assert_eq!(program(80)[25].imm, 0x5000);
    }

    #[test]
    fn attr_layout_matches_the_kernel() {
        // Offsets of union bpf_attr's BPF_PROG_LOAD fields (include/uapi/linux/bpf.h).
        let a = ProgLoadAttr::default();
        let base = &a as *const _ as usize;
        assert_eq!(&a.insns as *const _ as usize - base, 8);
        assert_eq!(&a.log_buf as *const _ as usize - base, 32);
        assert_eq!(&a.prog_name as *const _ as usize - base, 48);
        assert_eq!(&a.expected_attach_type as *const _ as usize - base, 68);
    }

    /// BPF_PROG_TEST_RUN of one frame; the program's return value.
    fn test_run(prog: &OwnedFd, frame: &[u8]) -> io::Result<u32> {
        #[repr(C)]
        #[derive(Default)]
        struct TestAttr {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
            _rest: [u64; 6],
        }
        let mut out = vec![0u8; frame.len() + 256];
        let mut attr = TestAttr {
            prog_fd: prog.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_size_out: out.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ..TestAttr::default()
        };
        // SAFETY: valid attr; buffers outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                10 as libc::c_long,
                &mut attr as *mut TestAttr,
                size_of::<TestAttr>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(attr.retval)
    }

    /// Ethernet + IPv4 (with `options` 4-byte words) + TCP or UDP header.
    fn frame(proto: u8, dport: u16, options: usize, frag: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let ihl = 5 + options;
        let mut ip = vec![0x40 | ihl as u8, 0, 0, 0, 0x12, 0x34];
        ip.extend_from_slice(&frag.to_be_bytes());
        ip.extend_from_slice(&[64, proto, 0, 0, 198, 18, 1, 31, 198, 18, 3, 10]);
        ip.extend(std::iter::repeat_n(1u8, options * 4));
        f.extend(ip);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0u8; 16]);
        f
    }

    /// The verifier accepts the program and it decides as documented (needs CAP_BPF: skipped
    /// when the kernel refuses to load it for lack of privilege).
    #[test]
    fn program_runs_as_documented() {
        let prog = match load(EGRESS_PROG, &program(DENIED_PORT)) {
            Ok(p) => p,
            Err(e) if e.to_string().contains("Operation not permitted") => {
                eprintln!("skipped: {e}");
                return;
            }
            Err(e) => panic!("{e:#}"),
        };
        let run = |f: &[u8]| test_run(&prog, f).expect("BPF_PROG_TEST_RUN") as i32;
        assert_eq!(run(&frame(6, DENIED_PORT, 0, 0)), TC_ACT_SHOT);
        assert_eq!(run(&frame(6, DENIED_PORT, 0, 0x4000)), TC_ACT_SHOT, "DF set, no fragment");
        assert_eq!(run(&frame(6, DENIED_PORT, 2, 0)), TC_ACT_SHOT, "IP options honoured");
        assert_eq!(run(&frame(6, 8080, 0, 0)), TC_ACT_OK);
        assert_eq!(run(&frame(17, DENIED_PORT, 0, 0)), TC_ACT_OK, "UDP passes");
        assert_eq!(run(&frame(6, DENIED_PORT, 0, 0x2001)), TC_ACT_OK, "later fragment");
        let mut arp = frame(6, DENIED_PORT, 0, 0);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(run(&arp), TC_ACT_OK);
        let short = frame(6, DENIED_PORT, 0, 0);
        assert_eq!(run(&short[..36]), TC_ACT_OK, "truncated before the port");
    }

    #[test]
    fn prefixes() {
        assert!(wants("eni1a2b3c4d5e6") && wants("vlanec248c5eb6e"));
        assert!(!wants("eth0") && !wants("veth123"));
    }
}
