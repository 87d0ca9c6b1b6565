//! Plain-old-data shared by the eBPF programs and the userspace collector.
//!
//! Every record in the ring buffer starts with a [`Header`]; its `kind` says
//! which struct follows. Records are `#[repr(C)]`, 8-byte aligned, and read in
//! userspace with unaligned reads from the ring buffer bytes.
#![no_std]

/// Native frames captured per allocation. Frame-pointer walks through
/// CPython and glibc rarely go deeper than this, and each frame costs 8 bytes
/// of ring buffer per allocation event.
pub const MAX_STACK_DEPTH: usize = 64;

/// `Header::kind` values.
pub mod kind {
    /// An [`AllocRecord`](super::AllocRecord): a successful allocation,
    /// reallocation or anonymous mapping.
    pub const ALLOC: u32 = 1;
    /// A [`FreeRecord`](super::FreeRecord) for `free`.
    pub const FREE: u32 = 2;
    /// A [`FreeRecord`](super::FreeRecord) for `munmap` (with a length).
    pub const MUNMAP: u32 = 3;
    /// A header-only record: the process began to exit (see [`exiting`](super::exiting)).
    pub const EXITING: u32 = 4;
    /// A header-only record: a traced process called execve successfully.
    pub const EXEC: u32 = 5;
}

/// The allocation function behind an [`AllocRecord`] (`AllocRecord::func`).
pub mod func {
    pub const MALLOC: u32 = 1;
    pub const CALLOC: u32 = 2;
    pub const REALLOC: u32 = 3;
    pub const REALLOCARRAY: u32 = 4;
    pub const POSIX_MEMALIGN: u32 = 5;
    /// `memalign` and `aligned_alloc` (one address in glibc).
    pub const MEMALIGN: u32 = 6;
    pub const VALLOC: u32 = 7;
    pub const PVALLOC: u32 = 8;
    pub const MMAP: u32 = 9;
    pub const MREMAP: u32 = 10;
}

/// `Header::flags` bits.
pub mod flags {
    /// `bpf_get_stack` failed: the record carries no native frames.
    pub const STACK_LOST: u32 = 1 << 0;
    /// The frame-pointer walk filled [`MAX_STACK_DEPTH`](super::MAX_STACK_DEPTH) frames.
    pub const STACK_FULL: u32 = 1 << 1;
    /// The return address at the stack pointer could not be read.
    pub const CALLER_LOST: u32 = 1 << 2;
}

/// `Header::flags` of an [`kind::EXITING`] record: what marked the start of
/// the exit.
pub mod exiting {
    /// CPython's `Py_FinalizeEx` was entered.
    pub const PY_FINALIZE: u32 = 1;
    /// libc's `exit` was entered.
    pub const LIBC_EXIT: u32 = 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub kind: u32,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    pub flags: u32,
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
}

/// An allocation, recorded at the function's entry (arguments, stack) and
/// completed at its return (the pointer). Only the first
/// `stack_len` frames are sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AllocRecord {
    pub header: Header,
    pub func: u32,
    /// Calls of allocation functions entered while this one runs (glibc's
    /// `realloc(NULL, n)` calls `malloc`): those are part of this call.
    pub nesting: u32,
    pub size: u64,
    /// The returned address.
    pub addr: u64,
    /// `realloc`/`reallocarray`/`mremap`: the old address (0 if none).
    pub old_addr: u64,
    /// `mremap`: the old length.
    pub old_len: u64,
    /// `posix_memalign`: where the result pointer is stored. Kernel-side only.
    pub out_ptr: u64,
    /// The return address at the stack pointer on entry: the true caller,
    /// which a frame-pointer walk from the function's entry skips.
    pub caller: u64,
    pub stack_len: u32,
    pub _pad: u32,
    /// User frames from `bpf_get_stack`, innermost (the probed instruction) first.
    pub stack: [u64; MAX_STACK_DEPTH],
}

impl AllocRecord {
    /// Bytes of the record before `stack`.
    pub const FIXED_LEN: usize = core::mem::offset_of!(AllocRecord, stack);

    /// Bytes sent through the ring buffer for `stack_len` frames.
    pub const fn wire_len(stack_len: usize) -> usize {
        Self::FIXED_LEN + stack_len * 8
    }
}

/// `free` (len 0) or `munmap` (len in bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FreeRecord {
    pub header: Header,
    pub addr: u64,
    pub len: u64,
}

/// Indexes into the per-CPU `COUNTERS` array. Every event the kernel side
/// could not record is counted here; nothing is dropped silently.
pub mod counter {
    /// Records submitted to the ring buffer.
    pub const EVENTS: u32 = 0;
    /// Records dropped because the ring buffer was full.
    pub const LOST_EVENTS: u32 = 1;
    /// Allocations whose native stack could not be captured.
    pub const LOST_STACKS: u32 = 2;
    /// Allocations dropped because the in-flight map was full.
    pub const PENDING_FULL: u32 = 3;
    /// Allocation calls made from inside another allocation call (counted,
    /// reported as part of the outer call).
    pub const NESTED_CALLS: u32 = 4;
    /// In-flight entries replaced because their return never came.
    pub const STALE_PENDING: u32 = 5;
    /// Returns that found no matching entry (attached mid-call).
    pub const UNMATCHED_RETURNS: u32 = 6;
    /// Number of counters.
    pub const COUNT: u32 = 7;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_8_byte_multiples() {
        assert_eq!(core::mem::size_of::<Header>(), 24);
        assert_eq!(AllocRecord::FIXED_LEN % 8, 0);
        assert_eq!(core::mem::size_of::<FreeRecord>() % 8, 0);
        assert_eq!(
            AllocRecord::wire_len(MAX_STACK_DEPTH),
            core::mem::size_of::<AllocRecord>()
        );
    }
}
