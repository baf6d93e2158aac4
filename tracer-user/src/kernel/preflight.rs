//! Checks before touching the kernel (privileges, BTF), and dropping what is no longer
//! needed after attaching.
use std::path::PathBuf;

use anyhow::{Result, bail};

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Effective capability set of this process (bit n = capability n).
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Fails with one line naming the missing capabilities.
pub fn check_privileges() -> Result<()> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1 << c) != 0;
    let sys_admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !sys_admin {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !sys_admin {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !missing.is_empty() {
        bail!(
            "not enough privileges: podtrace needs root or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (missing {})",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Where the kernel's BTF is read from (`PODTRACE_BTF` overrides, for tests and odd hosts).
pub fn btf_path() -> PathBuf {
    std::env::var_os("PODTRACE_BTF").map(PathBuf::from).unwrap_or_else(|| "/sys/kernel/btf/vmlinux".into())
}

/// podtrace reads kernel structure layouts from BTF (drop reasons, skb offsets).
pub fn check_btf() -> Result<PathBuf> {
    let p = btf_path();
    if !p.is_file() {
        bail!(
            "this kernel has no BTF ({} missing): podtrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
            p.display()
        );
    }
    Ok(p)
}

/// After attaching, the CLI only reads maps (through fds it already holds) and conntrack
/// (CAP_NET_ADMIN, also needed to detach netlink tc filters). Everything else is dropped from
/// the effective, permitted and bounding sets, so a bug later cannot load programs or touch
/// other processes. Returns the capabilities kept.
pub fn drop_capabilities() -> Result<Vec<&'static str>> {
    // capget/capset v3 structures.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const V3: u32 = 0x2008_0522;
    let keep: u64 = 1 << CAP_NET_ADMIN;
    for cap in 0..64u32 {
        if keep & (1 << cap) == 0 {
            // PR_CAPBSET_DROP; EINVAL for capabilities this kernel does not know.
            // SAFETY: plain prctl call with integer arguments.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    let mut hdr = Header { version: V3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: header and two data structs as capget(2) requires for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } != 0 {
        bail!("capget: {}", std::io::Error::last_os_error());
    }
    for (i, d) in data.iter_mut().enumerate() {
        let k = (keep >> (32 * i)) as u32;
        d.effective &= k;
        d.permitted &= k;
        d.inheritable = 0;
    }
    // SAFETY: as above, for capset(2).
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } != 0 {
        bail!("capset: {}", std::io::Error::last_os_error());
    }
    Ok(vec!["CAP_NET_ADMIN"])
}
