//! Native stacks: from the raw addresses the kernel captured to interned,
//! checked stacks of (module, file offset) frames.
//!
//! The kernel walks frame pointers from the probed function's entry, where
//! the return address into the caller sits at the stack pointer and is not
//! part of any frame record yet: the walk yields [probe address, caller's
//! caller, ...]. The recorded `caller` is put back in second place. Code
//! built without frame pointers (Debian's python3 and glibc, pyenv builds)
//! leaves arbitrary values in rbp, so every walked frame must look like a
//! return address — inside an executable mapping, right after a call
//! instruction — or the stack is cut there and marked truncated.

use std::{collections::HashMap, hash::BuildHasher as _};

use tracer_common::PyFrame;

use super::{
    FastMap,
    registry::{Certainty, NativeFrame, Registry},
};
use crate::{
    event::{Pid, StackId},
    python::PyLocation,
};

/// An interned Python frame location (`StackTable::python_location`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PyLocId(pub u32);

/// A checked stack, innermost frame first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stack {
    /// The allocation function (`tracer_common::func`); the first frame is
    /// where it was probed.
    pub func: u32,
    pub frames: Vec<NativeFrame>,
    /// Why the stack may be missing outer frames, if it may.
    pub cut: Option<Cut>,
    /// The thread's Python frames, innermost first (empty outside CPython).
    pub python: Vec<PyLocId>,
    /// Why the Python frames may be missing outer ones, if they may.
    pub python_cut: Option<Cut>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cut {
    /// The kernel could not capture a stack at all.
    Lost,
    /// A walked frame did not look like a return address (no frame pointers).
    NotAReturnAddress,
    /// The walk reached the depth limit.
    DepthLimit,
    /// Not kept: its process made more distinct stacks than tracer keeps
    /// of one process (`MAX_STACKS_PER_PROCESS`).
    OverLimit,
}

/// Distinct stacks and Python frame locations one process may add to the
/// table: far more than a real program makes (a large service makes a few
/// thousand), and what bounds tracer's memory when a process makes new code
/// objects without end. Past it, its new stacks are one `Cut::OverLimit`
/// stack, counted.
const MAX_STACKS_PER_PROCESS: u32 = 65_536;
const MAX_LOCATIONS_PER_PROCESS: u32 = 32_768;
/// Raw stacks remembered per process (a cache of what was checked): past
/// it the process's cache is started again.
const MAX_RAW_PER_PROCESS: usize = 32_768;

/// A stack as the kernel recorded it.
#[derive(Clone, Copy, Debug)]
pub struct RawStack<'a> {
    /// When it was recorded (CLOCK_MONOTONIC ns).
    pub ts_ns: u64,
    /// The allocation function (`tracer_common::func`).
    pub func: u32,
    /// Frame-pointer walk frames, innermost (the probed instruction) first.
    pub frames: &'a [u64],
    /// The return address at the stack pointer, if it could be read.
    pub caller: Option<u64>,
    pub lost: bool,
    pub full: bool,
    /// The thread's Python frames, innermost first.
    pub python: &'a [PyFrame],
    /// The Python frames went deeper than the kernel reads.
    pub python_full: bool,
    /// The Python frame chain could not be read to its end.
    pub python_lost: bool,
}

/// The words of the Python frames in a raw stack key.
fn python_words(frames: &[PyFrame]) -> impl Iterator<Item = u64> + '_ {
    frames
        .iter()
        .flat_map(|f| [f.code, f.instr, f.firstlineno as u32 as u64])
}

/// A raw stack's key (4 words of pid, function, exec generation, caller
/// and flags, then the frames) and its id.
struct RawKey {
    key: Box<[u64]>,
    id: StackId,
}

/// The raw stacks sharing one hash.
type RawKeys = Vec<RawKey>;

/// Interns stacks: equal raw stacks of a process map to one id without
/// being checked again, and equal checked stacks share one id. What is kept
/// per process goes when it exits (`forget`).
#[derive(Default)]
pub struct StackTable {
    ids: HashMap<Stack, StackId>,
    stacks: Vec<Stack>,
    hasher: foldhash::quality::RandomState,
    /// The raw key of the stack being interned, built here rather than in
    /// a new vector per event.
    key: Vec<u64>,
    py_ids: HashMap<PyLocation, PyLocId>,
    py_locations: Vec<PyLocation>,
    processes: HashMap<Pid, ProcessStacks>,
    /// Stacks not kept (`Cut::OverLimit`), over the recording.
    over_limit: u64,
}

/// What the table keeps of one process.
#[derive(Default)]
struct ProcessStacks {
    /// Hash of a raw stack -> the raw stacks with that hash.
    raw: FastMap<u64, RawKeys>,
    raw_count: usize,
    /// Python frames already resolved, by what the kernel read.
    py_frames: FastMap<PyFrameKey, Option<PyLocId>>,
    /// Distinct stacks and locations it added to the table.
    new_stacks: u32,
    new_locations: u32,
}

