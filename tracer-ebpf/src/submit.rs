//! The records sent to userspace: an allocation with its native and Python
//! frames, a free or unmap, a marker: docs/maps.md, "Records in the ring
//! buffer".

use aya_ebpf::{bindings::BPF_RB_FORCE_WAKEUP, helpers::generated::bpf_probe_read_kernel};
use tracer_common::{
    AllocRecord, FreeRecord, Header, MAX_PY_DEPTH, MAX_STACK_DEPTH, PyFrame, counter,
};

use crate::{
    maps::{EVENTS, OUT, PY_PROCS},
    python::walk_python,
    ring::{count, header, wakeup},
};

/// Sends `rec` with its captured native frames and, for a CPython process,
/// the Python frames of the thread, read now: they do not change while the
/// thread is inside an allocation call.
#[inline(always)]
pub fn submit_alloc(rec: &AllocRecord) {
    let Some(out) = OUT.get_ptr_mut(0) else {
        return;
    };
    let native = (rec.stack_len as usize).min(MAX_STACK_DEPTH);
    let head = AllocRecord::wire_len(native, 0);
    let out = out.cast::<u8>();
    // SAFETY: `head` is at most size_of::<AllocRecord>(), which `out` exceeds.
    if unsafe { bpf_probe_read_kernel(out.cast(), head as u32, (rec as *const AllocRecord).cast()) }
        < 0
    {
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

/// Sends a `free` (`len` 0) or `munmap` of `addr`.
#[inline(always)]
pub fn submit_free(kind: u32, id: u64, addr: u64, len: u64) {
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

/// Sends a header-only record (`kind::EXITING`, `kind::EXEC`) and wakes
/// tracer: markers are rare, and acted on at once (an exec needs probes on
/// its libraries).
pub fn submit_marker(kind: u32, id: u64, flags: u32) {
    match EVENTS.output::<Header>(&header(kind, id, flags), BPF_RB_FORCE_WAKEUP as u64) {
        Ok(()) => count(counter::EVENTS),
        Err(_) => count(counter::LOST_EVENTS),
    }
}
