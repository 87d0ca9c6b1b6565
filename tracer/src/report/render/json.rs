//! The report as `report.json` (schema version 1, docs/report-json.md).

use std::io;

use serde::Serialize;

use super::Options;
use crate::{
    census::{Coverage, Moment, TypeCount, TypeGrowth},
    counters::{self, Counters},
    event::{ExitReason, os_pid, pid_instance},
    frame::{Frame, FrameKind},
    report::{Entry, FunctionLines, GrowthStatus, ProcessSummary, Report, TimelinePoint},
};

pub const VERSION: u32 = 1;

#[derive(Serialize)]
struct Json<'a> {
    version: u32,
    duration_s: f64,
    /// How the probes were attached.
    probes: &'a str,
    pids: Vec<u32>,
    processes: Vec<Process<'a>>,
    totals: Totals,
    counters: &'a Counters,
    min_age_s: f64,
    /// Thread stacks are ranked with the other mappings
    /// (`--include-thread-stacks`).
    include_thread_stacks: bool,
    leaks: Vec<JsonEntry<'a>>,
    hotspots: Vec<JsonEntry<'a>>,
    /// What needs the whole sequence of events.
    history: JsonHistory<'a>,
    /// Each process's top leaking Python function, line by line.
    lines: &'a [FunctionLines],
}

#[derive(Serialize)]
struct JsonHistory<'a> {
    /// The live set at each process's peak, by stack.
    peak: Vec<JsonEntry<'a>>,
    temporary_rule: &'a str,
    temporary: Vec<JsonEntry<'a>>,
    /// Memory over time, every process.
    timeline: &'a [TimelinePoint],
    /// Stacks ranked by growth over the last windows.
    growth: JsonGrowth<'a>,
}

#[derive(Serialize)]
struct JsonGrowth<'a> {
    window_s: f64,
    windows: u64,
    /// The last windows the trend test looked at.
    tested: usize,
    /// Growing first (fastest first), then plateaued, then steady.
    entries: Vec<JsonGrowthEntry<'a>>,
}

#[derive(Serialize)]
struct JsonGrowthEntry<'a> {
    status: GrowthStatus,
    bytes_per_hour: f64,
    /// Live bytes in each window tested, oldest first.
    series: &'a [u64],
    #[serde(flatten)]
    entry: JsonEntry<'a>,
}

/// Whether a process is the first with its pid in the recording.
fn is_first(instance: &u32) -> bool {
    *instance == 0
}

#[derive(Serialize)]
struct Process<'a> {
    pid: u32,
    /// Which process with this pid it is when the pid was reused during the
    /// recording: 1 for the second, ... (absent for the first).
    #[serde(skip_serializing_if = "is_first")]
    pid_instance: u32,
    command: &'a str,
    /// "CPython 3.11 (/usr/bin/python3.11)", or null.
    python: Option<&'a str>,
    notes: &'a [String],
    /// What marked the leak set: `py_finalize`, `libc_exit`, or null (end of recording).
    leaks_taken_at: Option<ExitReason>,
    leaks_taken_at_s: Option<f64>,
    /// The traced process it was forked from, or null.
    parent: Option<u32>,
    /// Bytes it inherited from its parent at fork.
    inherited_bytes: u64,
    exit_status: Option<&'a str>,
    /// Allocated, freed, live, leaked and peak bytes, and by thread.
    summary: Option<&'a ProcessSummary>,
    /// Mapped when the leak set was taken; not in the heap's figures
    /// unless `include_thread_stacks`.
    thread_stacks: ThreadStacks,
    /// This process's own top entries.
    leaks: Vec<JsonEntry<'a>>,
    hotspots: Vec<JsonEntry<'a>>,
    /// Live objects by type, most bytes first (empty if never walked).
    types: &'a [TypeCount],
    /// The walk they come from, or null.
    types_walk: Option<TypesWalk<'a>>,
}

#[derive(Serialize)]
struct TypesWalk<'a> {
    at: Moment,
    at_s: f64,
    coverage: &'a Coverage,
    notes: &'a [String],
    /// Per type since the first walk (null with one walk), most grown first.
    growth_since_s: Option<f64>,
    growth: &'a [TypeGrowth],
}

