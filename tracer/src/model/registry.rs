//! What is known of each traced process's address space: its memory map
//! (read again after an exec, or when an address falls outside it), the
//! files its code comes from (`Modules`), and its CPython interpreter.

use std::collections::HashMap;

use tracer_common::{CodeRecord, PyFrame};

use super::modules::{ModuleId, Modules};
use crate::{
    clock::monotonic_ns,
    event::Pid,
    proc_maps::ProcessMaps,
    python::{Interpreter, PyLocation, Resolver},
};

/// A frame of a native stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NativeFrame {
    /// An address in a mapped file.
    Module { module: ModuleId, file_offset: u64 },
    /// An address outside any file mapping known for the process (JIT code,
    /// or a library mapped and unmapped between two reads of the map).
    Unmapped { addr: u64 },
}

/// An address found in no mapping makes the map be read again if it was
/// read before the event (a library mapped since), but at most this often:
/// garbage frame-pointer values are in no mapping either.
const MAPS_REREAD_NS: u64 = 1_000_000;

/// What is known of one process's address space.
#[derive(Clone, Default)]
struct Known {
    /// The last map read, and when (CLOCK_MONOTONIC ns).
    maps: Option<ReadMaps>,
    /// Execs seen: the same address means another thing after each.
    generation: u64,
}

#[derive(Clone)]
struct ReadMaps {
    maps: ProcessMaps,
    at_ns: u64,
}

/// A frame found in a process's map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    pub frame: NativeFrame,
    pub certainty: Certainty,
}

/// Whether a located frame can be trusted to stay what it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Certainty {
    Certain,
    /// Found in no mapping of a map read before the event, and the map was
    /// read too recently to read it again: it may be found later.
    MayChange,
}

#[derive(Default)]
pub struct Registry {
    processes: HashMap<Pid, Known>,
    modules: Modules,
    python: Resolver,
}

impl Registry {
    /// The files frames point into, read-only (for the symbolizer).
    pub fn modules(&self) -> &Modules {
        &self.modules
    }

    /// Reads `pid`'s memory map now and opens its executable files, which
    /// a process that exits soon would take with it (its `/proc/PID/root`).
    /// A process that is gone keeps its last map.
    pub fn refresh_maps(&mut self, pid: Pid) {
        if let Ok(maps) = ProcessMaps::read(pid) {
            for m in maps.iter().filter(|m| m.executable && m.is_file()) {
                self.modules.get_or_open(pid, m);
            }
            self.processes.entry(pid).or_default().maps = Some(ReadMaps {
                maps,
                at_ns: monotonic_ns(),
            });
        }
    }

    /// Whether `pid`'s map was read (it was adopted, or forked from a
    /// process that was).
    pub fn has_maps(&self, pid: Pid) -> bool {
        self.processes.get(&pid).is_some_and(|k| k.maps.is_some())
    }

    /// `pid` replaced its image: its earlier map and interpreter mean
    /// nothing now. With `--all` every exec on the host is reported; one of
    /// a process tracer knows nothing of has nothing to replace, and opening
    /// its files would keep every program the host ever ran open (adopting
    /// it reads its map then).
    pub fn exec(&mut self, pid: Pid) {
        let Some(known) = self.processes.get_mut(&pid) else {
            self.python.forget(pid);
            return;
        };
        known.generation += 1;
        known.maps = None;
        self.python.forget(pid);
        self.refresh_maps(pid);
    }

    /// `pid` exited (or was let go): nothing of it is kept. Its files stay
    /// in `Modules`, which stacks already recorded point into.
    pub fn forget(&mut self, pid: Pid) {
        self.processes.remove(&pid);
        self.python.forget(pid);
    }

    /// Processes whose address space is known.
    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    /// Execs of `pid` seen so far.
    pub fn generation(&self, pid: Pid) -> u64 {
        self.processes.get(&pid).map_or(0, |k| k.generation)
    }

    /// `child` was forked from `parent`: the same map and interpreter.
    pub fn fork(&mut self, child: Pid, parent: Pid) {
        if let Some(known) = self.processes.get(&parent).cloned() {
            self.processes.insert(child, known);
        }
        if let Some(interpreter) = self.python.interpreter(parent).cloned() {
            self.python.add(child, interpreter);
        }
    }

    pub fn add_interpreter(&mut self, pid: Pid, interpreter: Interpreter) {
        self.python.add(pid, interpreter);
    }

    pub fn interpreter(&self, pid: Pid) -> Option<&Interpreter> {
        self.python.interpreter(pid)
    }

    /// A code object the kernel copied while `pid` ran it.
    pub fn learn_code(&mut self, pid: Pid, rec: &CodeRecord) {
        self.python.learn(pid, rec);
    }

    /// Where a Python frame of `pid` is; `None` for the interpreter's own
    /// hidden frames.
    pub fn resolve_python(&mut self, pid: Pid, frame: &PyFrame) -> Option<PyLocation> {
        self.python.resolve(pid, frame)
    }

    /// The frame at `addr` in `pid`, as of an event at `ts_ns`. With
    /// `reread`, an address in no mapping of a map read before the event
    /// makes the map be read again (rate-limited: when it is not, the
    /// answer may change).
    pub fn locate(&mut self, pid: Pid, ts_ns: u64, addr: u64, reread: bool) -> Located {
        let mut certainty = Certainty::Certain;
        let found = self
            .processes
            .get(&pid)
            .and_then(|k| k.maps.as_ref())
            .map(|r| (r.maps.find(addr).is_some(), r.at_ns));
        match found {
            None => self.refresh_maps(pid),
            Some((false, at_ns)) if reread && at_ns < ts_ns => {
                if monotonic_ns().saturating_sub(at_ns) >= MAPS_REREAD_NS {
                    self.refresh_maps(pid);
                } else {
                    certainty = Certainty::MayChange;
                }
            }
            _ => {}
        }
        let Some(read) = self.processes.get(&pid).and_then(|k| k.maps.as_ref()) else {
            return Located {
                frame: NativeFrame::Unmapped { addr },
                certainty,
            };
        };
        let frame = match read.maps.find(addr) {
            Some(m) if m.is_file() => NativeFrame::Module {
                module: self.modules.get_or_open(pid, m),
                file_offset: m.file_offset(addr),
            },
            _ => NativeFrame::Unmapped { addr },
        };
        Located { frame, certainty }
    }

    /// Whether `frame` is right after a call instruction: a return address.
    pub fn is_return_address(&mut self, frame: NativeFrame) -> bool {
        match frame {
            NativeFrame::Module {
                module,
                file_offset,
            } => self.modules.follows_call(module, file_offset),
            NativeFrame::Unmapped { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_of_an_unknown_process_opens_nothing() {
        let me = std::process::id();
        let mut r = Registry::default();
        r.exec(me);
        assert_eq!(r.generation(me), 0);
        assert!(r.processes.is_empty());
        assert_eq!(
            r.modules.opened(),
            0,
            "files of a process tracer does not know"
        );
        // A known one is read again, and its generation counts the exec.
        r.refresh_maps(me);
        let opened = r.modules.opened();
        assert!(opened > 0, "this test's own executable files");
        r.exec(me);
        assert_eq!(r.generation(me), 1);
        assert!(r.processes[&me].maps.is_some());
        assert_eq!(r.modules.opened(), opened, "each file is opened once");
    }
}
