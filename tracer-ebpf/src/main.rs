//! Kernel side of tracer: uprobes on the libc allocation family and
//! tracepoints on the anonymous-memory syscalls, for the processes listed in
//! `TRACED`. Each allocation is captured at the function's entry (arguments,
//! native stack, true caller), kept per thread in `IN_FLIGHT`, and completed
//! at its return with the returned pointer; frees go straight out. Everything
//! that cannot be recorded is counted in `COUNTERS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE, pt_regs,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_attach_cookie, bpf_loop, bpf_probe_read_kernel as copy_kernel, bpf_task_pt_regs,
        },
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use aya_log_ebpf::debug;
use tracer_common::{
    AllocRecord, CodeKey, CodeRecord, FreeRecord, Header, MAX_CODE_STR, MAX_CODE_TABLE,
    MAX_PY_DEPTH, MAX_STACK_DEPTH, PyConfig, PyFrame, counter, exec, exiting, flags, func, kind,
    py_config, sampling,
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

/// How to read the Python frames of each traced CPython process, written by
/// userspace once it has found the interpreter.
#[map]
static PY_PROCS: HashMap<u32, PyConfig> = HashMap::with_max_entries(16384, 0);

/// Where a finished record (fixed part, native frames, Python frames) is
/// assembled before it is copied into the ring buffer.
#[map]
static OUT: PerCpuArray<[u64; AllocRecord::MAX_WIRE_LEN / 8]> = PerCpuArray::with_max_entries(1, 0);

/// Offset of `thread.fsbase` in the kernel's `task_struct` (from its BTF),
/// set by userspace at load; 0 turns Python frames off.
#[unsafe(no_mangle)]
static FSBASE_OFFSET: Global<u64> = Global::new(0);

/// `--all`: report every exec, and trace processes named python* from their
/// first instruction (userspace drops those that turn out not to be CPython).
#[unsafe(no_mangle)]
static ALL_EXECS: Global<u8> = Global::new(0);

/// `--sample-bytes`: the mean bytes between samples; 0 records every call.
#[unsafe(no_mangle)]
static SAMPLE_BYTES: Global<u64> = Global::new(0);

/// Exponential gaps between samples, in units of SAMPLE_BYTES / 2^16, set
/// by userspace (tracer's sampling.rs): a random entry is a random gap.
#[map]
static GAP_TABLE: Array<u32> = Array::with_max_entries(sampling::GAP_TABLE_LEN as u32, 0);

/// Bytes left until the next sample, per CPU (0: not drawn yet). The
/// bytes are a Poisson process, so the count may move between CPUs as
/// threads do without biasing anything.
#[map]
static SAMPLE_LEFT: PerCpuArray<i64> = PerCpuArray::with_max_entries(1, 0);

/// With sampling: the live addresses of sampled allocations, so that only
/// their frees are sent. Userspace sizes it (LRU maps are preallocated):
/// one entry without sampling. LRU: an allocation evicted unfreed would
/// later show as a leak.
#[map]
static SAMPLED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `tracer_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// An in-flight entry older than this belongs to a call whose return was
/// never seen (the thread died or the uretprobe could not be armed): a nested
/// allocation call starts microseconds after its outer one, never seconds.
const STALE_NS: u64 = 1_000_000_000;

const MAP_ANONYMOUS: u64 = 0x20;
const PROT_NONE: u64 = 0;

/// Ring buffer flags for a record: wake tracer only once a quarter of the
/// ring is full. Waking it for each record (the default when it keeps up)
/// costs the traced thread an interrupt and a context switch per
/// allocation; tracer drains every few milliseconds on its own.
#[inline(always)]
fn wakeup() -> u64 {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if avail > size / 4 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

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

/// Where the user stack of an allocation call starts: the instruction
/// pointer, the stack pointer (the return address is there at a function's
/// entry) and the frame pointer.
struct UserRegs {
    ip: u64,
    sp: u64,
    bp: u64,
}

/// The user registers of a syscall tracepoint's task.
#[inline(always)]
fn syscall_user_regs() -> UserRegs {
    // SAFETY: both helpers accept the current task; the reads are checked.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        UserRegs {
            ip: bpf_probe_read_kernel(&raw const (*regs).rip).unwrap_or(0),
            sp: bpf_probe_read_kernel(&raw const (*regs).rsp).unwrap_or(0),
            bp: bpf_probe_read_kernel(&raw const (*regs).rbp).unwrap_or(0),
        }
    }
}

/// The frame-pointer walk of this CPU's `SCRATCH` record, between
/// `bpf_loop` iterations.
#[repr(C)]
struct FrameWalk {
    /// The frame pointer to follow next; 0 at the end.
    bp: u64,
    /// Frames written so far.
    n: u64,
    /// The stack pointer at the call: frames lie above it.
    sp: u64,
}

/// How far above the stack pointer a frame may lie. Code built without
/// frame pointers uses the register for data, often a heap address: a
/// chain that leaves the stack is not one (and following it costs a read
/// per bogus frame).
const MAX_STACK_SPAN: u64 = 32 << 20;

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
fn walk_frames(rec: &mut AllocRecord, regs: &UserRegs) -> (u32, bool) {
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

/// Whether an allocation call of `size` bytes is sampled: a point of the
/// Poisson process over allocated bytes falls in it.
#[inline(always)]
fn sampled(mean: u64, size: u64) -> bool {
    let Some(left) = SAMPLE_LEFT.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a per-CPU slot, touched only by this CPU with preemption off.
    let left = unsafe { &mut *left };
    let draw = || {
        // SAFETY: no preconditions.
        let r = unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() };
        let gap = GAP_TABLE
            .get(r & (sampling::GAP_TABLE_LEN as u32 - 1))
            .copied()
            .unwrap_or(1 << sampling::GAP_SCALE_BITS);
        (mean.wrapping_mul(u64::from(gap)) >> sampling::GAP_SCALE_BITS) as i64
    };
    if *left == 0 {
        *left = draw().max(1);
    }
    *left -= size as i64;
    if *left > 0 {
        return false;
    }
    *left = draw().max(1);
    true
}

/// Starts recording an allocation call of the current (traced) thread.
/// `sp` is the user stack pointer at the function's first instruction, where
/// the return address is.
#[inline(always)]
fn enter<C: EbpfContext>(ctx: &C, id: u64, regs: UserRegs, call: Call) {
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
        count(counter::STALE_IN_FLIGHT);
    }
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, not shared while this program runs.
    let rec = unsafe { &mut *rec };
    let mut rec_flags = 0;
    let mean = SAMPLE_BYTES.load();
    let unsampled = mean != 0 && func::is_sampled(call.func) && !sampled(mean, call.size);
    if unsampled {
        count(counter::UNSAMPLED);
        // Still in flight, without a stack: nested calls belong to it, and
        // a realloc may move a sampled pointer.
        rec_flags |= flags::UNSAMPLED;
        rec.stack_len = 0;
    } else {
        // SAFETY: a checked read of user memory.
        rec.caller = match unsafe { bpf_probe_read_user(regs.sp as *const u64) } {
            Ok(caller) => caller,
            Err(_) => {
                rec_flags |= flags::CALLER_LOST;
                0
            }
        };
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
    rec.py_len = 0;
    // By reference: a by-value record would be copied onto the 512-byte stack.
    let rec: &AllocRecord = rec;
    if IN_FLIGHT.insert(id, rec, 0).is_err() {
        count(counter::IN_FLIGHT_FULL);
    }
}

/// Reads a `T` from the traced process, or `None` if the address faults.
#[inline(always)]
fn user<T>(addr: u64) -> Option<T> {
    // SAFETY: a checked read of user memory.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// The Python frame walk of this CPU's current record, between
/// `bpf_loop` iterations.
#[repr(C)]
struct Walk {
    /// The next frame to read; 0 at the end of the chain.
    frame: u64,
    /// Frames written so far.
    n: u64,
    /// Where the Python frames start in `OUT` (after the native ones).
    head: u64,
    /// The process's layout, copied once per walk rather than looked up
    /// per frame.
    cfg: PyConfig,
    /// The head of the current frame and of its code object, each read at
    /// once: one read of user memory costs about as much as one field.
    frame_head: Head,
    code_head: Head,
}

/// The first bytes of an object in the traced process, where every field
/// the walk needs lies (the largest offset is 3.8's f_lasti, 104).
#[repr(C)]
struct Head {
    addr: u64,
    /// Whether `bytes` holds them (the object may end a mapping: then each
    /// field is read on its own).
    ok: u64,
    bytes: [u8; HEAD_LEN],
}

const HEAD_LEN: usize = 128;

impl Head {
    #[inline(always)]
    fn load(&mut self, addr: u64) {
        self.addr = addr;
        // SAFETY: the destination is this head's own buffer.
        self.ok = u64::from(
            unsafe {
                aya_ebpf::helpers::generated::bpf_probe_read_user(
                    self.bytes.as_mut_ptr().cast(),
                    HEAD_LEN as u32,
                    addr as *const core::ffi::c_void,
                )
            } == 0,
        );
    }

    /// The `T` at `offset` from the object's start.
    #[inline(always)]
    fn get<T: Copy>(&self, offset: u32) -> Option<T> {
        let at = offset as usize & (HEAD_LEN - 1);
        if self.ok != 0 && at == offset as usize && at + size_of::<T>() <= HEAD_LEN {
            // SAFETY: in bounds of `bytes` (checked); T is plain data.
            return Some(unsafe { core::ptr::read_unaligned(self.bytes.as_ptr().add(at).cast()) });
        }
        user::<T>(self.addr + u64::from(offset))
    }
}

#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// Code objects already copied to userspace (`CodeRecord`). A process runs
/// thousands at most; eviction only costs a second copy.
#[map]
static CODE_SEEN: LruHashMap<CodeKey, u8> = LruHashMap::with_max_entries(65536, 0);

/// Reads a `str` object's characters into `dst`. Returns (bytes, kind).
#[inline(always)]
fn read_str(cfg: &PyConfig, obj: u64, dst: &mut [u8; MAX_CODE_STR]) -> (u32, u32) {
    let (Some(length), Some(state)) = (user::<i64>(obj + 16), user::<u32>(obj + 32)) else {
        return (0, 0);
    };
    let kind = (state >> 2) & 7;
    let ascii = state & (1 << 6) != 0;
    let data = obj
        + u64::from(if ascii {
            cfg.str_ascii_data
        } else {
            cfg.str_compact_data
        });
    let mut n = (length as u64).wrapping_mul(u64::from(kind));
    if n > MAX_CODE_STR as u64 {
        n = MAX_CODE_STR as u64;
    }
    // SAFETY: n <= the size of dst.
    let ok = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            dst.as_mut_ptr().cast(),
            n as u32,
            data as *const core::ffi::c_void,
        )
    } == 0;
    if ok { (n as u32, kind) } else { (0, 0) }
}

/// Copies the code object `code` (first line `firstlineno`) to userspace
/// unless it was already.
#[inline(always)]
fn copy_code(cfg: &PyConfig, pid: u32, code: u64, firstlineno: i32) {
    let key = CodeKey {
        pid,
        firstlineno,
        code,
    };
    // SAFETY: presence test only.
    if unsafe { CODE_SEEN.get(key) }.is_some() {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<CodeRecord>(0) else {
        count(counter::LOST_CODE);
        return;
    };
    // SAFETY: the reservation is a CodeRecord's worth of ring buffer.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    rec.header = header(kind::CODE, bpf_get_current_pid_tgid(), 0);
    rec.code = code;
    rec.firstlineno = firstlineno;
    rec.co_flags = user::<u32>(code + u64::from(cfg.code_flags)).unwrap_or(0);
    let filename = user::<u64>(code + u64::from(cfg.code_filename)).unwrap_or(0);
    (rec.filename_len, rec.filename_kind) = read_str(cfg, filename, &mut rec.filename);
    let name = user::<u64>(code + u64::from(cfg.code_name)).unwrap_or(0);
    (rec.name_len, rec.name_kind) = read_str(cfg, name, &mut rec.name);
    let table = user::<u64>(code + u64::from(cfg.code_linetable)).unwrap_or(0);
    let size = user::<i64>(table + 16).unwrap_or(0).max(0) as u64;
    let mut n = size;
    if n > MAX_CODE_TABLE as u64 {
        n = MAX_CODE_TABLE as u64;
    }
    // SAFETY: n <= the size of rec.table.
    let ok = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            rec.table.as_mut_ptr().cast(),
            n as u32,
            (table + 32) as *const core::ffi::c_void,
        )
    } == 0;
    rec.table_len = if ok { n as u32 } else { 0 };
    rec.table_full = u32::from(size > n);
    entry.submit(wakeup());
    count(counter::EVENTS);
    let _ = CODE_SEEN.insert(key, 0, 0);
}

/// Where the Python frames of the current thread start: its frame chain,
/// through the GIL-state TSS key (unlike `_Py_tss_tstate`, still set while
/// C code runs with the GIL released). 0 if it has none.
#[inline(always)]
fn first_python_frame(cfg: &PyConfig) -> Result<u64, ()> {
    let fsbase_offset = FSBASE_OFFSET.load();
    if fsbase_offset == 0 {
        return Ok(0);
    }
    // SAFETY: reads of the current task are checked.
    let fsbase = unsafe {
        let task = bpf_get_current_task();
        bpf_probe_read_kernel((task + fsbase_offset) as *const u64).unwrap_or(0)
    };
    let [initialized, key] = user::<[u32; 2]>(cfg.runtime + u64::from(cfg.tss_key)).ok_or(())?;
    // glibc keeps keys below 32 in the thread's first block.
    if initialized == 0 || key >= 32 || fsbase == 0 {
        return Ok(0);
    }
    let slot = fsbase + u64::from(cfg.pthread_specific) + u64::from(key) * 16 + 8;
    let tstate = user::<u64>(slot).ok_or(())?;
    if tstate == 0 {
        return Ok(0);
    }
    let mut frame = user::<u64>(tstate + u64::from(cfg.tstate_frame)).ok_or(())?;
    if cfg.cframe_frame != py_config::NONE && frame != 0 {
        frame = user::<u64>(frame + u64::from(cfg.cframe_frame)).ok_or(())?;
    }
    Ok(frame)
}

/// One frame of the walk (a `bpf_loop` callback, which the verifier checks
/// once rather than per iteration). Returns 1 to stop.
extern "C" fn walk_step(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let (Some(walk), Some(out)) = (WALK.get_ptr_mut(0), OUT.get_ptr_mut(0)) else {
        return 1;
    };
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: per-CPU state of this program run.
    let walk = unsafe { &mut *walk };
    let cfg = &walk.cfg;
    let (frame, n, head) = (walk.frame, walk.n as usize, walk.head as usize);
    if frame == 0 || n >= MAX_PY_DEPTH || head > AllocRecord::wire_len(MAX_STACK_DEPTH, 0) {
        return 1;
    }
    walk.frame_head.load(frame);
    let fh = &walk.frame_head;
    let Some(code) = fh.get::<u64>(cfg.frame_code) else {
        walk.frame = 0;
        return 1;
    };
    let code = code & !u64::from(cfg.code_tag_bits);
    let owner = u32::from(fh.get::<u8>(cfg.frame_owner).unwrap_or(0));
    let instr = fh.get::<u64>(cfg.frame_instr).unwrap_or(0);
    let previous = fh.get::<u64>(cfg.frame_previous).unwrap_or(0);
    walk.code_head.load(code);
    let ch = &walk.code_head;
    // Shim frames of C code (3.12+), and frames whose executable is no code
    // object (3.14's base frame), are not Python frames.
    let is_code = cfg.code_type == 0 || ch.get::<u64>(8) == Some(cfg.code_type);
    if owner != cfg.owner_cstack && is_code {
        let firstlineno = ch.get::<i32>(cfg.code_firstlineno).unwrap_or(0);
        // SAFETY: head + (n + 1) frames fit in OUT (checked above).
        unsafe {
            let at = out
                .cast::<u8>()
                .add(head + n * size_of::<PyFrame>())
                .cast::<PyFrame>();
            *at = PyFrame {
                code,
                instr,
                firstlineno,
                _pad: 0,
            };
        }
        walk.n += 1;
        copy_code(cfg, pid, code, firstlineno);
    }
    walk.frame = previous;
    i64::from(previous == 0)
}

/// Walks the current thread's Python frames into `OUT` after its `head`
/// bytes, innermost first. Returns how many were written and the `flags`
/// bits to add.
#[inline(always)]
fn walk_python(cfg: &PyConfig, head: usize) -> (u32, u32) {
    let Ok(frame) = first_python_frame(cfg) else {
        return (0, flags::PY_LOST);
    };
    let Some(walk) = WALK.get_ptr_mut(0) else {
        return (0, 0);
    };
    // SAFETY: per-CPU state of this program run.
    unsafe {
        let walk = &mut *walk;
        walk.frame = frame;
        walk.n = 0;
        walk.head = head as u64;
        walk.cfg = *cfg;
        // A frame may be a shim that is skipped: allow for some of those.
        bpf_loop(
            (MAX_PY_DEPTH + 16) as u32,
            walk_step as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        );
        let walk = &*walk;
        let truncated = if walk.frame != 0 {
            flags::PY_TRUNCATED
        } else {
            0
        };
        (walk.n as u32, truncated)
    }
}

/// Sends `rec` with its captured native frames and, for a CPython process,
/// the Python frames of the thread, read now: they do not change while the
/// thread is inside an allocation call.
#[inline(always)]
fn submit_alloc(rec: &AllocRecord) {
    let Some(out) = OUT.get_ptr_mut(0) else {
        return;
    };
    let native = (rec.stack_len as usize).min(MAX_STACK_DEPTH);
    let head = AllocRecord::wire_len(native, 0);
    let out = out.cast::<u8>();
    // SAFETY: `head` is at most size_of::<AllocRecord>(), which `out` exceeds.
    if unsafe { copy_kernel(out.cast(), head as u32, (rec as *const AllocRecord).cast()) } < 0 {
        return;
    }
    // SAFETY: the value is read only.
    let (py_len, py_flags) = match unsafe { PY_PROCS.get(rec.header.pid) } {
        Some(cfg) => walk_python(cfg, head),
        None => (0, 0),
    };
    let py_len = (py_len as usize).min(MAX_PY_DEPTH);
    // SAFETY: `out` starts with a copy of the record's fixed part.
    unsafe {
        let header = &mut *out.cast::<AllocRecord>();
        header.py_len = py_len as u32;
        header.header.flags |= py_flags;
    }
    let len = head + py_len * size_of::<PyFrame>();
    // SAFETY: `len` is at most MAX_WIRE_LEN, the size of `out`.
    let bytes = unsafe { core::slice::from_raw_parts(out, len) };
    match EVENTS.output::<[u8]>(bytes, wakeup()) {
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
    match EVENTS.output::<FreeRecord>(&rec, wakeup()) {
        Ok(()) => count(counter::EVENTS),
        Err(_) => count(counter::LOST_EVENTS),
    }
}

fn submit_marker(kind: u32, id: u64, flags: u32) {
    // Rare, and acted on at once (an exec needs probes on its libraries).
    match EVENTS.output::<Header>(&header(kind, id, flags), BPF_RB_FORCE_WAKEUP as u64) {
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
    let sampling = SAMPLE_BYTES.load() != 0 && func::is_sampled(rec.func);
    if sampling && rec.header.flags & flags::UNSAMPLED != 0 {
        // A failed realloc leaves its pointer as it was.
        if rec.old_addr != 0 && (ret != 0 || rec.size == 0) && SAMPLED.remove(rec.old_addr).is_ok()
        {
            submit_free(kind::FREE, id, rec.old_addr, 0);
        }
        let _ = IN_FLIGHT.remove(id);
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
    if sampling {
        // Userspace only knows sampled pointers: a realloc of another is a
        // fresh allocation there.
        if rec.old_addr != 0 && SAMPLED.remove(rec.old_addr).is_err() {
            rec.old_addr = 0;
        }
        if addr != 0 {
            let _ = SAMPLED.insert(addr, 0, 0);
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

#[inline(always)]
fn probe_regs(ctx: &ProbeContext) -> UserRegs {
    // SAFETY: `regs` is the probe's register context.
    unsafe {
        let regs = ctx.regs;
        UserRegs {
            ip: (*regs).rip,
            sp: (*regs).rsp,
            bp: (*regs).rbp,
        }
    }
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// What a probe stands for, from its attach cookie: CPython's object
/// allocator shares libc's argument layout, so its probes reuse these
/// programs with the function in the low 32 bits (0: the default) and, in
/// bit 32, whether the arguments follow a context pointer (obmalloc's
/// internal `_PyObject_Malloc(ctx, size)`).
/// Returns the function and its first two real arguments.
#[inline(always)]
fn cookie_of(ctx: &ProbeContext, default: u32) -> (u32, [u64; 2]) {
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
    let (a0, a1, a2) = unsafe {
        let regs = ctx.regs;
        (
            core::ptr::read_volatile(&raw const (*regs).rdi),
            core::ptr::read_volatile(&raw const (*regs).rsi),
            core::ptr::read_volatile(&raw const (*regs).rdx),
        )
    };
    let args = if cookie >> 32 & 1 == 0 {
        [a0, a1]
    } else {
        [a1, a2]
    };
    (func, args)
}

#[uprobe]
pub fn malloc_entry(ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        let (f, [size, _]) = cookie_of(&ctx, func::MALLOC);
        enter(&ctx, id, probe_regs(&ctx), Call::sized(f, size));
    }
    0
}

#[uprobe]
pub fn calloc_entry(ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        let (f, [n, size]) = cookie_of(&ctx, func::CALLOC);
        enter(
            &ctx,
            id,
            probe_regs(&ctx),
            Call::sized(f, n.wrapping_mul(size)),
        );
    }
    0
}

#[uprobe]
pub fn realloc_entry(ctx: ProbeContext) -> u32 {
    if let Some(id) = traced() {
        let (f, [old_addr, size]) = cookie_of(&ctx, func::REALLOC);
        let call = Call {
            old_addr,
            ..Call::sized(f, size)
        };
        enter(&ctx, id, probe_regs(&ctx), call);
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
        enter(&ctx, id, probe_regs(&ctx), call);
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
        enter(&ctx, id, probe_regs(&ctx), call);
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
            probe_regs(&ctx),
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
            probe_regs(&ctx),
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
            probe_regs(&ctx),
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
    let (_, [addr, _]) = cookie_of(&ctx, 0);
    if addr == 0 {
        return 0;
    }
    if SAMPLE_BYTES.load() != 0 && SAMPLED.remove(addr).is_err() {
        count(counter::UNSAMPLED);
        return 0;
    }
    submit_free(kind::FREE, id, addr, 0);
    0
}

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
    // reserves 128 MiB per malloc arena (from inside `free` too, which has
    // no return probe to mark it in flight) and every thread stack so.
    if map_flags & MAP_ANONYMOUS == 0 || prot == PROT_NONE {
        return 0;
    }
    // Inside malloc and friends, a mapping is the allocator's own business.
    if IN_FLIGHT.get_ptr(id).is_some() {
        count(counter::NESTED_CALLS);
        return 0;
    }
    enter(&ctx, id, syscall_user_regs(), Call::sized(func::MMAP, len));
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
    enter(&ctx, id, syscall_user_regs(), call);
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

/// A traced process replaced its image: userspace looks for its new
/// libraries. With `--all`, every exec is reported, and a process whose new
/// name starts with "python" is traced at once.
#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    if let Some(id) = traced() {
        submit_marker(kind::EXEC, id, 0);
        return 0;
    }
    if ALL_EXECS.load() == 0 {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let named_python =
        aya_ebpf::helpers::bpf_get_current_comm().is_ok_and(|comm| comm.starts_with(b"python"));
    let flags = if named_python && TRACED.insert(tgid, 1, 0).is_ok() {
        exec::TRACED_BY_NAME
    } else {
        0
    };
    submit_marker(kind::EXEC, id, flags);
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
