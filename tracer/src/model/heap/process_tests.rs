use crate::event::{Block, EventKind, ExitReason, HeapEvent, Pid, StackId, Tid};
use crate::model::heap::{HeapModel, Peak, ThreadStacks};

const PID: Pid = 7;
const S1: StackId = StackId(1);
const S2: StackId = StackId(2);

fn on(tid: Tid, ts_ns: u64, kind: EventKind) -> HeapEvent {
    HeapEvent {
        pid: PID,
        tid,
        ts_ns,
        kind,
    }
}

fn alloc(addr: u64, size: u64, stack: StackId, ts_ns: u64) -> HeapEvent {
    on(
        PID,
        ts_ns,
        EventKind::Alloc(Block {
            addr,
            size,
            count: 1,
            stack,
        }),
    )
}

fn free(addr: u64) -> HeapEvent {
    on(PID, 0, EventKind::Free { addr })
}

fn map(addr: u64, len: u64, stack: StackId) -> HeapEvent {
    on(
        PID,
        0,
        EventKind::Map {
            addr,
            len,
            stack,
            thread_stack: false,
        },
    )
}

/// A thread stack as glibc maps it: 8 MiB and a guard page.
fn map_stack(addr: u64, stack: StackId) -> HeapEvent {
    on(
        PID,
        0,
        EventKind::Map {
            addr,
            len: STACK_LEN,
            stack,
            thread_stack: true,
        },
    )
}

const STACK_LEN: u64 = 8_392_704;

fn unmap(addr: u64, len: u64) -> HeapEvent {
    on(PID, 0, EventKind::Unmap { addr, len })
}

fn with_tid(tid: Tid, e: HeapEvent) -> HeapEvent {
    HeapEvent { tid, ..e }
}

fn model(events: &[HeapEvent]) -> HeapModel {
    let mut m = HeapModel::with_peak_stacks();
    for e in events {
        m.apply(e);
    }
    m
}

#[test]
fn alloc_free_and_totals() {
    let m = model(&[
        alloc(0x1000, 100, S1, 1),
        alloc(0x2000, 50, S2, 2),
        alloc(0x3000, 100, S1, 3),
        free(0x1000),
        free(0x9999),
    ]);
    let p = m.process(PID).expect("process");
    let t = p.totals();
    assert_eq!(
        (t.allocs, t.frees, t.bytes_allocated, t.bytes_freed),
        (3, 1, 250, 100)
    );
    assert_eq!((t.live_bytes, t.live_count, t.unmatched_frees), (150, 2, 1));
    let s1 = p.stacks()[&S1];
    assert_eq!((s1.allocated.bytes, s1.allocated.count), (200, 2));
    assert_eq!((s1.live.bytes, s1.live.count), (100, 1));
    let mut leaks = p.leak_set();
    leaks.sort_by_key(|a| a.ts_ns);
    assert_eq!(leaks.iter().map(|a| a.size).collect::<Vec<_>>(), [50, 100]);
}

#[test]
fn threads_are_charged_for_what_they_allocate_and_peak_is_kept() {
    let m = model(&[
        with_tid(1, alloc(0x1000, 100, S1, 1)),
        with_tid(2, alloc(0x2000, 300, S2, 2)),
        with_tid(1, free(0x2000)), // thread 1 frees thread 2's memory
        with_tid(2, alloc(0x3000, 50, S2, 4)),
        map(0x10_0000, 4096, S1),
        unmap(0x10_0000, 1024),
    ]);
    let p = m.process(PID).expect("process");
    let t1 = p.threads()[&1];
    assert_eq!(
        (t1.allocs, t1.frees, t1.live_bytes, t1.peak_bytes),
        (1, 0, 100, 100)
    );
    let t2 = p.threads()[&2];
    assert_eq!(
        (
            t2.allocs,
            t2.bytes_allocated,
            t2.frees,
            t2.bytes_freed,
            t2.live_bytes,
            t2.peak_bytes
        ),
        (2, 350, 1, 300, 50, 300)
    );
    let mapper = p.threads()[&PID];
    assert_eq!(
        (mapper.bytes_freed, mapper.live_bytes, mapper.peak_bytes),
        (1024, 3072, 4096)
    );
    assert_eq!(
        p.peak(),
        Peak {
            bytes: 150 + 4096,
            ts_ns: 0
        }
    );
    assert_eq!(p.totals().bytes_freed, 300 + 1024);
}

