//! The report as `report.json` (schema version 1, docs/report-json.md).

use serde::Serialize;

use super::{Counters, Entry, Report};
use crate::{
    heap::ExitReason,
    symbolize::{Frame, FrameKind},
};

pub const VERSION: u32 = 1;

#[derive(Serialize)]
struct Json<'a> {
    version: u32,
    duration_s: f64,
    pids: Vec<u32>,
    processes: Vec<Process<'a>>,
    totals: Totals,
    counters: &'a Counters,
    min_age_s: f64,
    leaks: Vec<JsonEntry<'a>>,
    hotspots: Vec<JsonEntry<'a>>,
    /// Made from a capture: what needs the whole sequence of events.
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<JsonHistory<'a>>,
}

#[derive(Serialize)]
struct JsonHistory<'a> {
    /// The live set at each process's peak, by stack.
    peak: Vec<JsonEntry<'a>>,
    temporary_rule: &'a str,
    temporary: Vec<JsonEntry<'a>>,
    /// Memory over time, every process.
    timeline: &'a [super::TimelinePoint],
}

#[derive(Serialize)]
struct Process<'a> {
    pid: u32,
    command: &'a str,
    /// "CPython 3.11 (/usr/bin/python3.11)", or null.
    python: Option<&'a str>,
    notes: &'a [String],
    /// What marked the leak set: `py_finalize`, `libc_exit`, or null (end of recording).
    leaks_taken_at: Option<ExitReason>,
    leaks_taken_at_s: Option<f64>,
    exit_status: Option<&'a str>,
    /// Allocated, freed, live, leaked and peak bytes, and by thread.
    summary: Option<&'a super::summary::ProcessSummary>,
    /// This process's own top entries.
    leaks: Vec<JsonEntry<'a>>,
    hotspots: Vec<JsonEntry<'a>>,
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
    command: &'a str,
    truncated: bool,
    stack: Vec<JsonFrame<'a>>,
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
        .map(|e| JsonEntry {
            bytes: e.bytes,
            count: e.count,
            pid: e.pid,
            command: report
                .processes
                .iter()
                .find(|p| p.pid == e.pid)
                .map_or("", |p| p.command.as_str()),
            truncated: e.truncated,
            stack: e.stack.iter().map(JsonFrame::from).collect(),
        })
        .collect()
}

pub fn render(report: &Report, top: usize) -> serde_json::Result<String> {
    let t = &report.totals;
    let c = &report.counters;
    let json = Json {
        version: VERSION,
        duration_s: report.duration_s,
        pids: report.processes.iter().map(|p| p.pid).collect(),
        processes: report
            .processes
            .iter()
            .map(|p| Process {
                pid: p.pid,
                command: &p.command,
                python: p.python.as_deref(),
                notes: &p.notes,
                leaks_taken_at: p.exit.map(|(reason, _)| reason),
                leaks_taken_at_s: p.exit.map(|(_, at)| at),
                exit_status: p.exit_status.as_deref(),
                summary: report.summary.iter().find(|s| s.pid == p.pid),
                leaks: entries(report, &report.leaks, top, |e| e.pid == p.pid),
                hotspots: entries(report, &report.hotspots, top, |e| e.pid == p.pid),
            })
            .collect(),
        totals: Totals {
            allocs: t.allocs,
            frees: t.frees,
            bytes_allocated: t.bytes_allocated,
            bytes_freed: t.bytes_freed,
            live_bytes: t.live_bytes,
            lost_events: c.lost_events,
            lost_stacks: c.lost_stacks,
            unmatched_frees: c.unmatched_frees,
        },
        counters: c,
        min_age_s: report.min_age_s,
        leaks: entries(report, &report.leaks, top, |_| true),
        hotspots: entries(report, &report.hotspots, top, |_| true),
        history: report.history.as_ref().map(|h| JsonHistory {
            peak: entries(report, &h.peak, top, |_| true),
            temporary_rule: &h.temporary_rule,
            temporary: entries(report, &h.temporary, top, |_| true),
            timeline: &h.timeline,
        }),
    };
    serde_json::to_string_pretty(&json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ProcessInfo;

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
        };
        let report = Report {
            duration_s: 2.0,
            processes: vec![ProcessInfo {
                pid: 5,
                command: "cmd".into(),
                ..ProcessInfo::default()
            }],
            totals: super::super::Totals {
                allocs: 2,
                frees: 0,
                bytes_allocated: 30,
                bytes_freed: 0,
                live_bytes: 30,
            },
            counters: Counters {
                lost_events: 3,
                ..Counters::default()
            },
            min_age_s: 0.0,
            leaks: vec![entry(20), entry(10)],
            hotspots: vec![entry(20), entry(10)],
            summary: vec![],
            history: None,
        };
        let v: serde_json::Value =
            serde_json::from_str(&render(&report, 1).expect("json")).expect("parse");
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
    }
}
