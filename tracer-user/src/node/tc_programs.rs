//! Other tools' tc programs on the interfaces podtrace traces (clsact `cls_bpf` filters, e.g.
//! aws-network-policy-agent's `handle_ingress`/`handle_egress`): what a drop at a tc hook is
//! attributed to.
use std::collections::BTreeMap;

use crate::kernel::{
    attach::program_name,
    leftovers::is_ours,
    tc::{self, PARENT_INGRESS},
};

/// A foreign BPF filter on one hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcProgram {
    /// The kernel's name of the program (bpf prog info), else the filter's name.
    pub name: String,
    pub prog_id: Option<u32>,
    pub priority: u16,
    pub direct_action: bool,
}

/// Foreign tc programs by (ifindex, ingress hook?).
pub type TcPrograms = BTreeMap<(u32, bool), Vec<TcProgram>>;

/// Reads the foreign tc programs of these interfaces.
pub fn read(ifindexes: impl IntoIterator<Item = u32>) -> TcPrograms {
    let mut out = TcPrograms::new();
    for ifindex in ifindexes {
        for f in tc::bpf_filters(ifindex).unwrap_or_default().into_iter().filter(|f| !is_ours(&f.name)) {
            out.entry((ifindex, f.parent == PARENT_INGRESS)).or_default().push(TcProgram {
                name: f.prog_id.and_then(program_name).unwrap_or(f.name),
                prog_id: f.prog_id,
                priority: f.priority,
                direct_action: f.direct_action,
            });
        }
    }
    out
}
