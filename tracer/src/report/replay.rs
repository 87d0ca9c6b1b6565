//! Reports that need the whole sequence of events, not only the final heap:
//! the live set at each process's peak, and temporary allocations.

use std::collections::HashMap;

use super::{Group, by_stack, sorted};
use crate::{
    capture::Events,
    heap::{HeapEvent, HeapModel, Pid},
    stacks::StackId,
};

/// The live set of each process at its peak (see `ProcessHeap::peak`),
/// by stack: `heap` is the model of all of `events`.
pub fn at_peaks(events: &Events, heap: &HeapModel) -> Vec<Group> {
    let mut pending: HashMap<Pid, u64> = heap
        .processes()
        .map(|(pid, p)| (pid, p.peak().bytes))
        .filter(|(_, bytes)| *bytes > 0)
        .collect();
    let mut replayed = HeapModel::default();
    let mut groups = Vec::new();
    events.each(&mut |e| {
        if pending.is_empty() {
            return false;
        }
        replayed.apply(e);
        let pid = e.pid();
        // The peak is the first moment live bytes reach their maximum.
        if let Some(p) = replayed.process(pid)
            && pending.get(&pid) == Some(&p.totals().live_bytes)
        {
            pending.remove(&pid);
            groups.extend(by_stack(pid, p.live()));
        }
        true
    });
    sorted(groups)
}

/// What makes an allocation temporary: freed within a time, or before a
/// number of other allocations of its thread (memray's threshold).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temporary {
    Within { ns: u64 },
    BeforeAllocations(u64),
}

impl std::fmt::Display for Temporary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Temporary::Within { ns } => write!(f, "freed within {} ms", *ns as f64 / 1e6),
            Temporary::BeforeAllocations(n) => {
                write!(f, "freed before {n} more allocations of the same thread")
            }
        }
    }
}

/// A live allocation: (stack, (bytes, count), time, its thread's allocation number).
type Pending = (StackId, (u64, u32), u64, u64);

/// Allocations freed soon after they were made, by stack, gathered one
/// event at a time (in the same pass as the heap model).
pub struct Temporaries {
    threshold: Temporary,
    live: HashMap<(Pid, u64), Pending>,
    /// Allocations made so far, per thread.
    seq: HashMap<(Pid, u32), u64>,
    groups: HashMap<(Pid, StackId), (u64, u64)>,
}

impl Temporaries {
    pub fn new(threshold: Temporary) -> Self {
        Self {
            threshold,
            live: HashMap::new(),
            seq: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    pub fn apply(&mut self, e: &HeapEvent) {
        match *e {
            HeapEvent::Alloc {
                pid,
                tid,
                ts_ns,
                addr,
                size,
                count,
                stack,
            } => self.alloc(pid, tid, ts_ns, addr, (size, count), stack),
            HeapEvent::Realloc {
                pid,
                tid,
                ts_ns,
                old_addr,
                addr,
                size,
                count,
                stack,
            } => {
                self.free(pid, tid, ts_ns, old_addr);
                self.alloc(pid, tid, ts_ns, addr, (size, count), stack);
            }
            HeapEvent::Free {
                pid,
                tid,
                ts_ns,
                addr,
            } => self.free(pid, tid, ts_ns, addr),
            // Mappings are long-lived by nature; the heap's churn is the point.
            _ => {}
        }
    }

    pub fn groups(self) -> Vec<Group> {
        sorted(
            self.groups
                .into_iter()
                .map(|((pid, stack), (bytes, count))| Group {
                    pid,
                    stack,
                    bytes,
                    count,
                })
                .collect(),
        )
    }

    fn alloc(
        &mut self,
        pid: Pid,
        tid: u32,
        ts_ns: u64,
        addr: u64,
        size: (u64, u32),
        stack: StackId,
    ) {
        let n = self.seq.entry((pid, tid)).or_default();
        *n += 1;
        self.live.insert((pid, addr), (stack, size, ts_ns, *n));
    }

    fn free(&mut self, pid: Pid, tid: u32, ts_ns: u64, addr: u64) {
        let Some((stack, (size, count), at, n)) = self.live.remove(&(pid, addr)) else {
            return;
        };
        let soon = match self.threshold {
            Temporary::Within { ns } => ts_ns.saturating_sub(at) <= ns,
            Temporary::BeforeAllocations(k) => {
                let now = self.seq.get(&(pid, tid)).copied().unwrap_or(0);
                now.saturating_sub(n) <= k
            }
        };
        if soon {
            let g = self.groups.entry((pid, stack)).or_default();
            g.0 += size;
            g.1 += u64::from(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(tid: u32, addr: u64, size: u64, stack: u32, ts_ns: u64) -> HeapEvent {
        HeapEvent::Alloc {
            pid: 1,
            tid,
            ts_ns,
            addr,
            size,
            count: 1,
            stack: StackId(stack),
        }
    }

    fn free(tid: u32, addr: u64, ts_ns: u64) -> HeapEvent {
        HeapEvent::Free {
            pid: 1,
            tid,
            ts_ns,
            addr,
        }
    }

    #[test]
    fn peak_is_the_live_set_at_the_highest_point() {
        let events = [
            alloc(1, 0x10, 100, 1, 1),
            alloc(1, 0x20, 300, 2, 2),
            free(1, 0x20, 3),
            alloc(1, 0x30, 150, 3, 4),
            alloc(1, 0x40, 100, 3, 5),
        ];
        let mut heap = HeapModel::default();
        for e in &events {
            heap.apply(e);
        }
        let groups = at_peaks(&Events::Memory(events.to_vec()), &heap);
        assert_eq!(
            groups
                .iter()
                .map(|g| (g.stack.0, g.bytes))
                .collect::<Vec<_>>(),
            [(2, 300), (1, 100)]
        );
    }

    #[test]
    fn temporary_by_time_and_by_allocations() {
        let events = [
            alloc(1, 0x10, 100, 1, 1_000),
            free(1, 0x10, 1_500), // 500 ns: temporary
            alloc(1, 0x20, 200, 2, 2_000),
            alloc(1, 0x30, 50, 3, 2_100),
            alloc(1, 0x40, 50, 3, 2_200),
            free(1, 0x20, 9_000), // 7 us later, 2 allocations in between
        ];
        let temporary = |rule| {
            let mut t = Temporaries::new(rule);
            events.iter().for_each(|e| t.apply(e));
            t.groups()
        };
        let by_time = temporary(Temporary::Within { ns: 1_000 });
        assert_eq!(
            by_time
                .iter()
                .map(|g| (g.stack.0, g.count))
                .collect::<Vec<_>>(),
            [(1, 1)]
        );
        let by_count = temporary(Temporary::BeforeAllocations(2));
        assert_eq!(
            by_count
                .iter()
                .map(|g| (g.stack.0, g.bytes))
                .collect::<Vec<_>>(),
            [(2, 200), (1, 100)]
        );
    }
}
