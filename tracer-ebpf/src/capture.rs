//! Which packets `podtrace capture` copies: the traced pod's, at every traced hook, before and
//! after each NAT, and no others.
//!
//! * On the pod's own host veth every frame is the pod's (also those that do not parse).
//! * Elsewhere (ENIs) a packet is the pod's when it carries a pod address, when its tuple is one
//!   of the pod's flows' NAT'd forms (learned here, or added by user space from conntrack), or
//!   when it is the same packet (same NAT-invariant signature, see `signature`) as the one the
//!   previous hook copied: the SNATed copy at eth0's egress of a packet that just left the
//!   pod's veth. Its tuple is then learned, both ways, so the flow's replies are copied too.
//! * A packet that enters by an ENI for a node address (a NodePort) shows that it is the pod's
//!   only after the DNAT, at the pod's veth. The first packet of each new flow at an ENI's
//!   ingress is therefore kept aside (stashed); when the pod's veth then sees the same packet,
//!   the stashed copy is written with its own time and hook, the ENI-side tuple is learned, and
//!   the flow's next packets are copied as they pass. A pod packet seen at an ENI, not copied
//!   there and no longer stashed when the veth recognises it is counted as missed.
//!
//! The decision is written against [`CaptureTables`] so that the host tests drive it with plain
//! memory and the kernel with its maps.
use tracer_common::{
    Tuple,
    capture::{ROLE_NODE, ROLE_POD},
    hook,
};

/// The last packet this CPU saw at a traced hook, in a direct-mapped slot chosen by signature.
/// Per CPU: a packet crosses its ingress and egress hooks on one CPU (one softirq).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureSighting {
    pub sig: u64,
    pub ts_ns: u64,
    pub tuple: Tuple,
    pub ifindex: u32,
    pub hook: u8,
    /// Non-zero when it was copied (known to be the pod's) there.
    pub copied: u8,
    /// Its interface's statistics slot.
    pub slot: u16,
}

/// One packet at one traced hook, as the decision needs it.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    /// `None` when the frame did not parse (non-IP, malformed).
    pub tuple: Option<&'a Tuple>,
    pub sig: u64,
    pub ifindex: u32,
    pub hook: u8,
    /// `capture::ROLE_POD` or `capture::ROLE_NODE`.
    pub role: u8,
    pub slot: u16,
    pub now_ns: u64,
    /// The first packet of its (tuple, interface, hook) in the flow table.
    pub new_flow: bool,
}

/// Where the kernel keeps what the decision reads and learns.
pub trait CaptureTables {
    /// Is this one of the traced pod's addresses?
    fn pod_addr(&self, addr: &[u8; 16]) -> bool;
    /// Is this tuple (in this direction) one of the pod's flows' NAT'd forms?
    fn known(&self, t: &Tuple) -> bool;
    /// Remembers a NAT'd form of one of the pod's flows (the kernel stores both directions);
    /// false when the table is full.
    fn learn(&mut self, t: &Tuple) -> bool;
    /// This CPU's sighting slot for a signature.
    fn sighting(&mut self, sig: u64) -> Option<&mut CaptureSighting>;
}

/// An earlier sighting of the packet at another hook, where it was not copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Missed {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub hook: u8,
    pub slot: u16,
}

/// What to do with one packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Copy it: it is the pod's.
    pub copy: bool,
    /// Keep a copy aside: the first packet of a new flow at an ENI's ingress, which a later
    /// hook may show to be the pod's.
    pub stash: bool,
    /// The same packet passed an earlier hook uncopied: write its stashed copy, or count it
    /// missed there.
    pub missed: Option<Missed>,
    /// Tuples learned (0–2).
    pub learned: u8,
    /// Tuples that did not fit in the table.
    pub learn_failed: u8,
}

