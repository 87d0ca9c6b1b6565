//! Traced processes coming and going: a traced process's new processes are
//! traced from their first instruction, and an exec is reported (with
//! `--all`, every exec): docs/allocation-matching.md, "Forks and execs".

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
    },
};
use tracer_common::{ForkRecord, counter, exec, fork, kind, traced};

use crate::{
    maps::{
        ALL_EXECS, CODE_BUDGET, EVENTS, PY_PROCS, SIGNAL_LIVE_OFFSET, TASK_MM_OFFSET,
        TASK_PID_OFFSET, TASK_SIGNAL_OFFSET, TASK_TGID_OFFSET, TRACED,
    },
    ring::{count, header},
    submit::submit_marker,
};

/// A field of a kernel `task_struct` at `offset`, or `None` if unreadable.
#[inline(always)]
fn task_field<T>(task: u64, offset: u64) -> Option<T> {
    // SAFETY: a checked read of kernel memory.
    unsafe { bpf_probe_read_kernel((task + offset) as *const T) }.ok()
}

/// `sched_process_fork`: `parent` made `child` (kernel `task_struct`s),
/// before the child first runs. A new process of a traced CPython process
/// is traced the same way, with its Python layout; one that shares its
/// parent's memory (vfork, `posix_spawn`) only once it execs, since until
/// then its allocations are its parent's, and so is one whose parent runs
/// no CPython. Threads are traced with their process.
#[inline(always)]
pub fn forked(parent: u64, child: u64) {
    let tgid_offset = TASK_TGID_OFFSET.load();
    if tgid_offset == 0 {
        return;
    }
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is copied out.
    let Some(how) = (unsafe { TRACED.get(parent_tgid) }).copied() else {
        return;
    };
    let (Some(pid), Some(tgid)) = (
        task_field::<u32>(child, TASK_PID_OFFSET.load()),
        task_field::<u32>(child, tgid_offset),
    ) else {
        return;
    };
    if pid != tgid {
        return;
    }
    let mm = TASK_MM_OFFSET.load();
    let shares_memory = task_field::<u64>(child, mm)
        .is_some_and(|c| c != 0 && task_field::<u64>(parent, mm) == Some(c));
    // SAFETY: the value is copied out.
    let python = unsafe { PY_PROCS.get(parent_tgid) };
    let (child_how, flags) = match python {
        // A worker of a CPython process: traced as its parent, its layout
        // copied.
        Some(config) if !shares_memory => {
            let _ = PY_PROCS.insert(tgid, config, 0);
            (how, 0)
        }
        // Its allocations are its parent's until it execs; or its parent
        // runs no CPython (a shell wrapper forking a subshell), whose
        // copies are of no interest unless they exec one.
        _ if shares_memory => (traced::UNTIL_EXEC, fork::UNTIL_EXEC | fork::SHARES_MEMORY),
        _ => (traced::UNTIL_EXEC, fork::UNTIL_EXEC),
    };
    if TRACED.insert(tgid, child_how, 0).is_err() {
        return;
    }
    let id = u64::from(tgid) << 32 | u64::from(pid);
    let rec = ForkRecord {
        header: header(kind::FORK, id, flags),
        parent: parent_tgid,
        _pad: 0,
    };
    // Rare, and acted on at once (the child is a new target).
    match EVENTS.output::<ForkRecord>(&rec, BPF_RB_FORCE_WAKEUP as u64) {
        Ok(()) => count(counter::EVENTS),
        Err(_) => count(counter::LOST_EVENTS),
    }
}

/// `sched_process_exec`: a traced process replaced its image, and
/// userspace looks for its new libraries; a child that shared its parent's
/// memory is recorded from now on. With `--all`, every exec is reported,
/// and a process whose new name starts with "python" is traced at once.
#[inline(always)]
pub fn execed() {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: the value is copied out.
    if let Some(how) = unsafe { TRACED.get(tgid) }.copied() {
        if how == traced::UNTIL_EXEC {
            let _ = TRACED.insert(tgid, traced::RECORD, 0);
        }
        submit_marker(kind::EXEC, id, exec::TRACED);
        return;
    }
    if ALL_EXECS.load() == 0 {
        return;
    }
    let named_python = bpf_get_current_comm().is_ok_and(|comm| comm.starts_with(b"python"));
    let flags = if named_python && TRACED.insert(tgid, traced::RECORD, 0).is_ok() {
        exec::TRACED_BY_NAME
    } else {
        0
    };
    submit_marker(kind::EXEC, id, flags);
}

/// `sched_process_exit`, in the exiting thread: when it is the last of a
/// traced process, the process is traced no more (its pid may be reused by
/// any process from now on, which must not inherit its tracing) and
/// userspace is told, after every other record of the process.
#[inline(always)]
pub fn exited() {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: presence test only.
    if unsafe { TRACED.get(tgid) }.is_none() {
        return;
    }
    if !last_thread(id) {
        return;
    }
    let _ = TRACED.remove(tgid);
    let _ = PY_PROCS.remove(tgid);
    let _ = CODE_BUDGET.remove(tgid);
    submit_marker(kind::EXIT, id, 0);
}

/// Whether the current (exiting) thread is its process's last: its
/// `signal->live`, decremented before the tracepoint, is 0. Without the
/// offsets, the thread group leader's exit stands for it.
#[inline(always)]
fn last_thread(id: u64) -> bool {
    let (signal_offset, live_offset) = (TASK_SIGNAL_OFFSET.load(), SIGNAL_LIVE_OFFSET.load());
    if signal_offset == 0 || live_offset == 0 {
        return id >> 32 == id & 0xffff_ffff;
    }
    // SAFETY: the current task, read through checked reads.
    let task = unsafe { bpf_get_current_task() };
    let Some(signal) = task_field::<u64>(task, signal_offset) else {
        return id >> 32 == id & 0xffff_ffff;
    };
    task_field::<i32>(signal, live_offset) == Some(0)
}
