//! One process's heap: its live blocks and mappings, and what they add up
//! to per stack, per thread and in all.

use std::collections::BTreeMap;

use super::{
    Allocation, Amount, ExitSnapshot, Options, Peak, StackStats, ThreadStacks, ThreadTotals,
    Totals,
    peak::PeakStacks,
    regions::{Region, Regions},
};
use crate::{
    event::{Block, EventKind, HeapEvent, StackId, Tid},
    model::FastMap,
};

pub struct ProcessHeap {
    live: FastMap<u64, Allocation>,
    /// Anonymous mappings, thread stacks included.
    regions: Regions,
    /// Thread stacks mapped now, in the heap or not.
    thread_stacks: ThreadStacks,
    /// Count thread stacks in the heap like any mapping.
    thread_stacks_in_heap: bool,
    stacks: FastMap<StackId, StackStats>,
    totals: Totals,
    threads: BTreeMap<Tid, ThreadTotals>,
    peak: Peak,
    peak_stacks: Option<PeakStacks>,
    exit: Option<ExitSnapshot>,
    /// Each thread's last heap block event, if it was a free: its address.
    last_free: FastMap<Tid, u64>,
    /// What it started with, copied from its parent at fork.
    inherited: Amount,
}

impl ProcessHeap {
    pub(super) fn new(options: Options) -> Self {
        Self {
            live: FastMap::default(),
            regions: Regions::default(),
            thread_stacks: ThreadStacks::default(),
            thread_stacks_in_heap: options.thread_stacks_in_heap,
            stacks: FastMap::default(),
            totals: Totals::default(),
            threads: BTreeMap::new(),
            peak: Peak::default(),
            peak_stacks: options.peak_stacks.then(PeakStacks::default),
            exit: None,
            last_free: FastMap::default(),
            inherited: Amount::default(),
        }
    }

    /// The heap of a child `fork` (its event) made of this process: a copy
    /// of the live blocks and mappings, inherited, charged to the child's
    /// first thread; nothing allocated yet.
    pub(super) fn forked(&self, fork: &HeapEvent) -> Self {
        let mut child = Self::new(Options {
            peak_stacks: self.peak_stacks.is_some(),
            thread_stacks_in_heap: self.thread_stacks_in_heap,
        });
        let inherit = |a: &Allocation| Allocation {
            tid: fork.tid,
            inherited: true,
            ..*a
        };
        for (addr, a) in &self.live {
            let a = inherit(a);
            child.live.insert(*addr, a);
            child.add_live(a);
        }
        for (start, r) in self.regions.iter() {
            let r = Region {
                alloc: inherit(&r.alloc),
                ..*r
            };
            child.regions.insert(start, r);
            child.region_added(&r);
        }
        child.inherited = Amount {
            bytes: child.totals.live_bytes,
            count: child.totals.live_count,
        };
        child.peak = Peak {
            bytes: child.totals.live_bytes,
            ts_ns: fork.ts_ns,
        };
        if let Some(p) = &mut child.peak_stacks {
            p.peak_reached();
        }
        child
    }

    /// What it inherited from its parent at fork (zero if it was not forked
    /// while traced).
    pub fn inherited(&self) -> Amount {
        self.inherited
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Live heap blocks tracked.
    pub(super) fn blocks(&self) -> u64 {
        self.live.len() as u64
    }

    /// Forgets one live block (whichever the table yields first), as if it
    /// had never been seen: its free, if it comes, is unmatched. Returns
    /// whether there was one.
    pub(super) fn evict_one(&mut self) -> bool {
        let Some(addr) = self.live.keys().next().copied() else {
            return false;
        };
        if let Some(a) = self.live.remove(&addr) {
            self.remove_live(&a);
        }
        true
    }

    pub fn stacks(&self) -> &FastMap<StackId, StackStats> {
        &self.stacks
    }

    /// By thread id.
    pub fn threads(&self) -> &BTreeMap<Tid, ThreadTotals> {
        &self.threads
    }

    pub fn peak(&self) -> Peak {
        self.peak
    }

    /// Live amounts per stack when the peak was first reached; empty unless
    /// the model keeps them (`HeapModel::with_peak_stacks`).
    pub fn at_peak(&self) -> impl Iterator<Item = (StackId, Amount)> + '_ {
        self.peak_stacks
            .iter()
            .flat_map(|p| p.at_peak().iter().map(|(s, a)| (*s, *a)))
    }

