//! One self-contained HTML page: summary, memory over time, flamegraphs,
//! the top tables with Python file:line, and the loss counters. Nothing is
//! fetched: the style is inline, the plot is SVG drawn here, and each
//! flamegraph is inferno's SVG (with its own script) in a data: iframe.

use std::{fmt::Write as _, io};

use base64::Engine as _;

use super::{
    Options, flamegraph,
    numbers::{grouped, human_bytes},
};
use crate::{
    counters,
    event::pid_label,
    frame::{Frame, FrameKind},
    report::{Entry, FunctionLines, ProcessTypes, Report, TimelinePoint},
};
use tracer_common::counter;

/// HTML-escaped, control characters written out (`escape::text`).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in crate::escape::text(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
td.l,th.l{text-align:left}code{font-size:13px}details pre{margin:4px 0;font-size:12px}\
iframe{width:100%;height:520px;border:1px solid #ccc}.note{color:#555}";

/// Where an entry's memory was asked for, for a table: its innermost Python
/// frame, else its innermost native frame past the allocation function.
fn origin(e: &Entry) -> String {
    let f = e
        .stack
        .iter()
        .find(|f| f.kind == FrameKind::Python)
        .or_else(|| e.stack.get(1))
        .or_else(|| e.stack.first());
    match f {
        Some(f) => match (&f.file, f.line) {
            (Some(file), Some(line)) => format!("{} ({file}:{line})", f.function),
            _ => format!("{} [{}]", f.function, f.module_name()),
        },
        None => "[no stack]".to_owned(),
    }
}

fn frame_line(f: &Frame) -> String {
    match (&f.file, f.line) {
        (Some(file), Some(line)) => format!("{}  {file}:{line}", f.function),
        _ => format!("{}  [{}]", f.function, f.module_name()),
    }
}

fn table(out: &mut String, title: &str, entries: &[Entry], top: usize) {
    let _ = writeln!(out, "<h2>{}</h2>", esc(title));
    if entries.is_empty() {
        let _ = writeln!(out, "<p class=note>none</p>");
        return;
    }
    let _ = writeln!(
        out,
        "<table><tr><th>#</th><th>bytes</th><th>allocations</th><th>pid</th><th class=l>where</th></tr>"
    );
    for (i, e) in entries.iter().take(top).enumerate() {
        let stack: Vec<String> = e.stack.iter().map(|f| esc(&frame_line(f))).collect();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=l><details><summary><code>{}</code></summary><pre>{}{}</pre></details></td></tr>",
            i + 1,
            human_bytes(e.bytes),
            grouped(e.count),
            pid_label(e.pid),
            esc(&origin(e)),
            stack.join("\n"),
            if e.truncated { "\n... (truncated)" } else { "" }
        );
    }
    let _ = writeln!(out, "</table>");
}

