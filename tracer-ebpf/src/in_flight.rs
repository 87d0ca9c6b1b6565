//! Allocation calls between their entry and their return, one per thread
//! in `IN_FLIGHT`: docs/allocation-matching.md, "In the kernel: entry to
//! return, per thread".

use aya_ebpf::{EbpfContext, helpers::bpf_ktime_get_ns};
use aya_log_ebpf::debug;
use tracer_common::{AllocRecord, Header, SampledKey, counter, flags, func, kind};

use crate::{
    maps::{IN_FLIGHT, SAMPLE_BYTES, SAMPLED, SCRATCH, SESSION},
    probe::user,
    ring::count,
    sampling::sampled,
    stack::{UserRegs, walk_frames},
    submit::{submit_alloc, submit_free},
};

/// An in-flight entry older than this belongs to a call whose return was
/// never seen (the thread died or the uretprobe could not be armed): a nested
/// allocation call starts microseconds after its outer one, never seconds.
const STALE_NS: u64 = 1_000_000_000;

/// What an allocation call was given at its entry.
pub struct Call {
    pub func: u32,
    /// `Header::flags` bits known at the entry (`flags::THREAD_STACK`).
    pub flags: u32,
    pub size: u64,
    pub old_addr: u64,
    pub old_len: u64,
    pub out_ptr: u64,
}

impl Call {
    /// A call of `func` (`tracer_common::func`) whose arguments are still
    /// to be filled in.
    pub const fn of(func: u32) -> Self {
        Self {
            func,
            flags: 0,
            size: 0,
            old_addr: 0,
            old_len: 0,
            out_ptr: 0,
        }
    }
}

/// Whether thread `id`, its stack pointer at `sp`, is inside an allocation
/// call already, counted in `nested_calls`: what it frees or maps there is
/// the allocator's own business (glibc's realloc(p, 0) calls free, malloc
/// maps large chunks), reported by the outer call's return.
#[inline(always)]
pub fn nested(id: u64, sp: u64) -> bool {
    let Some(rec) = IN_FLIGHT.get_ptr(id) else {
        return false;
    };
    // SAFETY: the entry belongs to this thread, which is running here.
    if ended(unsafe { &*rec }, sp) {
        let _ = IN_FLIGHT.remove(id);
        return false;
    }
    count(counter::NESTED_CALLS);
    true
}

/// Whether a call marked `NO_RETURN` (no return probe will end it) has
/// returned, seen from a new entry (or syscall) of the thread at stack
/// pointer `sp`. Stacks grow down: while the call runs, everything it does
/// is below its entry's stack pointer, where its return address stays. So
/// it has returned if `sp` is not below that (at the same depth, a new call:
/// the one tail call an allocation function makes, realloc(NULL, n) to
/// malloc, is that malloc anyway), or if the return address was overwritten
/// (a deeper call made after it returned). A slot that still holds the same
/// word after the return misjudges calls as nested until the next shallower
/// one or `STALE_NS`: they are counted in `nested_calls`.
#[inline(always)]
fn ended(rec: &AllocRecord, sp: u64) -> bool {
    rec.header.flags & flags::NO_RETURN != 0
        && (sp >= rec.entry_sp || user::<u64>(rec.entry_sp) != Some(rec.caller))
}

/// With uprobe sessions: whether the program runs at the return of the
/// thread's in-flight call rather than at a new entry. The return comes at
/// the return address, with the stack pointer just above the entry's.
#[inline(always)]
pub fn returning(id: u64, regs: &UserRegs) -> bool {
    let Some(rec) = IN_FLIGHT.get_ptr(id) else {
        return false;
    };
    // SAFETY: the entry belongs to this thread, which is running here.
    let rec = unsafe { &*rec };
    rec.header.flags & flags::NO_RETURN == 0 && regs.sp == rec.entry_sp.wrapping_add(8)
}

