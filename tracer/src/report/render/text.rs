//! The report as text tables for a terminal.

use std::{fmt::Write as _, io};

use super::{
    Options, Section,
    numbers::{grouped, human_bytes},
};
use crate::{
    escape,
    event::{ExitReason, pid_label},
    frame::Frame,
    report::{Activity, Entry, GrowthStatus, ProcessSummary, Report},
};

/// Where a frame is. Names and paths come from traced processes and their
/// files: every one is escaped (`escape::text`).
fn location(frame: &Frame) -> String {
    let module = escape::text(frame.module_name());
    match (&frame.file, frame.line, frame.offset) {
        (Some(file), Some(line), _) => format!("{}:{line}", escape::text(file)),
        (Some(file), None, _) => escape::text(file).into_owned(),
        (None, _, Some(offset)) => format!("{module}+{offset:#x}"),
        (None, _, None) => module.into_owned(),
    }
}

fn write_entry(out: &mut String, rank: usize, e: &Entry, what: &str) {
    let _ = writeln!(
        out,
        "  #{rank:<3} {} in {} {what}",
        human_bytes(e.bytes),
        grouped(e.count),
    );
    write_stack(out, e);
}

/// An entry's frames, one a line.
fn write_stack(out: &mut String, e: &Entry) {
    let functions: Vec<_> = e.stack.iter().map(|f| escape::text(&f.function)).collect();
    let width = functions
        .iter()
        .map(|f| f.chars().count())
        .max()
        .unwrap_or(0)
        .min(48);
    for (f, function) in e.stack.iter().zip(&functions) {
        let mut line = format!("        {function:<width$}  {}", location(f));
        if f.file.is_some() {
            let _ = write!(line, "  [{}]", escape::text(f.module_name()));
        }
        if f.inlined {
            line.push_str("  (inlined)");
        }
        if let Some(why) = &f.unknown {
            let _ = write!(line, "  ({})", escape::text(why));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if e.truncated {
        let _ = writeln!(
            out,
            "        ... (truncated: outer frames could not be unwound)"
        );
    }
    if !e.types.is_empty() {
        let _ = writeln!(out, "        {}", super::types::entry_line(&e.types));
    }
}

pub fn render(report: &Report, options: &Options) -> io::Result<Vec<u8>> {
    Ok(text(report, &options.sections, options.top).into_bytes())
}

fn text(report: &Report, sections: &[Section], top: usize) -> String {
    let mut out = String::new();
    let n = report.processes.len();
    let _ = writeln!(
        out,
        "tracer: recorded {:.2} s, {n} process{}",
        report.duration_s,
        if n == 1 { "" } else { "es" }
    );
    if !report.probes.is_empty() {
        let _ = writeln!(out, "  probes: {}", report.probes);
    }
    let t = &report.totals;
    let c = &report.counters;
    let _ = writeln!(
        out,
        "  allocations {} ({}), frees {} ({}), leaked {}",
        grouped(t.allocs),
        human_bytes(t.bytes_allocated),
        grouped(t.frees),
        human_bytes(t.bytes_freed),
        human_bytes(t.live_bytes)
    );
    let shown = [
        tracer_common::counter::EVENTS,
        tracer_common::counter::LOST_EVENTS,
        tracer_common::counter::LOST_STACKS,
        crate::counters::UNMATCHED_FREES,
        crate::counters::TRUNCATED_STACKS,
    ];
    let counts: Vec<String> = shown
        .iter()
        .map(|&i| {
            let name = crate::counters::NAMES[i as usize].replace('_', " ");
            format!("{name} {}", grouped(c.get(i)))
        })
        .collect();
    let _ = writeln!(out, "  {}", counts.join(", "));
    for p in &report.processes {
        let info = &p.info;
        let _ = writeln!(out);
        let _ = write!(
            out,
            "== pid {}  {}",
            pid_label(info.pid),
            escape::text(&info.command)
        );
        if let Some(parent) = info.parent {
            let _ = write!(out, "  (forked from pid {})", pid_label(parent));
        }
        let _ = writeln!(out);
        let mut about: Vec<String> = info.python.iter().cloned().collect();
        about.push(match p.leaks_taken {
            Some(taken) => {
                let what = match taken.reason {
                    ExitReason::PyFinalize => "Py_FinalizeEx",
                    ExitReason::LibcExit => "exit()",
                };
                format!("leaks taken at {what}, {:.2} s", taken.at_s)
            }
            None => "leaks taken at the end of the recording".to_owned(),
        });
        about.extend(info.exit_status.iter().cloned());
        if p.inherited_bytes > 0 {
            about.push(format!(
                "{} inherited at fork (not its leaks)",
                human_bytes(p.inherited_bytes)
            ));
        }
        let _ = writeln!(out, "   {}", escape::text(&about.join("; ")));
        for note in &info.notes {
            let _ = writeln!(out, "   note: {}", escape::text(note));
        }
        let stacks = p.thread_stacks;
        let _ = writeln!(
            out,
            "   thread stacks: {}, {} reserved{}",
            grouped(stacks.count),
            human_bytes(stacks.bytes),
            if report.thread_stacks_included {
                " (ranked with the other mappings: --include-thread-stacks)"
            } else {
                ""
            }
        );
        for section in sections {
            write_section(&mut out, report, info.pid, *section, top);
        }
    }
    out
}

fn write_section(out: &mut String, report: &Report, pid: u32, section: Section, top: usize) {
    let history = &report.history;
    let label = pid_label(pid);
    let (title, list, what): (String, &[Entry], &str) = match section {
        Section::Leaks => {
            let age = if report.min_age_s > 0.0 {
                format!(", at least {} s old", report.min_age_s)
            } else {
                String::new()
            };
            (
                format!("leaks of pid {label} (live when it began to exit, or at the end{age})"),
                &report.leaks,
                "live allocations",
            )
        }
        Section::Hotspots => (
            format!("hotspots of pid {label} (allocated during the recording)"),
            &report.hotspots,
            "allocations",
        ),
        Section::Peak => {
            let title = match report.summary_of(pid) {
                Some(s) if s.activity.peak_bytes > 0 => format!(
                    "allocations of pid {label} live at its peak ({} at {:.2} s)",
                    human_bytes(s.activity.peak_bytes),
                    s.peak_at_s
                ),
                _ => format!("allocations of pid {label} live at its peak (no heap)"),
            };
            (title, &history.peak, "live allocations")
        }
        Section::Temporary => (
            format!(
                "temporary allocations of pid {label} ({})",
                history.temporary_rule
            ),
            &history.temporary,
            "allocations",
        ),
        Section::Summary => {
            if let Some(s) = report.summary_of(pid) {
                write_summary(out, s);
            }
            return;
        }
        Section::Types => {
            if let Some(t) = report.types_of(pid) {
                super::types::section(out, t, top);
            }
            return;
        }
        Section::Lines => {
            for f in report.lines.iter().filter(|f| f.pid == pid) {
                out.push_str(&super::lines::text(f));
            }
            return;
        }
        Section::Growth => return write_growth(out, report, pid, top),
    };
    let mine: Vec<&Entry> = list.iter().filter(|e| e.pid == pid).collect();
    let _ = writeln!(out, "Top {} {title}:", top.min(mine.len()));
    if mine.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (i, e) in mine.iter().take(top).enumerate() {
        write_entry(out, i + 1, e, what);
    }
}

/// The stacks of `pid` by growth: status and rate, live bytes now and in
/// each window tested.
fn write_growth(out: &mut String, report: &Report, pid: u32, top: usize) {
    let g = &report.history.growth;
    let mine: Vec<_> = g.entries.iter().filter(|e| e.entry.pid == pid).collect();
    let _ = writeln!(
        out,
        "Growth of pid {pid}: {} windows of {:.1} s, trend over the last {}:",
        grouped(g.windows),
        g.window_s,
        g.tested.min(g.windows as usize)
    );
    if mine.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (i, e) in mine.iter().take(top).enumerate() {
        let rate = match e.status {
            GrowthStatus::Growing => format!(", {}/hour", human_bytes(e.bytes_per_hour as u64)),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  #{:<3} {} {} live now{rate}",
            i + 1,
            e.status.name(),
            human_bytes(e.entry.bytes),
        );
        write_stack(out, &e.entry);
        let series: Vec<String> = e.series.iter().map(|b| human_bytes(*b)).collect();
        let _ = writeln!(out, "        windows: {}", series.join(" "));
    }
}

fn write_summary(out: &mut String, s: &ProcessSummary) {
    let row = |out: &mut String, who: &str, a: &Activity| {
        let _ = writeln!(
            out,
            "  {who:<14} {:>12} in {:>9}  {:>12} in {:>9}  {:>12}  {:>12}  {:>12}",
            human_bytes(a.allocated_bytes),
            grouped(a.allocations),
            human_bytes(a.freed_bytes),
            grouped(a.frees),
            human_bytes(a.live_bytes),
            human_bytes(a.leaked_bytes),
            human_bytes(a.peak_bytes),
        );
    };
    let _ = writeln!(
        out,
        "Summary (memory charged to the thread that allocated it; leaked = live when it began to exit):\n  {:<14} {:>25}  {:>25}  {:>12}  {:>12}  {:>12}",
        "", "allocated", "freed", "live at end", "leaked", "peak"
    );
    row(out, "process", &s.activity);
    for (tid, a) in &s.threads {
        row(out, &format!("thread {tid}"), a);
    }
    let _ = writeln!(
        out,
        "  peak reached at {:.2} s; unmatched frees {}, implied frees {}",
        s.peak_at_s,
        grouped(s.unmatched_frees),
        grouped(s.implied_frees)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        counters::Counters,
        frame::FrameKind,
        model::heap::ThreadStacks,
        process::ProcessInfo,
        report::{History, LeaksTaken, ProcessReport, Totals},
    };

    #[test]
    fn renders_entries_with_locations() {
        let frame = |function: &str, file: Option<&str>, line| Frame {
            kind: FrameKind::Native,
            function: function.into(),
            module: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
            file: file.map(str::to_owned),
            line,
            offset: Some(0x98930),
            inlined: false,
            unknown: None,
        };
        let report = Report {
            duration_s: 1.5,
            probes: String::new(),
            processes: vec![ProcessReport {
                info: ProcessInfo {
                    pid: 42,
                    explicit: true,
                    parent: None,
                    command: "python3 leak.py".into(),
                    exit_status: Some("exited with status 0".into()),
                    python: Some("CPython 3.11 (/usr/bin/python3.11)".into()),
                    notes: vec!["a note".into()],
                },
                leaks_taken: Some(LeaksTaken {
                    reason: ExitReason::PyFinalize,
                    at_s: 1.25,
                }),
                thread_stacks: ThreadStacks {
                    count: 2,
                    bytes: 2 * 8_392_704,
                },
                inherited_bytes: 0,
            }],
            totals: Totals {
                allocs: 3,
                frees: 1,
                bytes_allocated: 3072,
                bytes_freed: 1024,
                live_bytes: 2048,
            },
            counters: Counters::default(),
            min_age_s: 0.0,
            thread_stacks_included: false,
            leaks: vec![Entry {
                pid: 42,
                bytes: 2048,
                count: 2,
                stack: vec![
                    frame("malloc", None, None),
                    frame("make", Some("leak.c"), Some(7)),
                ],
                truncated: true,
                types: vec![],
            }],
            hotspots: vec![],
            summary: vec![],
            history: History::default(),
            types: vec![],
            lines: vec![],
        };
        let text = text(&report, &super::super::RECORD_SECTIONS, 10);
        assert!(
            text.contains(
                "== pid 42  python3 leak.py\n   CPython 3.11 (/usr/bin/python3.11); leaks taken at Py_FinalizeEx, 1.25 s; exited with status 0\n   note: a note\n   thread stacks: 2, 16.01 MiB reserved\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("#1   2.00 KiB in 2 live allocations\n"),
            "{text}"
        );
        assert!(text.contains("malloc  libc.so.6+0x98930"), "{text}");
        assert!(text.contains("make    leak.c:7  [libc.so.6]"), "{text}");
        assert!(text.contains("(truncated"), "{text}");
        assert!(text.contains("Top 0 hotspots of pid 42"), "{text}");
    }
}
