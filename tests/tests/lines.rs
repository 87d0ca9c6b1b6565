//! `tracer report CAPTURE lines`: a function that allocates at three known
//! lines with known sizes (one kept, one freed at once, one in a callee)
//! shows each line's bytes within 5% (10% when sampled, marked as
//! estimates), 0 for lines that allocate nothing, and the file's own text.

use std::path::Path;

use serde_json::Value;
use tests::{Interpreter, interpreters, line_of, off_by_percent, record, workload};

/// Iterations of `work`: 50 MB kept at LINE A, 25 MB freed at LINE B,
/// 100 MB kept by the callee of LINE C. Large enough that an arena of
/// CPython's object allocator (up to 1 MiB, mapped on whichever line
/// needs it) stays within 2% of a line.
const COUNT: u64 = 500;
/// `bytearray(100_000)`: its buffer holds one more byte, the terminator.
const A: u64 = 100_001;
/// `bytes(50_000)`: the object with its 33-byte header, one block.
const B: u64 = 50_033;
const C: u64 = 200_001;

/// `tracer report CAPTURE lines ARGS --format json`, parsed.
fn lines_report(capture: &Path, args: &[&str]) -> Value {
    let out = tests::tracer()
        .arg("report")
        .arg(capture)
        .arg("lines")
        .args(args)
        .args(["--format", "json"])
        .output()
        .expect("run tracer report");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("lines JSON")
}

fn row(table: &Value, line: u64) -> Option<&Value> {
    table["lines"]
        .as_array()?
        .iter()
        .find(|l| l["line"].as_u64() == Some(line))
}

fn field(table: &Value, line: u64, name: &str) -> u64 {
    row(table, line).and_then(|l| l[name].as_u64()).unwrap_or(0)
}

