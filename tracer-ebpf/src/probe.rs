//! What programs read of the traced process: whether it is traced, at a
//! uprobe the probed function and its arguments as the attach cookie gives
//! them (docs/probes.md, "Attach cookies"), and its memory.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_get_attach_cookie},
    programs::ProbeContext,
};

use tracer_common::traced;

use crate::maps::TRACED;

/// The current thread's pid_tgid if its process's allocations are recorded.
#[inline(always)]
pub fn traced() -> Option<u64> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: the value is copied out.
    let how = unsafe { TRACED.get(tgid) }.copied();
    (how == Some(traced::RECORD)).then_some(id)
}

/// The function a uprobe stands for (`tracer_common::func`) and its first
/// three real arguments.
pub struct Args {
    pub func: u32,
    pub a0: u64,
    pub a1: u64,
    pub a2: u64,
}

/// Reads the probed call's [`Args`]. CPython's allocator shares libc's
/// argument layout, so its probes reuse libc's programs with an attach
/// cookie: the function in the low 32 bits (0: `default`) and, in bit 32,
/// whether the arguments follow a context pointer (obmalloc's internal
/// `_PyObject_Malloc(ctx, size)`).
#[inline(always)]
pub fn args(ctx: &ProbeContext, default: u32) -> Args {
    // SAFETY: the context is the probe's own.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let func = match cookie as u32 {
        0 => default,
        f => f,
    };
    // The verifier only allows context reads at constant offsets: read each
    // argument register (volatile, so that LLVM cannot merge the loads into
    // one at a chosen offset), then choose.
    // SAFETY: `regs` is the probe's register context.
    let regs = unsafe {
        let regs = ctx.regs;
        [
            core::ptr::read_volatile(&raw const (*regs).rdi),
            core::ptr::read_volatile(&raw const (*regs).rsi),
            core::ptr::read_volatile(&raw const (*regs).rdx),
            core::ptr::read_volatile(&raw const (*regs).rcx),
        ]
    };
    let [a0, a1, a2] = if cookie >> 32 & 1 == 0 {
        [regs[0], regs[1], regs[2]]
    } else {
        [regs[1], regs[2], regs[3]]
    };
    Args { func, a0, a1, a2 }
}

/// A uprobe session's return value (`rax`), at its function's return.
#[inline(always)]
pub fn ret(ctx: &ProbeContext) -> u64 {
    // SAFETY: `regs` is the probe's register context.
    unsafe { (*ctx.regs).rax }
}

/// Reads a `T` from the traced process, or `None` if the address faults.
#[inline(always)]
pub fn user<T>(addr: u64) -> Option<T> {
    // SAFETY: a checked read of user memory.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}
