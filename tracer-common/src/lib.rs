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

/// Python frames captured per allocation. Deeper stacks keep their innermost
/// frames and are flagged `PY_TRUNCATED`.
pub const MAX_PY_DEPTH: usize = 80;

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
    /// A [`CodeRecord`](super::CodeRecord): a Python code object seen for
    /// the first time, copied while the process runs.
    pub const CODE: u32 = 6;
    /// A [`ForkRecord`](super::ForkRecord): a traced process forked a new
    /// process (not a thread), traced from its first instruction.
    pub const FORK: u32 = 7;
    /// A header-only record: the last thread of a traced process exited,
    /// after every other record of it; the kernel traces it no more (its
    /// pid may be another process's from now on).
    pub const EXIT: u32 = 8;
}

/// `TRACED` map values: how a process is traced.
pub mod traced {
    /// Its allocations are recorded.
    pub const RECORD: u8 = 1;
    /// A child that shares its parent's memory (vfork, `posix_spawn`):
    /// nothing is recorded until it execs, when it becomes `RECORD`.
    pub const UNTIL_EXEC: u8 = 2;
}

/// `Header::flags` of a [`kind::FORK`] record.
pub mod fork {
    /// The child shares its parent's memory until it execs (`CLONE_VM`).
    pub const SHARES_MEMORY: u32 = 1;
    /// The child is recorded only once it execs, and stays traced only if
    /// it execs CPython: it shares its parent's memory, or its parent runs
    /// no CPython tracer knows (a shell wrapper's subshell).
    pub const UNTIL_EXEC: u32 = 2;
}

pub mod func;

/// `Header::flags` bits.
pub mod flags {
    /// The native stack could not be walked: the record carries no frames.
    pub const STACK_LOST: u32 = 1 << 0;
    /// The frame-pointer walk filled [`MAX_STACK_DEPTH`](super::MAX_STACK_DEPTH) frames.
    pub const STACK_FULL: u32 = 1 << 1;
    /// The return address at the stack pointer could not be read.
    pub const CALLER_LOST: u32 = 1 << 2;
    /// The Python frame chain was deeper than `MAX_PY_DEPTH`.
    pub const PY_TRUNCATED: u32 = 1 << 3;
    /// The Python frame chain could not be read to its end.
    pub const PY_LOST: u32 = 1 << 4;
    /// In flight only: the call was not chosen by `--sample-bytes`; its
    /// return only settles a reallocated pointer that was.
    pub const UNSAMPLED: u32 = 1 << 5;
    /// An anonymous mapping made with `MAP_STACK`: a thread's stack (glibc
    /// maps every thread stack so), not heap.
    pub const THREAD_STACK: u32 = 1 << 6;
    /// In flight only, with uprobe sessions: an unsampled call whose return
    /// was not asked for. It only marks the thread as inside an allocation
    /// call while the stack pointer is below its entry's.
    pub const NO_RETURN: u32 = 1 << 7;
}

/// The kernel's gap table for `--sample-bytes` (see tracer's sampling.rs).
pub mod sampling {
    /// Entries (a power of two: indexed by random bits).
    pub const GAP_TABLE_LEN: usize = 1024;
    /// Entries are gaps between samples in units of N / 2^GAP_SCALE_BITS.
    pub const GAP_SCALE_BITS: u32 = 16;
}

/// `Header::flags` of an [`kind::EXITING`] record: what marked the start of
/// the exit.
pub mod exiting {
    /// CPython's `Py_FinalizeEx` was entered.
    pub const PY_FINALIZE: u32 = 1;
    /// libc's `exit` was entered.
    pub const LIBC_EXIT: u32 = 2;
}

/// `Header::flags` of an [`kind::EXEC`] record.
pub mod exec {
    /// `--all`: the kernel added the process to the traced set by its name.
    pub const TRACED_BY_NAME: u32 = 1;
    /// The process was traced before its exec (a target, or a process a
    /// target forked); with neither flag, `--all` only reports the exec.
    pub const TRACED: u32 = 2;
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
    /// The stack pointer at the entry: a session program's return comes
    /// with it 8 bytes higher, and code deeper than it is still inside the
    /// call. Kernel-side only.
    pub entry_sp: u64,
    /// The return address at the stack pointer on entry: the true caller,
    /// which a frame-pointer walk from the function's entry skips.
    pub caller: u64,
    pub stack_len: u32,
    /// Python frames sent after the native ones (`PyFrame`s).
    pub py_len: u32,
    /// User frames from the frame-pointer walk, innermost (the probed instruction) first.
    pub stack: [u64; MAX_STACK_DEPTH],
}