    pub fn exit_snapshot(&self) -> Option<&ExitSnapshot> {
        self.exit.as_ref()
    }

    /// Every live allocation and mapping in the heap now.
    pub fn live(&self) -> impl Iterator<Item = &Allocation> {
        self.live.values().chain(
            self.regions
                .values()
                .filter(|r| self.in_heap(r))
                .map(|r| &r.alloc),
        )
    }

    /// Every live heap block now (not mappings), by address.
    pub fn live_blocks(&self) -> impl Iterator<Item = (u64, &Allocation)> {
        self.live.iter().map(|(addr, a)| (*addr, a))
    }

    /// The thread stacks mapped when the leak set was taken (see
    /// `leak_set`), whether the heap counts them or not.
    pub fn thread_stacks(&self) -> ThreadStacks {
        self.exit
            .as_ref()
            .map_or(self.thread_stacks, |s| s.thread_stacks)
    }

    /// What the process leaks: its own allocations live when it began to
    /// exit if it did, else live now (what it inherited at fork is its
    /// parent's).
    pub fn leak_set(&self) -> Vec<Allocation> {
        let own = |a: &&Allocation| !a.inherited;
        match &self.exit {
            Some(snapshot) => snapshot.allocations.iter().filter(own).copied().collect(),
            None => self.live().filter(own).copied().collect(),
        }
    }

    fn add_live(&mut self, a: Allocation) {
        let amount = Amount::of(&a);
        self.stacks.entry(a.stack).or_default().live.add(amount);
        self.totals.live_bytes += a.size;
        self.totals.live_count += u64::from(a.count);
        let t = self.threads.entry(a.tid).or_default();
        t.live_bytes += a.size;
        t.peak_bytes = t.peak_bytes.max(t.live_bytes);
        if let Some(p) = &mut self.peak_stacks {
            p.added(a.stack, amount);
        }
    }

    fn remove_live(&mut self, a: &Allocation) {
        let amount = Amount::of(a);
        if let Some(s) = self.stacks.get_mut(&a.stack) {
            s.live.sub(amount);
        }
        self.totals.live_bytes = self.totals.live_bytes.saturating_sub(a.size);
        self.totals.live_count = self.totals.live_count.saturating_sub(u64::from(a.count));
        if let Some(t) = self.threads.get_mut(&a.tid) {
            t.live_bytes = t.live_bytes.saturating_sub(a.size);
        }
        if let Some(p) = &mut self.peak_stacks {
            p.removed(a.stack, amount);
        }
    }

