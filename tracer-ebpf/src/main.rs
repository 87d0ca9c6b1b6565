//! Kernel side of tracer: uprobes on the libc allocation family and
//! tracepoints on the anonymous-memory syscalls, for the processes listed in
//! `TRACED`. Each allocation is captured at the function's entry (arguments,
//! native stack, true caller), kept per thread in `IN_FLIGHT`, and completed
//! at its return with the returned pointer; frees go straight out. Everything
//! that cannot be recorded is counted in `COUNTERS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, pt_regs},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_stack, bpf_task_pt_regs},
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use aya_log_ebpf::debug;
use tracer_common::{
    AllocRecord, FreeRecord, Header, MAX_STACK_DEPTH, counter, exiting, flags, func, kind,
};

/// Processes whose allocations are recorded (tgid -> 1), written by userspace.
/// Sized for `--all` on a busy host; a lookup miss is the whole cost an
/// untraced process pays beyond the trap.
#[map]
static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Allocation calls between entry and return, per thread (pid_tgid). LRU so
/// that threads which die inside a call cannot fill it; 16k threads inside
/// malloc at the same instant is far beyond any real process set.
#[map]
static IN_FLIGHT: LruHashMap<u64, AllocRecord> = LruHashMap::with_max_entries(16384, 0);

/// Where a record is built before it is copied into `IN_FLIGHT`: an
/// `AllocRecord` is larger than the 512-byte BPF stack.
#[map]
static SCRATCH: PerCpuArray<AllocRecord> = PerCpuArray::with_max_entries(1, 0);

/// Records to userspace. Userspace sets the size at load time (`--ring-mb`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Per-CPU counters, indexed by `tracer_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// An in-flight entry older than this belongs to a call whose return was
/// never seen (the thread died or the uretprobe could not be armed): a nested
/// allocation call starts microseconds after its outer one, never seconds.
const STALE_NS: u64 = 1_000_000_000;

const MAP_ANONYMOUS: u64 = 0x20;

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, touched only by this CPU with preemption off.
        unsafe { *c += 1 };
    }
}

/// The current thread's pid_tgid if its process is traced.
#[inline(always)]
fn traced() -> Option<u64> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: the value is only tested for presence.
    unsafe { TRACED.get(tgid) }.map(|_| id)
}