/// Starts recording an allocation call of the current (traced) thread `id`.
/// `regs` are the user registers at the function's first instruction, where
/// the return address is at the stack pointer. Returns whether the call's
/// return must be seen: with uprobe sessions, a call that needs nothing of
/// its return (a nested or unsampled one) skips the return trap.
#[inline(always)]
pub fn enter<C: EbpfContext>(ctx: &C, id: u64, regs: UserRegs, call: Call) -> bool {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let session = SESSION.load() != 0;
    if let Some(outer) = IN_FLIGHT.get_ptr_mut(id) {
        // SAFETY: the entry belongs to this thread, which is running here.
        let outer = unsafe { &mut *outer };
        let returned = ended(outer, regs.sp);
        if !returned && now.wrapping_sub(outer.header.ts_ns) < STALE_NS {
            count(counter::NESTED_CALLS);
            if session {
                // Part of the outer call, whose return reports it.
                return false;
            }
            // Its own return probe comes first, and takes this back.
            outer.nesting += 1;
            return true;
        }
        if !returned {
            debug!(
                ctx,
                "replacing stale in-flight call of thread {}", id as u32
            );
            count(counter::STALE_IN_FLIGHT);
        }
    }
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU scratch, not shared while this program runs.
    let rec = unsafe { &mut *rec };
    let mut rec_flags = call.flags;
    let mean = SAMPLE_BYTES.load();
    let unsampled = mean != 0 && func::is_sampled(call.func) && !sampled(mean, call.size);
    let mut wants_return = true;
    // The return address: the true caller, and how a call without a return
    // probe is known to have returned (`ended`).
    rec.caller = match user::<u64>(regs.sp) {
        Some(caller) => caller,
        None => {
            rec_flags |= flags::CALLER_LOST;
            0
        }
    };
    if unsampled {
        count(counter::UNSAMPLED);
        // Still in flight, without a stack: nested calls belong to it. Its
        // return only matters to move a sampled pointer it reallocates.
        rec_flags |= flags::UNSAMPLED;
        rec.stack_len = 0;
        if session && rec_flags & flags::CALLER_LOST == 0 && !moves_sampled(id, &call) {
            rec_flags |= flags::NO_RETURN;
            wants_return = false;
        }
    } else {
        let (frames, full) = walk_frames(rec, &regs);
        rec.stack_len = frames;
        if frames == 0 {
            rec_flags |= flags::STACK_LOST;
            count(counter::LOST_STACKS);
        }
        if full {
            rec_flags |= flags::STACK_FULL;
        }
    }
    rec.header = Header {
        kind: kind::ALLOC,
        pid: (id >> 32) as u32,
        tid: id as u32,
        flags: rec_flags,
        ts_ns: now,
    };
    rec.func = call.func;
    rec.nesting = 0;
    rec.size = call.size;
    rec.addr = 0;
    rec.old_addr = call.old_addr;
    rec.old_len = call.old_len;
    rec.out_ptr = call.out_ptr;
    rec.entry_sp = regs.sp;
    rec.py_len = 0;
    // By reference: a by-value record would be copied onto the 512-byte stack.
    let rec: &AllocRecord = rec;
    if IN_FLIGHT.insert(id, rec, 0).is_err() {
        count(counter::IN_FLIGHT_FULL);
        return false;
    }
    wants_return
}

/// Whether `call` reallocates a pointer that was sampled: userspace must
/// learn that it moved (or was freed), so its return is needed.
#[inline(always)]
fn moves_sampled(id: u64, call: &Call) -> bool {
    // SAFETY: presence test only.
    call.old_addr != 0 && unsafe { SAMPLED.get(sampled_key(id, call.old_addr)) }.is_some()
}

/// Completes the current thread's outermost in-flight call with its return
/// value `ret`. A syscall exit passes its function in `only_func`: if an
/// allocation call is in flight instead, the syscall was part of it.
#[inline(always)]
pub fn complete(id: u64, ret: u64, only_func: Option<u32>) {
    let Some(rec) = IN_FLIGHT.get_ptr_mut(id) else {
        // Syscall exits come for every call; their entries were filtered.
        if only_func.is_none() {
            count(counter::UNMATCHED_RETURNS);
        }
        return;
    };
    // SAFETY: the entry belongs to this thread, which is running here.
    let rec = unsafe { &mut *rec };
    if let Some(f) = only_func
        && rec.func != f
    {
        // A syscall made inside an allocation call: part of that call.
        return;
    }
    if rec.nesting > 0 {
        rec.nesting -= 1;
        return;
    }
    let sampling = SAMPLE_BYTES.load() != 0 && func::is_sampled(rec.func);
    if sampling && rec.header.flags & flags::UNSAMPLED != 0 {
        // A failed realloc leaves its pointer as it was.
        if rec.old_addr != 0
            && (ret != 0 || rec.size == 0)
            && SAMPLED.remove(sampled_key(id, rec.old_addr)).is_ok()
        {
            submit_free(kind::FREE, id, rec.old_addr, 0);
        }
        let _ = IN_FLIGHT.remove(id);
        return;
    }
    let addr = match rec.func {
        // posix_memalign returns 0 and stores the pointer through its first argument.
        func::POSIX_MEMALIGN if ret as u32 == 0 => user::<u64>(rec.out_ptr).unwrap_or(0),
        func::POSIX_MEMALIGN => 0,
        // Syscalls return -errno in [-4095, -1].
        func::MMAP | func::MREMAP if ret > (-4096i64) as u64 => 0,
        _ => ret,
    };
    if sampling {
        // Userspace only knows sampled pointers: a realloc of another is a
        // fresh allocation there.
        if rec.old_addr != 0 && SAMPLED.remove(sampled_key(id, rec.old_addr)).is_err() {
            rec.old_addr = 0;
        }
        if addr != 0 {
            let _ = SAMPLED.insert(sampled_key(id, addr), 0, 0);
        }
    }
    if addr != 0 {
        rec.addr = addr;
        submit_alloc(rec);
    } else if rec.func == func::REALLOC && rec.size == 0 && rec.old_addr != 0 {
        // glibc's realloc(p, 0) frees p and returns NULL (CPython's never
        // returns NULL for a size of 0).
        submit_free(kind::FREE, id, rec.old_addr, 0);
    }
    let _ = IN_FLIGHT.remove(id);
}

/// The `SAMPLED` key of `addr` in the process of thread `id` (pid_tgid).
#[inline(always)]
pub fn sampled_key(id: u64, addr: u64) -> SampledKey {
    SampledKey {
        pid: (id >> 32) as u32,
        _pad: 0,
        addr,
    }
}
