//! A C program calling each allocation function with exact sizes: every
//! count and byte total per call site is exact, with each glibc the tests
//! have (their malloc, free, calloc and realloc begin differently, and so
//! are probed at different places: docs/probes.md), and with each way of
//! attaching the probes (uprobe sessions, multi-uprobe links, perf-event
//! uprobes: each matches entries to returns its own way).

use std::path::Path;

use tests::{GlibcBuild, compile_c, frames, glibc_builds, has_line, line_of, record, workload};

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

/// `--probe-links` values, and how the report names each.
const LINKS: [(&str, &str); 3] = [
    ("session", "uprobe sessions"),
    ("multi", "multi-uprobe links"),
    ("perf", "perf-event uprobes"),
];

/// allocs.c built once, and its copies for the other glibcs.
fn builds(dir: &Path) -> Vec<GlibcBuild> {
    let program = compile_c("allocs.c", dir, &["-g", "-O0", "-fno-omit-frame-pointer"]);
    glibc_builds(&program)
}

#[test]
fn every_count_and_byte_is_exact_with_each_glibc_and_link_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = workload("allocs.c");
    for (build, (links, named)) in builds(dir.path())
        .into_iter()
        .flat_map(|b| LINKS.map(|l| (b.clone(), l)))
    {
        let glibc = format!("{} with --probe-links {links}", build.glibc);
        let r = record(&[
            "--probe-links",
            links,
            "--top",
            "1000",
            "--",
            build.program.to_str().expect("utf-8"),
        ]);
        assert!(
            r.report["probes"]
                .as_str()
                .is_some_and(|p| p.starts_with(named)),
            "{glibc}: {}",
            r.report["probes"]
        );
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
                "{glibc}: hotspots at {marker} (allocs.c:{line})\n{}",
                r.stdout()
            );
            let expected_leak = if leaked { (count, bytes) } else { (0, 0) };
            assert_eq!(
                at_site("leaks"),
                expected_leak,
                "{glibc}: leaks at {marker} (allocs.c:{line})\n{}",
                r.stdout()
            );
        }
        // The program's frames are complete: main is there, and the stack
        // reaches libc's start (named where libc has debug symbols).
        let leak = r
            .entries("leaks")
            .iter()
            .find(|e| has_line(e, "allocs.c", line_of(&source, "@leak_calloc")))
            .expect("calloc leak");
        let stack = frames(leak);
        assert_eq!(stack[0]["function"], "calloc", "{glibc}");
        assert_eq!(stack[1]["function"], "main", "{glibc}");
        let outermost = stack.last().expect("frames");
        assert!(
            outermost["module"]
                .as_str()
                .is_some_and(|m| m.ends_with("/libc.so.6")),
            "{glibc}: {leak}"
        );
        if build.libc_symbols {
            assert_eq!(leak["truncated"], false, "{glibc}: {leak}");
        }
        for counter in ["unmatched_frees", "lost_events", "lost_stacks"] {
            assert_eq!(r.counter(counter), 0, "{glibc}: {counter}");
        }
        assert_eq!(
            r.report["processes"][0]["leaks_taken_at"], "libc_exit",
            "{glibc}"
        );
    }
}

#[test]
fn no_hot_function_is_single_stepped_with_any_glibc() {
    let dir = tempfile::tempdir().expect("tempdir");
    for build in builds(dir.path()) {
        let glibc = &build.glibc;
        let r = record(&["-v", "--", build.program.to_str().expect("utf-8")]);
        let stderr = r.stderr();
        assert!(
            !stderr.contains("single-stepped by the kernel"),
            "{glibc}: a hot probe is single-stepped:\n{stderr}"
        );
        // e.g. "probes on .../libc.so.6: malloc+3 (js short ...; emulated, past 1 instruction) ..."
        let placed = stderr
            .lines()
            .find(|l| l.contains("probes on") && l.contains("libc.so.6"))
            .unwrap_or_else(|| panic!("{glibc}: no placement line:\n{stderr}"));
        // exit too: every process on the host that exits runs its probe.
        for function in ["malloc", "free", "calloc", "realloc", "exit"] {
            let at = placed
                .split_once(&format!(" {function}+"))
                .and_then(|(_, rest)| rest.split_once(')'))
                .map(|(place, _)| place)
                .unwrap_or_else(|| panic!("{glibc}: {function} not probed: {placed}"));
            assert!(
                at.contains("; emulated"),
                "{glibc}: {function}+{at}) is not emulated"
            );
        }
    }
}
