//! Reports: pure functions of the heap model (which stacks leak, which
//! allocate most), then rendered as text, JSON and folded stacks.

pub mod folded;
pub mod json;
pub mod text;

use std::collections::HashMap;

use crate::{
    heap::{ExitReason, HeapModel, Pid},
    stacks::StackId,
    symbolize::{Frame, SymbolizedStack},
};

/// Bytes and allocations of one (process, stack).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    pub pid: Pid,
    pub stack: StackId,
    pub bytes: u64,
    pub count: u64,
}

/// Sorts by bytes, then count, then pid and stack for a stable order.
fn sorted(mut groups: Vec<Group>) -> Vec<Group> {
    groups.sort_by(|a, b| {
        (b.bytes, b.count, a.pid, a.stack).cmp(&(a.bytes, a.count, b.pid, b.stack))
    });
    groups
}

/// Allocations still live in each process's leak set (see
/// `ProcessHeap::leak_set`) that were at least `min_age_ns` old then, by stack.
/// `end_ts_ns` is "then" for processes that did not exit.
pub fn leaks(heap: &HeapModel, end_ts_ns: u64, min_age_ns: u64) -> Vec<Group> {
    let mut groups = Vec::new();
    for (pid, process) in heap.processes() {
        let as_of = process.exit_snapshot().map_or(end_ts_ns, |s| s.ts_ns);
        let mut by_stack: HashMap<StackId, (u64, u64)> = HashMap::new();
        for a in process.leak_set() {
            if as_of.saturating_sub(a.ts_ns) >= min_age_ns {
                let e = by_stack.entry(a.stack).or_default();
                e.0 += a.size;
                e.1 += 1;
            }
        }
        groups.extend(by_stack.into_iter().map(|(stack, (bytes, count))| Group {
            pid,
            stack,
            bytes,
            count,
        }));
    }
    sorted(groups)
}

/// Bytes and allocations made per stack over the whole recording.
pub fn hotspots(heap: &HeapModel) -> Vec<Group> {
    let groups = heap
        .processes()
        .flat_map(|(pid, process)| {
            process.stacks().iter().map(move |(stack, s)| Group {
                pid,
                stack: *stack,
                bytes: s.alloc_bytes,
                count: s.alloc_count,
            })
        })
        .filter(|g| g.count > 0)
        .collect();
    sorted(groups)
}

/// A report row: a group with its symbolized stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub pid: Pid,
    pub bytes: u64,
    pub count: u64,
    pub stack: Vec<Frame>,
    pub truncated: bool,
}

/// What a report says about one traced process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessInfo {
    pub pid: Pid,
    pub command: String,
    /// When its leak set was taken, if it began to exit while recorded.
    pub exit: Option<(ExitReason, f64)>,
    /// The exit status of a launched command.
    pub exit_status: Option<String>,
    /// "CPython 3.11 (/usr/bin/python3.11)" if it runs one.
    pub python: Option<String>,
    /// What tracer sees of its allocations (object allocator coverage).
    pub notes: Vec<String>,
}

/// Counters of what could not be recorded or matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub events: u64,
    pub lost_events: u64,
    pub lost_stacks: u64,
    pub unmatched_frees: u64,
    pub implied_frees: u64,
    pub unmatched_unmaps: u64,
    pub in_flight_full: u64,
    pub nested_calls: u64,
    pub stale_in_flight: u64,
    pub unmatched_returns: u64,
    pub malformed_records: u64,
    pub truncated_stacks: u64,
    /// Python code objects the kernel could not copy (ring buffer full).
    pub lost_code: u64,
}

/// Totals over every traced process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub allocs: u64,
    pub frees: u64,
    pub bytes_allocated: u64,
    pub bytes_freed: u64,
    /// Bytes in the leak sets (before `--min-age`).
    pub live_bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub duration_s: f64,
    pub processes: Vec<ProcessInfo>,
    pub totals: Totals,
    pub counters: Counters,
    pub min_age_s: f64,
    /// Every leaking stack, largest first.
    pub leaks: Vec<Entry>,
    /// Every allocating stack, largest first.
    pub hotspots: Vec<Entry>,
}

/// Totals over every process of the heap model (the leak sets' bytes as
/// live bytes), and its counts of unmatched frees into `counters`.
pub fn summarize(heap: &HeapModel, counters: &mut Counters) -> Totals {
    let mut t = Totals::default();
    for (_, p) in heap.processes() {
        let pt = p.totals();
        t.allocs += pt.allocs;
        t.frees += pt.frees;
        t.bytes_allocated += pt.bytes_allocated;
        t.bytes_freed += pt.bytes_freed;
        t.live_bytes += p.leak_set().iter().map(|a| a.size).sum::<u64>();
        counters.unmatched_frees += pt.unmatched_frees;
        counters.implied_frees += pt.implied_frees;
        counters.unmatched_unmaps += pt.unmatched_unmaps;
    }
    t
}

