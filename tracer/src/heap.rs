//! The heap model: every live allocation of every traced process, and
//! per-stack totals, rebuilt from allocation events alone.
//!
//! Addresses are per process. Frees of addresses the model never saw
//! allocated (made before tracing began, or whose allocation event was lost)
//! are counted, not errors. Anonymous mappings are kept as address ranges so
//! that a partial `munmap` trims them as the kernel does.

use std::collections::{BTreeMap, HashMap};

use crate::stacks::StackId;

pub type Pid = u32;

/// One event, as the heap model needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HeapEvent {
    Alloc {
        pid: Pid,
        tid: u32,
        ts_ns: u64,
        addr: u64,
        /// Bytes, and allocations, this event stands for: the call's own
        /// size and 1, or with sampling the estimate it is weighted to.
        size: u64,
        count: u32,
        stack: StackId,
    },
    /// `realloc` of a non-NULL pointer (which may return the same address).
    Realloc {
        pid: Pid,
        tid: u32,
        ts_ns: u64,
        old_addr: u64,
        addr: u64,
        size: u64,
        count: u32,
        stack: StackId,
    },
    Free {
        pid: Pid,
        tid: u32,
        ts_ns: u64,
        addr: u64,
    },
    /// An anonymous `mmap`.
    Map {
        pid: Pid,
        tid: u32,
        ts_ns: u64,
        addr: u64,
        len: u64,
        stack: StackId,
    },
    Remap {
        pid: Pid,
        tid: u32,
        ts_ns: u64,
        old_addr: u64,
        old_len: u64,
        addr: u64,
        len: u64,
        stack: StackId,
    },
    Unmap {
        pid: Pid,
        tid: u32,
        ts_ns: u64,
        addr: u64,
        len: u64,
    },
    /// The process began to exit: its live set now is its leak set.
    Exiting {
        pid: Pid,
        ts_ns: u64,
        reason: ExitReason,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// CPython's `Py_FinalizeEx` was entered.
    PyFinalize,
    /// libc's `exit` was entered.
    LibcExit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub size: u64,
    /// Allocations it stands for (more than 1 only when sampled).
    pub count: u32,
    pub stack: StackId,
    pub ts_ns: u64,
    pub tid: u32,
}

/// Totals for one stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    pub alloc_bytes: u64,
    pub alloc_count: u64,
    pub live_bytes: u64,
    pub live_count: u64,
}

/// Totals for one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Allocations, reallocations and anonymous mappings.
    pub allocs: u64,
    /// Frees that matched a live allocation, and mappings (or the parts of
    /// them) unmapped.
    pub frees: u64,
    pub bytes_allocated: u64,
    pub bytes_freed: u64,
    pub live_bytes: u64,
    pub live_count: u64,
    /// Frees (and reallocs) of addresses never seen allocated.
    pub unmatched_frees: u64,
    /// Unmaps of ranges never seen mapped (allocator-internal or file mappings).
    pub unmatched_unmaps: u64,
    /// Allocations returned at an address that was still live: the free in
    /// between was not seen.
    pub implied_frees: u64,
}

/// What one thread's allocations came to. Memory is charged to the thread
/// that allocated it, whichever thread frees it, so that a thread's live
/// bytes are the memory it is responsible for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadTotals {
    pub allocs: u64,
    pub bytes_allocated: u64,
    pub frees: u64,
    pub bytes_freed: u64,
    pub live_bytes: u64,
    /// Its most live bytes at once.
    pub peak_bytes: u64,
}

/// A process's highest live heap, and when it was first reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peak {
    pub bytes: u64,
    pub ts_ns: u64,
}

/// The live set when a process began to exit.
#[derive(Clone, Debug)]
pub struct ExitSnapshot {
    pub ts_ns: u64,
    pub reason: ExitReason,
    pub allocations: Vec<Allocation>,
}

#[derive(Default)]
pub struct ProcessHeap {
    live: HashMap<u64, Allocation>,
    /// Anonymous mappings by start address; `size` is the length.
    regions: BTreeMap<u64, Allocation>,
    stacks: HashMap<StackId, StackStats>,
    totals: Totals,
    threads: BTreeMap<u32, ThreadTotals>,
    peak: Peak,
    exit: Option<ExitSnapshot>,
}

impl ProcessHeap {
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    pub fn stacks(&self) -> &HashMap<StackId, StackStats> {
        &self.stacks
    }

    /// By thread id.
    pub fn threads(&self) -> &BTreeMap<u32, ThreadTotals> {
        &self.threads
    }

    pub fn peak(&self) -> Peak {
        self.peak
    }