#[derive(Serialize)]
struct ThreadStacks {
    count: u64,
    /// Guard pages included.
    bytes: u64,
}

#[derive(Serialize)]
struct Totals {
    allocs: u64,
    frees: u64,
    bytes_allocated: u64,
    bytes_freed: u64,
    live_bytes: u64,
    lost_events: u64,
    lost_stacks: u64,
    unmatched_frees: u64,
}

#[derive(Serialize)]
struct JsonEntry<'a> {
    bytes: u64,
    count: u64,
    pid: u32,
    #[serde(skip_serializing_if = "is_first")]
    pid_instance: u32,
    command: &'a str,
    truncated: bool,
    stack: Vec<JsonFrame<'a>>,
    /// The types of its objects, where the process was walked.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    types: &'a [TypeCount],
}

/// A frame as report.json shows it: optional fields only where they apply.
#[derive(Serialize)]
struct JsonFrame<'a> {
    kind: FrameKind,
    function: &'a str,
    module: &'a str,
    file: Option<&'a str>,
    line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    inlined: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    unknown: Option<&'a str>,
}

impl<'a> From<&'a Frame> for JsonFrame<'a> {
    fn from(f: &'a Frame) -> Self {
        Self {
            kind: f.kind,
            function: &f.function,
            module: &f.module,
            file: f.file.as_deref(),
            line: f.line,
            offset: f.offset,
            inlined: f.inlined,
            unknown: f.unknown.as_deref(),
        }
    }
}

/// The first `top` entries of `list` that `keep` accepts.
fn entries<'a>(
    report: &'a Report,
    list: &'a [Entry],
    top: usize,
    keep: impl Fn(&Entry) -> bool,
) -> Vec<JsonEntry<'a>> {
    list.iter()
        .filter(|e| keep(e))
        .take(top)
        .map(|e| json_entry(report, e))
        .collect()
}

fn json_entry<'a>(report: &'a Report, e: &'a Entry) -> JsonEntry<'a> {
    JsonEntry {
        bytes: e.bytes,
        count: e.count,
        pid: os_pid(e.pid),
        pid_instance: pid_instance(e.pid),
        command: report.command(e.pid),
        truncated: e.truncated,
        stack: e.stack.iter().map(JsonFrame::from).collect(),
        types: &e.types,
    }
}

