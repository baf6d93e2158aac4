//! Attaching the TC programs to interfaces and detaching them again.
//!
//! tcx (kernel >= 6.6) is preferred: a tcx link belongs to its file descriptor, so the kernel
//! detaches it when podtrace exits for any reason, SIGKILL included. podtrace attaches at the
//! head of the tcx chain so that a program that redirects packets cannot hide them from us, and
//! always returns TCX_NEXT, so the rest of the chain sees every packet unchanged.
//!
//! The netlink `clsact` fallback (`--attach-mode tc`) leaves filters behind on SIGKILL; those
//! are found by name on the next start and removed if their podtrace is provably dead (see
//! `leftovers`: a tc-mode podtrace holds liveness tokens for its programs).
use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, RawTracePoint, SchedClassifier, TcAttach, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId},
    },
    util::KernelVersion,
};
use tracer_common::names;

use super::load::{self, LoadOptions};

/// How programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// tcx when the kernel has it (>= 6.6), else netlink clsact.
    Auto,
    /// tcx links only.
    Tcx,
    /// netlink clsact filters (legacy TC).
    Tc,
}

impl AttachMode {
    /// The mode actually used on this kernel.
    pub fn resolve(self) -> Result<AttachMode> {
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        match self {
            AttachMode::Auto if tcx => Ok(AttachMode::Tcx),
            AttachMode::Auto => Ok(AttachMode::Tc),
            AttachMode::Tcx if !tcx => {
                bail!("this kernel has no tcx (needs Linux >= 6.6); use --attach-mode tc")
            }
            m => Ok(m),
        }
    }
}

/// One interface we attached to.
#[derive(Debug)]
pub struct Attached {
    pub ifname: String,
    ingress: SchedClassifierLinkId,
    egress: SchedClassifierLinkId,
    /// In tc mode: we added the clsact qdisc, so we remove it again when we detach.
    created_clsact: bool,
}

/// The loaded kernel object and the interfaces its TC programs are attached to.
/// Dropping it detaches everything.
pub struct Tracer {
    pub ebpf: Ebpf,
    pub mode: AttachMode,
    attached: BTreeMap<u32, Attached>,
    /// In tc mode: says "alive" for our programs as long as this process lives.
    _alive: Option<super::leftovers::LiveTokens>,
}

