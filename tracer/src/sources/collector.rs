//! From ring buffer records to heap events: parses each record, interns its
//! stack in the model, applies it to the heap model, and keeps the events
//! applied for the sinks.

use tracer_common::{
    AllocRecord, CodeRecord, ForkRecord, FreeRecord, Header, MAX_PY_DEPTH, MAX_STACK_DEPTH,
    PyFrame, exec, exiting, flags, fork, func, kind,
};

use crate::{
    event::{Block, EventKind, ExitReason, HeapEvent, Pid},
    model::{Model, stacks::RawStack},
    sampling::Sampling,
};

/// Something the recording must act on besides the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The process replaced its image: its new libraries need probes.
    /// `traced_by_name`: with `--all`, the kernel started tracing it.
    Exec { pid: Pid, traced_by_name: bool },
    /// The process began to exit.
    Exiting(Pid),
    /// The process's last thread exited, after all its records: the
    /// kernel traces it no more, and its pid may be reused.
    Exited(Pid),
    /// A traced process forked a child.
    Fork(Fork),
}

/// A child of a traced process, traced from its first instruction, or
/// recorded only once it execs (`until_exec`): it `shares_memory` with its
/// parent, or its parent ran no CPython the kernel knew of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fork {
    pub child: Pid,
    pub parent: Pid,
    pub until_exec: bool,
    pub shares_memory: bool,
}

#[derive(Default)]
pub struct Collector {
    /// Records too short for their kind: a tracer bug if ever non-zero.
    malformed: u64,
    /// Events applied since `take_events`.
    applied: Vec<HeapEvent>,
    /// `--sample-bytes`: allocation records are samples, weighted here.
    sampling: Option<Sampling>,
    frames: Vec<u64>,
    python: Vec<PyFrame>,
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked; T is plain old data from tracer-common.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

impl Collector {
    pub fn new(sampling: Option<Sampling>) -> Self {
        Self {
            sampling,
            ..Self::default()
        }
    }

    /// Records that could not be parsed so far.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// The events applied to the model since the last call, in order.
    pub fn take_events(&mut self) -> Vec<HeapEvent> {
        std::mem::take(&mut self.applied)
    }

    /// Applies one ring buffer record to `model`.
    pub fn apply(&mut self, bytes: &[u8], model: &mut Model) -> Option<Notice> {
        let Some(header) = read::<Header>(bytes) else {
            self.malformed += 1;
            return None;
        };
        let pid = header.pid;
        let kind = match header.kind {
            kind::ALLOC => self.alloc_event(bytes, model)?,
            kind::FREE | kind::MUNMAP => {
                let Some(rec) = read::<FreeRecord>(bytes) else {
                    self.malformed += 1;
                    return None;
                };
                if header.kind == kind::FREE {
                    EventKind::Free { addr: rec.addr }
                } else {
                    EventKind::Unmap {
                        addr: rec.addr,
                        len: rec.len,
                    }
                }
            }
            kind::EXITING => {
                let reason = if header.flags == exiting::PY_FINALIZE {
                    ExitReason::PyFinalize
                } else {
                    ExitReason::LibcExit
                };
                // Its libraries may be unmapped soon: keep its map as it is
                // now. Not for a process never adopted (under `--match`,
                // every Python program on the host that does not match):
                // its files would be opened for nothing.
                if model.has_maps(pid) {
                    model.refresh_maps(pid);
                }
                self.record(model, &header, EventKind::Exiting { reason });
                return Some(Notice::Exiting(pid));
            }
            kind::CODE => {
                match read::<CodeRecord>(bytes) {
                    Some(rec) => model.learn_code(pid, &rec),
                    None => self.malformed += 1,
                }
                return None;
            }
            kind::EXEC => {
                let traced_by_name = header.flags & exec::TRACED_BY_NAME != 0;
                // `--all` reports every exec on the host: only a process the
                // kernel traces has a heap and a map to start again.
                if traced_by_name || header.flags & exec::TRACED != 0 {
                    model.exec(pid);
                    self.record(model, &header, EventKind::Exec);
                }
                return Some(Notice::Exec {
                    pid,
                    traced_by_name,
                });
            }
            kind::EXIT => return Some(Notice::Exited(pid)),
            kind::FORK => {
                let Some(rec) = read::<ForkRecord>(bytes) else {
                    self.malformed += 1;
                    return None;
                };
                let until_exec = header.flags & fork::UNTIL_EXEC != 0;
                // A child recorded only once it execs has no heap of its
                // own to inherit: a new image replaces it.
                if !until_exec {
                    model.fork(pid, rec.parent);
                    let parent = rec.parent;
                    self.record(model, &header, EventKind::Fork { parent });
                }
                return Some(Notice::Fork(Fork {
                    child: pid,
                    parent: rec.parent,
                    until_exec,
                    shares_memory: header.flags & fork::SHARES_MEMORY != 0,
                }));
            }
            _ => {
                self.malformed += 1;
                return None;
            }
        };
        self.record(model, &header, kind);
        None
    }