pub fn render(report: &Report, options: &Options) -> io::Result<Vec<u8>> {
    let top = options.top;
    let t = &report.totals;
    let c = &report.counters;
    let json = Json {
        version: VERSION,
        duration_s: report.duration_s,
        probes: &report.probes,
        pids: report
            .processes
            .iter()
            .map(|p| os_pid(p.info.pid))
            .collect(),
        processes: report
            .processes
            .iter()
            .map(|p| {
                let pid = p.info.pid;
                Process {
                    pid: os_pid(pid),
                    pid_instance: pid_instance(pid),
                    command: &p.info.command,
                    python: p.info.python.as_deref(),
                    notes: &p.info.notes,
                    leaks_taken_at: p.leaks_taken.map(|t| t.reason),
                    leaks_taken_at_s: p.leaks_taken.map(|t| t.at_s),
                    parent: p.info.parent.map(os_pid),
                    inherited_bytes: p.inherited_bytes,
                    exit_status: p.info.exit_status.as_deref(),
                    summary: report.summary_of(pid),
                    thread_stacks: ThreadStacks {
                        count: p.thread_stacks.count,
                        bytes: p.thread_stacks.bytes,
                    },
                    leaks: entries(report, &report.leaks, top, |e| e.pid == pid),
                    hotspots: entries(report, &report.hotspots, top, |e| e.pid == pid),
                    types: report
                        .types_of(pid)
                        .map_or(&[], |t| &t.types[..t.types.len().min(top)]),
                    types_walk: report.types_of(pid).map(|t| TypesWalk {
                        at: t.moment,
                        at_s: t.at_s,
                        coverage: &t.coverage,
                        notes: &t.notes,
                        growth_since_s: t.growth.as_ref().map(|g| g.since_s),
                        growth: t
                            .growth
                            .as_ref()
                            .map_or(&[], |g| &g.types[..g.types.len().min(top)]),
                    }),
                }
            })
            .collect(),
        totals: Totals {
            allocs: t.allocs,
            frees: t.frees,
            bytes_allocated: t.bytes_allocated,
            bytes_freed: t.bytes_freed,
            live_bytes: t.live_bytes,
            lost_events: c.get(tracer_common::counter::LOST_EVENTS),
            lost_stacks: c.get(tracer_common::counter::LOST_STACKS),
            unmatched_frees: c.get(counters::UNMATCHED_FREES),
        },
        counters: c,
        min_age_s: report.min_age_s,
        include_thread_stacks: report.thread_stacks_included,
        leaks: entries(report, &report.leaks, top, |_| true),
        hotspots: entries(report, &report.hotspots, top, |_| true),
        history: JsonHistory {
            peak: entries(report, &report.history.peak, top, |_| true),
            temporary_rule: &report.history.temporary_rule,
            temporary: entries(report, &report.history.temporary, top, |_| true),
            timeline: &report.history.timeline,
            growth: JsonGrowth {
                window_s: report.history.growth.window_s,
                windows: report.history.growth.windows,
                tested: report.history.growth.tested,
                entries: report
                    .history
                    .growth
                    .entries
                    .iter()
                    .take(top)
                    .map(|g| JsonGrowthEntry {
                        status: g.status,
                        bytes_per_hour: g.bytes_per_hour,
                        series: &g.series,
                        entry: json_entry(report, &g.entry),
                    })
                    .collect(),
            },
        },
        lines: &report.lines,
    };
    serde_json::to_vec_pretty(&json).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        process::ProcessInfo,
        report::{History, ProcessReport, Totals},
    };

    #[test]
    fn follows_the_schema() {
        let frame = Frame {
            kind: FrameKind::Native,
            function: "malloc".into(),
            module: "/lib/libc.so.6".into(),
            file: None,
            line: None,
            offset: Some(16),
            inlined: false,
            unknown: None,
        };
        let entry = |bytes| Entry {
            pid: 5,
            bytes,
            count: 1,
            stack: vec![frame.clone()],
            truncated: false,
            types: vec![],
        };
        let report = Report {
            duration_s: 2.0,
            probes: String::new(),
            processes: vec![ProcessReport {
                info: ProcessInfo {
                    pid: 5,
                    command: "cmd".into(),
                    ..ProcessInfo::default()
                },
                leaks_taken: None,
                ..ProcessReport::default()
            }],
            totals: Totals {
                allocs: 2,
                frees: 0,
                bytes_allocated: 30,
                bytes_freed: 0,
                live_bytes: 30,
            },
            counters: {
                let mut c = Counters::default();
                c.add(tracer_common::counter::LOST_EVENTS, 3);
                c
            },
            min_age_s: 0.0,
            thread_stacks_included: false,
            leaks: vec![entry(20), entry(10)],
            hotspots: vec![entry(20), entry(10)],
            summary: vec![],
            history: History::default(),
            types: vec![],
            lines: vec![],
        };
        let options = Options {
            top: 1,
            of: super::super::Of::Leaks,
            sections: vec![],
        };
        let v: serde_json::Value =
            serde_json::from_slice(&render(&report, &options).expect("json")).expect("parse");
        assert_eq!(v["version"], 1);
        assert_eq!(v["pids"], serde_json::json!([5]));
        assert_eq!(v["totals"]["lost_events"], 3);
        assert_eq!(v["totals"]["live_bytes"], 30);
        assert_eq!(v["leaks"].as_array().map(Vec::len), Some(1), "top 1");
        let f = &v["leaks"][0]["stack"][0];
        assert_eq!(f["kind"], "native");
        assert_eq!(f["function"], "malloc");
        assert_eq!(f["module"], "/lib/libc.so.6");
        assert!(f["file"].is_null() && f["line"].is_null());
        assert_eq!(v["processes"][0]["leaks_taken_at"], serde_json::Value::Null);
        assert_eq!(v["leaks"][0]["command"], "cmd");
        assert_eq!(v["processes"][0]["leaks"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            v["processes"][0]["thread_stacks"],
            serde_json::json!({"count": 0, "bytes": 0})
        );
        assert_eq!(v["include_thread_stacks"], false);
    }
}
