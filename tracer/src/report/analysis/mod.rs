//! From a capture to one `Report`: the heap model replayed once over its
//! events (keeping each process's live set at its peak on the way), the
//! temporaries gathered in the same pass, then leaks, hotspots, peak,
//! summary and timeline read off the result.

pub mod growth;
pub mod lines;
pub mod summary;
pub mod temporary;
pub mod types;

use std::collections::HashMap;

use super::{Entry, History, LeaksTaken, ProcessReport, Report, TimelinePoint, Totals};
use crate::{
    capture::Contents,
    census::TypeCount,
    counters::{self, Counters},
    event::{Pid, StackId},
    frame::{Frame, FrameKind, SymbolizedStack, View},
    model::heap::{Allocation, Amount, HeapModel},
};

pub use growth::GrowthOptions;
pub use temporary::Temporary;

/// How a report is made: which frames it shows, how old a leak must be,
/// what counts as temporary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    pub view: View,
    pub min_age_ns: u64,
    pub temporary: Temporary,
    /// Rank thread stacks with the other mappings instead of apart.
    pub include_thread_stacks: bool,
}

/// Bytes and allocations of one (process, stack).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    pub pid: Pid,
    pub stack: StackId,
    pub amount: Amount,
}

/// Every report of a capture. Stacks the capture does not define (cut
/// short before they were written) say so.
pub fn analyze(contents: &Contents, options: &Options) -> Report {
    analyze_with(contents, options, &GrowthOptions::default())
}

