//! Kernel side of tracer: uprobes on the libc allocation family and
//! tracepoints on the anonymous-memory syscalls, for the processes listed in
//! `TRACED`. Each allocation is captured at the function's entry (arguments,
//! native stack, true caller), kept per thread in `IN_FLIGHT`, and completed
//! at its return with the returned pointer; frees go straight out. Everything
//! that cannot be recorded is counted in `COUNTERS`.
//!
//! This file holds only the programs, which userspace attaches by name
//! (docs/probes.md, "What is attached"); the work is in the modules.
#![no_std]
#![no_main]

mod in_flight;
mod lifecycle;
mod maps;
mod probe;
mod python;
mod ring;
mod sampling;
mod stack;
mod submit;

use core::ffi::c_void;

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint, uprobe, uretprobe},
    programs::{BtfTracePointContext, ProbeContext, RetProbeContext, TracePointContext},
};
use tracer_common::{counter, exiting, flags, func, kind};

use crate::{
    in_flight::{Call, complete, enter, nested, returning, sampled_key},
    maps::{HOLD_AT_FINALIZE, SAMPLE_BYTES, SAMPLED, SESSION},
    probe::traced,
    ring::count,
    stack::UserRegs,
    submit::{submit_free, submit_marker},
};

/// What an entry program returns, as a uprobe session, to skip its call's
/// return: an untraced process's call, a nested or an unsampled one. Plain
/// uprobes ignore it.
const SKIP_RETURN: u32 = 1;