    pub fn exit_snapshot(&self) -> Option<&ExitSnapshot> {
        self.exit.as_ref()
    }

    /// Every live allocation and mapping now.
    pub fn live(&self) -> impl Iterator<Item = &Allocation> {
        self.live.values().chain(self.regions.values())
    }

    /// What the process leaks: the live set when it began to exit if it did,
    /// else the live set now.
    pub fn leak_set(&self) -> Vec<Allocation> {
        match &self.exit {
            Some(snapshot) => snapshot.allocations.clone(),
            None => self.live().copied().collect(),
        }
    }

    fn add_live(&mut self, a: Allocation) {
        let s = self.stacks.entry(a.stack).or_default();
        s.live_bytes += a.size;
        s.live_count += u64::from(a.count);
        self.totals.live_bytes += a.size;
        self.totals.live_count += u64::from(a.count);
        let t = self.threads.entry(a.tid).or_default();
        t.live_bytes += a.size;
        t.peak_bytes = t.peak_bytes.max(t.live_bytes);
    }

    fn remove_live(&mut self, a: &Allocation) {
        if let Some(s) = self.stacks.get_mut(&a.stack) {
            s.live_bytes = s.live_bytes.saturating_sub(a.size);
            s.live_count = s.live_count.saturating_sub(u64::from(a.count));
        }
        self.totals.live_bytes = self.totals.live_bytes.saturating_sub(a.size);
        self.totals.live_count = self.totals.live_count.saturating_sub(u64::from(a.count));
        if let Some(t) = self.threads.get_mut(&a.tid) {
            t.live_bytes = t.live_bytes.saturating_sub(a.size);
        }
    }

    fn count_alloc(&mut self, a: &Allocation) {
        let s = self.stacks.entry(a.stack).or_default();
        s.alloc_bytes += a.size;
        s.alloc_count += u64::from(a.count);
        self.totals.allocs += u64::from(a.count);
        self.totals.bytes_allocated += a.size;
        let t = self.threads.entry(a.tid).or_default();
        t.allocs += u64::from(a.count);
        t.bytes_allocated += a.size;
    }

    fn count_free(&mut self, a: &Allocation) {
        self.totals.frees += u64::from(a.count);
        self.totals.bytes_freed += a.size;
        let t = self.threads.entry(a.tid).or_default();
        t.frees += u64::from(a.count);
        t.bytes_freed += a.size;
    }

    fn alloc(&mut self, addr: u64, a: Allocation) {
        self.count_alloc(&a);
        if let Some(old) = self.live.insert(addr, a) {
            self.totals.implied_frees += 1;
            self.remove_live(&old);
        }
        self.add_live(a);
    }

    fn free(&mut self, addr: u64) {
        match self.live.remove(&addr) {
            Some(old) => {
                self.count_free(&old);
                self.remove_live(&old);
            }
            None => self.totals.unmatched_frees += 1,
        }
    }

    /// Removes `[start, end)` from the tracked mappings, keeping the parts
    /// of each mapping outside it. Returns the removed mappings, clipped.
    fn unmap(&mut self, start: u64, end: u64) -> Vec<(u64, Allocation)> {
        let overlapping: Vec<u64> = self
            .regions
            .range(..end)
            .rev()
            .take_while(|(s, r)| *s + r.size > start)
            .map(|(s, _)| *s)
            .collect();
        let mut removed = Vec::new();
        for s in overlapping {
            let Some(r) = self.regions.remove(&s) else {
                continue;
            };
            self.remove_live(&r);
            let e = s + r.size;
            for (keep_start, keep_end) in [(s, start.max(s)), (end.min(e), e)] {
                if keep_end > keep_start {
                    let kept = Allocation {
                        size: keep_end - keep_start,
                        ..r
                    };
                    self.regions.insert(keep_start, kept);
                    self.add_live(kept);
                }
            }
            let (cut_start, cut_end) = (start.max(s), end.min(e));
            removed.push((
                cut_start,
                Allocation {
                    size: cut_end - cut_start,
                    ..r
                },
            ));
        }
        removed
    }

    fn map(&mut self, addr: u64, a: Allocation) {
        // A mapping over tracked ones (MAP_FIXED) replaces them.
        self.unmap(addr, addr.saturating_add(a.size));
        self.count_alloc(&a);
        self.regions.insert(addr, a);
        self.add_live(a);
    }

    pub fn apply(&mut self, event: &HeapEvent) {
        self.apply_event(event);
        if self.totals.live_bytes > self.peak.bytes {
            self.peak = Peak {
                bytes: self.totals.live_bytes,
                ts_ns: event.ts_ns(),
            };
        }
    }