#[test]
fn the_live_set_at_the_peak_is_kept_by_stack() {
    let m = model(&[
        alloc(0x10, 100, S1, 1),
        alloc(0x20, 300, S2, 2),
        free(0x20),
        alloc(0x30, 150, StackId(3), 4),
        alloc(0x40, 100, StackId(3), 5),
    ]);
    let p = m.process(PID).expect("process");
    let mut at_peak: Vec<(u32, u64)> = p.at_peak().map(|(s, a)| (s.0, a.bytes)).collect();
    at_peak.sort_unstable();
    assert_eq!(at_peak, [(1, 100), (2, 300)]);
    assert_eq!(p.peak().bytes, 400);
    // Without peak stacks, nothing is kept.
    let mut plain = HeapModel::default();
    plain.apply(&alloc(0x10, 100, S1, 1));
    assert_eq!(plain.process(PID).expect("process").at_peak().count(), 0);
}

#[test]
fn realloc_moves_and_resizes() {
    let m = model(&[
        alloc(0x1000, 100, S1, 1),
        on(
            PID,
            2,
            EventKind::Realloc {
                old_addr: 0x1000,
                block: Block {
                    addr: 0x5000,
                    size: 300,
                    count: 1,
                    stack: S2,
                },
            },
        ),
    ]);
    let p = m.process(PID).expect("process");
    assert_eq!(p.totals().live_bytes, 300);
    assert_eq!(p.stacks()[&S1].live.bytes, 0);
    assert_eq!(p.stacks()[&S2].live.bytes, 300);
    assert_eq!(p.leak_set()[0].stack, S2);
}

#[test]
fn reused_address_is_an_implied_free() {
    let m = model(&[alloc(0x1000, 100, S1, 1), alloc(0x1000, 40, S2, 2)]);
    let p = m.process(PID).expect("process");
    assert_eq!(p.totals().implied_frees, 1);
    assert_eq!(p.totals().live_bytes, 40);
    assert_eq!(p.stacks()[&S1].live.count, 0);
}

#[test]
fn partial_unmap_splits_mappings() {
    let m = model(&[
        map(0x10000, 0x4000, S1),
        unmap(0x11000, 0x1000),
        unmap(0x50000, 0x1000),
    ]);
    let p = m.process(PID).expect("process");
    let t = p.totals();
    assert_eq!(t.live_bytes, 0x3000);
    assert_eq!(t.live_count, 2, "split into two ranges");
    assert_eq!(t.bytes_freed, 0x1000);
    assert_eq!(t.unmatched_unmaps, 1);
    let m = model(&[
        map(0x10000, 0x4000, S1),
        unmap(0x11000, 0x1000),
        unmap(0x0, 0x20000),
    ]);
    assert_eq!(m.process(PID).expect("process").totals().live_bytes, 0);
}

#[test]
fn fixed_mapping_replaces_overlap() {
    let m = model(&[map(0x10000, 0x4000, S1), map(0x12000, 0x4000, S2)]);
    let p = m.process(PID).expect("process");
    assert_eq!(p.totals().live_bytes, 0x2000 + 0x4000);
    assert_eq!(p.stacks()[&S1].live.bytes, 0x2000);
}