    fn count_alloc(&mut self, a: &Allocation) {
        self.stacks
            .entry(a.stack)
            .or_default()
            .allocated
            .add(Amount::of(a));
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

    /// `repeat`: the thread's previous block event freed `addr` too.
    fn free(&mut self, addr: u64, repeat: bool) {
        match self.live.remove(&addr) {
            Some(old) => {
                self.count_free(&old);
                self.remove_live(&old);
            }
            // glibc 2.43's `free`, on a thread's first call, initialises the
            // thread's cache (and arena: mappings in between) and jumps back
            // to its own entry with the same pointer: one call passes the
            // probe twice, and the second finds the address freed by the
            // first (no thread can have it again: it was not freed yet).
            None if repeat => {}
            None => self.totals.unmatched_frees += 1,
        }
    }

    /// Whether the heap counts mapping `r`: every one but the thread stacks
    /// kept apart.
    fn in_heap(&self, r: &Region) -> bool {
        !r.thread_stack || self.thread_stacks_in_heap
    }

    fn region_added(&mut self, r: &Region) {
        if r.thread_stack {
            self.thread_stacks.add(r.alloc.size);
        }
        if self.in_heap(r) {
            self.add_live(r.alloc);
        }
    }

    fn region_removed(&mut self, r: &Region) {
        if r.thread_stack {
            self.thread_stacks.sub(r.alloc.size);
        }
        if self.in_heap(r) {
            self.remove_live(&r.alloc);
        }
    }

    /// Removes `[start, end)` from the tracked mappings, keeping the parts
    /// of each mapping outside it. Returns the removed parts.
    fn unmap(&mut self, start: u64, end: u64) -> Vec<Region> {
        let cut = self.regions.cut(start, end);
        for r in &cut.before {
            self.region_removed(r);
        }
        for r in &cut.kept {
            self.region_added(r);
        }
        cut.removed
    }

    /// Counts the parts an unmap or a remap took away as freed.
    fn count_unmapped(&mut self, removed: &[Region]) {
        for r in removed {
            if self.in_heap(r) {
                self.count_free(&r.alloc);
            }
        }
    }

    fn map(&mut self, addr: u64, r: Region) {
        // A mapping over tracked ones (MAP_FIXED) replaces them.
        self.unmap(addr, addr.saturating_add(r.alloc.size));
        if self.in_heap(&r) {
            self.count_alloc(&r.alloc);
        }
        self.regions.insert(addr, r);
        self.region_added(&r);
    }

    pub(super) fn apply(&mut self, event: &HeapEvent) {
        self.apply_kind(event);
        if self.totals.live_bytes > self.peak.bytes {
            self.peak = Peak {
                bytes: self.totals.live_bytes,
                ts_ns: event.ts_ns,
            };
            if let Some(p) = &mut self.peak_stacks {
                p.peak_reached();
            }
        }
    }

    fn apply_kind(&mut self, event: &HeapEvent) {
        let (tid, ts_ns) = (event.tid, event.ts_ns);
        let last_free = match event.kind {
            EventKind::Free { addr } => self.last_free.insert(tid, addr),
            EventKind::Alloc(_) | EventKind::Realloc { .. } => self.last_free.remove(&tid),
            _ => None,
        };
        let made = |b: Block| Allocation {
            size: b.size,
            count: b.count,
            stack: b.stack,
            ts_ns,
            tid,
            inherited: false,
        };
        if let Some(change) = event.kind.block_change() {
            if let Some(addr) = change.freed {
                let repeat =
                    matches!(event.kind, EventKind::Free { .. }) && last_free == Some(addr);
                self.free(addr, repeat);
            }
            if let Some(block) = change.made {
                self.alloc(block.addr, made(block));
            }
            return;
        }
        let mapped = |len, stack| Allocation {
            size: len,
            count: 1,
            stack,
            ts_ns,
            tid,
            inherited: false,
        };
        match event.kind {
            EventKind::Map {
                addr,
                len,
                stack,
                thread_stack,
            } => self.map(
                addr,
                Region {
                    alloc: mapped(len, stack),
                    thread_stack,
                },
            ),
            EventKind::Remap {
                old_addr,
                old_len,
                addr,
                len,
                stack,
            } => {
                // Only mappings the model knows are followed: anything else
                // was mapped before tracing, or from a file.
                let removed = self.unmap(old_addr, old_addr.saturating_add(old_len));
                if !removed.is_empty() {
                    self.count_unmapped(&removed);
                    // A thread stack moved is still one.
                    let region = Region {
                        alloc: mapped(len, stack),
                        thread_stack: removed.iter().any(|r| r.thread_stack),
                    };
                    self.map(addr, region);
                }
            }
            EventKind::Unmap { addr, len } => {
                let removed = self.unmap(addr, addr.saturating_add(len));
                if removed.is_empty() {
                    self.totals.unmatched_unmaps += 1;
                }
                self.count_unmapped(&removed);
            }
            EventKind::Exiting { reason } => {
                if self.exit.is_none() {
                    self.exit = Some(ExitSnapshot {
                        ts_ns,
                        reason,
                        allocations: self.live().copied().collect(),
                        thread_stacks: self.thread_stacks,
                    });
                }
            }
            EventKind::Exec => {
                // The old image's memory is gone, and with it its leaks.
                let gone: Vec<Allocation> = self.live.drain().map(|(_, a)| a).collect();
                for a in &gone {
                    self.remove_live(a);
                }
                let mapped = self.regions.cut(0, u64::MAX);
                for r in &mapped.before {
                    self.region_removed(r);
                }
                self.exit = None;
            }
            // A fork makes a new process (`HeapModel::apply`).
            EventKind::Fork { .. }
            | EventKind::Alloc(_)
            | EventKind::Realloc { .. }
            | EventKind::Free { .. } => {}
        }
    }
}

#[cfg(test)]
#[path = "process_tests.rs"]
mod tests;