    fn apply_event(&mut self, event: &HeapEvent) {
        match *event {
            HeapEvent::Alloc {
                tid,
                ts_ns,
                addr,
                size,
                count,
                stack,
                ..
            } => self.alloc(
                addr,
                Allocation {
                    size,
                    count,
                    stack,
                    ts_ns,
                    tid,
                },
            ),
            HeapEvent::Realloc {
                tid,
                ts_ns,
                old_addr,
                addr,
                size,
                count,
                stack,
                ..
            } => {
                self.free(old_addr);
                self.alloc(
                    addr,
                    Allocation {
                        size,
                        count,
                        stack,
                        ts_ns,
                        tid,
                    },
                );
            }
            HeapEvent::Free { addr, .. } => self.free(addr),
            HeapEvent::Map {
                tid,
                ts_ns,
                addr,
                len,
                stack,
                ..
            } => self.map(
                addr,
                Allocation {
                    size: len,
                    count: 1,
                    stack,
                    ts_ns,
                    tid,
                },
            ),
            HeapEvent::Remap {
                tid,
                ts_ns,
                old_addr,
                old_len,
                addr,
                len,
                stack,
                ..
            } => {
                // Only mappings the model knows are followed: anything else
                // was mapped before tracing, or from a file.
                let removed = self.unmap(old_addr, old_addr.saturating_add(old_len));
                if !removed.is_empty() {
                    for (_, r) in &removed {
                        self.count_free(r);
                    }
                    self.map(
                        addr,
                        Allocation {
                            size: len,
                            count: 1,
                            stack,
                            ts_ns,
                            tid,
                        },
                    );
                }
            }
            HeapEvent::Unmap { addr, len, .. } => {
                let removed = self.unmap(addr, addr.saturating_add(len));
                if removed.is_empty() {
                    self.totals.unmatched_unmaps += 1;
                }
                for (_, r) in &removed {
                    self.count_free(r);
                }
            }
            HeapEvent::Exiting { ts_ns, reason, .. } => {
                if self.exit.is_none() {
                    self.exit = Some(ExitSnapshot {
                        ts_ns,
                        reason,
                        allocations: self.live().copied().collect(),
                    });
                }
            }
        }
    }
}

/// The heap model of every traced process.
#[derive(Default)]
pub struct HeapModel {
    processes: BTreeMap<Pid, ProcessHeap>,
}

impl HeapModel {
    pub fn apply(&mut self, event: &HeapEvent) {
        self.processes.entry(event.pid()).or_default().apply(event);
    }

    /// Drops what was recorded of `pid` (it turned out not to be a target).
    pub fn forget(&mut self, pid: Pid) {
        self.processes.remove(&pid);
    }

    pub fn process(&self, pid: Pid) -> Option<&ProcessHeap> {
        self.processes.get(&pid)
    }

    /// Processes by pid, in pid order.
    pub fn processes(&self) -> impl Iterator<Item = (Pid, &ProcessHeap)> {
        self.processes.iter().map(|(pid, heap)| (*pid, heap))
    }
}

impl HeapEvent {
    pub fn ts_ns(&self) -> u64 {
        match *self {
            HeapEvent::Alloc { ts_ns, .. }
            | HeapEvent::Realloc { ts_ns, .. }
            | HeapEvent::Free { ts_ns, .. }
            | HeapEvent::Map { ts_ns, .. }
            | HeapEvent::Remap { ts_ns, .. }
            | HeapEvent::Unmap { ts_ns, .. }
            | HeapEvent::Exiting { ts_ns, .. } => ts_ns,
        }
    }