#[inline(always)]
fn header(kind: u32, id: u64, flags: u32) -> Header {
    Header {
        kind,
        pid: (id >> 32) as u32,
        tid: id as u32,
        flags,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// The user stack pointer of a syscall tracepoint's task.
#[inline(always)]
fn syscall_user_sp() -> u64 {
    // SAFETY: both helpers accept the current task; the read is checked.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        bpf_probe_read_kernel(&raw const (*regs).rsp).unwrap_or(0)
    }
}

/// What an allocation call was given at its entry.
struct Call {
    func: u32,
    size: u64,
    old_addr: u64,
    old_len: u64,
    out_ptr: u64,
}

impl Call {
    const fn sized(func: u32, size: u64) -> Self {
        Self {
            func,
            size,
            old_addr: 0,
            old_len: 0,
            out_ptr: 0,
        }
    }
}

/// Starts recording an allocation call of the current (traced) thread.
/// `sp` is the user stack pointer at the function's first instruction, where
/// the return address is.
#[inline(always)]
fn enter<C: EbpfContext>(ctx: &C, id: u64, sp: u64, call: Call) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(outer) = IN_FLIGHT.get_ptr_mut(id) {
        // SAFETY: the entry belongs to this thread, which is running here.
        let outer = unsafe { &mut *outer };
        if now.wrapping_sub(outer.header.ts_ns) < STALE_NS {
            outer.nesting += 1;
            count(counter::NESTED_CALLS);
            return;
        }
        debug!(
            ctx,
            "replacing stale in-flight call of thread {}", id as u32
        );
        count(counter::STALE_PENDING);
    }
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, not shared while this program runs.
    let rec = unsafe { &mut *rec };
    let mut rec_flags = 0;
    // SAFETY: a checked read of user memory.
    rec.caller = match unsafe { bpf_probe_read_user(sp as *const u64) } {
        Ok(caller) => caller,
        Err(_) => {
            rec_flags |= flags::CALLER_LOST;
            0
        }
    };
    // SAFETY: the buffer is the record's own stack array.
    let got = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            rec.stack.as_mut_ptr().cast(),
            (MAX_STACK_DEPTH * 8) as u32,
            BPF_F_USER_STACK as u64,
        )
    };
    if got < 0 {
        rec_flags |= flags::STACK_LOST;
        rec.stack_len = 0;
        count(counter::LOST_STACKS);
    } else {
        rec.stack_len = (got as u32) / 8;
        if rec.stack_len as usize >= MAX_STACK_DEPTH {
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
    // By reference: a by-value record would be copied onto the 512-byte stack.
    let rec: &AllocRecord = rec;
    if IN_FLIGHT.insert(id, rec, 0).is_err() {
        count(counter::PENDING_FULL);
    }
}

/// Sends `rec` with its captured frames only.
#[inline(always)]
fn submit_alloc(rec: &AllocRecord) {
    let frames = rec.stack_len as usize;
    let frames = if frames > MAX_STACK_DEPTH {
        MAX_STACK_DEPTH
    } else {
        frames
    };
    let len = AllocRecord::wire_len(frames);
    // SAFETY: `len` never exceeds size_of::<AllocRecord>().
    let bytes =
        unsafe { core::slice::from_raw_parts((rec as *const AllocRecord).cast::<u8>(), len) };
    match EVENTS.output::<[u8]>(bytes, 0) {
        Ok(()) => count(counter::EVENTS),
        Err(_) => count(counter::LOST_EVENTS),
    }
}

#[inline(always)]
fn submit_free(kind: u32, id: u64, addr: u64, len: u64) {
    let rec = FreeRecord {
        header: header(kind, id, 0),
        addr,
        len,
    };
    match EVENTS.output::<FreeRecord>(&rec, 0) {
        Ok(()) => count(counter::EVENTS),
        Err(_) => count(counter::LOST_EVENTS),
    }
}

fn submit_marker(kind: u32, id: u64, flags: u32) {
    match EVENTS.output::<Header>(&header(kind, id, flags), 0) {
        Ok(()) => count(counter::EVENTS),
        Err(_) => count(counter::LOST_EVENTS),
    }
}

/// Completes the current thread's outermost in-flight call with its return
/// value `ret`. A syscall exit passes its function in `only_func`: if an
/// allocation call is in flight instead, the syscall was part of it.
#[inline(always)]
fn complete(id: u64, ret: u64, only_func: Option<u32>) {
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
    let addr = match rec.func {
        // posix_memalign returns 0 and stores the pointer through its first argument.
        func::POSIX_MEMALIGN if ret as u32 == 0 => {
            // SAFETY: a checked read of user memory.
            unsafe { bpf_probe_read_user(rec.out_ptr as *const u64) }.unwrap_or(0)
        }
        func::POSIX_MEMALIGN => 0,
        // Syscalls return -errno in [-4095, -1].
        func::MMAP | func::MREMAP if ret > (-4096i64) as u64 => 0,
        _ => ret,
    };
    if addr != 0 {
        rec.addr = addr;
        submit_alloc(rec);
    } else if (rec.func == func::REALLOC || rec.func == func::REALLOCARRAY)
        && rec.size == 0
        && rec.old_addr != 0
    {
        // glibc's realloc(p, 0) frees p and returns NULL.
        submit_free(kind::FREE, id, rec.old_addr, 0);
    }
    let _ = IN_FLIGHT.remove(id);
}

#[inline(always)]
fn probe_sp(ctx: &ProbeContext) -> u64 {
    // SAFETY: `regs` is the probe's register context.
    unsafe { (*ctx.regs).rsp }
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

#[uprobe]
pub fn malloc_entry(ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        enter(
            &ctx,
            id,
            probe_sp(&ctx),
            Call::sized(func::MALLOC, arg(&ctx, 0)),
        );
    }
    0
}

#[uprobe]
pub fn calloc_entry(ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        let size = arg(&ctx, 0).wrapping_mul(arg(&ctx, 1));
        enter(&ctx, id, probe_sp(&ctx), Call::sized(func::CALLOC, size));
    }
    0
}

#[uprobe]
pub fn realloc_entry(ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        let call = Call {
            old_addr: arg(&ctx, 0),
            ..Call::sized(func::REALLOC, arg(&ctx, 1))
        };
        enter(&ctx, id, probe_sp(&ctx), call);
    }
    0
}