impl Tracer {
    /// Loads the object and the TC programs into the kernel, without attaching them.
    pub fn load(opts: &LoadOptions, mode: AttachMode) -> Result<Tracer> {
        let mode = mode.resolve()?;
        let mut ebpf = load::load(opts)?;
        for name in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS] {
            classifier(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading {name} into the kernel (verifier)"))?;
        }
        if opts.layout.is_some() {
            // Drops and retransmissions: global raw tracepoints, detached when we exit.
            for (prog, tp) in
                [(names::PROG_DROP, "kfree_skb"), (names::PROG_RETRANSMIT, "tcp_retransmit_skb")]
            {
                let p: &mut RawTracePoint = ebpf
                    .program_mut(prog)
                    .ok_or_else(|| anyhow!("program {prog} missing from the eBPF object"))?
                    .try_into()
                    .map_err(|e| anyhow!("{prog}: {e}"))?;
                p.load().with_context(|| format!("loading {prog} into the kernel (verifier)"))?;
                p.attach(tp).with_context(|| format!("attaching {prog} to the {tp} tracepoint"))?;
            }
        }
        // Before any filter exists: a filter of ours is never without its token.
        let alive = match mode {
            AttachMode::Tc => {
                let mut ids = Vec::new();
                for name in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS] {
                    ids.push(classifier(&mut ebpf, name)?.info().map_err(|e| anyhow!("{name}: {e}"))?.id());
                }
                Some(super::leftovers::hold(&ids)?)
            }
            _ => None,
        };
        Ok(Tracer { ebpf, mode, attached: BTreeMap::new(), _alive: alive })
    }

    /// Attaches ingress and egress programs to the interface. Attaching twice is a no-op.
    pub fn attach(&mut self, ifindex: u32, ifname: &str) -> Result<()> {
        if self.attached.contains_key(&ifindex) {
            return Ok(());
        }
        let mut created_clsact = false;
        if self.mode == AttachMode::Tc {
            match tc::qdisc_add_clsact(ifindex) {
                Ok(()) => created_clsact = true,
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(anyhow!(e).context(format!("adding clsact to {ifname}"))),
            }
        }
        let ingress = self.attach_one(ifindex, ifname, TcAttachType::Ingress, created_clsact);
        let both = ingress.and_then(|ingress| {
            match self.attach_one(ifindex, ifname, TcAttachType::Egress, created_clsact) {
                Ok(egress) => Ok((ingress, egress)),
                Err(e) => {
                    // Leave nothing half-attached.
                    let _ = classifier(&mut self.ebpf, names::PROG_TC_INGRESS).map(|p| p.detach(ingress));
                    Err(e)
                }
            }
        });
        match both {
            Ok((ingress, egress)) => {
                let a = Attached { ifname: ifname.to_string(), ingress, egress, created_clsact };
                self.attached.insert(ifindex, a);
                Ok(())
            }
            Err(e) => {
                if created_clsact {
                    let _ = super::tc::delete_clsact(ifindex);
                }
                Err(e)
            }
        }
    }

    /// Attaches to many interfaces; returns the failures with the interface name. (Each tcx
    /// attach waits for an RCU grace period under the RTNL lock in the kernel, about 10 ms, so
    /// attaching in parallel would not be faster.)
    pub fn attach_many(&mut self, ifaces: &[(u32, String)]) -> Vec<(String, anyhow::Error)> {
        ifaces.iter().filter_map(|(i, n)| self.attach(*i, n).err().map(|e| (n.clone(), e))).collect()
    }

    fn attach_one(
        &mut self,
        ifindex: u32,
        ifname: &str,
        direction: TcAttachType,
        created_clsact: bool,
    ) -> Result<SchedClassifierLinkId> {
        let mode = self.mode;
        let name = prog_name(direction);
        let prog = classifier(&mut self.ebpf, name)?;
        let handle = if created_clsact { super::tc::HANDLE_CREATED_CLSACT } else { super::tc::HANDLE_OWN };
        let how = match mode {
            // Never handle 1: aws-network-policy-agent's detach deletes the first filter with
            // handle 1 on the hook, whatever its priority (tc::HANDLE_OWN and
            // HANDLE_CREATED_CLSACT are not).
            AttachMode::Tc => TcAttach::Netlink {
                parent: direction.into(),
                options: NlOptions { handle: handle.into(), ..NlOptions::default() },
            },
            _ => TcAttach::Tcx { attach_type: direction, order: LinkOrder::first() },
        };
        prog.attach(ifindex, how)
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("attaching {name} to {ifname} ({direction:?})"))
    }

    /// Detaches both programs from the interface. An interface that disappeared is fine: the
    /// kernel already dropped our programs with it.
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        let Some(a) = self.attached.remove(&ifindex) else {
            return Ok(());
        };
        let r1 = classifier(&mut self.ebpf, names::PROG_TC_INGRESS)?.detach(a.ingress);
        let r2 = classifier(&mut self.ebpf, names::PROG_TC_EGRESS)?.detach(a.egress);
        if a.created_clsact {
            let _ = super::tc::delete_clsact(ifindex);
        }
        let gone = !super::netlink::link_exists(ifindex);
        match (r1, r2) {
            (Ok(()), Ok(())) => Ok(()),
            _ if gone => Ok(()),
            (Err(e), _) | (_, Err(e)) => Err(anyhow!(e).context(format!("detaching from {}", a.ifname))),
        }
    }

    /// Detaches from every interface (also done by Drop).
    pub fn detach_all(&mut self) {
        let all: Vec<u32> = self.attached.keys().copied().collect();
        for ifindex in all {
            if let Err(e) = self.detach(ifindex) {
                log::warn!("{e:#}");
            }
        }
    }

    pub fn attached(&self) -> impl Iterator<Item = (u32, &str)> {
        self.attached.iter().map(|(i, a)| (*i, a.ifname.as_str()))
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.attached.contains_key(&ifindex)
    }

    /// In tc mode, the hooks where another tool's direct-action filter runs before ours (a
    /// lower prio): its verdict ends tc classification, so our program never sees the
    /// packets there. One line per hook, naming the interface and the program.
    pub fn blind_hooks(&self) -> Vec<String> {
        if self.mode != AttachMode::Tc {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (ifindex, a) in &self.attached {
            let Ok(filters) = super::tc::bpf_filters(*ifindex) else { continue };
            for (parent, hook) in
                [(super::tc::PARENT_INGRESS, "ingress"), (super::tc::PARENT_EGRESS, "egress")]
            {
                let on_hook = filters.iter().filter(|f| f.parent == parent);
                let Some(ours) =
                    on_hook.clone().find(|f| super::leftovers::is_ours(&f.name)).map(|f| f.priority)
                else {
                    continue;
                };
                for f in on_hook
                    .filter(|f| !super::leftovers::is_ours(&f.name) && f.direct_action && f.priority < ours)
                {
                    let name = f.prog_id.and_then(program_name).unwrap_or_else(|| f.name.clone());
                    out.push(format!(
                        "{} {hook}: podtrace runs after `{name}` (prio {}), which ends tc classification; this hop is not seen — use tcx (kernel ≥ 6.6)",
                        a.ifname, f.priority
                    ));
                }
            }
        }
        out
    }
}

/// The kernel's name of a loaded BPF program (bpf prog info), by id.
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn prog_name(direction: TcAttachType) -> &'static str {
    match direction {
        TcAttachType::Ingress => names::PROG_TC_INGRESS,
        TcAttachType::Egress => names::PROG_TC_EGRESS,
    }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()
        .map_err(|e| anyhow!("{name}: {e}"))
}
