//! `--sample-bytes`: a sample of the allocations, weighted so that the leak
//! report still estimates the true bytes and counts, whether an unsampled
//! call's return is skipped (uprobe sessions) or trapped and ignored
//! (multi-uprobe links).

use tests::{DEBIAN_PYTHON, line_of, off_by_percent, python_frames, record, workload};

const COUNT: u64 = 2000;
const SIZE: u64 = 10_000;
const MEAN: u64 = 16384;
/// Each buffer is sampled with p = 1 - exp(-SIZE/MEAN) = 0.457; the
/// estimate of COUNT x SIZE bytes has a relative standard deviation of
/// sqrt(SIZE (1-p) / (p COUNT SIZE)) = 2.4%: 12% is five of them.
const TOLERANCE_PERCENT: f64 = 12.0;

#[test]
fn sampled_leak_estimates_the_true_bytes() {
    for links in ["session", "multi"] {
        sampled_leak_with(links);
    }
}

fn sampled_leak_with(links: &str) {
    let script = workload("leak_buffers.py");
    let r = record(&[
        "--probe-links",
        links,
        "--sample-bytes",
        &MEAN.to_string(),
        "--",
        DEBIAN_PYTHON,
        script.to_str().expect("utf-8 path"),
        &COUNT.to_string(),
        &SIZE.to_string(),
    ]);
    let line = line_of(&script, "# LEAK");
    let at_leak: Vec<_> = r
        .entries("leaks")
        .iter()
        .filter(|e| {
            python_frames(e)
                .first()
                .is_some_and(|f| f["line"] == line && f["function"] == "leak")
        })
        .collect();
    let bytes: u64 = at_leak.iter().filter_map(|e| e["bytes"].as_u64()).sum();
    let count: u64 = at_leak.iter().filter_map(|e| e["count"].as_u64()).sum();
    // bytearray(n) allocates n + 1 bytes.
    let expected = COUNT * (SIZE + 1);
    assert!(
        off_by_percent(bytes, expected) <= TOLERANCE_PERCENT,
        "{links}: estimated {bytes} leaked bytes at line {line}, expected {expected} within {TOLERANCE_PERCENT}%:\n{}",
        r.stdout()
    );
    assert!(
        off_by_percent(count, COUNT) <= TOLERANCE_PERCENT,
        "{links}: estimated {count} leaked buffers, expected {COUNT}:\n{}",
        r.stdout()
    );
    // The interpreter's many small allocations (and their frees) were left
    // out in the kernel, and nothing was lost.
    assert!(
        r.counter("unsampled") > r.counter("events"),
        "{}",
        r.stdout()
    );
    assert_eq!(r.counter("lost_events"), 0, "{links}");
    let notes = r.report["processes"][0]["notes"].to_string();
    assert!(notes.contains("--sample-bytes 16384"), "{notes}");
}
