//! A BPF array map's values mapped into our memory (maps created with `BPF_F_MMAPABLE`): user
//! space reads the kernel's stores in place, without a syscall per read.
use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Map, MapData},
};

/// A shared mapping of one BPF array map's values.
pub struct Mapping {
    pub ptr: NonNull<u8>,
    len: usize,
    pub entries: u32,
}

impl Mapping {
    pub fn new(ebpf: &Ebpf, name: &str, value_size: usize) -> Result<Mapping> {
        let data: &MapData = match ebpf.map(name) {
            Some(Map::Array(d)) => d,
            _ => bail!("{name} map missing"),
        };
        let entries = data.info().map_err(|e| anyhow!("{name}: {e}"))?.max_entries();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (entries as usize * value_size).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's fd; the kernel checks the length against the
        // map (BPF_F_MMAPABLE arrays map their values at offset 0).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("mapping {name}"));
        }
        Ok(Mapping { ptr: NonNull::new(ptr.cast()).context("mmap returned null")?, len, entries })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