/// Records `lines_work.py` under `python` with `extra` options and checks
/// the table of `work`; `tolerance` in percent.
fn check(python: &Interpreter, extra: &[&str], tolerance: f64) -> Result<(), String> {
    let script = workload("lines_work.py");
    let source = std::fs::read_to_string(&script).expect("read workload");
    let source: Vec<&str> = source.lines().collect();
    let [def, a, b, c, nothing, ret] = [
        "def work(n):",
        "# LINE A",
        "# LINE B",
        "# LINE C",
        "# NOTHING",
        "# RETURN",
    ]
    .map(|m| line_of(&script, m));
    let mut args: Vec<&str> = extra.to_vec();
    let count = COUNT.to_string();
    args.extend([
        "--",
        python.path.to_str().expect("utf-8"),
        script.to_str().expect("utf-8"),
        &count,
    ]);
    let r = record(&args);
    let capture = r.dir.path().join("capture.tracer");
    let t = lines_report(&capture, &["--function", "work", "--file", "lines_work.py"]);
    let fail = |what: String| Err(format!("{what}\n{t:#}"));
    if t["function"] != "work"
        || !t["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("lines_work.py"))
    {
        return fail("not the table of work".into());
    }
    if t["estimated"].as_bool() != Some(!extra.is_empty() && extra[0] == "--sample-bytes") {
        return fail("estimates not marked as such (or marked unsampled)".into());
    }
    // Every line of the function, from its def to its last line, in order,
    // with the file's own text.
    let numbers: Vec<u64> = t["lines"]
        .as_array()
        .map(|l| l.iter().filter_map(|l| l["line"].as_u64()).collect())
        .unwrap_or_default();
    if numbers != (def..=ret).collect::<Vec<_>>() {
        return fail(format!("lines {numbers:?}, not {def}..={ret}"));
    }
    for n in def..=ret {
        let want = source[n as usize - 1].trim_end();
        if row(&t, n)
            .and_then(|l| l["source"].as_str())
            .map(str::trim_end)
            != Some(want)
        {
            return fail(format!("line {n}'s source is not {want:?}"));
        }
    }
    for (line, name, want) in [
        (a, "allocated_bytes", COUNT * A),
        (a, "own_allocated_bytes", COUNT * A),
        (a, "live_bytes", COUNT * A),
        (b, "allocated_bytes", COUNT * B),
        // Callees count on the calling line, not as its own.
        (c, "allocated_bytes", COUNT * C),
        (c, "live_bytes", COUNT * C),
    ] {
        let got = field(&t, line, name);
        if off_by_percent(got, want) > tolerance {
            return fail(format!(
                "line {line} {name}: {got}, not {want} within {tolerance}%"
            ));
        }
    }
    // Exact counts are for unsampled recordings only.
    if extra.is_empty() && field(&t, a, "allocations") < COUNT {
        return fail(format!("fewer than {COUNT} allocations at line {a}"));
    }
    // The 50 KB temporaries are freed (the last one when work returns);
    // the helper's allocations are not line C's own.
    if field(&t, b, "live_bytes") > B || field(&t, c, "own_allocated_bytes") > C / 10 {
        return fail("line B kept, or line C allocated itself".into());
    }
    for line in [nothing, ret] {
        if field(&t, line, "allocated_bytes") != 0 {
            return fail(format!("line {line} allocates nothing"));
        }
    }
    Ok(())
}

fn for_interpreters(names: &[&str], extra: &[&str], tolerance: f64) {
    let failures: Vec<String> = interpreters()
        .into_iter()
        .filter(|i| names.contains(&i.name))
        .filter_map(|i| {
            check(&i, extra, tolerance)
                .err()
                .map(|e| format!("{}: {e}", i.name))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn each_line_of_a_function_with_its_bytes() {
    // Both ends of the object and frame layouts, and Debian's LTO build.
    for_interpreters(&["pyenv-3.8", "debian-3.11", "sid-3.15"], &[], 5.0);
}

#[test]
fn each_line_with_pymalloc() {
    for_interpreters(&["pyenv-3.12"], &["--pymalloc"], 5.0);
}

#[test]
fn each_line_estimated_when_sampled() {
    for_interpreters(&["debian-3.11"], &["--sample-bytes", "16384"], 10.0);
}

#[test]
fn the_text_table_and_a_whole_file() {
    let script = workload("lines_work.py");
    let python = tests::DEBIAN_PYTHON;
    let r = record(&["--", python, script.to_str().expect("utf-8"), "20"]);
    let capture = r.dir.path().join("capture.tracer");
    let out = tests::tracer()
        .arg("report")
        .arg(&capture)
        .args(["lines", "--function", "work"])
        .output()
        .expect("run tracer report");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let a = line_of(&script, "# LINE A");
    // 20 x 100,001 bytes.
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{a} ")))
        .unwrap_or_else(|| panic!("no row {a}:\n{text}"));
    assert!(
        row.contains("1.91 MiB") && row.ends_with("# LINE A"),
        "{row}\n{text}"
    );
    // The whole file: the helper's line too, and the module's.
    let t = lines_report(&capture, &["--file", "lines_work.py"]);
    let helper = line_of(&script, "# HELPER");
    assert!(
        off_by_percent(field(&t, helper, "own_allocated_bytes"), 20 * C) <= 5.0,
        "{t:#}"
    );
    assert_eq!(t["function"], "", "{t:#}");
    // The HTML report: the top leaking function (the helper: 4 MB kept,
    // against work's 2 MB) line by line.
    let out = tests::tracer()
        .arg("report")
        .arg(&capture)
        .arg("html")
        .output()
        .expect("run tracer report html");
    assert!(out.status.success(), "{out:?}");
    let html = String::from_utf8_lossy(&out.stdout);
    let section = html
        .split("line by line: <code>")
        .nth(1)
        .unwrap_or_else(|| panic!("no line-by-line table:\n{html}"));
    assert!(section.starts_with("helper</code>"), "{section}");
    let row = format!("<tr><td>{helper}</td><td>3.81 MiB</td>");
    assert!(section.contains(&row), "no {row}: {section}");
}