    fn record(&mut self, model: &mut Model, header: &Header, kind: EventKind) {
        let event = HeapEvent {
            pid: header.pid,
            tid: header.tid,
            ts_ns: header.ts_ns,
            kind,
        };
        model.apply(&event);
        self.applied.push(event);
    }

    fn alloc_event(&mut self, bytes: &[u8], model: &mut Model) -> Option<EventKind> {
        // Read the fixed part through a zero-padded record: the stack array
        // is only partly sent.
        let Some(fixed) = bytes.get(..AllocRecord::FIXED_LEN) else {
            self.malformed += 1;
            return None;
        };
        let mut buf = [0u8; size_of::<AllocRecord>()];
        buf[..fixed.len()].copy_from_slice(fixed);
        let rec = read::<AllocRecord>(&buf)?;
        let n = (rec.stack_len as usize).min(MAX_STACK_DEPTH);
        let py = (rec.py_len as usize).min(MAX_PY_DEPTH);
        let native_end = AllocRecord::wire_len(n, 0);
        let (Some(frame_bytes), Some(py_bytes)) = (
            bytes.get(AllocRecord::FIXED_LEN..native_end),
            bytes.get(native_end..AllocRecord::wire_len(n, py)),
        ) else {
            self.malformed += 1;
            return None;
        };
        self.frames.clear();
        self.frames
            .extend(frame_bytes.chunks_exact(8).filter_map(read::<u64>));
        self.python.clear();
        self.python.extend(
            py_bytes
                .chunks_exact(size_of::<PyFrame>())
                .filter_map(read::<PyFrame>),
        );
        let h = rec.header;
        let stack = model.intern(
            h.pid,
            RawStack {
                ts_ns: h.ts_ns,
                func: rec.func,
                frames: &self.frames,
                caller: (h.flags & flags::CALLER_LOST == 0).then_some(rec.caller),
                lost: h.flags & flags::STACK_LOST != 0,
                full: h.flags & flags::STACK_FULL != 0,
                python: &self.python,
                python_full: h.flags & flags::PY_TRUNCATED != 0,
                python_lost: h.flags & flags::PY_LOST != 0,
            },
        );
        let weighed = match self.sampling {
            Some(s) if func::is_sampled(rec.func) => s.weigh(rec.size, rec.addr),
            _ => crate::sampling::Weight {
                bytes: rec.size,
                count: 1,
            },
        };
        let block = Block {
            addr: rec.addr,
            size: weighed.bytes,
            count: weighed.count,
            stack,
        };
        Some(match rec.func {
            func::MMAP => EventKind::Map {
                addr: rec.addr,
                len: rec.size,
                stack,
                thread_stack: h.flags & flags::THREAD_STACK != 0,
            },
            func::MREMAP => EventKind::Remap {
                old_addr: rec.old_addr,
                old_len: rec.old_len,
                addr: rec.addr,
                len: rec.size,
                stack,
            },
            // Only the reallocating functions' entries (the kernel's entry
            // table) give a call an old pointer.
            _ if rec.old_addr != 0 => EventKind::Realloc {
                old_addr: rec.old_addr,
                block,
            },
            _ => EventKind::Alloc(block),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Copy>(value: &T, len: usize) -> Vec<u8> {
        // SAFETY: T is plain old data; len <= size_of::<T>().
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), len) }.to_vec()
    }

    fn alloc_record(func: u32, addr: u64, size: u64, old_addr: u64) -> AllocRecord {
        AllocRecord {
            header: Header {
                kind: kind::ALLOC,
                pid: 9,
                tid: 9,
                flags: flags::CALLER_LOST,
                ts_ns: 5,
            },
            func,
            nesting: 0,
            size,
            addr,
            old_addr,
            old_len: 0,
            out_ptr: 0,
            caller: 0,
            entry_sp: 0,
            stack_len: 0,
            py_len: 0,
            stack: [0; MAX_STACK_DEPTH],
        }
    }