/// A Python frame of one process as the kernel read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PyFrameKey {
    code: u64,
    instr: u64,
    firstlineno: i32,
}

impl StackTable {
    pub fn get(&self, id: StackId) -> &Stack {
        &self.stacks[id.0 as usize]
    }

    /// Stacks interned so far: ids are 0 to `count() - 1`.
    pub fn count(&self) -> usize {
        self.stacks.len()
    }

    pub fn python_location(&self, id: PyLocId) -> &PyLocation {
        &self.py_locations[id.0 as usize]
    }

    /// `pid` replaced its image: its Python frames mean other things now.
    pub fn exec(&mut self, pid: Pid) {
        if let Some(p) = self.processes.get_mut(&pid) {
            p.py_frames.clear();
        }
    }

    /// `pid` exited: what was kept to intern its stacks goes (the stacks
    /// stay: the capture and the reports name them by id).
    pub fn forget(&mut self, pid: Pid) {
        self.processes.remove(&pid);
    }

    /// Processes whose stacks are cached.
    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    /// Allocations whose stack was not kept (`Cut::OverLimit`).
    pub fn over_limit(&self) -> u64 {
        self.over_limit
    }

    pub fn intern(&mut self, registry: &mut Registry, pid: Pid, raw: RawStack<'_>) -> StackId {
        let generation = registry.generation(pid);
        let flags = u64::from(raw.lost)
            | u64::from(raw.full) << 1
            | u64::from(raw.caller.is_some()) << 2
            | u64::from(raw.python_full) << 3
            | u64::from(raw.python_lost) << 4;
        let key_head = [
            u64::from(pid) | u64::from(raw.func) << 32,
            generation,
            raw.caller.unwrap_or(0),
            flags | (raw.frames.len() as u64) << 8,
        ];
        self.key.clear();
        self.key.extend_from_slice(&key_head);
        self.key.extend_from_slice(raw.frames);
        self.key.extend(python_words(raw.python));
        // One pass over the whole key: hashing it word by word cost more
        // than the rest of the event.
        let hash = self.hasher.hash_one(self.key.as_slice());
        let process = self.processes.entry(pid).or_default();
        if let Some(known) = process
            .raw
            .get(&hash)
            .and_then(|bucket| bucket.iter().find(|k| *k.key == *self.key))
        {
            return known.id;
        }
        let mut certainty = Certainty::Certain;
        let stack = self.check(registry, pid, raw, &mut certainty);
        let id = self.add(pid, stack);
        // A frame not found in a map older than the event may be found
        // later: such a stack is checked again next time.
        let process = self.processes.entry(pid).or_default();
        if certainty == Certainty::Certain {
            if process.raw_count >= MAX_RAW_PER_PROCESS {
                process.raw.clear();
                process.raw_count = 0;
            }
            let key: Box<[u64]> = self.key.as_slice().into();
            process
                .raw
                .entry(hash)
                .or_default()
                .push(RawKey { key, id });
            process.raw_count += 1;
        }
        id
    }

    /// The id of `stack`, new if it is; past `MAX_STACKS_PER_PROCESS` new
    /// ones of `pid`, the id of its function's `Cut::OverLimit` stack.
    fn add(&mut self, pid: Pid, stack: Stack) -> StackId {
        if let Some(&id) = self.ids.get(&stack) {
            return id;
        }
        let process = self.processes.entry(pid).or_default();
        let stack = if process.new_stacks >= MAX_STACKS_PER_PROCESS {
            self.over_limit += 1;
            let over = Stack {
                func: stack.func,
                frames: Vec::new(),
                cut: Some(Cut::OverLimit),
                python: Vec::new(),
                python_cut: None,
            };
            if let Some(&id) = self.ids.get(&over) {
                return id;
            }
            over
        } else {
            process.new_stacks += 1;
            stack
        };
        let id = StackId(self.stacks.len() as u32);
        self.ids.insert(stack.clone(), id);
        self.stacks.push(stack);
        id
    }

    fn check(
        &mut self,
        registry: &mut Registry,
        pid: Pid,
        raw: RawStack<'_>,
        certainty: &mut Certainty,
    ) -> Stack {
        let mut stack = check_native(registry, pid, raw, certainty);
        for frame in raw.python {
            if let Some(id) = self.python_frame(registry, pid, frame) {
                stack.python.push(id);
            }
        }
        stack.python_cut = if raw.python_lost {
            Some(Cut::Lost)
        } else {
            raw.python_full.then_some(Cut::DepthLimit)
        };
        stack
    }

