//! Thread stacks on glibc 2.42 and newer (2.43 today, under Debian sid's
//! CPython 3.14): glibc maps each thread's 8 MiB stack readable and keeps a
//! finished thread's for the next, so the stacks are as large as a real
//! leak and live at exit. They are counted apart, not ranked as leaks,
//! unless asked for.

use serde_json::Value;
use tests::{
    GlibcVersion, Recorded, debian_unpacked, line_of, python_frames, record, unpacked_glibc,
    workload,
};

const WORKERS: u64 = 4;
/// 2,000 buffers of 4,130 bytes (bytearray(n) allocates n + 1), 500 a worker.
const COUNT: u64 = 500;
const SIZE: u64 = 4_129;
/// glibc's default thread stack: RLIMIT_STACK (8 MiB) and a guard page.
const STACK: u64 = 8_392_704;

fn run(extra: &[&str]) -> Recorded {
    let python = debian_unpacked("sid", "3.14");
    // sid is not pinned: what is tested is the glibc that maps stacks
    // readable, 2.42 and newer.
    let glibc = unpacked_glibc("sid", "3.14");
    assert!(
        glibc >= GlibcVersion(2, 42),
        "sid's CPython 3.14 runs with glibc {glibc}: this test is for 2.42 and newer"
    );
    let script = workload("thread_stacks.py");
    let mut args = vec!["--top", "20"];
    args.extend_from_slice(extra);
    let (workers, count, size) = (WORKERS.to_string(), COUNT.to_string(), SIZE.to_string());
    args.extend([
        "--",
        python.to_str().expect("utf-8"),
        script.to_str().expect("utf-8"),
        &workers,
        &count,
        &size,
    ]);
    record(&args)
}

fn is_stack_mapping(e: &Value) -> bool {
    let stack = e["stack"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    stack.first().is_some_and(|f| f["function"] == "mmap")
        && e["bytes"].as_u64().is_some_and(|b| b >= STACK)
        && python_frames(e)
            .first()
            .is_some_and(|f| f["function"] == "Thread.start")
}

#[test]
fn thread_stacks_are_counted_apart_and_the_leak_is_first() {
    let r = run(&[]);
    let line = line_of(&workload("thread_stacks.py"), "# LEAK");
    let top = &r.entries("leaks")[0];
    let at_leak = python_frames(top).first().is_some_and(|f| {
        f["function"] == "work"
            && f["line"].as_u64() == Some(line)
            && f["file"]
                .as_str()
                .is_some_and(|p| p.ends_with("thread_stacks.py"))
    });
    assert!(
        at_leak,
        "leak #1 is not work() at line {line}:\n{}",
        r.stdout()
    );
    assert_eq!(
        top["bytes"].as_u64(),
        Some(WORKERS * COUNT * (SIZE + 1)),
        "{top}"
    );
    assert_eq!(top["count"].as_u64(), Some(WORKERS * COUNT), "{top}");
    for list in ["leaks", "hotspots"] {
        assert!(
            !r.entries(list).iter().any(is_stack_mapping),
            "a thread stack in {list}:\n{}",
            r.stdout()
        );
    }
    assert!(
        !r.report["history"]["peak"]
            .as_array()
            .is_some_and(|p| p.iter().any(is_stack_mapping)),
        "a thread stack in the peak"
    );
    // Each worker had a stack; glibc may hand a finished one to the next.
    let stacks = &r.report["processes"][0]["thread_stacks"];
    let count = stacks["count"].as_u64().expect("count");
    let bytes = stacks["bytes"].as_u64().expect("bytes");
    assert!((1..=WORKERS).contains(&count), "{stacks}");
    assert_eq!(bytes, count * STACK, "{stacks}");
    let line = format!(
        "thread stacks: {count}, {:.2} MiB reserved\n",
        bytes as f64 / (1 << 20) as f64
    );
    assert!(
        r.stdout().contains(&line),
        "no {line:?} in:\n{}",
        r.stdout()
    );
    assert_eq!(r.report["include_thread_stacks"], false);
}

#[test]
fn included_thread_stacks_rank_as_mappings() {
    let r = run(&["--include-thread-stacks"]);
    let stacks = r
        .entries("leaks")
        .iter()
        .find(|e| is_stack_mapping(e))
        .unwrap_or_else(|| panic!("no thread stack in the leaks:\n{}", r.stdout()));
    let count = r.report["processes"][0]["thread_stacks"]["count"]
        .as_u64()
        .expect("count");
    assert_eq!(stacks["bytes"].as_u64(), Some(count * STACK), "{stacks}");
    assert_eq!(r.report["include_thread_stacks"], true);
}
