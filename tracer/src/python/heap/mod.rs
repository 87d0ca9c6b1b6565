//! Live Python objects by type, read from outside the process as py-spy
//! reads frames, with no probe and nothing loaded into it: every used
//! block of CPython's small-object arenas, every object on its GC
//! generation lists (containers of any size), and the live allocations
//! tracer traced (objects obmalloc passed to malloc, or all of them with
//! `PYTHONMALLOC=malloc`), each typed by the type pointer in its header
//! (`objects`). The three overlap; each object is counted once.
//!
//! Costs, per walk: one read per arena (up to 1 MiB each), one per GC
//! object outside the arenas' copies, one per `IOV_MAX` traced blocks, one
//! or two per distinct type. Bounds: `Limits` (a deadline, caps); past one,
//! what was not examined is estimated from what was and the census says
//! so. docs/python-heap.md has the details and the measurements.

mod arenas;
mod gc;
mod layout;
mod objects;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use self::{
    arenas::Arena,
    layout::{ArenasAt, GcAt, HeapLayout, MainAt},
    objects::{Types, word},
};
use super::memory::Memory;
use crate::{
    census::{self, Census, Coverage, Moment, StackTypes, TypeCount},
    event::{Pid, StackId},
};
pub use layout::{ArenaStatics, arena_statics};

/// What a walk needs to know of a process's interpreter (found by
/// `python::detect`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapTarget {
    pub minor: u8,
    /// `_PyRuntime` in the process.
    pub runtime: u64,
    /// `PyType_Type` in the process.
    pub type_type: Option<u64>,
    /// 3.8 to 3.11: where obmalloc's arena table may be.
    pub statics: ArenaStatics,
}

/// A live allocation tracer traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracedBlock {
    pub addr: u64,
    pub size: u64,
    /// Allocations it stands for (more than 1 when sampled).
    pub count: u32,
    pub stack: StackId,
}

/// How far a walk may go.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The walk stops examining at this moment and estimates the rest.
    pub deadline: Instant,
    /// Bytes of arenas read at most.
    pub arena_bytes: u64,
    /// GC objects examined at most, over all lists.
    pub gc_objects: u64,
    /// Traced blocks whose headers are read at most: past it, one in k.
    pub traced_blocks: usize,
}

impl Limits {
    /// `time` from now, with the caps every walk has: 4 GiB of arenas, 4
    /// million GC objects, 2 million traced blocks (about 0.5 s, 2 s and
    /// 1 s of reading on this machine: docs/python-heap.md).
    pub fn within(time: Duration) -> Self {
        Self {
            deadline: Instant::now() + time,
            arena_bytes: 4 << 30,
            gc_objects: 4_000_000,
            traced_blocks: 2_000_000,
        }
    }
}

/// What one walk is asked to do.
pub struct Request<'a> {
    pub pid: Pid,
    pub ts_ns: u64,
    pub moment: Moment,
    pub target: &'a HeapTarget,
    pub blocks: &'a [TracedBlock],
    pub limits: Limits,
}

/// Types per stack kept in a census: the dominant ones.
const TYPES_PER_STACK: usize = 5;

/// Walks the heap of a process and counts its live objects by type.
pub fn walk(request: &Request<'_>) -> Census {
    let started = Instant::now();
    let mut walker = Walker::new(request);
    walker.run();
    let micros = started.elapsed().as_micros() as u64;
    walker.into_census(request, micros)
}

struct Walker<'a> {
    request: &'a Request<'a>,
    memory: Memory,
    layout: Option<HeapLayout>,
    types: Option<Types>,
    arenas: Vec<Arena>,
    /// Objects found in the arenas, by type (scaled if estimated).
    in_arenas: HashMap<String, TypeCount>,
    /// Elsewhere: GC objects and traced blocks.
    outside: HashMap<String, TypeCount>,
    by_stack: HashMap<StackId, HashMap<String, TypeCount>>,
    coverage: Coverage,
    notes: Vec<String>,
}