/// Attaches symbolized stacks to groups, merging groups of one process
/// whose stacks read the same (distinct native stacks can: two calls on one
/// line, or a stack cut at different depths), largest first.
pub fn entries(
    groups: &[Group],
    mut stack_of: impl FnMut(StackId) -> SymbolizedStack,
) -> Vec<Entry> {
    let mut index: HashMap<(Pid, Vec<String>), usize> = HashMap::new();
    let mut out: Vec<Entry> = Vec::new();
    for g in groups {
        let s = stack_of(g.stack);
        let key = (g.pid, s.frames.iter().map(Frame::place).collect());
        match index.get(&key) {
            Some(&i) => {
                out[i].bytes += g.bytes;
                out[i].count += g.count;
                out[i].truncated |= s.truncated;
            }
            None => {
                index.insert(key, out.len());
                out.push(Entry {
                    pid: g.pid,
                    bytes: g.bytes,
                    count: g.count,
                    stack: s.frames,
                    truncated: s.truncated,
                });
            }
        }
    }
    out.sort_by(|a, b| (b.bytes, b.count, a.pid).cmp(&(a.bytes, a.count, b.pid)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::HeapEvent;

    fn alloc(pid: Pid, addr: u64, size: u64, stack: u32, ts_ns: u64) -> HeapEvent {
        HeapEvent::Alloc {
            pid,
            tid: pid,
            ts_ns,
            addr,
            size,
            stack: StackId(stack),
        }
    }

    fn heap() -> HeapModel {
        let mut h = HeapModel::default();
        for e in [
            alloc(1, 0x10, 100, 1, 1_000),
            alloc(1, 0x20, 100, 1, 2_000),
            alloc(1, 0x30, 500, 2, 3_000),
            HeapEvent::Free {
                pid: 1,
                ts_ns: 3_500,
                addr: 0x30,
            },
            alloc(1, 0x30, 50, 2, 4_000),
            alloc(2, 0x10, 1000, 1, 1_000),
            HeapEvent::Exiting {
                pid: 2,
                ts_ns: 1_500,
                reason: ExitReason::LibcExit,
            },
            HeapEvent::Free {
                pid: 2,
                ts_ns: 1_600,
                addr: 0x10,
            },
        ] {
            h.apply(&e);
        }
        h
    }

    #[test]
    fn leaks_group_by_process_and_stack_largest_first() {
        let g = leaks(&heap(), 10_000, 0);
        assert_eq!(
            g,
            [
                Group {
                    pid: 2,
                    stack: StackId(1),
                    bytes: 1000,
                    count: 1
                },
                Group {
                    pid: 1,
                    stack: StackId(1),
                    bytes: 200,
                    count: 2
                },
                Group {
                    pid: 1,
                    stack: StackId(2),
                    bytes: 50,
                    count: 1
                },
            ]
        );
    }

    #[test]
    fn min_age_counts_from_exit_or_end() {
        // pid 1 ends at 10_000: only allocations made by 5_000 are 5_000 old.
        // pid 2 began to exit at 1_500: its 1_000 allocation is 500 old.
        let g = leaks(&heap(), 10_000, 5_000);
        assert_eq!(
            g.iter().map(|g| (g.pid, g.bytes)).collect::<Vec<_>>(),
            [(1, 200), (1, 50)]
        );
        let g = leaks(&heap(), 10_000, 7_000);
        assert_eq!(
            g.iter().map(|g| (g.pid, g.bytes)).collect::<Vec<_>>(),
            [(1, 200)]
        );
    }

    #[test]
    fn hotspots_count_everything_allocated() {
        let g = hotspots(&heap());
        assert_eq!(
            g.iter()
                .map(|g| (g.pid, g.stack.0, g.bytes, g.count))
                .collect::<Vec<_>>(),
            [(2, 1, 1000, 1), (1, 2, 550, 2), (1, 1, 200, 2)]
        );
    }

    #[test]
    fn entries_merge_stacks_that_read_the_same() {
        use crate::symbolize::FrameKind;
        let frame = |line| Frame {
            kind: FrameKind::Native,
            function: "f".into(),
            module: "m".into(),
            file: Some("f.c".into()),
            line: Some(line),
            offset: Some(u64::from(line)),
            inlined: false,
            unknown: None,
        };
        let groups = [
            Group {
                pid: 1,
                stack: StackId(1),
                bytes: 10,
                count: 1,
            },
            Group {
                pid: 1,
                stack: StackId(2),
                bytes: 8,
                count: 1,
            },
            Group {
                pid: 1,
                stack: StackId(3),
                bytes: 5,
                count: 1,
            },
            Group {
                pid: 2,
                stack: StackId(1),
                bytes: 1,
                count: 1,
            },
        ];
        let e = entries(&groups, |id| SymbolizedStack {
            frames: vec![frame(if id.0 == 3 { 9 } else { 1 })],
            truncated: id.0 == 2,
        });
        assert_eq!(
            e.iter()
                .map(|e| (e.pid, e.bytes, e.count, e.truncated))
                .collect::<Vec<_>>(),
            [(1, 18, 2, true), (1, 5, 1, false), (2, 1, 1, false)]
        );
    }

    #[test]
    fn totals_use_leak_sets() {
        let mut counters = Counters::default();
        let t = summarize(&heap(), &mut counters);
        assert_eq!(t.allocs, 5);
        assert_eq!(t.bytes_allocated, 1750);
        assert_eq!(t.live_bytes, 250 + 1000);
        assert_eq!((counters.unmatched_frees, counters.implied_frees), (0, 0));
    }
}
