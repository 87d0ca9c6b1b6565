//! The native stack of an allocation call, from a frame-pointer walk of the
//! user stack at the function's entry: docs/allocation-matching.md,
//! "Stacks" (and docs/overhead.md for why it is not `bpf_get_stack`).

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_task_btf, bpf_probe_read_kernel,
        generated::{bpf_loop, bpf_task_pt_regs},
    },
    macros::map,
    maps::PerCpuArray,
    programs::ProbeContext,
};
use tracer_common::{AllocRecord, MAX_STACK_DEPTH};

use crate::{maps::SCRATCH, probe::user};

/// How far above the stack pointer a frame may lie. Code built without
/// frame pointers uses the register for data, often a heap address: a
/// chain that leaves the stack is not one (and following it costs a read
/// per bogus frame).
const MAX_STACK_SPAN: u64 = 32 << 20;

/// Where the user stack of an allocation call starts: the instruction
/// pointer, the stack pointer (the return address is there at a function's
/// entry) and the frame pointer.
pub struct UserRegs {
    ip: u64,
    pub sp: u64,
    bp: u64,
}

impl UserRegs {
    /// The user registers at a uprobe.
    #[inline(always)]
    pub fn of_probe(ctx: &ProbeContext) -> Self {
        // SAFETY: `regs` is the probe's register context.
        unsafe {
            let regs = ctx.regs;
            Self {
                ip: (*regs).rip,
                sp: (*regs).rsp,
                bp: (*regs).rbp,
            }
        }
    }

    /// The user registers of a syscall tracepoint's task.
    #[inline(always)]
    pub fn of_syscall() -> Self {
        // SAFETY: both helpers accept the current task; the reads are checked.
        unsafe {
            let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
            Self {
                ip: bpf_probe_read_kernel(&raw const (*regs).rip).unwrap_or(0),
                sp: bpf_probe_read_kernel(&raw const (*regs).rsp).unwrap_or(0),
                bp: bpf_probe_read_kernel(&raw const (*regs).rbp).unwrap_or(0),
            }
        }
    }
}

/// The frame-pointer walk of this CPU's `SCRATCH` record, between
/// `bpf_loop` iterations.
#[repr(C)]
pub struct FrameWalk {
    /// The frame pointer to follow next; 0 at the end.
    bp: u64,
    /// Frames written so far.
    n: u64,
    /// The stack pointer at the call: frames lie above it.
    sp: u64,
}

/// The native frame-pointer walk's state between `bpf_loop` iterations,
/// whose callback cannot reach the program's stack.
#[map]
static FRAME_WALK: PerCpuArray<FrameWalk> = PerCpuArray::with_max_entries(1, 0);

/// One frame: the saved frame pointer and the return address above it,
/// read at once. Returns 1 to stop.
extern "C" fn frame_step(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let (Some(walk), Some(rec)) = (FRAME_WALK.get_ptr_mut(0), SCRATCH.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: per-CPU state of this program run.
    let (walk, rec) = unsafe { (&mut *walk, &mut *rec) };
    let (bp, n) = (walk.bp, walk.n as usize);
    let on_stack = bp >= walk.sp && bp - walk.sp < MAX_STACK_SPAN;
    if !on_stack || bp & 7 != 0 || n >= MAX_STACK_DEPTH {
        walk.bp = 0;
        return 1;
    }
    let Some([next, ret]) = user::<[u64; 2]>(bp) else {
        walk.bp = 0;
        return 1;
    };
    if ret == 0 {
        walk.bp = 0;
        return 1;
    }
    rec.stack[n] = ret;
    walk.n += 1;
    // Frames lie ever higher on the stack: anything else is not a chain.
    walk.bp = if next > bp { next } else { 0 };
    i64::from(walk.bp == 0)
}

/// Walks the frame-pointer chain from `regs` into the `SCRATCH` record's
/// stack: the instruction pointer, then each frame's return address. The
/// same as `bpf_get_stack(BPF_F_USER_STACK)` at a third of its cost (700
/// ns per call measured here, most of it setup). Returns the frames and
/// whether the chain went on past `MAX_STACK_DEPTH`.
#[inline(always)]
pub fn walk_frames(rec: &mut AllocRecord, regs: &UserRegs) -> (u32, bool) {
    let Some(walk) = FRAME_WALK.get_ptr_mut(0) else {
        return (0, false);
    };
    rec.stack[0] = regs.ip;
    // SAFETY: per-CPU state of this program run.
    unsafe {
        *walk = FrameWalk {
            bp: regs.bp,
            n: 1,
            sp: regs.sp,
        };
        bpf_loop(
            (MAX_STACK_DEPTH - 1) as u32,
            frame_step as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        );
        let walk = &*walk;
        (
            walk.n as u32,
            walk.bp != 0 && walk.n as usize >= MAX_STACK_DEPTH,
        )
    }
}
