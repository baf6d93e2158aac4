//! Finding and removing what a killed podtrace left behind — only what is provably dead.
//!
//! tcx links die with their file descriptors, so only the netlink fallback (`--attach-mode
//! tc`) can leave filters behind after SIGKILL. A filter is podtrace's if its BPF program
//! carries one of podtrace's program names. Whether its podtrace still runs cannot be read
//! from /proc: the agent of the DaemonSet has no hostPID and sees no other process. So every
//! podtrace that attaches in tc mode holds a liveness token first: an abstract unix socket
//! named after each of its programs' ids, bound before the first filter exists. The kernel
//! releases the name when the process dies, however it dies, and anyone in the same network
//! namespace (where the filters are) can test it by binding it. A filter is removed only if
//! nobody holds its program's token and no visible process holds the program either.
//!
//! A clsact qdisc podtrace created is marked by the handle of podtrace's filters on it
//! ([`super::tc::HANDLE_CREATED_CLSACT`]); after removing such leftover filters, the qdisc is
//! removed too if nothing else is left on it. Other tools' filters and qdiscs are never touched.
use std::{
    collections::HashSet,
    os::{linux::net::SocketAddrExt, unix::net::UnixDatagram},
};

use anyhow::{Context, Result};
use tracer_common::names;

use super::tc;

/// The abstract socket name that says "the podtrace holding program `id` is alive".
fn token_name(prog_id: u32) -> String {
    format!("podtrace/live/prog/{prog_id}")
}

/// Liveness tokens of a running podtrace: held as long as the process lives.
#[derive(Debug)]
pub struct LiveTokens(#[allow(dead_code)] Vec<UnixDatagram>);

/// Takes the tokens of these programs (before they are attached anywhere).
pub fn hold(prog_ids: &[u32]) -> Result<LiveTokens> {
    let mut held = Vec::new();
    for id in prog_ids {
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(token_name(*id))?;
        let sock = UnixDatagram::bind_addr(&addr)
            .with_context(|| format!("taking the liveness token of program {id}"))?;
        // Nothing is ever read: the socket only holds the name.
        sock.shutdown(std::net::Shutdown::Read)?;
        held.push(sock);
    }
    Ok(LiveTokens(held))
}

/// Whether some process holds the token of program `id`. Binding the name succeeds only if
/// nobody does (program ids are not reused while the program exists, so no new podtrace can
/// want this name meanwhile); any other failure counts as alive: death must be proven.
fn token_held(id: u32) -> bool {
    let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(token_name(id)) else { return true };
    UnixDatagram::bind_addr(&addr).is_err()
}

/// Program ids held open by some process this one can see (from /proc/*/fdinfo): also
/// programs of podtrace versions without tokens, or held by other tools.
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

/// Removes leftover podtrace filters on the given interfaces, and the clsact qdiscs a killed
/// podtrace created there once they are empty, logging each. Returns how many filters were
/// removed.
pub fn clean(ifaces: &[(u32, String)]) -> usize {
    let mut visible = None;
    let mut removed = 0;
    for (ifindex, ifname) in ifaces {
        let Ok(filters) = tc::bpf_filters(*ifindex) else { continue };
        let mut created_clsact = false;
        for f in filters.iter().filter(|f| is_ours(&f.name)) {
            // Without a program id (very old kernels) nothing can be proven.
            let Some(id) = f.prog_id else { continue };
            if token_held(id) || visible.get_or_insert_with(held_program_ids).contains(&id) {
                continue; // a podtrace (or another process) is running with it
            }
            match tc::delete_filter(f) {
                Ok(()) => {
                    removed += 1;
                    created_clsact |= f.handle == tc::HANDLE_CREATED_CLSACT;
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
        if created_clsact && !tc::has_filters(*ifindex) {
            match tc::delete_clsact(*ifindex) {
                Ok(()) => eprintln!(
                    "podtrace: removed the empty clsact qdisc a killed podtrace created on {ifname}"
                ),
                Err(e) => eprintln!("podtrace: could not remove the clsact qdisc on {ifname}: {e:#}"),
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_held_exactly_as_long_as_its_holder() {
        // Ids far above what this machine's kernel hands out, unique to this test process.
        let id = 0xF000_0000 | std::process::id();
        assert!(!token_held(id));
        let tokens = hold(&[id]).unwrap();
        assert!(token_held(id));
        assert!(hold(&[id]).is_err(), "one holder at a time");
        drop(tokens);
        assert!(!token_held(id));
    }
}