impl AllocRecord {
    /// Bytes of the record before `stack`.
    pub const FIXED_LEN: usize = core::mem::offset_of!(AllocRecord, stack);

    /// Bytes sent through the ring buffer for `stack_len` native and
    /// `py_len` Python frames: the fixed part, the native frames, then the
    /// Python frames.
    pub const fn wire_len(stack_len: usize, py_len: usize) -> usize {
        Self::FIXED_LEN + stack_len * 8 + py_len * size_of::<PyFrame>()
    }

    /// The largest record on the wire.
    pub const MAX_WIRE_LEN: usize = Self::wire_len(MAX_STACK_DEPTH, MAX_PY_DEPTH);
}

/// One Python frame as the kernel reads it; userspace turns it into a
/// function, file and line by reading the code object.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PyFrame {
    /// The code object.
    pub code: u64,
    /// From 3.11 the frame's instruction pointer (`prev_instr`,
    /// `instr_ptr`); up to 3.10 its `f_lasti`, an int in the low 32 bits.
    pub instr: u64,
    /// The code object's `co_firstlineno`: a code object freed and another
    /// allocated at its address rarely has the same.
    pub firstlineno: i32,
    pub _pad: u32,
}

/// How to find the Python frames of a traced process's current thread
/// (`PY_PROCS` map value). Offsets are bytes; `NONE` marks a step the
/// version does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyConfig {
    /// Address of `_PyRuntime` in the process.
    pub runtime: u64,
    /// 3.8 to 3.14: `_PyRuntime.autoTSSkey` (a `Py_tss_t`: int initialized,
    /// int key), under which each thread's thread state is kept. `NONE`
    /// from 3.15, which keeps it in the thread-local `_Py_tss_gilstate`
    /// (`tls_module`, `tls_offset`).
    pub tss_key: u32,
    /// glibc: `struct pthread.specific_1stblock`, from the thread pointer.
    pub pthread_specific: u32,
    /// 3.15+: 0 if `_Py_tss_gilstate` is in the static TLS block (the
    /// executable's), at the thread pointer plus `tls_offset` (negative);
    /// else the TLS module id of the shared library holding it, at
    /// `tls_offset` in that module's block (found through the thread's DTV).
    pub tls_module: u32,
    pub tls_offset: i32,
    /// thread state -> frame pointer (3.8-3.10: `frame`; 3.11/3.12:
    /// `cframe`; 3.13+: `current_frame`).
    pub tstate_frame: u32,
    /// 3.11/3.12: `_PyCFrame.current_frame`; else `NONE`.
    pub cframe_frame: u32,
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_instr: u32,
    /// 3.12+: the frame's `owner` byte (older versions: any field, with
    /// `owner_cstack` = `NO_OWNER`).
    pub frame_owner: u32,
    /// The `owner` value of the interpreter's own frames, skipped: C shims
    /// (3.12-3.14), entry frames (3.15).
    pub owner_cstack: u32,
    pub code_firstlineno: u32,
    /// Tag bits to clear from the frame's code pointer (3.14+'s
    /// `_PyStackRef`: 1; else 0).
    pub code_tag_bits: u32,
    pub _pad: u32,
    /// `PyCode_Type` in the process: frames whose executable has another
    /// type are the interpreter's own and skipped. 0: unknown, not checked.
    pub code_type: u64,
    pub code_filename: u32,
    /// `co_qualname` where the version has it, else `co_name`.
    pub code_name: u32,
    /// `co_lnotab` or `co_linetable`.
    pub code_linetable: u32,
    pub code_flags: u32,
    /// Where a compact ASCII string's characters start.
    pub str_ascii_data: u32,
    /// Where other compact strings' characters start.
    pub str_compact_data: u32,
}

/// Longest string (bytes) a [`CodeRecord`] carries.
/// Longest `str` or `bytes` object of a code object read from a process
/// (characters or bytes): a longer one is not a real name, file name or
/// line table, but a lie or not the object it should be.
pub const MAX_PY_OBJECT_LEN: i64 = 1 << 20;
pub const MAX_CODE_STR: usize = 256;
/// Longest line table a [`CodeRecord`] carries.
pub const MAX_CODE_TABLE: usize = 4096;

