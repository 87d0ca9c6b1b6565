//! The source text of a line-by-line table, read from the Python file the
//! frames name: every line of the function (found from its `def` by
//! indentation), or of the whole file. A capture may come from anywhere and
//! name any path, so only a regular `.py` file of reasonable size is read,
//! relative paths from the current directory.

use std::{collections::BTreeMap, fs, path::Path};

use super::{FunctionLines, LineAmounts, Report};

/// Larger than any hand-written module.
const MAX_SOURCE: u64 = 4 << 20;

/// The text of `path`, if it is a Python source file tracer may read.
pub fn read(path: &str) -> Option<String> {
    let path = Path::new(path);
    let ext = path.extension()?.to_str()?;
    if ext != "py" && ext != "pyw" {
        return None;
    }
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_SOURCE {
        return None;
    }
    let bytes = fs::read(path).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Fills in every table's source, from the files where they can be read.
pub fn fill_report(report: &mut Report) {
    for f in &mut report.lines {
        fill(f, read);
    }
}

/// Adds the source text to `f`'s lines, and the lines of the function (or
/// file) that allocated nothing, as zeros; `read` gives a file's text.
pub fn fill(f: &mut FunctionLines, read: impl Fn(&str) -> Option<String>) {
    let Some(text) = read(&f.file) else {
        return;
    };
    let source: Vec<&str> = text.lines().collect();
    let with_data: Vec<u32> = f.lines.iter().map(|l| l.line).collect();
    let (Some(&first), Some(&last)) = (with_data.first(), with_data.last()) else {
        return;
    };
    let range = if f.function.is_empty() || f.function == "<module>" {
        1..=source.len() as u32
    } else {
        let name = f.function.rsplit('.').next().unwrap_or(&f.function);
        extent(&source, name, first, last)
    };
    let mut rows: BTreeMap<u32, LineAmounts> = f.lines.drain(..).map(|l| (l.line, l)).collect();
    for line in range {
        rows.entry(line).or_insert_with(|| LineAmounts {
            line,
            ..LineAmounts::default()
        });
    }
    for row in rows.values_mut() {
        row.source = source.get(row.line as usize - 1).map(|s| (*s).to_owned());
    }
    f.lines = rows.into_values().collect();
    f.source_found = true;
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The lines of function `name`, whose lines `first` to `last` allocated:
/// from the nearest `def name` at or above `first`, while lines are blank,
/// comments, or indented deeper than the `def` (a closing bracket of a
/// signature too), and at least to `last`.
fn extent(source: &[&str], name: &str, first: u32, last: u32) -> std::ops::RangeInclusive<u32> {
    let is_def = |l: &str| {
        let t = l.trim_start();
        let t = t.strip_prefix("async ").unwrap_or(t).trim_start();
        t.strip_prefix("def ").is_some_and(|rest| {
            rest.trim_start()
                .strip_prefix(name)
                .is_some_and(|after| after.trim_start().starts_with('('))
        })
    };
    let upto = (first as usize).min(source.len());
    let Some(def) = (0..upto).rev().find(|&i| is_def(source[i])) else {
        return first..=last;
    };
    let depth = indent(source[def]);
    let mut end = def;
    for (i, l) in source.iter().enumerate().skip(def + 1) {
        let t = l.trim_start();
        let inside = t.is_empty() || t.starts_with('#') || indent(l) > depth || t.starts_with(')');
        if !inside {
            break;
        }
        if !t.is_empty() {
            end = i;
        }
    }
    (def as u32 + 1)..=(end as u32 + 1).max(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "import os\n\n@deco\ndef work(\n    n,\n):\n    a = bytes(n)  # one\n\n    b = [a]\n    # a comment\n    return b\n\n\ndef other():\n    pass\n";

    #[test]
    fn the_function_from_its_def_to_its_last_line() {
        let source: Vec<&str> = SOURCE.lines().collect();
        assert_eq!(extent(&source, "work", 7, 7), 4..=11);
        assert_eq!(extent(&source, "other", 15, 15), 14..=15);
        assert_eq!(extent(&source, "<lambda>", 7, 9), 7..=9);
        let mut f = FunctionLines {
            function: "Worker.work".into(),
            file: "w.py".into(),
            lines: vec![LineAmounts {
                line: 7,
                allocated_bytes: 100,
                ..LineAmounts::default()
            }],
            ..FunctionLines::default()
        };
        fill(&mut f, |_| Some(SOURCE.to_owned()));
        assert!(f.source_found);
        assert_eq!(f.lines.len(), 8);
        assert_eq!(f.lines[0].source.as_deref(), Some("def work("));
        let seven = f.lines.iter().find(|l| l.line == 7).expect("line 7");
        assert_eq!(seven.allocated_bytes, 100);
        assert_eq!(seven.source.as_deref(), Some("    a = bytes(n)  # one"));
        // No file: the lines that allocated, without text.
        let mut g = FunctionLines {
            function: "work".into(),
            lines: vec![LineAmounts::default()],
            ..FunctionLines::default()
        };
        fill(&mut g, |_| None);
        assert!(!g.source_found);
        assert_eq!(g.lines.len(), 1);
        assert_eq!(read("/etc/passwd"), None, "only Python sources are read");
    }
}
