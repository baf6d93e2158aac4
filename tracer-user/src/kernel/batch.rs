//! Batched reads and deletes of maps (`BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_DELETE_BATCH`, Linux ≥ 5.6). aya walks a map with two system calls per entry and a
//! heap allocation per value; at 100 000 flows that is most of the agent's poll. A batch moves
//! thousands of entries per call into one reused buffer.
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries asked for per call.
const CHUNK: usize = 4096;

/// `union bpf_attr`, batch variant.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: attr is a valid bpf_attr prefix of the size passed; the buffers it points to
    // outlive the call and have the sizes given in `count`.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, size_of::<BatchAttr>() as libc::c_uint)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Every entry of a map as (key, its values), handed to `each`: one value per possible CPU for
/// a per-CPU map (`values_per_key` = the possible CPUs), one for any other map. Entries that
/// change during the walk may be seen in either state, as with a walk by keys.
pub fn entries<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    values_per_key: usize,
    mut each: impl FnMut(&K, &[V]),
) -> io::Result<()> {
    // The kernel lays per-CPU values out in 8-byte slots; this keeps every layout unpadded.
    const { assert!(size_of::<V>().is_multiple_of(8), "values must be a multiple of 8 bytes") };
    let cpus = values_per_key;
    let mut chunk = CHUNK;
    let mut keys: Vec<K> = Vec::new();
    let mut values: Vec<V> = Vec::new();
    // The position token is a bucket index (hash maps) or a key (arrays), both u32; room for a
    // u64 is kept.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        // SAFETY: K and V are Pod: any bytes are valid values.
        keys.resize(chunk, unsafe { std::mem::zeroed() });
        values.resize(chunk * cpus, unsafe { std::mem::zeroed() });
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &mut token_in as *mut u64 as u64 },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match r {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more entries than the chunk: retry the same position bigger.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                chunk *= 2;
                continue;
            }
            Err(e) => return Err(e),
        };
        let n = attr.count as usize;
        for i in 0..n {
            each(&keys[i], &values[i * cpus..(i + 1) * cpus]);
        }
        if done {
            return Ok(());
        }
        token_in = token_out;
        first = false;
    }
}

/// Deletes these keys; keys already gone are skipped. Returns how many were deleted.
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let n = rest.len().min(CHUNK);
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: n as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => {}
            // A key vanished (expired meanwhile): `count` says how many went before it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let done = attr.count as usize;
        deleted += done;
        // Skip the key that stopped the batch, if any.
        rest = &rest[(done + usize::from(done < n)).min(rest.len())..];
    }
    Ok(deleted)
}

/// Writes `values[i]` at `keys[i]` for a map with one value per key (not per-CPU).
pub fn update<K: Pod, V: Pod>(fd: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
    for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    }
    Ok(())
}
