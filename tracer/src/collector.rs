//! From ring buffer records to heap events: parses each record, interns its
//! stack, and applies it to the heap model.

use tracer_common::{
    AllocRecord, CodeRecord, FreeRecord, Header, MAX_PY_DEPTH, MAX_STACK_DEPTH, PyFrame, exec,
    exiting, flags, func, kind,
};

use crate::{
    heap::{ExitReason, HeapEvent, HeapModel},
    sampling::Sampling,
    stacks::{RawStack, StackTable},
};

/// Something the session must act on besides the heap model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The process replaced its image: its new libraries need probes.
    /// `traced_by_name`: with `--all`, the kernel started tracing it.
    Exec { pid: u32, traced_by_name: bool },
    /// The process began to exit.
    Exiting(u32),
}

#[derive(Default)]
pub struct Collector {
    pub stacks: StackTable,
    pub heap: HeapModel,
    /// Records too short for their kind: a tracer bug if ever non-zero.
    pub malformed: u64,
    /// With `Some`, every event applied is also kept here for a capture.
    pub journal: Option<Vec<HeapEvent>>,
    /// `--sample-bytes`: allocation records are samples, weighted here.
    pub sampling: Option<Sampling>,
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
    /// `journal`: keep the events applied, for a capture.
    pub fn new(journal: bool, sampling: Option<Sampling>) -> Self {
        Self {
            journal: journal.then(Vec::new),
            sampling,
            ..Self::default()
        }
    }

    pub fn apply(&mut self, bytes: &[u8]) -> Option<Notice> {
        let Some(header) = read::<Header>(bytes) else {
            self.malformed += 1;
            return None;
        };
        let pid = header.pid;
        let event = match header.kind {
            kind::ALLOC => self.alloc_event(bytes)?,
            kind::FREE | kind::MUNMAP => {
                let Some(rec) = read::<FreeRecord>(bytes) else {
                    self.malformed += 1;
                    return None;
                };
                if header.kind == kind::FREE {
                    HeapEvent::Free {
                        pid,
                        tid: header.tid,
                        ts_ns: header.ts_ns,
                        addr: rec.addr,
                    }
                } else {
                    HeapEvent::Unmap {
                        pid,
                        tid: header.tid,
                        ts_ns: header.ts_ns,
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
                // Its libraries may be unmapped soon: keep its map as it is now.
                self.stacks.refresh_maps(pid);
                self.record(HeapEvent::Exiting {
                    pid,
                    ts_ns: header.ts_ns,
                    reason,
                });
                return Some(Notice::Exiting(pid));
            }
            kind::CODE => {
                match read::<CodeRecord>(bytes) {
                    Some(rec) => self.stacks.python.learn(pid, &rec),
                    None => self.malformed += 1,
                }
                return None;
            }
            kind::EXEC => {
                self.stacks.exec(pid);
                return Some(Notice::Exec {
                    pid,
                    traced_by_name: header.flags & exec::TRACED_BY_NAME != 0,
                });
            }
            _ => {
                self.malformed += 1;
                return None;
            }
        };
        self.record(event);
        None
    }

    fn record(&mut self, event: HeapEvent) {
        self.heap.apply(&event);
        if let Some(journal) = &mut self.journal {
            journal.push(event);
        }
    }

    fn alloc_event(&mut self, bytes: &[u8]) -> Option<HeapEvent> {
        let fixed = bytes.get(..AllocRecord::FIXED_LEN);
        // Read the fixed part through a zero-padded record: the stack array
        // is only partly sent.
        let Some(fixed) = fixed else {
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
        let stack = self.stacks.intern(
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
        let (pid, tid, ts_ns) = (h.pid, h.tid, h.ts_ns);
        let (size, count) = match self.sampling {
            Some(s) if func::is_sampled(rec.func) => s.weigh(rec.size, rec.addr),
            _ => (rec.size, 1),
        };
        Some(match rec.func {
            func::REALLOC | func::REALLOCARRAY | func::PYOBJECT_REALLOC | func::PYMEM_REALLOC
                if rec.old_addr != 0 =>
            {
                HeapEvent::Realloc {
                    pid,
                    tid,
                    ts_ns,
                    old_addr: rec.old_addr,
                    addr: rec.addr,
                    size,
                    count,
                    stack,
                }
            }
            func::MMAP => HeapEvent::Map {
                pid,
                tid,
                ts_ns,
                addr: rec.addr,
                len: rec.size,
                stack,
            },
            func::MREMAP => HeapEvent::Remap {
                pid,
                tid,
                ts_ns,
                old_addr: rec.old_addr,
                old_len: rec.old_len,
                addr: rec.addr,
                len: rec.size,
                stack,
            },
            _ => HeapEvent::Alloc {
                pid,
                tid,
                ts_ns,
                addr: rec.addr,
                size,
                count,
                stack,
            },
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
            stack_len: 0,
            py_len: 0,
            stack: [0; MAX_STACK_DEPTH],
        }
    }

    #[test]
    fn alloc_realloc_free_round_trip() {
        let mut c = Collector::default();
        let a = alloc_record(func::MALLOC, 0x1000, 64, 0);
        assert_eq!(c.apply(&bytes_of(&a, AllocRecord::wire_len(0, 0))), None);
        let r = alloc_record(func::REALLOC, 0x2000, 128, 0x1000);
        c.apply(&bytes_of(&r, AllocRecord::wire_len(0, 0)));
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
        c.apply(&bytes_of(&f, size_of::<FreeRecord>()));
        let t = *c.heap.process(9).expect("pid 9").totals();
        assert_eq!(
            (t.allocs, t.frees, t.bytes_allocated, t.live_bytes),
            (2, 2, 192, 0)
        );
        assert_eq!(c.malformed, 0);
    }

    #[test]
    fn short_and_unknown_records_are_counted() {
        let mut c = Collector::default();
        c.apply(&[1, 2, 3]);
        let mut a = alloc_record(func::MALLOC, 0x1000, 64, 0);
        a.stack_len = 3;
        // Says 3 frames, carries none.
        c.apply(&bytes_of(&a, AllocRecord::wire_len(0, 0)));
        let h = Header {
            kind: 99,
            ..Header::default()
        };
        c.apply(&bytes_of(&h, size_of::<Header>()));
        assert_eq!(c.malformed, 3);
    }

    #[test]
    fn markers_become_notices() {
        let mut c = Collector::default();
        let exec = Header {
            kind: kind::EXEC,
            pid: 4_000_000,
            ..Header::default()
        };
        assert_eq!(
            c.apply(&bytes_of(&exec, 24)),
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
            c.apply(&bytes_of(&exit, 24)),
            Some(Notice::Exiting(4_000_000))
        );
        assert!(
            c.heap
                .process(4_000_000)
                .expect("pid")
                .exit_snapshot()
                .is_some()
        );
    }
}