#[test]
fn remap_follows_known_mappings_only() {
    let remap = |old_addr, addr| {
        on(
            PID,
            0,
            EventKind::Remap {
                old_addr,
                old_len: 0x1000,
                addr,
                len: 0x3000,
                stack: S2,
            },
        )
    };
    let m = model(&[
        map(0x10000, 0x1000, S1),
        remap(0x10000, 0x40000),
        remap(0x90000, 0xa0000),
    ]);
    let p = m.process(PID).expect("process");
    assert_eq!(p.totals().live_bytes, 0x3000);
    assert_eq!(p.stacks()[&S2].live.bytes, 0x3000);
}

#[test]
fn exit_snapshot_keeps_the_leaks_freed_by_teardown() {
    let exiting = |ts_ns, reason| on(PID, ts_ns, EventKind::Exiting { reason });
    let m = model(&[
        alloc(0x1000, 100, S1, 1),
        alloc(0x2000, 200, S2, 2),
        exiting(3, ExitReason::PyFinalize),
        free(0x1000),
        free(0x2000),
        exiting(4, ExitReason::LibcExit),
    ]);
    let p = m.process(PID).expect("process");
    assert_eq!(p.totals().live_bytes, 0);
    let snap = p.exit_snapshot().expect("snapshot");
    assert_eq!((snap.ts_ns, snap.reason), (3, ExitReason::PyFinalize));
    assert_eq!(p.leak_set().iter().map(|a| a.size).sum::<u64>(), 300);
}

#[test]
fn a_free_passed_twice_by_its_thread_is_one_free() {
    // glibc 2.43: a thread's first free sets up the thread's arena (and
    // trims its reservation) and re-enters free with the same pointer.
    let m = model(&[
        with_tid(1, alloc(0x1000, 100, S1, 1)),
        with_tid(1, free(0x1000)),
        with_tid(1, unmap(0x7000_0000, 0x100_0000)),
        with_tid(1, free(0x1000)),
    ]);
    let t = *m.process(PID).expect("process").totals();
    assert_eq!((t.frees, t.unmatched_frees, t.live_bytes), (1, 0, 0));
    // Another thread's allocation at the address in between: a free of it.
    let m = model(&[
        with_tid(2, alloc(0x1000, 100, S1, 1)),
        with_tid(1, free(0x1000)),
        with_tid(2, alloc(0x1000, 100, S1, 2)),
        with_tid(1, free(0x1000)),
    ]);
    let t = *m.process(PID).expect("process").totals();
    assert_eq!((t.frees, t.unmatched_frees, t.live_bytes), (2, 0, 0));
    // An allocation of the thread in between: an unmatched free.
    let m = model(&[
        with_tid(1, alloc(0x1000, 100, S1, 1)),
        with_tid(1, free(0x1000)),
        with_tid(1, alloc(0x2000, 100, S1, 2)),
        with_tid(1, free(0x1000)),
    ]);
    assert_eq!(m.process(PID).expect("process").totals().unmatched_frees, 1);
}

#[test]
fn thread_stacks_are_kept_apart_from_the_heap() {
    let events = [
        alloc(0x1000, 100, S1, 1),
        map_stack(0x7000_0000, S2),
        map_stack(0x8000_0000, S2),
        // One thread's stack is unmapped, the other kept for the next thread.
        unmap(0x7000_0000, STACK_LEN),
        on(
            PID,
            5,
            EventKind::Exiting {
                reason: ExitReason::LibcExit,
            },
        ),
        unmap(0x8000_0000, STACK_LEN),
    ];
    let m = model(&events);
    let p = m.process(PID).expect("process");
    let t = p.totals();
    assert_eq!((t.allocs, t.frees, t.bytes_allocated), (1, 0, 100));
    assert_eq!((t.live_bytes, p.peak().bytes), (100, 100));
    assert_eq!(t.unmatched_unmaps, 0, "their unmaps are theirs");
    assert!(p.stacks().get(&S2).is_none());
    assert_eq!(p.leak_set().len(), 1);
    // At the exit, one stack was still mapped.
    assert_eq!(
        p.thread_stacks(),
        ThreadStacks {
            count: 1,
            bytes: STACK_LEN
        }
    );

    // Included: a mapping like any other.
    let mut m = HeapModel::with_peak_stacks().including_thread_stacks(true);
    for e in &events {
        m.apply(e);
    }
    let p = m.process(PID).expect("process");
    let t = p.totals();
    assert_eq!((t.allocs, t.frees), (3, 2));
    assert_eq!(p.peak().bytes, 100 + 2 * STACK_LEN);
    let mut leaks: Vec<u64> = p.leak_set().iter().map(|a| a.size).collect();
    leaks.sort_unstable();
    assert_eq!(leaks, [100, STACK_LEN]);
    assert_eq!(p.thread_stacks().count, 1);
}