impl<'a> Walker<'a> {
    fn new(request: &'a Request<'a>) -> Self {
        let target = request.target;
        let memory = Memory::new(request.pid);
        let mut notes = Vec::new();
        let layout = HeapLayout::for_version(target.minor);
        if layout.is_none() {
            notes.push(format!(
                "CPython 3.{}: no layout of its GC and arenas is known; only traced allocations are typed",
                target.minor
            ));
        }
        let types = match target.type_type {
            Some(tt) if memory.u64(tt + 8).ok() == Some(tt) => {
                Some(Types::new(memory, tt, target.minor))
            }
            _ => {
                notes.push("PyType_Type not found or not a type: no object can be typed".into());
                None
            }
        };
        Self {
            request,
            memory,
            layout,
            types,
            arenas: Vec::new(),
            in_arenas: HashMap::new(),
            outside: HashMap::new(),
            by_stack: HashMap::new(),
            coverage: Coverage::default(),
            notes,
        }
    }

    fn run(&mut self) {
        let Some(mut types) = self.types.take() else {
            return;
        };
        let interpreter = self.main_interpreter();
        match (self.layout, interpreter) {
            (Some(layout), Ok(interp)) => {
                self.walk_arenas(&layout, interp, &mut types);
                self.walk_gc(&layout, interp, &mut types);
            }
            (Some(_), Err(why)) => self.notes.push(why),
            (None, _) => {}
        }
        self.type_traced(&mut types);
        self.coverage.reads += types.reads;
        self.types = Some(types);
    }

    /// The main interpreter's address.
    fn main_interpreter(&mut self) -> Result<u64, String> {
        let layout = self.layout.ok_or("no layout")?;
        let runtime = self.request.target.runtime;
        let offset = match layout.main {
            MainAt::Runtime(offset) => offset,
            MainAt::DebugOffsets(pos) => self.debug_offset(pos)? + 8,
        };
        self.coverage.reads += 1;
        match self.memory.u64(runtime + offset) {
            Ok(0) | Err(_) => {
                Err("the interpreter is not initialized (no main interpreter)".into())
            }
            Ok(interp) => Ok(interp),
        }
    }

