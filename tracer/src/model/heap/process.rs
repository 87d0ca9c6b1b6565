//! One process's heap: its live blocks and mappings, and what they add up
//! to per stack, per thread and in all.

use std::collections::{BTreeMap, HashMap};

use super::{
    Allocation, Amount, ExitSnapshot, Peak, StackStats, ThreadTotals, Totals, peak::PeakStacks,
};
use crate::event::{Block, EventKind, HeapEvent, StackId, Tid};

pub struct ProcessHeap {
    live: HashMap<u64, Allocation>,
    /// Anonymous mappings by start address; `size` is the length.
    regions: BTreeMap<u64, Allocation>,
    stacks: HashMap<StackId, StackStats>,
    totals: Totals,
    threads: BTreeMap<Tid, ThreadTotals>,
    peak: Peak,
    peak_stacks: Option<PeakStacks>,
    exit: Option<ExitSnapshot>,
    /// What it started with, copied from its parent at fork.
    inherited: Amount,
}

/// A part of a mapping that an unmap removed.
struct Removed {
    region: Allocation,
}

impl ProcessHeap {
    pub(super) fn new(peak_stacks: bool) -> Self {
        Self {
            live: HashMap::new(),
            regions: BTreeMap::new(),
            stacks: HashMap::new(),
            totals: Totals::default(),
            threads: BTreeMap::new(),
            peak: Peak::default(),
            peak_stacks: peak_stacks.then(PeakStacks::default),
            exit: None,
            inherited: Amount::default(),
        }
    }

    /// The heap of a child `fork` (its event) made of this process: a copy
    /// of the live blocks and mappings, inherited, charged to the child's
    /// first thread; nothing allocated yet.
    pub(super) fn forked(&self, fork: &HeapEvent) -> Self {
        let mut child = Self::new(self.peak_stacks.is_some());
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
        for (addr, a) in &self.regions {
            let a = inherit(a);
            child.regions.insert(*addr, a);
            child.add_live(a);
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

    pub fn stacks(&self) -> &HashMap<StackId, StackStats> {
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

    /// Every live allocation and mapping now.
    pub fn live(&self) -> impl Iterator<Item = &Allocation> {
        self.live.values().chain(self.regions.values())
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
    /// of each mapping outside it. Returns the removed parts.
    fn unmap(&mut self, start: u64, end: u64) -> Vec<Removed> {
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
            removed.push(Removed {
                region: Allocation {
                    size: end.min(e) - start.max(s),
                    ..r
                },
            });
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
                self.free(addr);
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
            EventKind::Map { addr, len, stack } => self.map(addr, mapped(len, stack)),
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
                    for r in &removed {
                        self.count_free(&r.region);
                    }
                    self.map(addr, mapped(len, stack));
                }
            }
            EventKind::Unmap { addr, len } => {
                let removed = self.unmap(addr, addr.saturating_add(len));
                if removed.is_empty() {
                    self.totals.unmatched_unmaps += 1;
                }
                for r in &removed {
                    self.count_free(&r.region);
                }
            }
            EventKind::Exiting { reason } => {
                if self.exit.is_none() {
                    self.exit = Some(ExitSnapshot {
                        ts_ns,
                        reason,
                        allocations: self.live().copied().collect(),
                    });
                }
            }
            EventKind::Exec => {
                // The old image's memory is gone, and with it its leaks.
                let gone: Vec<Allocation> = self.live().copied().collect();
                for a in &gone {
                    self.remove_live(a);
                }
                self.live.clear();
                self.regions.clear();
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
