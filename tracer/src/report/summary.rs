//! Per process and per thread: allocated, freed, live, leaked and peak
//! bytes, and what could not be matched, read off the heap model.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::heap::{HeapModel, Pid, ThreadTotals};

/// What one process or thread allocated and freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Activity {
    pub allocations: u64,
    pub allocated_bytes: u64,
    pub frees: u64,
    pub freed_bytes: u64,
    /// Live at the end of the recording.
    pub live_bytes: u64,
    /// Live when the process began to exit, or at the end: its leaks.
    pub leaked_bytes: u64,
    /// The most live bytes at once.
    pub peak_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProcessSummary {
    pub pid: Pid,
    #[serde(flatten)]
    pub activity: Activity,
    /// Seconds after recording began when the peak was first reached.
    pub peak_at_s: f64,
    /// Frees of addresses never seen allocated (before tracing, or lost).
    pub unmatched_frees: u64,
    /// Allocations at an address still live: a free was not seen.
    pub implied_frees: u64,
    /// By thread id; memory is charged to the thread that allocated it.
    pub threads: BTreeMap<u32, Activity>,
}

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
            let mut leaked: BTreeMap<u32, u64> = BTreeMap::new();
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
    use crate::{heap::HeapEvent, stacks::StackId};

    #[test]
    fn leaks_are_the_live_set_at_exit_and_threads_add_up() {
        let alloc = |tid, addr, size, ts_ns| HeapEvent::Alloc {
            pid: 9,
            tid,
            ts_ns,
            addr,
            size,
            count: 1,
            stack: StackId(1),
        };
        let free = |tid, addr, ts_ns| HeapEvent::Free {
            pid: 9,
            tid,
            ts_ns,
            addr,
        };
        let mut heap = HeapModel::default();
        for e in [
            alloc(9, 0x10, 100, 1_000),
            alloc(10, 0x20, 300, 2_000),
            HeapEvent::Exiting {
                pid: 9,
                ts_ns: 3_000,
                reason: crate::heap::ExitReason::PyFinalize,
            },
            free(9, 0x20, 4_000), // teardown frees thread 10's leak
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