    /// The location of a Python frame, resolved once per (process, code
    /// object, instruction); `None` for the interpreter's hidden frames.
    fn python_frame(
        &mut self,
        registry: &mut Registry,
        pid: Pid,
        frame: &PyFrame,
    ) -> Option<PyLocId> {
        let key = PyFrameKey {
            code: frame.code,
            instr: frame.instr,
            firstlineno: frame.firstlineno,
        };
        let process = self.processes.entry(pid).or_default();
        if let Some(known) = process.py_frames.get(&key) {
            return *known;
        }
        let location = registry.resolve_python(pid, frame);
        let process = self.processes.entry(pid).or_default();
        let id = location.map(|mut location| {
            if let Some(&id) = self.py_ids.get(&location) {
                return id;
            }
            if process.new_locations >= MAX_LOCATIONS_PER_PROCESS {
                // One unknown frame for all of them, that says why.
                location = PyLocation {
                    module: location.module,
                    function: crate::frame::Frame::UNKNOWN_FUNCTION.to_owned(),
                    file: None,
                    line: None,
                    unknown: Some(format!(
                        "its process ran more than {MAX_LOCATIONS_PER_PROCESS} distinct Python lines: not kept"
                    )),
                };
                if let Some(&id) = self.py_ids.get(&location) {
                    return id;
                }
            } else {
                process.new_locations += 1;
            }
            let id = PyLocId(self.py_locations.len() as u32);
            self.py_ids.insert(location.clone(), id);
            self.py_locations.push(location);
            id
        });
        if process.py_frames.len() >= MAX_RAW_PER_PROCESS {
            process.py_frames.clear();
        }
        process.py_frames.insert(key, id);
        id
    }
}

fn check_native(
    registry: &mut Registry,
    pid: Pid,
    raw: RawStack<'_>,
    certainty: &mut Certainty,
) -> Stack {
    let cut_short = |cut| Stack {
        func: raw.func,
        frames: Vec::new(),
        cut: Some(cut),
        python: Vec::new(),
        python_cut: None,
    };
    if raw.lost {
        return cut_short(Cut::Lost);
    }
    let Some((&probed, walked)) = raw.frames.split_first() else {
        return cut_short(Cut::Lost);
    };
    let mut frames = Vec::with_capacity(raw.frames.len() + 1);
    let mut cut = raw.full.then_some(Cut::DepthLimit);
    let mut locate = |registry: &mut Registry, addr, reread| {
        let found = registry.locate(pid, raw.ts_ns, addr, reread);
        if found.certainty == Certainty::MayChange {
            *certainty = Certainty::MayChange;
        }
        found.frame
    };
    frames.push(locate(registry, probed, true));
    // Without the caller there is a gap right away: nothing walked can follow.
    let mut complete = raw.caller.is_some();
    let returns = raw
        .caller
        .map(|caller| std::iter::once(caller).chain(walked.iter().copied()));
    for (i, addr) in returns.into_iter().flatten().enumerate() {
        // The probed function and its caller are code for sure; a walked
        // frame in no mapping is most likely garbage, not a new library.
        let frame = locate(registry, addr, i == 0);
        if !registry.is_return_address(frame) {
            // Frames past a gap would read as its callers: stop here.
            complete = false;
            break;
        }
        frames.push(frame);
    }
    if !complete {
        cut = Some(Cut::NotAReturnAddress);
    }
    Stack {
        func: raw.func,
        frames,
        cut,
        python: Vec::new(),
        python_cut: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::monotonic_ns;

    #[test]
    fn interns_stacks_of_this_process() {
        let pid = std::process::id();
        let malloc = libc::malloc as *const () as u64;
        let raw = RawStack {
            ts_ns: monotonic_ns(),
            func: tracer_common::func::MALLOC,
            frames: &[malloc],
            caller: None,
            lost: false,
            full: false,
            python: &[],
            python_full: false,
            python_lost: false,
        };
        let mut registry = Registry::default();
        let mut table = StackTable::default();
        let id = table.intern(&mut registry, pid, raw);
        let stack = table.get(id).clone();
        assert_eq!(stack.cut, Some(Cut::NotAReturnAddress), "no caller");
        let NativeFrame::Module { module, .. } = stack.frames[0] else {
            panic!("malloc not in a file mapping: {stack:?}");
        };
        let path = &registry.modules().get(module).path;
        assert!(path.contains("libc"), "{path}");
        assert_eq!(
            table.intern(&mut registry, pid, raw),
            id,
            "same raw stack, same id"
        );
        // After an exec the raw stack is checked again, and reads the same here.
        registry.exec(pid);
        table.exec(pid);
        assert_eq!(table.intern(&mut registry, pid, raw), id);
        let lost = RawStack { lost: true, ..raw };
        let lost = table.intern(&mut registry, pid, lost);
        assert_eq!(table.get(lost).cut, Some(Cut::Lost));
    }
}