#[uprobe]
pub fn reallocarray_entry(ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        let call = Call {
            old_addr: arg(&ctx, 0),
            ..Call::sized(func::REALLOCARRAY, arg(&ctx, 1).wrapping_mul(arg(&ctx, 2)))
        };
        enter(&ctx, id, probe_sp(&ctx), call);
    }
    0
}

#[uprobe]
pub fn posix_memalign_entry(ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        let call = Call {
            out_ptr: arg(&ctx, 0),
            ..Call::sized(func::POSIX_MEMALIGN, arg(&ctx, 2))
        };
        enter(&ctx, id, probe_sp(&ctx), call);
    }
    0
}

/// `memalign(alignment, size)` and `aligned_alloc(alignment, size)`.
#[uprobe]
pub fn memalign_entry(ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        enter(
            &ctx,
            id,
            probe_sp(&ctx),
            Call::sized(func::MEMALIGN, arg(&ctx, 1)),
        );
    }
    0
}

#[uprobe]
pub fn valloc_entry(ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        enter(
            &ctx,
            id,
            probe_sp(&ctx),
            Call::sized(func::VALLOC, arg(&ctx, 0)),
        );
    }
    0
}

#[uprobe]
pub fn pvalloc_entry(ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        enter(
            &ctx,
            id,
            probe_sp(&ctx),
            Call::sized(func::PVALLOC, arg(&ctx, 0)),
        );
    }
    0
}

/// The return of every function above.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    if let Some(id) = traced() {
        complete(id, ctx.ret::<u64>(), None);
    }
    0
}

/// `free`, attached where possible past its NULL check (see the userspace
/// probe placement), so `free(NULL)` may not be seen: it frees nothing.
#[uprobe]
pub fn free_entry(ctx: ProbeContext) -> u32 {
    let Some(id) = traced() else { return 0 };
    if IN_FLIGHT.get_ptr(id).is_some() {
        // glibc's realloc(p, 0) calls free; the realloc return reports it.
        count(counter::NESTED_CALLS);
        return 0;
    }
    let addr = arg(&ctx, 0);
    if addr != 0 {
        submit_free(kind::FREE, id, addr, 0);
    }
    0
}

#[tracepoint]
pub fn mmap_enter(ctx: TracePointContext) -> u32 {
    let Some(id) = traced() else { return 0 };
    // SAFETY: offsets from events/syscalls/sys_enter_mmap/format.
    let (len, map_flags) = unsafe {
        (
            ctx.read_at::<u64>(24).unwrap_or(0),
            ctx.read_at::<u64>(40).unwrap_or(0),
        )
    };
    if map_flags & MAP_ANONYMOUS == 0 {
        return 0;
    }
    // Inside malloc and friends, a mapping is the allocator's own business.
    if IN_FLIGHT.get_ptr(id).is_some() {
        count(counter::NESTED_CALLS);
        return 0;
    }
    enter(&ctx, id, syscall_user_sp(), Call::sized(func::MMAP, len));
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
    if IN_FLIGHT.get_ptr(id).is_some() {
        count(counter::NESTED_CALLS);
        return 0;
    }
    // SAFETY: offsets from events/syscalls/sys_enter_mremap/format.
    let call = unsafe {
        Call {
            func: func::MREMAP,
            old_addr: ctx.read_at::<u64>(16).unwrap_or(0),
            old_len: ctx.read_at::<u64>(24).unwrap_or(0),
            size: ctx.read_at::<u64>(32).unwrap_or(0),
            out_ptr: 0,
        }
    };
    enter(&ctx, id, syscall_user_sp(), call);
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
    if IN_FLIGHT.get_ptr(id).is_some() {
        count(counter::NESTED_CALLS);
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
/// which frees what was still referenced (the leaks).
#[uprobe]
pub fn py_finalize_entry(_ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        submit_marker(kind::EXITING, id, exiting::PY_FINALIZE);
    }
    0
}

/// libc's `exit`: atexit handlers and destructors run next.
#[uprobe]
pub fn exit_entry(_ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        submit_marker(kind::EXITING, id, exiting::LIBC_EXIT);
    }
    0
}

/// A traced process replaced its image: userspace looks for its new libraries.
#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    if let Some(id) = traced() {
        submit_marker(kind::EXEC, id, 0);
    }
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