/// `analyze`, with the growth report's windows as `growth` says.
pub fn analyze_with(contents: &Contents, options: &Options, growth: &GrowthOptions) -> Report {
    let mut heap =
        HeapModel::with_peak_stacks().including_thread_stacks(options.include_thread_stacks);
    let mut temporaries = temporary::Temporaries::new(options.temporary);
    let sampled: Vec<u64> = contents.samples.iter().map(|s| s.ts_ns).collect();
    let ends = growth::boundaries(
        contents.start_ns,
        contents.end_ns,
        growth.window_ns,
        &sampled,
    );
    let window_s = growth::window_s(&ends);
    let mut tracker = growth::Tracker::new(growth, ends);
    // A capture names every process it traced; events of others (`--all`
    // looked at them and let them go) are not reported. A capture cut
    // before it named any keeps them all.
    let named = |pid| contents.processes.is_empty() || contents.processes.contains_key(&pid);
    contents.events.each(&mut |e| {
        if named(e.pid) {
            tracker.before(e.ts_ns, &heap);
            heap.apply(e);
            temporaries.apply(e);
        }
        true
    });
    tracker.before(u64::MAX, &heap);
    let stack_of = |id: StackId| match contents.stacks.get(&id) {
        Some(def) => options.view.show(def),
        None => SymbolizedStack {
            frames: vec![Frame {
                kind: FrameKind::Native,
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
    let mut counters = contents.counters;
    let totals = summarize(&heap, &mut counters);
    let leak_types = types::leak_types(&contents.censuses);
    let leak_groups = leaks(&heap, contents.end_ns, options.min_age_ns);
    let hotspot_groups = hotspots(&heap);
    let leaks = typed_entries(&leak_groups, stack_of, |pid, stack| {
        leak_types.get(&(pid, stack))
    });
    let hotspots = entries(&hotspot_groups, stack_of);
    counters.set(
        counters::TRUNCATED_STACKS,
        hotspots.iter().filter(|e| e.truncated).count() as u64,
    );
    let since_start = |ts: u64| ts.saturating_sub(contents.start_ns) as f64 / 1e9;
    let top_lines = lines::top_functions(contents, &hotspot_groups, &leak_groups);
    let processes = contents
        .processes
        .values()
        // --all: a process found but gone before it allocated anything; a
        // forked child that allocated nothing of its own (a fork and exec).
        .filter(|p| p.explicit || heap.process(p.pid).is_some_and(|h| h.totals().allocs > 0))
        .map(|p| {
            let process = heap.process(p.pid);
            ProcessReport {
                info: p.clone(),
                leaks_taken: process.and_then(|h| h.exit_snapshot()).map(|s| LeaksTaken {
                    reason: s.reason,
                    at_s: since_start(s.ts_ns),
                }),
                thread_stacks: process.map(|h| h.thread_stacks()).unwrap_or_default(),
                inherited_bytes: process.map_or(0, |h| h.inherited().bytes),
            }
        })
        .collect();
    Report {
        duration_s: since_start(contents.end_ns),
        probes: contents.probes.clone(),
        processes,
        totals,
        counters,
        min_age_s: options.min_age_ns as f64 / 1e9,
        thread_stacks_included: options.include_thread_stacks,
        leaks,
        hotspots,
        summary: summary::summaries(&heap, contents.start_ns),
        history: History {
            peak: entries(&at_peaks(&heap), stack_of),
            temporary: entries(&temporaries.groups(), stack_of),
            temporary_rule: options.temporary.to_string(),
            growth: tracker.report(window_s, stack_of),
            timeline: contents
                .samples
                .iter()
                .map(|s| TimelinePoint {
                    pid: s.pid,
                    t: since_start(s.ts_ns),
                    live_bytes: s.live_bytes,
                    rss_bytes: s.rss_bytes,
                })
                .collect(),
        },
        types: types::process_types(&contents.censuses, contents.start_ns),
        lines: top_lines,
    }
}

/// Sorts by bytes, then count, then pid and stack for a stable order.
fn sorted(mut groups: Vec<Group>) -> Vec<Group> {
    groups.sort_by(|a, b| {
        (b.amount.bytes, b.amount.count, a.pid, a.stack).cmp(&(
            a.amount.bytes,
            a.amount.count,
            b.pid,
            b.stack,
        ))
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
fn by_stack<'a>(
    pid: Pid,
    allocations: impl IntoIterator<Item = &'a Allocation>,
) -> impl Iterator<Item = Group> {
    let mut groups: HashMap<StackId, Amount> = HashMap::new();
    for a in allocations {
        let g = groups.entry(a.stack).or_default();
        g.bytes += a.size;
        g.count += u64::from(a.count);
    }
    groups
        .into_iter()
        .map(move |(stack, amount)| Group { pid, stack, amount })
}

/// Bytes and allocations made per stack over the whole recording.
pub fn hotspots(heap: &HeapModel) -> Vec<Group> {
    let groups = heap
        .processes()
        .flat_map(|(pid, process)| {
            process.stacks().iter().map(move |(stack, s)| Group {
                pid,
                stack: *stack,
                amount: s.allocated,
            })
        })
        .filter(|g| g.amount.count > 0)
        .collect();
    sorted(groups)
}

/// The live set of each process at its peak, by stack.
pub fn at_peaks(heap: &HeapModel) -> Vec<Group> {
    let groups = heap
        .processes()
        .flat_map(|(pid, process)| {
            process
                .at_peak()
                .map(move |(stack, amount)| Group { pid, stack, amount })
        })
        .collect();
    sorted(groups)
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
        counters.add(counters::UNMATCHED_FREES, pt.unmatched_frees);
        counters.add(counters::IMPLIED_FREES, pt.implied_frees);
        counters.add(counters::UNMATCHED_UNMAPS, pt.unmatched_unmaps);
    }
    t
}

/// Attaches symbolized stacks to groups, merging groups of one process
/// whose stacks read the same (distinct native stacks can: two calls on one
/// line, or a stack cut at different depths), largest first.
pub fn entries(groups: &[Group], stack_of: impl Fn(StackId) -> SymbolizedStack) -> Vec<Entry> {
    typed_entries(groups, stack_of, |_, _| None)
}

/// `entries`, each with the types of its objects (`types_of` a stack's).
pub fn typed_entries<'a>(
    groups: &[Group],
    stack_of: impl Fn(StackId) -> SymbolizedStack,
    types_of: impl Fn(Pid, StackId) -> Option<&'a Vec<TypeCount>>,
) -> Vec<Entry> {
    let mut index: HashMap<(Pid, Vec<String>), usize> = HashMap::new();
    let mut out: Vec<Entry> = Vec::new();
    let mut types: Vec<Vec<&Vec<TypeCount>>> = Vec::new();
    for g in groups {
        let s = stack_of(g.stack);
        let key = (g.pid, s.frames.iter().map(Frame::place).collect());
        let i = match index.get(&key) {
            Some(&i) => {
                out[i].bytes += g.amount.bytes;
                out[i].count += g.amount.count;
                out[i].truncated |= s.truncated;
                i
            }
            None => {
                index.insert(key, out.len());
                out.push(Entry {
                    pid: g.pid,
                    bytes: g.amount.bytes,
                    count: g.amount.count,
                    stack: s.frames,
                    truncated: s.truncated,
                    types: Vec::new(),
                });
                types.push(Vec::new());
                out.len() - 1
            }
        };
        types[i].extend(types_of(g.pid, g.stack));
    }
    for (entry, lists) in out.iter_mut().zip(types) {
        entry.types = types::merged(lists);
    }
    out.sort_by(|a, b| (b.bytes, b.count, a.pid).cmp(&(a.bytes, a.count, b.pid)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Block, EventKind, ExitReason, HeapEvent},
        frame::StackDef,
        process::ProcessInfo,
    };

    fn ev(pid: Pid, ts_ns: u64, kind: EventKind) -> HeapEvent {
        HeapEvent {
            pid,
            tid: pid,
            ts_ns,
            kind,
        }
    }

    fn alloc(pid: Pid, addr: u64, size: u64, stack: u32, ts_ns: u64) -> HeapEvent {
        ev(
            pid,
            ts_ns,
            EventKind::Alloc(Block {
                addr,
                size,
                count: 1,
                stack: StackId(stack),
            }),
        )
    }

    fn events() -> Vec<HeapEvent> {
        vec![
            alloc(1, 0x10, 100, 1, 1_000),
            alloc(1, 0x20, 100, 1, 2_000),
            alloc(1, 0x30, 500, 2, 3_000),
            ev(1, 3_500, EventKind::Free { addr: 0x30 }),
            alloc(1, 0x30, 50, 2, 4_000),
            alloc(2, 0x10, 1000, 1, 1_000),
            ev(
                2,
                1_500,
                EventKind::Exiting {
                    reason: ExitReason::LibcExit,
                },
            ),
            ev(2, 1_600, EventKind::Free { addr: 0x10 }),
        ]
    }

    fn heap() -> HeapModel {
        let mut h = HeapModel::with_peak_stacks();
        for e in events() {
            h.apply(&e);
        }
        h
    }

    fn group(pid: Pid, stack: u32, bytes: u64, count: u64) -> Group {
        Group {
            pid,
            stack: StackId(stack),
            amount: Amount { bytes, count },
        }
    }

    #[test]
    fn leaks_group_by_process_and_stack_largest_first() {
        assert_eq!(
            leaks(&heap(), 10_000, 0),
            [
                group(2, 1, 1000, 1),
                group(1, 1, 200, 2),
                group(1, 2, 50, 1)
            ]
        );
    }

    #[test]
    fn min_age_counts_from_exit_or_end() {
        // pid 1 ends at 10_000: only allocations made by 5_000 are 5_000 old.
        // pid 2 began to exit at 1_500: its 1_000 allocation is 500 old.
        let g = leaks(&heap(), 10_000, 5_000);
        assert_eq!(
            g.iter()
                .map(|g| (g.pid, g.amount.bytes))
                .collect::<Vec<_>>(),
            [(1, 200), (1, 50)]
        );
        let g = leaks(&heap(), 10_000, 7_000);
        assert_eq!(
            g.iter()
                .map(|g| (g.pid, g.amount.bytes))
                .collect::<Vec<_>>(),
            [(1, 200)]
        );
    }

    #[test]
    fn hotspots_count_everything_allocated() {
        assert_eq!(
            hotspots(&heap()),
            [
                group(2, 1, 1000, 1),
                group(1, 2, 550, 2),
                group(1, 1, 200, 2)
            ]
        );
    }

    #[test]
    fn peaks_are_each_process_at_its_highest() {
        // pid 1 peaks at 700 bytes (3_000), pid 2 at 1000.
        assert_eq!(
            at_peaks(&heap()),
            [
                group(2, 1, 1000, 1),
                group(1, 2, 500, 1),
                group(1, 1, 200, 2)
            ]
        );
    }

    #[test]
    fn entries_merge_stacks_that_read_the_same() {
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
            group(1, 1, 10, 1),
            group(1, 2, 8, 1),
            group(1, 3, 5, 1),
            group(2, 1, 1, 1),
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
        assert_eq!(counters.get(counters::UNMATCHED_FREES), 0);
        assert_eq!(counters.get(counters::IMPLIED_FREES), 0);
    }

    /// A stack of one libc frame, `name`.
    fn def(name: &str) -> StackDef {
        StackDef {
            native: vec![Frame {
                kind: FrameKind::Native,
                function: name.into(),
                module: "libc.so.6".into(),
                file: None,
                line: None,
                offset: Some(1),
                inlined: false,
                unknown: None,
            }],
            native_truncated: false,
            python: vec![],
            python_truncated: false,
        }
    }

    #[test]
    fn a_capture_becomes_one_report() {
        let contents = Contents {
            start_ns: 0,
            end_ns: 10_000,
            processes: [1, 2]
                .map(|pid| {
                    (
                        pid,
                        ProcessInfo {
                            pid,
                            explicit: true,
                            command: format!("prog{pid}"),
                            ..ProcessInfo::default()
                        },
                    )
                })
                .into(),
            events: crate::capture::Events::Memory(events()),
            stacks: [(StackId(1), def("one"))].into(),
            ..Contents::default()
        };
        let report = analyze(
            &contents,
            &Options {
                view: View::Mixed,
                min_age_ns: 0,
                temporary: Temporary::Within { ns: 550 },
                include_thread_stacks: false,
            },
        );
        assert_eq!(report.leaks[0].bytes, 1000);
        assert_eq!(report.leaks[0].stack[0].function, "one");
        // Stack 2 was never written: it says so.
        let missing = &report.leaks[2].stack[0];
        assert!(
            missing
                .unknown
                .as_deref()
                .is_some_and(|u| u.contains("cut short"))
        );
        assert_eq!(report.history.peak.len(), 3);
        // 0x30 lived 500 ns: temporary.
        assert_eq!(report.history.temporary[0].bytes, 500);
        let taken = report.process(2).and_then(|p| p.leaks_taken).expect("exit");
        assert_eq!(taken.reason, ExitReason::LibcExit);
        assert_eq!(report.totals.live_bytes, 1250);
    }

    #[test]
    fn thread_stacks_are_counted_apart_unless_included() {
        // A worker's finished stack, kept mapped by glibc, beside a leak.
        let stack_map = ev(
            1,
            500,
            EventKind::Map {
                addr: 0x7000_0000,
                len: 8_392_704,
                stack: StackId(9),
                thread_stack: true,
            },
        );
        let contents = Contents {
            start_ns: 0,
            end_ns: 10_000,
            processes: [(
                1,
                ProcessInfo {
                    pid: 1,
                    explicit: true,
                    ..ProcessInfo::default()
                },
            )]
            .into(),
            events: crate::capture::Events::Memory(vec![alloc(1, 0x10, 4130, 1, 1_000), stack_map]),
            stacks: [(StackId(1), def("malloc")), (StackId(9), def("mmap"))].into(),
            ..Contents::default()
        };
        let report_with = |include_thread_stacks| {
            analyze(
                &contents,
                &Options {
                    view: View::Mixed,
                    min_age_ns: 0,
                    temporary: Temporary::Within { ns: 1 },
                    include_thread_stacks,
                },
            )
        };
        let apart = report_with(false);
        let bytes = |list: &[Entry]| list.iter().map(|e| e.bytes).collect::<Vec<_>>();
        assert_eq!(bytes(&apart.leaks), [4130]);
        assert_eq!(bytes(&apart.hotspots), [4130]);
        assert_eq!(bytes(&apart.history.peak), [4130]);
        assert_eq!(apart.totals.live_bytes, 4130);
        assert_eq!(apart.summary[0].activity.peak_bytes, 4130);
        let stacks = apart.processes[0].thread_stacks;
        assert_eq!((stacks.count, stacks.bytes), (1, 8_392_704));
        assert!(!apart.thread_stacks_included);

        let included = report_with(true);
        assert_eq!(bytes(&included.leaks), [8_392_704, 4130]);
        assert_eq!(bytes(&included.hotspots), [8_392_704, 4130]);
        assert_eq!(bytes(&included.history.peak), [8_392_704, 4130]);
        assert_eq!(included.processes[0].thread_stacks.count, 1);
        assert!(included.thread_stacks_included);
    }
}