/// A Python code object, copied by the kernel the first time a traced
/// process runs it (per code address and first line), so that frames can be
/// resolved after the process is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CodeRecord {
    pub header: Header,
    pub code: u64,
    pub firstlineno: i32,
    pub co_flags: u32,
    /// Bytes of `filename` used, and the string kind (1, 2 or 4 bytes per
    /// character; 0 if unreadable).
    pub filename_len: u32,
    pub filename_kind: u32,
    pub name_len: u32,
    pub name_kind: u32,
    /// Bytes of `table` used; `table_full` if the table is longer.
    pub table_len: u32,
    pub table_full: u32,
    pub filename: [u8; MAX_CODE_STR],
    pub name: [u8; MAX_CODE_STR],
    pub table: [u8; MAX_CODE_TABLE],
}

pub mod py_config {
    /// An offset that does not apply to this version.
    pub const NONE: u32 = u32::MAX;
    /// An `owner_cstack` no owner byte equals.
    pub const NO_OWNER: u32 = 0x100;
}

/// Key of the kernel's set of code objects already copied.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeKey {
    pub pid: u32,
    pub firstlineno: i32,
    pub code: u64,
}

/// What is left of a process's budget of code object copies (a token
/// bucket: tokens come back at a fixed rate, up to a burst).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeBudget {
    pub tokens: u32,
    pub _pad: u32,
    /// When tokens were last added (`bpf_ktime_get_ns`).
    pub refilled_ns: u64,
}

/// A traced process made a new process: `header.pid` is the child, `parent`
/// the process that forked it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkRecord {
    pub header: Header,
    pub parent: u32,
    pub _pad: u32,
}

/// Key of the kernel's map of live sampled allocations: addresses are per
/// process (forked workers share them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampledKey {
    pub pid: u32,
    pub _pad: u32,
    pub addr: u64,
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
    pub const IN_FLIGHT_FULL: u32 = 3;
    /// Allocation calls made from inside another allocation call (counted,
    /// reported as part of the outer call).
    pub const NESTED_CALLS: u32 = 4;
    /// In-flight entries replaced because their return never came.
    pub const STALE_IN_FLIGHT: u32 = 5;
    /// Returns that found no matching entry (attached mid-call).
    pub const UNMATCHED_RETURNS: u32 = 6;
    /// Code object copies dropped because the ring buffer was full.
    pub const LOST_CODE: u32 = 7;
    /// Allocation calls and frees left out by `--sample-bytes`.
    pub const UNSAMPLED: u32 = 8;
    /// Code object copies not made: the process had used its budget.
    pub const CODE_OVER_BUDGET: u32 = 9;
    /// Number of counters.
    pub const COUNT: u32 = 10;

    /// Each counter's name in reports (`report.json` `counters`), by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "events",
        "lost_events",
        "lost_stacks",
        "in_flight_full",
        "nested_calls",
        "stale_in_flight",
        "unmatched_returns",
        "lost_code",
        "unsampled",
        "code_over_budget",
    ];
}

// SAFETY: #[repr(C)] integers only, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PyConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_8_byte_multiples() {
        assert_eq!(core::mem::size_of::<Header>(), 24);
        assert_eq!(AllocRecord::FIXED_LEN % 8, 0);
        assert_eq!(core::mem::size_of::<FreeRecord>() % 8, 0);
        assert_eq!(core::mem::size_of::<ForkRecord>() % 8, 0);
        assert_eq!(
            AllocRecord::wire_len(MAX_STACK_DEPTH, 0),
            core::mem::size_of::<AllocRecord>()
        );
        assert_eq!(core::mem::size_of::<PyFrame>(), 24);
        assert_eq!(AllocRecord::MAX_WIRE_LEN % 8, 0);
    }

    #[test]
    fn every_counter_has_a_name() {
        assert_eq!(counter::NAMES.len(), counter::COUNT as usize);
        assert_eq!(
            counter::NAMES[counter::IN_FLIGHT_FULL as usize],
            "in_flight_full"
        );
        assert_eq!(
            counter::NAMES[counter::STALE_IN_FLIGHT as usize],
            "stale_in_flight"
        );
        assert_eq!(counter::NAMES[counter::UNSAMPLED as usize], "unsampled");
    }
}
