//! Reports: pure functions of the heap model (which stacks leak, which
//! allocate most), then rendered as text, JSON and folded stacks.

pub mod flamegraph;
pub mod folded;
pub mod html;
pub mod json;
pub mod pprof;
pub mod replay;
pub mod speedscope;
pub mod summary;
pub mod text;

use std::collections::HashMap;

use crate::{
    heap::{Allocation, ExitReason, HeapModel, Pid},
    stacks::StackId,
    symbolize::{Frame, SymbolizedStack, View},
};

/// Bytes and allocations of one (process, stack).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    pub pid: Pid,
    pub stack: StackId,
    pub bytes: u64,
    pub count: u64,
}

/// Every report of a capture: what `build` makes of its final heap, and
/// the history of its events. Stacks the capture does not define (cut
/// short before they were written) say so.
pub fn from_capture(
    contents: &crate::capture::Contents,
    view: View,
    min_age_ns: u64,
    temporary_rule: replay::Temporary,
) -> Report {
    let mut heap = HeapModel::default();
    let mut temporaries = replay::Temporaries::new(temporary_rule);
    contents.events.each(&mut |e| {
        heap.apply(e);
        temporaries.apply(e);
        true
    });
    let stack_of = |id: StackId| match contents.stacks.get(&id) {
        Some(def) => view.show(def),
        None => SymbolizedStack {
            frames: vec![Frame {
                kind: crate::symbolize::FrameKind::Native,
                function: Frame::UNKNOWN_FUNCTION.to_owned(),
                module: String::new(),
                file: None,
                line: None,
                offset: None,
                inlined: false,
                unknown: Some("stack not in the capture (cut short)".into()),
            }],
            truncated: true,
        },
    };
    let mut report = build(
        Recorded {
            heap: &heap,
            processes: contents.processes.values().cloned().collect(),
            counters: contents.counters,
            start_ns: contents.start_ns,
            end_ns: contents.end_ns,
        },
        min_age_ns,
        stack_of,
    );
    let since_start = |ts: u64| ts.saturating_sub(contents.start_ns) as f64 / 1e9;
    report.history = Some(History {
        peak: entries(&replay::at_peaks(&contents.events, &heap), stack_of),
        temporary: entries(&temporaries.groups(), stack_of),
        temporary_rule: temporary_rule.to_string(),
        timeline: contents
            .samples
            .iter()
            .map(|&(pid, ts, live_bytes, rss_bytes)| TimelinePoint {
                pid,
                t: since_start(ts),
                live_bytes,
                rss_bytes,
            })
            .collect(),
    });
    report
}

/// A process's program name (without its path), for flamegraph roots.
pub fn command_name(report: &Report, pid: Pid) -> String {
    report
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .and_then(|p| p.command.split_whitespace().next())
        .map(|c| c.rsplit('/').next().unwrap_or(c).to_owned())
        .unwrap_or_else(|| "process".to_owned())
}

/// Sorts by bytes, then count, then pid and stack for a stable order.
pub(super) fn sorted(mut groups: Vec<Group>) -> Vec<Group> {
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
        let leaks = process.leak_set();
        let old_enough = leaks
            .iter()
            .filter(|a| as_of.saturating_sub(a.ts_ns) >= min_age_ns);
        groups.extend(by_stack(pid, old_enough));
    }
    sorted(groups)
}

/// `allocations` of `pid` grouped by stack.
pub(super) fn by_stack<'a>(
    pid: Pid,
    allocations: impl IntoIterator<Item = &'a Allocation>,
) -> impl Iterator<Item = Group> {
    let mut groups: HashMap<StackId, (u64, u64)> = HashMap::new();
    for a in allocations {
        let g = groups.entry(a.stack).or_default();
        g.0 += a.size;
        g.1 += u64::from(a.count);
    }
    groups
        .into_iter()
        .map(move |(stack, (bytes, count))| Group {
            pid,
            stack,
            bytes,
            count,
        })
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
    /// Named by the user (not found by `--all`): reported even if it made
    /// no allocation.
    pub explicit: bool,
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// Allocation calls and frees left out by `--sample-bytes`.
    pub unsampled: u64,
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
    /// Each process's and thread's totals and peak, in pid order.
    pub summary: Vec<summary::ProcessSummary>,
    /// What needs the whole event sequence: made from a capture.
    pub history: Option<History>,
}

/// The reports made by replaying a capture's events.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    /// The live set at each process's peak, by stack.
    pub peak: Vec<Entry>,
    /// Allocations freed soon after they were made, by stack.
    pub temporary: Vec<Entry>,
    pub temporary_rule: String,
    pub timeline: Vec<TimelinePoint>,
}

/// Memory of one process at one moment.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct TimelinePoint {
    pub pid: Pid,
    /// Seconds after recording began.
    pub t: f64,
    /// Live bytes in the heap model.
    pub live_bytes: u64,
    /// The process's resident set, from /proc.
    pub rss_bytes: Option<u64>,
}

/// Everything a report is made from, recorded live or read from a capture.
pub struct Recorded<'a> {
    pub heap: &'a HeapModel,
    pub processes: Vec<ProcessInfo>,
    /// The kernel's counters and the collector's; the heap model's are added.
    pub counters: Counters,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Leaks, hotspots, totals and process facts from a heap model.
pub fn build(
    rec: Recorded<'_>,
    min_age_ns: u64,
    mut stack_of: impl FnMut(StackId) -> SymbolizedStack,
) -> Report {
    let heap = rec.heap;
    let mut counters = rec.counters;
    let totals = summarize(heap, &mut counters);
    let leaks = entries(&leaks(heap, rec.end_ns, min_age_ns), &mut stack_of);
    let hotspots = entries(&hotspots(heap), &mut stack_of);
    counters.truncated_stacks = hotspots.iter().filter(|e| e.truncated).count() as u64;
    let since_start = |ts: u64| ts.saturating_sub(rec.start_ns) as f64 / 1e9;
    let processes = rec
        .processes
        .into_iter()
        // --all: a process found but gone before it allocated anything.
        .filter(|p| p.explicit || heap.process(p.pid).is_some())
        .map(|p| ProcessInfo {
            exit: heap
                .process(p.pid)
                .and_then(|h| h.exit_snapshot())
                .map(|s| (s.reason, since_start(s.ts_ns))),
            ..p
        })
        .collect();
    Report {
        duration_s: since_start(rec.end_ns),
        processes,
        totals,
        counters,
        min_age_s: min_age_ns as f64 / 1e9,
        leaks,
        hotspots,
        summary: summary::summaries(heap, rec.start_ns),
        history: None,
    }
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
            count: 1,
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
                tid: 1,
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
                tid: 2,
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
