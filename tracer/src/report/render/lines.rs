//! A function line by line (`tracer report CAPTURE lines`), as text in
//! memory_profiler's shape, or as JSON.

use std::{fmt::Write as _, io};

use super::numbers::{grouped, human_bytes};
use crate::report::FunctionLines;

/// The table of `f`, with a title naming it.
pub fn text(f: &FunctionLines) -> String {
    let mut out = String::new();
    let what = if f.function.is_empty() {
        format!("{} (the whole file)", f.file)
    } else {
        format!("{} ({})", f.function, f.file)
    };
    let _ = writeln!(
        out,
        "Line by line: {what}, pid {}{}",
        f.pid,
        if f.estimated {
            "  [sampled: amounts are estimates]"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "{:>7} {:>11} {:>11} {:>11} {:>11} {:>11}  Line contents",
        "Line #", "Allocated", "Allocations", "Live", "Own alloc.", "Own live"
    );
    let _ = writeln!(out, "{}", "=".repeat(90));
    for l in &f.lines {
        let source = match &l.source {
            Some(s) => s.as_str(),
            None if f.source_found => "",
            None => "(source not found)",
        };
        let _ = writeln!(
            out,
            "{:>7} {:>11} {:>11} {:>11} {:>11} {:>11}  {}",
            l.line,
            human_bytes(l.allocated_bytes),
            grouped(l.allocations),
            human_bytes(l.live_bytes),
            human_bytes(l.own_allocated_bytes),
            human_bytes(l.own_live_bytes),
            source.trim_end()
        );
    }
    if !f.others.is_empty() {
        let _ = writeln!(
            out,
            "also matched (choose with --file): {}",
            f.others.join(", ")
        );
    }
    out
}

/// `{"function", "file", "pid", "estimated", "source_found", "lines":
/// [{"line", "source", "allocations", "allocated_bytes", "live_bytes",
/// "own_*"}], "others"}`.
pub fn json(f: &FunctionLines) -> io::Result<Vec<u8>> {
    serde_json::to_vec_pretty(f).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::LineAmounts;

    #[test]
    fn every_line_with_its_source() {
        let f = FunctionLines {
            pid: 7,
            function: "work".into(),
            file: "w.py".into(),
            estimated: false,
            source_found: true,
            lines: vec![
                LineAmounts {
                    line: 4,
                    source: Some("def work():".into()),
                    ..LineAmounts::default()
                },
                LineAmounts {
                    line: 5,
                    source: Some("    a = bytes(2048)".into()),
                    allocations: 2,
                    allocated_bytes: 4096,
                    live_bytes: 4096,
                    own_allocations: 2,
                    own_allocated_bytes: 4096,
                    own_live_bytes: 4096,
                },
            ],
            others: vec![],
        };
        let t = text(&f);
        assert!(t.contains("Line by line: work (w.py), pid 7\n"), "{t}");
        assert!(
            t.contains("      4         0 B           0         0 B"),
            "{t}"
        );
        assert!(t.contains("4.00 KiB           2    4.00 KiB"), "{t}");
        assert!(t.ends_with("    a = bytes(2048)\n"), "{t}");
        let j: serde_json::Value = serde_json::from_slice(&json(&f).expect("json")).expect("valid");
        assert_eq!(j["lines"][1]["allocated_bytes"], 4096);
        assert_eq!(j["lines"][0]["source"], "def work():");
    }
}
