//! The state a recording builds from its events: the heap of every traced
//! process, the stacks its allocations came from, and what is known of each
//! process (its map, its files, its interpreter) to make sense of them.
//! Sources write it; sinks read it.

pub mod heap;
pub mod modules;
pub mod registry;
pub mod stacks;

use std::{collections::HashMap, path::PathBuf};

use tracer_common::CodeRecord;

use self::{
    heap::HeapModel,
    modules::Modules,
    registry::Registry,
    stacks::{RawStack, StackTable},
};
use crate::{
    event::{HeapEvent, Pid, StackId},
    python::Interpreter,
};

/// A hash map on the per-event path, keyed by what a target's records say
/// (addresses, stacks). SipHash, std's default, was a third of the
/// collector's time on deep stacks; foldhash is several times faster and
/// still seeded at random per map, so a target cannot choose colliding
/// keys without learning the seed.
pub type FastMap<K, V> = HashMap<K, V, foldhash::quality::RandomState>;

#[derive(Default)]
pub struct Model {
    heap: HeapModel,
    stacks: StackTable,
    registry: Registry,
}

impl Model {
    pub fn apply(&mut self, event: &HeapEvent) {
        self.heap.apply(event);
    }

    /// The id of a stack the kernel recorded in `pid`, checked against its
    /// map the first time it is seen.
    pub fn intern(&mut self, pid: Pid, raw: RawStack<'_>) -> StackId {
        self.stacks.intern(&mut self.registry, pid, raw)
    }

    /// Reads `pid`'s map now (it is about to exit, or was just adopted).
    pub fn refresh_maps(&mut self, pid: Pid) {
        self.registry.refresh_maps(pid);
    }

    /// Whether `pid`'s map was read: a process tracer adopted, not one
    /// the kernel traces while tracer decides (`--all`, `--match`).
    pub fn has_maps(&self, pid: Pid) -> bool {
        self.registry.has_maps(pid)
    }

    /// `child` was forked from `parent` (its heap follows from the fork
    /// event): what is known of its address space is the parent's.
    pub fn fork(&mut self, child: Pid, parent: Pid) {
        self.registry.fork(child, parent);
    }

    /// `pid` replaced its image.
    pub fn exec(&mut self, pid: Pid) {
        self.registry.exec(pid);
        self.stacks.exec(pid);
    }

    pub fn learn_code(&mut self, pid: Pid, rec: &CodeRecord) {
        self.registry.learn_code(pid, rec);
    }

    pub fn add_interpreter(&mut self, pid: Pid, interpreter: Interpreter) {
        self.registry.add_interpreter(pid, interpreter);
    }

    pub fn interpreter(&self, pid: Pid) -> Option<&Interpreter> {
        self.registry.interpreter(pid)
    }

    /// Drops everything known of `pid`: it exited, or turned out not to
    /// be a target. Its stacks stay (sinks name them by id), and the files
    /// they point into (`Modules`, bounded).
    pub fn forget(&mut self, pid: Pid) {
        self.heap.forget(pid);
        self.registry.forget(pid);
        self.stacks.forget(pid);
    }

    /// Processes something is kept of (heap, map, stack caches): after
    /// their exit, none.
    pub fn processes(&self) -> usize {
        self.heap
            .processes()
            .count()
            .max(self.registry.processes())
            .max(self.stacks.processes())
    }

    /// Tracks at most `cap` live heap blocks (`HeapModel::with_cap`).
    pub fn cap_heap(&mut self, cap: Option<u64>) {
        self.heap = std::mem::take(&mut self.heap).with_cap(cap);
    }

    pub fn heap(&self) -> &HeapModel {
        &self.heap
    }

    pub fn stacks(&self) -> &StackTable {
        &self.stacks
    }

    pub fn modules(&self) -> &Modules {
        self.registry.modules()
    }

    /// Where debug files of the modules seen so far may be.
    pub fn debug_dirs(&self) -> Vec<PathBuf> {
        self.registry.modules().debug_dirs()
    }
}