    pub fn pid(&self) -> Pid {
        match *self {
            HeapEvent::Alloc { pid, .. }
            | HeapEvent::Realloc { pid, .. }
            | HeapEvent::Free { pid, .. }
            | HeapEvent::Map { pid, .. }
            | HeapEvent::Remap { pid, .. }
            | HeapEvent::Unmap { pid, .. }
            | HeapEvent::Exiting { pid, .. } => pid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: Pid = 7;
    const S1: StackId = StackId(1);
    const S2: StackId = StackId(2);

    fn alloc(addr: u64, size: u64, stack: StackId, ts_ns: u64) -> HeapEvent {
        HeapEvent::Alloc {
            pid: PID,
            tid: PID,
            ts_ns,
            addr,
            size,
            count: 1,
            stack,
        }
    }

    fn free(addr: u64) -> HeapEvent {
        HeapEvent::Free {
            pid: PID,
            tid: PID,
            ts_ns: 0,
            addr,
        }
    }

    fn map(addr: u64, len: u64, stack: StackId) -> HeapEvent {
        HeapEvent::Map {
            pid: PID,
            tid: PID,
            ts_ns: 0,
            addr,
            len,
            stack,
        }
    }

    fn unmap(addr: u64, len: u64) -> HeapEvent {
        HeapEvent::Unmap {
            pid: PID,
            tid: PID,
            ts_ns: 0,
            addr,
            len,
        }
    }

    fn model(events: &[HeapEvent]) -> HeapModel {
        let mut m = HeapModel::default();
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
        assert_eq!(
            s1,
            StackStats {
                alloc_bytes: 200,
                alloc_count: 2,
                live_bytes: 100,
                live_count: 1
            }
        );
        let mut leaks = p.leak_set();
        leaks.sort_by_key(|a| a.ts_ns);
        assert_eq!(leaks.iter().map(|a| a.size).collect::<Vec<_>>(), [50, 100]);
    }

    #[test]
    fn threads_are_charged_for_what_they_allocate_and_peak_is_kept() {
        let on = |tid: u32, e: HeapEvent| match e {
            HeapEvent::Alloc {
                pid,
                ts_ns,
                addr,
                size,
                stack,
                ..
            } => HeapEvent::Alloc {
                pid,
                tid,
                ts_ns,
                addr,
                size,
                count: 1,
                stack,
            },
            HeapEvent::Free {
                pid, ts_ns, addr, ..
            } => HeapEvent::Free {
                pid,
                tid,
                ts_ns,
                addr,
            },
            other => other,
        };
        let m = model(&[
            on(1, alloc(0x1000, 100, S1, 1)),
            on(2, alloc(0x2000, 300, S2, 2)),
            on(1, free(0x2000)), // thread 1 frees thread 2's memory
            on(2, alloc(0x3000, 50, S2, 4)),
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
    fn realloc_moves_and_resizes() {
        let m = model(&[
            alloc(0x1000, 100, S1, 1),
            HeapEvent::Realloc {
                pid: PID,
                tid: PID,
                ts_ns: 2,
                old_addr: 0x1000,
                addr: 0x5000,
                size: 300,
                count: 1,
                stack: S2,
            },
        ]);
        let p = m.process(PID).expect("process");
        assert_eq!(p.totals().live_bytes, 300);
        assert_eq!(p.stacks()[&S1].live_bytes, 0);
        assert_eq!(p.stacks()[&S2].live_bytes, 300);
        assert_eq!(p.leak_set()[0].stack, S2);
    }

    #[test]
    fn reused_address_is_an_implied_free() {
        let m = model(&[alloc(0x1000, 100, S1, 1), alloc(0x1000, 40, S2, 2)]);
        let p = m.process(PID).expect("process");
        assert_eq!(p.totals().implied_frees, 1);
        assert_eq!(p.totals().live_bytes, 40);
        assert_eq!(p.stacks()[&S1].live_count, 0);
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
        assert_eq!(p.stacks()[&S1].live_bytes, 0x2000);
    }

    #[test]
    fn remap_follows_known_mappings_only() {
        let remap = |old_addr, addr| HeapEvent::Remap {
            pid: PID,
            tid: PID,
            ts_ns: 0,
            old_addr,
            old_len: 0x1000,
            addr,
            len: 0x3000,
            stack: S2,
        };
        let m = model(&[
            map(0x10000, 0x1000, S1),
            remap(0x10000, 0x40000),
            remap(0x90000, 0xa0000),
        ]);
        let p = m.process(PID).expect("process");
        assert_eq!(p.totals().live_bytes, 0x3000);
        assert_eq!(p.stacks()[&S2].live_bytes, 0x3000);
    }

    #[test]
    fn exit_snapshot_keeps_the_leaks_freed_by_teardown() {
        let m = model(&[
            alloc(0x1000, 100, S1, 1),
            alloc(0x2000, 200, S2, 2),
            HeapEvent::Exiting {
                pid: PID,
                ts_ns: 3,
                reason: ExitReason::PyFinalize,
            },
            free(0x1000),
            free(0x2000),
            HeapEvent::Exiting {
                pid: PID,
                ts_ns: 4,
                reason: ExitReason::LibcExit,
            },
        ]);
        let p = m.process(PID).expect("process");
        assert_eq!(p.totals().live_bytes, 0);
        let snap = p.exit_snapshot().expect("snapshot");
        assert_eq!((snap.ts_ns, snap.reason), (3, ExitReason::PyFinalize));
        assert_eq!(p.leak_set().iter().map(|a| a.size).sum::<u64>(), 300);
    }
}