impl Decision {
    #[inline(always)]
    fn learn<T: CaptureTables>(&mut self, tables: &mut T, t: &Tuple) {
        if tables.learn(t) {
            self.learned += 1;
        } else {
            self.learn_failed += 1;
        }
    }
}

/// Decides for one packet and records its sighting. `max_age_ns`: an earlier sighting older
/// than this is another packet that shares the signature.
#[inline(always)]
pub fn decide<T: CaptureTables>(p: &Packet, tables: &mut T, max_age_ns: u64) -> Decision {
    let mut d = Decision::default();
    let Some(t) = p.tuple else {
        // A frame without a tuple cannot be tied to a flow: only the pod's own veth vouches
        // for it.
        d.copy = p.role == ROLE_POD;
        return d;
    };
    let mut own = p.role == ROLE_POD || tables.pod_addr(&t.src) || tables.pod_addr(&t.dst) || tables.known(t);
    let mut learn_here = false;
    let mut prior_slot = core::mem::MaybeUninit::<Tuple>::uninit();
    let mut prior = None;
    if let Some(s) = tables.sighting(p.sig) {
        // Inside one network namespace a packet goes from an ingress hook to an egress hook of
        // another interface, quickly, and NAT never changes its protocol.
        let same_packet = s.sig == p.sig
            && s.hook == hook::INGRESS
            && p.hook == hook::EGRESS
            && s.ifindex != p.ifindex
            && p.now_ns.wrapping_sub(s.ts_ns) < max_age_ns
            && s.tuple.proto == t.proto;
        if same_packet && !own && s.copied != 0 {
            // The pod's packet after a NAT that removed its address (SNAT at eth0's egress).
            own = true;
            learn_here = true;
        } else if same_packet && own && s.copied == 0 {
            // The pod's packet before a NAT that hid it (a NodePort's DNAT at eth0's ingress).
            d.missed = Some(Missed { ts_ns: s.ts_ns, ifindex: s.ifindex, hook: s.hook, slot: s.slot });
            // SAFETY: both are valid, 8-byte aligned Tuples.
            unsafe { crate::mem::copy(prior_slot.as_mut_ptr(), &s.tuple) };
            prior = Some(());
        }
        s.sig = p.sig;
        s.ts_ns = p.now_ns;
        // SAFETY: both are valid, 8-byte aligned Tuples.
        unsafe { crate::mem::copy(&mut s.tuple, t) };
        s.ifindex = p.ifindex;
        s.hook = p.hook;
        s.copied = own as u8;
        s.slot = p.slot;
    }
    if prior.is_some() {
        // SAFETY: written above whenever `prior` is set.
        let prior = unsafe { prior_slot.assume_init_ref() };
        d.learn(tables, prior);
    }
    if learn_here {
        d.learn(tables, t);
    }
    d.copy = own;
    d.stash = !own && p.new_flow && p.role == ROLE_NODE && p.hook == hook::INGRESS;
    d
}

#[cfg(test)]
mod tests;

/// Writes `t` reversed into `out` word by word (a struct copy of the address arrays would
/// become a byte-loop `memcpy` call in the kernel build).
#[inline(always)]
pub fn reverse_into(out: &mut Tuple, t: &Tuple) {
    const { assert!(core::mem::offset_of!(Tuple, src) == 0 && core::mem::offset_of!(Tuple, dst) == 16) };
    let (o, i) = ((out as *mut Tuple).cast::<u64>(), (t as *const Tuple).cast::<u64>());
    // SAFETY: Tuple is 8-byte aligned; words 0–1 are `src`, words 2–3 `dst`.
    unsafe {
        for w in 0..2 {
            core::ptr::write_volatile(o.add(w), core::ptr::read_volatile(i.add(w + 2)));
            core::ptr::write_volatile(o.add(w + 2), core::ptr::read_volatile(i.add(w)));
        }
    }
    out.sport = t.dport;
    out.dport = t.sport;
    out.proto = t.proto;
    out.family = t.family;
    out._pad = [0; 2];
}
