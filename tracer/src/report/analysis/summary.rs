//! Per process and per thread: allocated, freed, live, leaked and peak
//! bytes, and what could not be matched, read off the heap model.

use std::collections::BTreeMap;

use crate::{
    event::Tid,
    model::heap::{HeapModel, ThreadTotals},
    report::{Activity, ProcessSummary},
};

fn activity(t: &ThreadTotals, leaked_bytes: u64) -> Activity {
    Activity {
        allocations: t.allocs,
        allocated_bytes: t.bytes_allocated,
        frees: t.frees,
        freed_bytes: t.bytes_freed,
        live_bytes: t.live_bytes,
        leaked_bytes,
        peak_bytes: t.peak_bytes,
    }
}

/// Every process of `heap`, in pid order.
pub fn summaries(heap: &HeapModel, start_ns: u64) -> Vec<ProcessSummary> {
    heap.processes()
        .map(|(pid, p)| {
            let mut leaked: BTreeMap<Tid, u64> = BTreeMap::new();
            for a in p.leak_set() {
                *leaked.entry(a.tid).or_default() += a.size;
            }
            let t = p.totals();
            let peak = p.peak();
            ProcessSummary {
                pid,
                activity: Activity {
                    allocations: t.allocs,
                    allocated_bytes: t.bytes_allocated,
                    frees: t.frees,
                    freed_bytes: t.bytes_freed,
                    live_bytes: t.live_bytes,
                    leaked_bytes: leaked.values().sum(),
                    peak_bytes: peak.bytes,
                },
                peak_at_s: peak.ts_ns.saturating_sub(start_ns) as f64 / 1e9,
                unmatched_frees: t.unmatched_frees,
                implied_frees: t.implied_frees,
                threads: p
                    .threads()
                    .iter()
                    .map(|(tid, tt)| (*tid, activity(tt, leaked.get(tid).copied().unwrap_or(0))))
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Block, EventKind, ExitReason, HeapEvent, StackId};

    #[test]
    fn leaks_are_the_live_set_at_exit_and_threads_add_up() {
        let on = |tid, ts_ns, kind| HeapEvent {
            pid: 9,
            tid,
            ts_ns,
            kind,
        };
        let alloc = |tid, addr, size, ts_ns| {
            on(
                tid,
                ts_ns,
                EventKind::Alloc(Block {
                    addr,
                    size,
                    count: 1,
                    stack: StackId(1),
                }),
            )
        };
        let mut heap = HeapModel::default();
        for e in [
            alloc(9, 0x10, 100, 1_000),
            alloc(10, 0x20, 300, 2_000),
            on(
                9,
                3_000,
                EventKind::Exiting {
                    reason: ExitReason::PyFinalize,
                },
            ),
            on(9, 4_000, EventKind::Free { addr: 0x20 }), // teardown frees thread 10's leak
        ] {
            heap.apply(&e);
        }
        let [s] = summaries(&heap, 0).try_into().expect("one process");
        assert_eq!(s.activity.allocated_bytes, 400);
        assert_eq!(s.activity.freed_bytes, 300);
        assert_eq!(s.activity.live_bytes, 100);
        assert_eq!(s.activity.leaked_bytes, 400);
        assert_eq!((s.activity.peak_bytes, s.peak_at_s), (400, 2e-6));
        assert_eq!(s.threads[&10].leaked_bytes, 300);
        assert_eq!(s.threads[&10].freed_bytes, 300);
        assert_eq!(s.threads[&9].leaked_bytes, 100);
        let sum: u64 = s.threads.values().map(|a| a.allocated_bytes).sum();
        assert_eq!(sum, s.activity.allocated_bytes);
    }
}