/// Memory over time as an SVG line chart: live heap (solid) and resident
/// set (dashed) of each process.
fn plot(points: &[TimelinePoint]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 260.0;
    const PAD: f64 = 50.0;
    let t_max = points.iter().map(|p| p.t).fold(0.0_f64, f64::max).max(1e-3);
    let y_max = points
        .iter()
        .map(|p| p.live_bytes.max(p.rss_bytes.unwrap_or(0)))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let x = |t: f64| PAD + t / t_max * (W - 2.0 * PAD);
    let y = |v: f64| H - PAD + 10.0 - v / y_max * (H - 2.0 * PAD);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' role='img' aria-label='memory over time'>\
<line x1='{PAD}' y1='{b}' x2='{r}' y2='{b}' stroke='#888'/><line x1='{PAD}' y1='20' x2='{PAD}' y2='{b}' stroke='#888'/>\
<text x='{PAD}' y='{lb}' font-size='11'>0 s</text><text x='{r}' y='{lb}' font-size='11' text-anchor='end'>{t_max:.2} s</text>\
<text x='4' y='24' font-size='11'>{top}</text>",
        b = H - PAD + 10.0,
        r = W - PAD,
        lb = H - PAD + 26.0,
        top = human_bytes(y_max as u64),
    );
    const COLORS: [&str; 6] = [
        "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let mut pids: Vec<u32> = points.iter().map(|p| p.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    for (i, pid) in pids.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mine: Vec<&TimelinePoint> = points.iter().filter(|p| p.pid == *pid).collect();
        let line = |v: &dyn Fn(&TimelinePoint) -> Option<u64>| -> String {
            mine.iter()
                .filter_map(|p| v(p).map(|v| format!("{:.1},{:.1}", x(p.t), y(v as f64))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = write!(
            svg,
            "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>\
<polyline fill='none' stroke='{color}' stroke-dasharray='5,4' points='{}'/>\
<text x='{}' y='{}' font-size='11' fill='{color}'>pid {}: live heap (solid), resident set (dashed)</text>",
            line(&|p| Some(p.live_bytes)),
            line(&|p| p.rss_bytes),
            PAD + 10.0,
            34.0 + 14.0 * i as f64,
            pid_label(*pid),
        );
    }
    svg.push_str("</svg>");
    svg
}

fn flamegraph_frame(out: &mut String, title: &str, entries: &[Entry], report: &Report) {
    let _ = writeln!(out, "<h2>{}</h2>", esc(title));
    match flamegraph::svg(report, entries, title) {
        Ok(svg) => {
            let data = base64::engine::general_purpose::STANDARD.encode(svg);
            let _ = writeln!(
                out,
                "<iframe title='{}' src='data:image/svg+xml;base64,{data}'></iframe>",
                esc(title)
            );
        }
        Err(err) => {
            let _ = writeln!(
                out,
                "<p class=note>no flamegraph: {}</p>",
                esc(&err.to_string())
            );
        }
    }
}

/// The top leaking function of a process, line by line.
fn lines_table(out: &mut String, f: &FunctionLines) {
    let _ = writeln!(
        out,
        "<h2>Top leaking function of pid {}, line by line: <code>{}</code> ({})</h2>{}",
        f.pid,
        esc(&f.function),
        esc(&f.file),
        if f.estimated {
            "<p class=note>sampled: the amounts are estimates</p>"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "<table><tr><th>line</th><th>allocated</th><th>allocations</th><th>live</th><th>own allocated</th><th>own live</th><th class=l>source</th></tr>"
    );
    for l in &f.lines {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=l><code>{}</code></td></tr>",
            l.line,
            human_bytes(l.allocated_bytes),
            grouped(l.allocations),
            human_bytes(l.live_bytes),
            human_bytes(l.own_allocated_bytes),
            human_bytes(l.own_live_bytes),
            esc(l.source.as_deref().unwrap_or("(source not found)"))
        );
    }
    let _ = writeln!(out, "</table>");
}

/// A process's live objects by type.
fn types_table(out: &mut String, t: &ProcessTypes, top: usize) {
    let _ = writeln!(
        out,
        "<h2>Live objects by type of pid {} (heap walk {}, {:.2} s)</h2>",
        t.pid,
        super::types::moment(t.moment),
        t.at_s
    );
    for note in &t.notes {
        let _ = writeln!(out, "<p class=note>{}</p>", esc(note));
    }
    let grown = |name: &str| {
        t.growth
            .as_ref()
            .and_then(|g| g.types.iter().find(|g| g.name == name))
            .map_or_else(String::new, |g| format!("{:+}", g.count))
    };
    let _ = writeln!(
        out,
        "<table><tr><th>count</th><th>bytes</th><th>count growth</th><th class=l>type</th></tr>"
    );
    for ty in t.types.iter().take(top) {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=l><code>{}</code></td></tr>",
            grouped(ty.count),
            human_bytes(ty.bytes),
            grown(&ty.name),
            esc(&ty.name)
        );
    }
    let _ = writeln!(out, "</table>");
}

pub fn render(report: &Report, options: &Options) -> io::Result<Vec<u8>> {
    Ok(page(report, options.top).into_bytes())
}

fn page(report: &Report, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>tracer report</title><style>{STYLE}</style></head><body>"
    );
    let _ = writeln!(
        out,
        "<h1>tracer report</h1><p>Recorded {:.2} s; {} process(es).</p>",
        report.duration_s,
        report.processes.len()
    );
    let c = &report.counters;
    let _ = writeln!(
        out,
        "<h2>What could not be recorded</h2><table><tr><th class=l>events</th><th>lost events</th><th>lost stacks</th><th>lost code copies</th><th>unmatched frees</th><th>truncated stacks</th></tr>\
<tr><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        grouped(c.get(counter::EVENTS)),
        grouped(c.get(counter::LOST_EVENTS)),
        grouped(c.get(counter::LOST_STACKS)),
        grouped(c.get(counter::LOST_CODE)),
        grouped(c.get(counters::UNMATCHED_FREES)),
        grouped(c.get(counters::TRUNCATED_STACKS))
    );
    let history = &report.history;
    let _ = writeln!(
        out,
        "<h2>Summary</h2><table><tr><th>pid</th><th class=l>command</th><th>allocated</th><th>freed</th><th>leaked (live when it began to exit)</th><th>live at the end</th><th>peak</th></tr>"
    );
    for p in &report.processes {
        let p = &p.info;
        let (a, peak_at_s) = report
            .summary_of(p.pid)
            .map(|s| (s.activity, s.peak_at_s))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=l><code>{}</code><br><span class=note>{}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} at {peak_at_s:.2} s</td></tr>",
            pid_label(p.pid),
            esc(&p.command),
            esc(&p
                .python
                .iter()
                .chain(&p.notes)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")),
            human_bytes(a.allocated_bytes),
            human_bytes(a.freed_bytes),
            human_bytes(a.leaked_bytes),
            human_bytes(a.live_bytes),
            human_bytes(a.peak_bytes)
        );
    }
    let _ = writeln!(out, "</table>");
    let _ = writeln!(out, "<h2>Memory over time</h2>{}", plot(&history.timeline));
    table(&mut out, "Top leaks", &report.leaks, top);
    flamegraph_frame(
        &mut out,
        "Leaks flamegraph (live bytes)",
        &report.leaks,
        report,
    );
    for f in &report.lines {
        lines_table(&mut out, f);
    }
    for t in &report.types {
        types_table(&mut out, t, top);
    }
    table(&mut out, "Top hotspots", &report.hotspots, top);
    flamegraph_frame(
        &mut out,
        "Hotspots flamegraph (allocated bytes)",
        &report.hotspots,
        report,
    );
    table(&mut out, "Live at the peak", &history.peak, top);
    table(
        &mut out,
        &format!("Temporary allocations ({})", history.temporary_rule),
        &history.temporary,
        top,
    );
    let _ = writeln!(out, "</body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_text() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn plots_every_process() {
        let p = |pid, t, live| TimelinePoint {
            pid,
            t,
            live_bytes: live,
            rss_bytes: Some(live * 2),
        };
        let svg = plot(&[p(1, 0.0, 10), p(1, 1.0, 20), p(2, 0.5, 5)]);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("pid 2"));
        assert!(plot(&[]).ends_with("</svg>"));
    }
}