/// Defines one uprobe program per allocation function from a table of
/// `program { field: argument, ... }`: the fields of [`Call`] and which of
/// the first three arguments (`a0`, `a1`, `a2`, after the attach cookie's
/// shift: [`probe::args`]) give them; `a0 * a1` is a wrapping product.
/// What a program records and where its probes go are its rows of
/// `tracer_common::func::FUNCTIONS`: the id it records without a cookie is
/// its libc rows' ([`func::entry_id`], which does not compile if the rows
/// and the arguments named here disagree); the cookie's, if any, overrides
/// it.
macro_rules! alloc_entries {
    ($(
        $(#[$doc:meta])*
        $name:ident { $($field:ident: $a:ident $(* $b:ident)?),+ $(,)? }
    ),+ $(,)?) => {$(
        $(#[$doc])*
        ///
        /// Written out rather than with `#[uprobe]`, whose wrapper returns 0
        /// whatever the function returns: a session needs `SKIP_RETURN`.
        #[unsafe(no_mangle)]
        #[unsafe(link_section = "uprobe")]
        pub fn $name(ctx: *mut c_void) -> u32 {
            let ctx = ProbeContext::new(ctx);
            let Some(id) = traced() else { return SKIP_RETURN };
            let regs = UserRegs::of_probe(&ctx);
            if SESSION.load() != 0 && returning(id, &regs) {
                complete(id, probe::ret(&ctx), None);
                return 0;
            }
            // An item, not an inline `const {}`: `cargo check` evaluates it.
            const OWN: u32 = func::entry_id(
                stringify!($name),
                reads(&[$(stringify!($a), $(stringify!($b),)?)+]),
                true,
            );
            let args = probe::args(&ctx, OWN);
            let call = Call {
                $($field: args.$a $(.wrapping_mul(args.$b))?,)+
                ..Call::of(args.func)
            };
            if enter(&ctx, id, regs, call) { 0 } else { SKIP_RETURN }
        }
    )+};
}

/// How many arguments an entry reads: one more than the highest of `a0`,
/// `a1`, `a2` in `named`.
const fn reads(named: &[&str]) -> usize {
    let mut reads = 0;
    let mut i = 0;
    while i < named.len() {
        let read = match named[i].as_bytes() {
            [b'a', n @ b'0'..=b'2'] => (*n - b'0') as usize + 1,
            _ => panic!("an entry's arguments are a0, a1 and a2"),
        };
        if read > reads {
            reads = read;
        }
        i += 1;
    }
    reads
}

alloc_entries! {
    malloc_entry { size: a0 },
    calloc_entry { size: a0 * a1 },
    realloc_entry { old_addr: a0, size: a1 },
    reallocarray_entry { old_addr: a0, size: a1 * a2 },
    posix_memalign_entry { out_ptr: a0, size: a2 },
    /// `memalign(alignment, size)` and `aligned_alloc(alignment, size)`.
    memalign_entry { size: a1 },
    valloc_entry { size: a0 },
    pvalloc_entry { size: a0 },
}

/// The return of every function above, when they are not uprobe sessions
/// (which are run at their return themselves).
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    if let Some(id) = traced() {
        complete(id, ctx.ret::<u64>(), None);
    }
    0
}

/// `free`. Its probe may sit on the branch of its NULL check (see the
/// userspace probe placement): `free(NULL)` comes here and frees nothing.
/// glibc's realloc(p, 0) calls free: the realloc's return reports it.
#[uprobe]
pub fn free_entry(ctx: ProbeContext) -> u32 {
    let Some(id) = traced() else { return 0 };
    if nested(id, UserRegs::of_probe(&ctx).sp) {
        return 0;
    }
    // Checked against its rows of `func::FUNCTIONS` when compiled: 0.
    const OWN: u32 = func::entry_id("free_entry", 1, false);
    let addr = probe::args(&ctx, OWN).a0;
    if addr == 0 {
        return 0;
    }
    if SAMPLE_BYTES.load() != 0 && SAMPLED.remove(sampled_key(id, addr)).is_err() {
        count(counter::UNSAMPLED);
        return 0;
    }
    submit_free(kind::FREE, id, addr, 0);
    0
}

const MAP_ANONYMOUS: u64 = 0x20;
const MAP_STACK: u64 = 0x20000;
const PROT_NONE: u64 = 0;

#[tracepoint]
pub fn mmap_enter(ctx: TracePointContext) -> u32 {
    let Some(id) = traced() else { return 0 };
    // SAFETY: offsets from events/syscalls/sys_enter_mmap/format.
    let (len, prot, map_flags) = unsafe {
        (
            ctx.read_at::<u64>(24).unwrap_or(0),
            ctx.read_at::<u64>(32).unwrap_or(0),
            ctx.read_at::<u64>(40).unwrap_or(0),
        )
    };
    // A PROT_NONE mapping reserves address space and holds no data: glibc
    // reserves 128 MiB per malloc arena so (from inside `free` too, which
    // has no return probe to mark it in flight). A thread stack is recorded
    // either way, marked: glibc 2.41 maps it PROT_NONE and opens it with
    // mprotect, 2.43 maps it readable and guards its first page with
    // madvise, and both keep a finished thread's stack for the next thread.
    let thread_stack = map_flags & MAP_STACK != 0;
    if map_flags & MAP_ANONYMOUS == 0 || (prot == PROT_NONE && !thread_stack) {
        return 0;
    }
    let regs = UserRegs::of_syscall();
    if nested(id, regs.sp) {
        return 0;
    }
    let call = Call {
        size: len,
        flags: if thread_stack { flags::THREAD_STACK } else { 0 },
        ..Call::of(func::MMAP)
    };
    enter(&ctx, id, regs, call);
    0
}

#[tracepoint]
pub fn mmap_exit(ctx: TracePointContext) -> u32 {
    if let Some(id) = traced() {
        // SAFETY: offset from events/syscalls/sys_exit_mmap/format.
        let ret = unsafe { ctx.read_at::<u64>(16) }.unwrap_or(u64::MAX);
        complete(id, ret, Some(func::MMAP));
    }
    0
}

#[tracepoint]
pub fn mremap_enter(ctx: TracePointContext) -> u32 {
    let Some(id) = traced() else { return 0 };
    let regs = UserRegs::of_syscall();
    if nested(id, regs.sp) {
        return 0;
    }
    // SAFETY: offsets from events/syscalls/sys_enter_mremap/format.
    let call = unsafe {
        Call {
            old_addr: ctx.read_at::<u64>(16).unwrap_or(0),
            old_len: ctx.read_at::<u64>(24).unwrap_or(0),
            size: ctx.read_at::<u64>(32).unwrap_or(0),
            ..Call::of(func::MREMAP)
        }
    };
    enter(&ctx, id, regs, call);
    0
}

#[tracepoint]
pub fn mremap_exit(ctx: TracePointContext) -> u32 {
    if let Some(id) = traced() {
        // SAFETY: offset from events/syscalls/sys_exit_mremap/format.
        let ret = unsafe { ctx.read_at::<u64>(16) }.unwrap_or(u64::MAX);
        complete(id, ret, Some(func::MREMAP));
    }
    0
}

#[tracepoint]
pub fn munmap_enter(ctx: TracePointContext) -> u32 {
    let Some(id) = traced() else { return 0 };
    if nested(id, UserRegs::of_syscall().sp) {
        return 0;
    }
    // SAFETY: offsets from events/syscalls/sys_enter_munmap/format.
    let (addr, len) = unsafe {
        (
            ctx.read_at::<u64>(16).unwrap_or(0),
            ctx.read_at::<u64>(24).unwrap_or(0),
        )
    };
    submit_free(kind::MUNMAP, id, addr, len);
    0
}

/// CPython's `Py_FinalizeEx`: the interpreter begins to tear down modules,
/// which frees what was still referenced (the leaks). A launched command
/// is stopped here (SIGSTOP, delivered before the function's first
/// instruction runs) until userspace has read its objects' types, and
/// continued then.
#[uprobe]
pub fn py_finalize_entry(_ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        let tgid = (id >> 32) as u32;
        if HOLD_AT_FINALIZE.remove(tgid).is_ok() {
            // SAFETY: a helper call; the signal goes to this process.
            unsafe { aya_ebpf::helpers::generated::bpf_send_signal(SIGSTOP) };
        }
        submit_marker(kind::EXITING, id, exiting::PY_FINALIZE);
    }
    0
}

/// Linux's SIGSTOP on x86-64.
const SIGSTOP: u32 = 19;

/// libc's `exit`: atexit handlers and destructors run next.
#[uprobe]
pub fn exit_entry(_ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        submit_marker(kind::EXITING, id, exiting::LIBC_EXIT);
    }
    0
}

/// A process replaced its image (see `lifecycle::execed`).
#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    lifecycle::execed();
    0
}

/// A thread exited (see `lifecycle::exited`): the last of a traced process
/// ends its tracing.
#[tracepoint]
pub fn process_exit(_ctx: TracePointContext) -> u32 {
    lifecycle::exited();
    0
}

/// A process or thread was created, before it first runs (see
/// `lifecycle::forked`): the raw BTF tracepoint gives both tasks.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn process_fork(ctx: BtfTracePointContext) -> u32 {
    lifecycle::forked(ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
