//! The heap model: every live allocation of every traced process, and
//! per-stack totals, rebuilt from allocation events alone.
//!
//! Addresses are per process. Frees of addresses the model never saw
//! allocated (made before tracing began, or whose allocation event was lost)
//! are counted, not errors. Anonymous mappings are kept as address ranges so
//! that a partial `munmap` trims them as the kernel does. Thread stacks
//! (mappings made with `MAP_STACK`) are kept apart: glibc keeps a finished
//! thread's 8 MiB stack mapped for the next thread, which is no leak.

mod peak;
mod process;
mod regions;

use std::collections::BTreeMap;

pub use process::ProcessHeap;

use crate::event::{EventKind, ExitReason, HeapEvent, Pid, StackId, Tid};

/// A live allocation or mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub size: u64,
    /// Allocations it stands for (more than 1 only when sampled).
    pub count: u32,
    pub stack: StackId,
    pub ts_ns: u64,
    pub tid: Tid,
    /// Made by the parent before this process was forked: live here too,
    /// but not this process's leak.
    pub inherited: bool,
}

/// Bytes and allocations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amount {
    pub bytes: u64,
    pub count: u64,
}

impl Amount {
    fn of(a: &Allocation) -> Self {
        Self {
            bytes: a.size,
            count: u64::from(a.count),
        }
    }

    fn add(&mut self, other: Amount) {
        self.bytes += other.bytes;
        self.count += other.count;
    }

    fn sub(&mut self, other: Amount) {
        self.bytes = self.bytes.saturating_sub(other.bytes);
        self.count = self.count.saturating_sub(other.count);
    }
}

/// Totals for one stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    pub allocated: Amount,
    pub live: Amount,
}

/// Totals for one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// Thread stacks mapped: how many, and their bytes (guard pages included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadStacks {
    pub count: u64,
    pub bytes: u64,
}

impl ThreadStacks {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }

    fn sub(&mut self, bytes: u64) {
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
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
    pub thread_stacks: ThreadStacks,
}

/// What the heap model keeps besides the live heap, and what it counts in it.
#[derive(Clone, Copy, Debug, Default)]
struct Options {
    /// Each process's live bytes per stack at its peak (for the peak
    /// report): a map update per event that a live recording does without.
    peak_stacks: bool,
    /// Thread stacks counted in the heap like any mapping
    /// (`--include-thread-stacks`).
    thread_stacks_in_heap: bool,
}

/// The heap model of every traced process.
#[derive(Default)]
pub struct HeapModel {
    processes: BTreeMap<Pid, ProcessHeap>,
    options: Options,
    /// At most this many live heap blocks are tracked (`--max-tracked`).
    cap: Option<u64>,
    /// Live heap blocks tracked now, every process.
    tracked: u64,
    /// Blocks forgotten to stay under `cap`.
    evicted: u64,
}

impl HeapModel {
    /// A model that also keeps each process's live set by stack at its
    /// peak (`ProcessHeap::at_peak`).
    pub fn with_peak_stacks() -> Self {
        Self {
            processes: BTreeMap::new(),
            options: Options {
                peak_stacks: true,
                ..Options::default()
            },
            ..Self::default()
        }
    }

    /// The same model, counting thread stacks in the heap like any mapping
    /// if `include` (they are kept apart otherwise).
    pub fn including_thread_stacks(mut self, include: bool) -> Self {
        self.options.thread_stacks_in_heap = include;
        self
    }

    /// Tracks at most `cap` live heap blocks: past it, each new one makes
    /// the process that allocated it forget another (counted), so that a
    /// recording of weeks has a bounded heap model. The memory per block
    /// is about 50 bytes.
    pub fn with_cap(mut self, cap: Option<u64>) -> Self {
        self.cap = cap;
        self
    }

    /// Blocks forgotten so far to stay under the cap.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn apply(&mut self, event: &HeapEvent) {
        let options = self.options;
        if let EventKind::Fork { parent } = event.kind {
            let child = match self.processes.get(&parent) {
                Some(p) => p.forked(event),
                None => ProcessHeap::new(options),
            };
            self.tracked += child.blocks();
            if let Some(old) = self.processes.insert(event.pid, child) {
                self.tracked = self.tracked.saturating_sub(old.blocks());
            }
            return;
        }
        // With `--all` every exec on the host is reported: one of a process
        // with no heap here has nothing to reset, and an empty heap per
        // program ever run would grow for as long as tracer runs.
        if event.kind == EventKind::Exec && !self.processes.contains_key(&event.pid) {
            return;
        }
        let process = self
            .processes
            .entry(event.pid)
            .or_insert_with(|| ProcessHeap::new(options));
        let before = process.blocks();
        process.apply(event);
        let after = process.blocks();
        self.tracked = (self.tracked + after).saturating_sub(before);
        if let Some(cap) = self.cap {
            while self.tracked > cap && process.evict_one() {
                self.tracked -= 1;
                self.evicted += 1;
            }
        }
    }

    /// Drops what was recorded of `pid` (it turned out not to be a target,
    /// or it exited and its last window is out).
    pub fn forget(&mut self, pid: Pid) {
        if let Some(old) = self.processes.remove(&pid) {
            self.tracked = self.tracked.saturating_sub(old.blocks());
        }
    }

    pub fn process(&self, pid: Pid) -> Option<&ProcessHeap> {
        self.processes.get(&pid)
    }

    /// Processes by pid, in pid order.
    pub fn processes(&self) -> impl Iterator<Item = (Pid, &ProcessHeap)> {
        self.processes.iter().map(|(pid, heap)| (*pid, heap))
    }
}
