//! Brendan Gregg's collapsed stack format, for flamegraph tools:
//! `outermost;...;innermost weight`, one line per stack, weight in bytes.

use std::{fmt::Write as _, io};

use super::Options;
use crate::{
    escape,
    event::pid_label,
    frame::Frame,
    report::{Entry, Report},
};

/// A frame's name in a folded line: `function (file:line)` or
/// `function [module]`. `;` separates frames, so it may not appear in a
/// name; spaces may, since readers split the weight off at the last one;
/// a line end or a terminal escape may not (names come from traced
/// processes): those are escaped.
fn frame_name(f: &Frame) -> String {
    let name = match (&f.file, f.line) {
        (Some(file), Some(line)) => {
            let file = file.rsplit('/').next().unwrap_or(file);
            format!("{} ({file}:{line})", f.function)
        }
        _ if f.function == Frame::UNKNOWN_FUNCTION => {
            format!("[{}+{:#x}]", f.module_name(), f.offset.unwrap_or(0))
        }
        _ => format!("{} [{}]", f.function, f.module_name()),
    };
    escape::text(&name).replace(';', ":")
}

pub fn render(report: &Report, options: &Options) -> io::Result<Vec<u8>> {
    Ok(lines(report, options.of.entries(report)).into_bytes())
}

/// One line per entry; the process is the root frame so that processes stay
/// apart in a flamegraph.
pub fn lines(report: &Report, entries: &[Entry]) -> String {
    let command_of = |pid| report.command_name(pid);
    let mut out = String::new();
    for e in entries.iter().filter(|e| e.bytes > 0) {
        let mut line = format!(
            "{} (pid {})",
            escape::text(&command_of(e.pid)).replace(';', ":"),
            pid_label(e.pid)
        );
        for f in e.stack.iter().rev() {
            line.push(';');
            line.push_str(&frame_name(f));
        }
        let _ = writeln!(out, "{line} {}", e.bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameKind;

    fn frame(function: &str, file: Option<&str>, line: Option<u32>) -> Frame {
        Frame {
            kind: FrameKind::Native,
            function: function.into(),
            module: "/usr/lib/libc.so.6".into(),
            file: file.map(str::to_owned),
            line,
            offset: Some(0x10),
            inlined: false,
            unknown: None,
        }
    }

    #[test]
    fn outermost_first_with_bytes() {
        let e = Entry {
            pid: 3,
            bytes: 4096,
            count: 2,
            stack: vec![
                frame("malloc", None, None),
                frame("make;it", Some("/src/a.c"), Some(9)),
                frame(Frame::UNKNOWN_FUNCTION, None, None),
            ],
            truncated: true,
            types: vec![],
        };
        let empty = Entry {
            bytes: 0,
            ..e.clone()
        };
        let report = crate::report::render::tests::report_of(&[e, empty], "python3");
        let text = lines(&report, &report.leaks);
        assert_eq!(
            text,
            "python3 (pid 3);[libc.so.6+0x10];make:it (a.c:9);malloc [libc.so.6] 4096\n"
        );
    }
}
