//! The Python frames of the thread making an allocation, read from the
//! running interpreter, and the code objects they run, copied once each:
//! docs/python-frames.md, "Which thread state", "Walking the frames" and
//! "Code objects".

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_loop, bpf_probe_read_user},
    },
    macros::map,
    maps::PerCpuArray,
};
use tracer_common::{
    AllocRecord, CodeBudget, CodeKey, CodeRecord, MAX_CODE_STR, MAX_CODE_TABLE, MAX_PY_DEPTH,
    MAX_PY_OBJECT_LEN, MAX_STACK_DEPTH, PyConfig, PyFrame, counter, flags, kind, py_config,
};

use crate::{
    maps::{
        CODE_BUDGET, CODE_BURST, CODE_NS_PER_COPY, CODE_RECENT, CODE_RECENT_SLOTS, CODE_SEEN,
        EVENTS, FSBASE_OFFSET, OUT,
    },
    probe::user,
    ring::{count, header, wakeup},
};

/// The Python frame walk of this CPU's current record, between
/// `bpf_loop` iterations.
#[repr(C)]
pub struct Walk {
    /// The next frame to read; 0 at the end of the chain.
    frame: u64,
    /// Frames written so far.
    n: u64,
    /// Where the Python frames start in `OUT` (after the native ones).
    head: u64,
    /// The traced process (read once per walk, not per frame).
    pid: u64,
    /// The process's layout, copied once per walk rather than looked up
    /// per frame.
    cfg: PyConfig,
    /// The head of the current frame and of its code object, each read at
    /// once: one read of user memory costs about as much as one field.
    frame_head: Head,
    code_head: Head,
}

/// The Python frame walk's state between `bpf_loop` iterations: too large
/// for the BPF stack with the heads it reads.
#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

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

/// A power of two: `Head::get` bounds offsets with a mask the verifier follows.
const HEAD_LEN: usize = 128;