    #[test]
    fn alloc_realloc_free_round_trip() {
        let mut c = Collector::default();
        let mut m = Model::default();
        let a = alloc_record(func::MALLOC, 0x1000, 64, 0);
        assert_eq!(
            c.apply(&bytes_of(&a, AllocRecord::wire_len(0, 0)), &mut m),
            None
        );
        let r = alloc_record(func::REALLOC, 0x2000, 128, 0x1000);
        c.apply(&bytes_of(&r, AllocRecord::wire_len(0, 0)), &mut m);
        let f = FreeRecord {
            header: Header {
                kind: kind::FREE,
                pid: 9,
                tid: 9,
                flags: 0,
                ts_ns: 6,
            },
            addr: 0x2000,
            len: 0,
        };
        c.apply(&bytes_of(&f, size_of::<FreeRecord>()), &mut m);
        let t = *m.heap().process(9).expect("pid 9").totals();
        assert_eq!(
            (t.allocs, t.frees, t.bytes_allocated, t.live_bytes),
            (2, 2, 192, 0)
        );
        assert_eq!(c.malformed(), 0);
        assert_eq!(c.take_events().len(), 3, "kept for the sinks");
        assert!(c.take_events().is_empty());
    }

    #[test]
    fn short_and_unknown_records_are_counted() {
        let mut c = Collector::default();
        let mut m = Model::default();
        c.apply(&[1, 2, 3], &mut m);
        let mut a = alloc_record(func::MALLOC, 0x1000, 64, 0);
        a.stack_len = 3;
        // Says 3 frames, carries none.
        c.apply(&bytes_of(&a, AllocRecord::wire_len(0, 0)), &mut m);
        let h = Header {
            kind: 99,
            ..Header::default()
        };
        c.apply(&bytes_of(&h, size_of::<Header>()), &mut m);
        assert_eq!(c.malformed(), 3);
    }

    #[test]
    fn a_fork_recorded_only_once_it_execs_inherits_no_heap() {
        let fork_of = |child: u32, flags: u32| ForkRecord {
            header: Header {
                kind: kind::FORK,
                pid: child,
                tid: child,
                flags,
                ts_ns: 7,
            },
            parent: 9,
            _pad: 0,
        };
        let mut c = Collector::default();
        let mut m = Model::default();
        let a = alloc_record(func::MALLOC, 0x1000, 64, 0);
        c.apply(&bytes_of(&a, AllocRecord::wire_len(0, 0)), &mut m);
        // A worker: its parent's block is its own too.
        let worker = fork_of(10, 0);
        assert_eq!(
            c.apply(&bytes_of(&worker, size_of::<ForkRecord>()), &mut m),
            Some(Notice::Fork(Fork {
                child: 10,
                parent: 9,
                until_exec: false,
                shares_memory: false
            }))
        );
        assert_eq!(m.heap().process(10).expect("pid 10").inherited().bytes, 64);
        // A shell's subshell, and a vfork child: nothing until they exec.
        for (child, flags, shares_memory) in [
            (11, fork::UNTIL_EXEC, false),
            (12, fork::UNTIL_EXEC | fork::SHARES_MEMORY, true),
        ] {
            let rec = fork_of(child, flags);
            assert_eq!(
                c.apply(&bytes_of(&rec, size_of::<ForkRecord>()), &mut m),
                Some(Notice::Fork(Fork {
                    child,
                    parent: 9,
                    until_exec: true,
                    shares_memory
                }))
            );
            assert!(m.heap().process(child).is_none(), "pid {child}");
        }
        assert_eq!(c.malformed(), 0);
    }

    #[test]
    fn markers_become_notices() {
        let mut c = Collector::default();
        let mut m = Model::default();
        let exec = Header {
            kind: kind::EXEC,
            pid: 4_000_000,
            flags: exec::TRACED,
            ..Header::default()
        };
        assert_eq!(
            c.apply(&bytes_of(&exec, 24), &mut m),
            Some(Notice::Exec {
                pid: 4_000_000,
                traced_by_name: false
            })
        );
        let exit = Header {
            kind: kind::EXITING,
            pid: 4_000_000,
            flags: exiting::PY_FINALIZE,
            ..Header::default()
        };
        assert_eq!(
            c.apply(&bytes_of(&exit, 24), &mut m),
            Some(Notice::Exiting(4_000_000))
        );
        assert!(
            m.heap()
                .process(4_000_000)
                .expect("pid")
                .exit_snapshot()
                .is_some()
        );
        let gone = Header {
            kind: kind::EXIT,
            pid: 4_000_000,
            ..Header::default()
        };
        assert_eq!(
            c.apply(&bytes_of(&gone, 24), &mut m),
            Some(Notice::Exited(4_000_000))
        );
    }

    #[test]
    fn execs_of_untraced_processes_touch_nothing() {
        let mut c = Collector::default();
        let mut m = Model::default();
        let exec = Header {
            kind: kind::EXEC,
            pid: std::process::id(),
            ..Header::default()
        };
        assert!(matches!(
            c.apply(&bytes_of(&exec, 24), &mut m),
            Some(Notice::Exec {
                traced_by_name: false,
                ..
            })
        ));
        assert!(c.take_events().is_empty());
        assert_eq!(m.modules().open_files(), 0, "no file opened");
        assert!(m.heap().process(std::process::id()).is_none());
    }
}
