//! Finding and removing what a killed podtrace left behind.
//!
//! tcx links die with their file descriptors, so only the netlink fallback (`--attach-mode
//! tc`) can leave filters behind after SIGKILL. A filter is ours if its BPF program carries one
//! of our program names; it is a leftover if no live process holds that program (a running
//! podtrace keeps an fd to it). Other tools' filters and qdiscs are never touched.
use std::collections::HashSet;

use tracer_common::names;

use super::tc;

/// Program ids held open by some live process (from /proc/*/fdinfo).
pub fn held_program_ids() -> HashSet<u32> {
    let mut ids = HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return ids };
    for p in procs.flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else { continue };
        for fd in fds.flatten() {
            if let Ok(info) = std::fs::read_to_string(fd.path()) {
                ids.extend(
                    info.lines()
                        .filter_map(|l| l.strip_prefix("prog_id:"))
                        .filter_map(|v| v.trim().parse::<u32>().ok()),
                );
            }
        }
    }
    ids
}

pub fn is_ours(name: &str) -> bool {
    // The kernel truncates program names to 15 characters.
    [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS].iter().any(|n| n.starts_with(name) && !name.is_empty())
}

/// Removes leftover podtrace filters on the given interfaces, logging each one.
/// Returns how many were removed.
pub fn clean(ifaces: &[(u32, String)]) -> usize {
    let mut held = None;
    let mut removed = 0;
    for (ifindex, ifname) in ifaces {
        let Ok(filters) = tc::bpf_filters(*ifindex) else { continue };
        for f in filters.iter().filter(|f| is_ours(&f.name)) {
            let held = held.get_or_insert_with(held_program_ids);
            if f.prog_id.is_some_and(|id| held.contains(&id)) {
                continue; // another podtrace is running with it
            }
            match tc::delete_filter(f) {
                Ok(()) => {
                    removed += 1;
                    eprintln!(
                        "podtrace: removed leftover tc filter {} on {ifname} ({}) from a podtrace that was killed",
                        f.name,
                        if f.parent == tc::PARENT_INGRESS { "ingress" } else { "egress" }
                    );
                }
                Err(e) => {
                    eprintln!("podtrace: could not remove leftover filter {} on {ifname}: {e:#}", f.name)
                }
            }
        }
    }
    removed
}
