//! Zeroing and copying the programs' plain-data structs as 8-byte words.
//!
//! Left to itself, LLVM turns struct initialisation and copies into calls to `memset`/`memmove`,
//! which bpf-linker provides as byte-at-a-time BPF functions: dozens of instructions per packet.
//! Volatile word accesses keep them as a handful of inline 8-byte moves. Every type used here is
//! 8-byte aligned and a whole number of words long (see tracer-common).

/// Zeroes `slot` in place and hands it out initialised (zeroing into a returned value would be
/// followed by a copy that LLVM turns back into a `memset` call).
#[inline(always)]
pub fn zeroed<T: Copy>(slot: &mut core::mem::MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() == 8) };
    let words = slot.as_mut_ptr().cast::<u64>();
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: i < size_of::<T>() / 8 and T is 8-byte aligned.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: every byte was written and T is plain data.
    unsafe { slot.assume_init_mut() }
}

/// `*dst = *src`, word by word.
///
/// # Safety
/// Both pointers must be valid and 8-byte aligned for `T`.
#[inline(always)]
pub unsafe fn copy<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() == 8) };
    let (d, s) = (dst.cast::<u64>(), src.cast::<u64>());
    for i in 0..size_of::<T>() / 8 {
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
    }
}