impl Head {
    #[inline(always)]
    fn load(&mut self, addr: u64) {
        self.addr = addr;
        // SAFETY: the destination is this head's own buffer.
        self.ok = u64::from(
            unsafe {
                bpf_probe_read_user(
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

/// Reads a `str` object's characters into `dst`. Returns (bytes, kind).
#[inline(always)]
fn read_str(cfg: &PyConfig, obj: u64, dst: &mut [u8; MAX_CODE_STR]) -> (u32, u32) {
    let (Some(length), Some(state)) = (user::<i64>(obj + 16), user::<u32>(obj + 32)) else {
        return (0, 0);
    };
    // A length no string has: the copy is refused, not filled with
    // whatever follows the object.
    if !(0..=MAX_PY_OBJECT_LEN).contains(&length) {
        return (0, 0);
    }
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
        bpf_probe_read_user(
            dst.as_mut_ptr().cast(),
            n as u32,
            data as *const core::ffi::c_void,
        )
    } == 0;
    if ok { (n as u32, kind) } else { (0, 0) }
}

/// Takes one copy from `pid`'s budget (maps.rs, `CODE_BURST`); false
/// if none is left. Concurrent threads may both take the last one: the
/// budget is a bound, not an exact count.
#[inline(always)]
fn take_copy(pid: u32) -> bool {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(budget) = CODE_BUDGET.get_ptr_mut(pid) else {
        let full = CodeBudget {
            tokens: CODE_BURST - 1,
            _pad: 0,
            refilled_ns: now,
        };
        let _ = CODE_BUDGET.insert(pid, full, 0);
        return true;
    };
    // SAFETY: the map's value, valid while this program runs.
    let budget = unsafe { &mut *budget };
    let earned = now.saturating_sub(budget.refilled_ns) / CODE_NS_PER_COPY;
    if earned > 0 {
        let tokens = u64::from(budget.tokens) + earned;
        budget.tokens = if tokens > u64::from(CODE_BURST) {
            CODE_BURST
        } else {
            tokens as u32
        };
        budget.refilled_ns += earned * CODE_NS_PER_COPY;
    }
    if budget.tokens == 0 {
        return false;
    }
    budget.tokens -= 1;
    true
}

/// Copies the code object `code` (first line `firstlineno`) to userspace
/// unless it was already, within the process's budget.
#[inline(always)]
fn copy_code(cfg: &PyConfig, pid: u32, code: u64, firstlineno: i32) {
    let key = CodeKey {
        pid,
        firstlineno,
        code,
    };
    // Code objects are 16-byte aligned heap objects: the bits above the
    // alignment spread them over the slots.
    let slot = ((code >> 4) ^ (code >> 14) ^ u64::from(pid)) as u32 & (CODE_RECENT_SLOTS - 1);
    let Some(recent) = CODE_RECENT.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: this CPU's slot, valid while this program runs.
    let recent = unsafe { &mut *recent };
    if *recent == key {
        return;
    }
    // SAFETY: presence test only.
    if unsafe { CODE_SEEN.get(key) }.is_some() {
        *recent = key;
        return;
    }
    if !take_copy(pid) {
        count(counter::CODE_OVER_BUDGET);
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
        bpf_probe_read_user(
            rec.table.as_mut_ptr().cast(),
            n as u32,
            (table + 32) as *const core::ffi::c_void,
        )
    } == 0;
    rec.table_len = if ok { n as u32 } else { 0 };
    rec.table_full = u32::from(size > n);
    entry.submit(wakeup());
    count(counter::EVENTS);
    if CODE_SEEN.insert(key, 0, 0).is_ok() {
        *recent = key;
    }
}

/// Where the Python frames of the current thread start: its frame chain,
/// from the thread state `PyGILState_GetThisThreadState` would return
/// (unlike `_Py_tss_tstate`, still set while C code runs with the GIL
/// released). 0 if it has none.
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
    if fsbase == 0 {
        return Ok(0);
    }
    let tstate = if cfg.tss_key != py_config::NONE {
        tstate_by_tss_key(cfg, fsbase)?
    } else {
        tstate_thread_local(cfg, fsbase)?
    };
    if tstate == 0 {
        return Ok(0);
    }
    let mut frame = user::<u64>(tstate + u64::from(cfg.tstate_frame)).ok_or(())?;
    if cfg.cframe_frame != py_config::NONE && frame != 0 {
        frame = user::<u64>(frame + u64::from(cfg.cframe_frame)).ok_or(())?;
    }
    Ok(frame)
}

/// 3.8 to 3.14: the value of the GIL-state TSS key, `pthread_getspecific`
/// as glibc keeps it.
#[inline(always)]
fn tstate_by_tss_key(cfg: &PyConfig, fsbase: u64) -> Result<u64, ()> {
    let [initialized, key] = user::<[u32; 2]>(cfg.runtime + u64::from(cfg.tss_key)).ok_or(())?;
    // glibc keeps keys below 32 in the thread's first block.
    if initialized == 0 || key >= 32 {
        return Ok(0);
    }
    let slot = fsbase + u64::from(cfg.pthread_specific) + u64::from(key) * 16 + 8;
    user::<u64>(slot).ok_or(())
}

/// 3.15+: the thread-local `_Py_tss_gilstate`, in the static TLS block or
/// in a shared library's block, whose address is in the thread's DTV
/// (x86-64 glibc: `tcbhead_t.dtv` at the thread pointer + 8, 16 bytes per
/// module id). A block not allocated yet (-1) has no thread state.
#[inline(always)]
fn tstate_thread_local(cfg: &PyConfig, fsbase: u64) -> Result<u64, ()> {
    let block = if cfg.tls_module == 0 {
        fsbase
    } else {
        let dtv = user::<u64>(fsbase + 8).ok_or(())?;
        let block = user::<u64>(dtv + u64::from(cfg.tls_module) * 16).ok_or(())?;
        if block == 0 || block == u64::MAX {
            return Ok(0);
        }
        block
    };
    user::<u64>(block.wrapping_add_signed(i64::from(cfg.tls_offset))).ok_or(())
}

/// One frame of the walk (a `bpf_loop` callback, which the verifier checks
/// once rather than per iteration). Returns 1 to stop.
extern "C" fn walk_step(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let (Some(walk), Some(out)) = (WALK.get_ptr_mut(0), OUT.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: per-CPU state of this program run.
    let walk = unsafe { &mut *walk };
    let (cfg, pid) = (&walk.cfg, walk.pid as u32);
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
pub fn walk_python(cfg: &PyConfig, head: usize) -> (u32, u32) {
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
        walk.pid = bpf_get_current_pid_tgid() >> 32;
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
