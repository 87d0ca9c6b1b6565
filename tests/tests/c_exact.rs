//! A C program calling each allocation function with exact sizes: every
//! count and byte total per call site is exact.

use tests::{compile_c, frames, has_line, line_of, record, workload};

/// (marker, allocations, bytes allocated, still live at exit)
const SITES: [(&str, u64, u64, bool); 8] = [
    // 1000 mallocs of 1000 + i % 7 bytes: 1000 * 1000 + 142 * 21 + 15
    ("@churn", 1000, 1_002_997, false),
    ("@leak_malloc", 1, 1111, true),
    ("@leak_calloc", 1, 2220, true),
    ("@realloc_source", 1, 100, false),
    ("@leak_realloc", 1, 3333, true),
    ("@leak_memalign", 1, 4444, true),
    ("@temp_calloc", 1, 3000, false),
    ("@realloc_null", 1, 777, false),
];

#[test]
fn every_count_and_byte_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = compile_c(
        "allocs.c",
        dir.path(),
        &["-g", "-O0", "-fno-omit-frame-pointer"],
    );
    let r = record(&["--top", "1000", "--", program.to_str().expect("utf-8")]);
    let source = workload("allocs.c");
    for (marker, count, bytes, leaked) in SITES {
        let line = line_of(&source, marker);
        let at_site = |report: &str| -> (u64, u64) {
            r.entries(report)
                .iter()
                .filter(|e| has_line(e, "allocs.c", line))
                .fold((0, 0), |(c, b), e| {
                    (
                        c + e["count"].as_u64().expect("count"),
                        b + e["bytes"].as_u64().expect("bytes"),
                    )
                })
        };
        assert_eq!(
            at_site("hotspots"),
            (count, bytes),
            "hotspots at {marker} (allocs.c:{line})\n{}",
            r.stdout()
        );
        let expected_leak = if leaked { (count, bytes) } else { (0, 0) };
        assert_eq!(
            at_site("leaks"),
            expected_leak,
            "leaks at {marker} (allocs.c:{line})\n{}",
            r.stdout()
        );
    }
    // The program's frames are complete: main is there, and the stack reaches libc's start.
    let leak = r
        .entries("leaks")
        .iter()
        .find(|e| has_line(e, "allocs.c", line_of(&source, "@leak_calloc")))
        .expect("calloc leak");
    assert_eq!(frames(leak)[0]["function"], "calloc");
    assert_eq!(frames(leak)[1]["function"], "main");
    assert_eq!(leak["truncated"], false, "{leak}");
    assert_eq!(r.counter("unmatched_frees"), 0);
    assert_eq!(r.counter("lost_events"), 0);
    assert_eq!(r.counter("lost_stacks"), 0);
    assert_eq!(r.report["processes"][0]["leaks_taken_at"], "libc_exit");
}
