//! What every record goes through: the ring buffer's wakeup policy, the
//! header, and the counters of what could not be recorded: docs/maps.md,
//! "Records in the ring buffer" and "What a loss means for the reports".

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::bpf_ktime_get_ns,
};
use tracer_common::Header;

use crate::maps::{COUNTERS, EVENTS};

/// Ring buffer flags for a record: wake tracer only once a quarter of the
/// ring is full. Waking it for each record (the default when it keeps up)
/// costs the traced thread an interrupt and a context switch per
/// allocation; tracer drains every few milliseconds on its own.
#[inline(always)]
pub fn wakeup() -> u64 {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if avail > size / 4 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Adds one to the counter `index` (`tracer_common::counter`).
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, touched only by this CPU with preemption off.
        unsafe { *c += 1 };
    }
}

/// The header of a record of `kind` about thread `id` (pid_tgid), stamped now.
#[inline(always)]
pub fn header(kind: u32, id: u64, flags: u32) -> Header {
    Header {
        kind,
        pid: (id >> 32) as u32,
        tid: id as u32,
        flags,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}