    /// 3.13+: a value of `_Py_DebugOffsets`, at `pos` in it.
    fn debug_offset(&mut self, pos: u64) -> Result<u64, String> {
        let runtime = self.request.target.runtime;
        self.coverage.reads += 2;
        let cookie = self.memory.u64(runtime).map_err(|e| e.to_string())?;
        if cookie.to_le_bytes() != *b"xdebugpy" {
            return Err("no _Py_DebugOffsets at _PyRuntime".into());
        }
        match self.memory.u64(runtime + pos) {
            Ok(v) if v < 1 << 20 => Ok(v),
            Ok(v) => Err(format!("_Py_DebugOffsets says {v:#x} at +{pos}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The arena table: candidates of `(maxarenas, arenas)` addresses.
    fn arena_table(&mut self, layout: &HeapLayout, interp: u64) -> Vec<(u64, u64)> {
        match layout.arenas {
            ArenasAt::Statics => self.request.target.statics.candidates.clone(),
            ArenasAt::Embedded(offset) => {
                let (arenas, max) = HeapLayout::mgmt(interp + offset);
                vec![(max, arenas)]
            }
            ArenasAt::Pointer(offset) => {
                self.coverage.reads += 1;
                match self.memory.u64(interp + offset) {
                    Ok(state) if state != 0 => {
                        let (arenas, max) = HeapLayout::mgmt(state);
                        vec![(max, arenas)]
                    }
                    _ => Vec::new(),
                }
            }
        }
    }

    fn walk_arenas(&mut self, layout: &HeapLayout, interp: u64, types: &mut Types) {
        let candidates = self.arena_table(layout, interp);
        let mut why =
            String::from("no arena table found (a stripped build without its debug file?)");
        for (max, table) in candidates {
            self.coverage.reads += 3;
            match arenas::read_table(&self.memory, layout, max, table) {
                Ok(found) => {
                    self.arenas = found;
                    why.clear();
                    break;
                }
                Err(e) => why = e,
            }
        }
        if !why.is_empty() {
            self.notes
                .push(format!("small-object arenas not walked: {why}"));
            return;
        }
        self.arenas.sort_by_key(|a| a.address);
        let limits = self.request.limits;
        let mut buf = Vec::new();
        let mut examined_pools = 0;
        let mut skipped_pools = 0;
        let arenas = self.arenas.clone();
        for arena in &arenas {
            let over =
                Instant::now() > limits.deadline || self.coverage.arena_bytes >= limits.arena_bytes;
            if over {
                skipped_pools += arena.used_pools;
                continue;
            }
            let tally = &mut self.in_arenas;
            let mut not_objects = 0;
            let walked = arenas::walk(
                &self.memory,
                layout,
                arena,
                &mut buf,
                &mut |_, size, bytes| match types.identify(bytes, size) {
                    Some(found) => {
                        let name = types.info(found.type_addr).map_or("?", |t| t.name.as_str());
                        census::tally(tally, name, 1, size);
                    }
                    None => not_objects += 1,
                },
            );
            self.coverage.not_objects += not_objects;
            match walked {
                Ok(stats) => {
                    self.coverage.arena_blocks += stats.blocks;
                    self.coverage.arena_bytes += stats.bytes_read;
                    self.coverage.reads += stats.reads;
                    examined_pools += stats.used_pools;
                }
                // Freed while it was read: nothing of it is counted.
                Err(_) => self.coverage.reads += 1,
            }
        }
        if skipped_pools > 0 && examined_pools > 0 {
            // The arenas not read are taken to hold what the others did.
            let factor = (examined_pools + skipped_pools) as f64 / examined_pools as f64;
            for t in self.in_arenas.values_mut() {
                t.count = (t.count as f64 * factor).round() as u64;
                t.bytes = (t.bytes as f64 * factor).round() as u64;
            }
            self.coverage.estimated = true;
            self.notes.push(format!(
                "arenas: {examined_pools} pools examined, {skipped_pools} more past the limit estimated like them"
            ));
        }
    }

    fn walk_gc(&mut self, layout: &HeapLayout, interp: u64, types: &mut Types) {
        let state = match layout.gc {
            GcAt::Runtime(offset) => Ok(self.request.target.runtime + offset),
            GcAt::Interpreter(offset) => Ok(interp + offset),
            GcAt::DebugOffsets(pos) => self.debug_offset(pos).map(|o| interp + o),
        };
        let heads = state.and_then(|s| gc::list_heads(&self.memory, layout, s));
        let heads = match heads {
            Ok(heads) => heads,
            Err(why) => {
                self.notes.push(format!("GC lists not walked: {why}"));
                return;
            }
        };
        self.coverage.reads += 16;
        let traced: HashSet<u64> = self.request.blocks.iter().map(|b| b.addr).collect();
        let limits = self.request.limits;
        let minor = types.minor();
        let (arenas, outside, coverage) = (&self.arenas, &mut self.outside, &mut self.coverage);
        let mut examined = 0;
        let mut complete = true;
        for head in heads {
            let cap = limits.gc_objects.saturating_sub(examined);
            let walk = gc::walk_list(
                &self.memory,
                head,
                cap,
                limits.deadline,
                &mut |at, bytes| {
                    let object = at + objects::GC_HEAD;
                    if in_an_arena(arenas, object, layout) {
                        return;
                    }
                    let Some(t) = types.get(word(bytes, 24)) else {
                        return;
                    };
                    let preheader = objects::preheader(minor, t);
                    // A traced one is counted with the traced, at its real size.
                    if !t.is_gc() || traced.contains(&(object - preheader)) {
                        return;
                    }
                    let items = (word(bytes, 32) as i64).unsigned_abs().min(1 << 32);
                    let size = preheader + t.basicsize + t.itemsize * items;
                    census::tally(outside, &t.name, 1, size);
                    coverage.gc_objects += 1;
                },
            );
            examined += walk.objects;
            coverage.reads += walk.reads;
            complete &= walk.complete;
        }
        if !complete {
            coverage.estimated = true;
            self.notes.push(format!(
                "GC lists walked in part ({examined} objects): they changed as they were read, or a limit was reached"
            ));
        }
    }

    /// Reads the type of each traced block: every one for its stack, and
    /// those outside the arenas and the GC lists for the census.
    fn type_traced(&mut self, types: &mut Types) {
        let blocks = self.request.blocks;
        if blocks.is_empty() {
            return;
        }
        let cap = self.request.limits.traced_blocks.max(1);
        let step = blocks.len().div_ceil(cap);
        let chosen: Vec<&TracedBlock> = blocks.iter().step_by(step).collect();
        if step > 1 {
            self.coverage.estimated = true;
            self.notes.push(format!(
                "traced allocations: 1 in {step} of {} read, the rest estimated like them",
                blocks.len()
            ));
        }
        let addrs: Vec<u64> = chosen.iter().map(|b| b.addr).collect();
        let mut heads = Vec::new();
        let (ok, calls) = self.memory.read_many(&addrs, 48, &mut heads);
        self.coverage.reads += calls;
        let layout = self.layout;
        for (i, block) in chosen.iter().enumerate() {
            let head = &heads[i * 48..i * 48 + 48];
            let found = ok[i].then(|| types.identify(head, block.size)).flatten();
            let weight = step as u64 * u64::from(block.count);
            let bytes = step as u64 * block.size;
            let Some(found) = found else {
                self.coverage.not_objects += weight;
                continue;
            };
            let name = types
                .info(found.type_addr)
                .map_or_else(|| "?".to_owned(), |t| t.name.clone());
            census::tally(
                self.by_stack.entry(block.stack).or_default(),
                &name,
                weight,
                bytes,
            );
            let in_arena = layout.is_some_and(|l| in_an_arena(&self.arenas, block.addr, &l));
            if !in_arena {
                census::tally(&mut self.outside, &name, weight, bytes);
                self.coverage.traced_objects += weight;
            }
        }
    }

    fn into_census(mut self, request: &Request<'_>, micros: u64) -> Census {
        self.coverage.micros = micros;
        let mut all = std::mem::take(&mut self.in_arenas);
        for t in self.outside.into_values() {
            census::tally(&mut all, &t.name, t.count, t.bytes);
        }
        let mut by_stack: Vec<StackTypes> = self
            .by_stack
            .into_iter()
            .map(|(stack, types)| StackTypes {
                stack,
                types: census::sorted(types)
                    .into_iter()
                    .take(TYPES_PER_STACK)
                    .collect(),
            })
            .collect();
        by_stack.sort_by_key(|s| s.stack);
        Census {
            pid: request.pid,
            ts_ns: request.ts_ns,
            moment: request.moment,
            types: census::sorted(all),
            by_stack,
            coverage: self.coverage,
            notes: self.notes,
        }
    }
}

/// Whether `addr` is in one of `arenas` (sorted by address).
fn in_an_arena(arenas: &[Arena], addr: u64, layout: &HeapLayout) -> bool {
    let i = arenas.partition_point(|a| a.address <= addr);
    i > 0 && arenas[i - 1].contains(addr, layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_version_still_types_nothing_and_says_why() {
        let target = HeapTarget {
            minor: 16,
            runtime: 0,
            type_type: None,
            statics: ArenaStatics::default(),
        };
        let census = walk(&Request {
            pid: std::process::id(),
            ts_ns: 1,
            moment: Moment::End,
            target: &target,
            blocks: &[],
            limits: Limits::within(Duration::from_secs(1)),
        });
        assert!(census.types.is_empty());
        assert_eq!(census.notes.len(), 2, "{:?}", census.notes);
    }
}