#[test]
fn a_thread_stack_moved_or_trimmed_stays_one() {
    let m = model(&[
        map_stack(0x7000_0000, S2),
        on(
            PID,
            0,
            EventKind::Remap {
                old_addr: 0x7000_0000,
                old_len: STACK_LEN,
                addr: 0x9000_0000,
                len: STACK_LEN,
                stack: S1,
            },
        ),
        unmap(0x9000_0000, 4096),
    ]);
    let p = m.process(PID).expect("process");
    assert_eq!(p.totals().live_bytes, 0);
    assert_eq!(
        p.thread_stacks(),
        ThreadStacks {
            count: 1,
            bytes: STACK_LEN - 4096
        }
    );
}

#[test]
fn a_forked_child_frees_what_it_inherited_and_leaks_only_its_own() {
    const CHILD: Pid = 8;
    let mut m = HeapModel::default();
    for e in [
        alloc(0x10, 100, S1, 1),
        alloc(0x20, 200, S1, 2),
        map(0x10_0000, 4096, S1),
    ] {
        m.apply(&e);
    }
    let in_child = |ts_ns, kind| HeapEvent {
        pid: CHILD,
        tid: CHILD,
        ts_ns,
        kind,
    };
    m.apply(&in_child(3, EventKind::Fork { parent: PID }));
    // The parent goes on: its frees are not the child's.
    m.apply(&free(0x10));
    m.apply(&in_child(4, EventKind::Free { addr: 0x20 }));
    m.apply(&in_child(
        5,
        EventKind::Alloc(Block {
            addr: 0x30,
            size: 50,
            count: 1,
            stack: S2,
        }),
    ));
    let child = m.process(CHILD).expect("child");
    let t = child.totals();
    assert_eq!(t.unmatched_frees, 0, "a pre-fork block freed in the child");
    assert_eq!((t.allocs, t.bytes_allocated), (1, 50));
    assert_eq!(t.live_bytes, 100 + 4096 + 50);
    assert_eq!(child.inherited().bytes, 100 + 200 + 4096);
    let leaks = child.leak_set();
    assert_eq!(leaks.iter().map(|a| a.size).collect::<Vec<_>>(), [50]);
    assert_eq!(
        m.process(PID).expect("parent").totals().live_bytes,
        200 + 4096
    );
    // An exec empties it.
    m.apply(&in_child(6, EventKind::Exec));
    let child = m.process(CHILD).expect("child");
    assert_eq!(child.totals().live_bytes, 0);
    assert!(child.leak_set().is_empty());
}

#[test]
fn an_exec_of_a_process_without_a_heap_makes_none() {
    // `--all` reports every exec on the host: most are of programs that
    // are never traced.
    let mut m = model(&[on(PID, 1, EventKind::Exec)]);
    assert!(m.process(PID).is_none());
    assert_eq!(m.processes().count(), 0);
    // One of a traced process still empties its heap.
    m.apply(&alloc(0x1000, 100, S1, 2));
    m.apply(&on(PID, 3, EventKind::Exec));
    assert_eq!(m.process(PID).expect("process").totals().live_bytes, 0);
}
