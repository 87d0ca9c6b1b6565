//! A CPython that lies about itself (docs/security.md): its frame chain is
//! a cycle and its code object's line table and names claim 2^40 bytes.
//! tracer must survive it with the memory an honest run of the same
//! program takes, print clean text, and still count the leak exactly.

use std::{process::Command, time::Duration};

use serde_json::Value;
use tests::{
    DEBIAN_PYTHON, Recorded, interrupt, line_of, python_frames, scripted::Scripted, spawn_record,
    workload,
};

const LEAKED: u64 = 2_000;
/// bytearray(10_000) asks for one more byte, its terminating NUL.
const LEAK_SIZE: u64 = 10_001;
/// tracer-common's MAX_PY_DEPTH: the kernel's walk stops there.
const MAX_PY_DEPTH: usize = 80;

fn start(mode: &str) -> Scripted {
    let mut cmd = Command::new(DEBIAN_PYTHON);
    cmd.arg(workload("fake_cpython.py"))
        .args([mode, &LEAKED.to_string()]);
    Scripted::start(cmd, "ready")
}

/// A process's peak resident memory so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

struct Run {
    report: Recorded,
    peak_rss: u64,
    pid: u64,
}

/// `tracer record --pid` of the workload in `mode` while it leaks.
fn run(mode: &str) -> Run {
    let mut w = start(mode);
    let tracer = spawn_record(&["--pid", &w.pid().to_string(), "--exact"]);
    tracer.wait_for("tracer: recording", Duration::from_secs(60));
    w.say("go");
    w.expect("leaked");
    let peak_rss = peak_rss(tracer.child.id());
    let report = interrupt(tracer);
    w.say("stop");
    Run {
        report,
        peak_rss,
        pid: u64::from(w.pid()),
    }
}

/// The one leak entry of `run`'s process with the workload's buffers.
fn the_leak(run: &Run) -> &Value {
    let found: Vec<&Value> = run
        .report
        .entries("leaks")
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(run.pid) && e["count"].as_u64() == Some(LEAKED))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "no leak of {LEAKED} buffers:\n{}",
        serde_json::to_string_pretty(run.report.entries("leaks")).unwrap_or_default()
    );
    found[0]
}

#[test]
fn a_cyclic_frame_chain_and_huge_sizes_leave_tracer_bounded_and_the_leak_exact() {
    let honest = run("honest");
    let leak_line = line_of(&workload("fake_cpython.py"), "# LEAK");
    let leak = the_leak(&honest);
    assert!(
        python_frames(leak)
            .iter()
            .any(|f| f["line"].as_u64() == Some(leak_line)),
        "the honest run's leak is not at line {leak_line}: {leak:#}"
    );
    assert_eq!(leak["truncated"], false);

    let hostile = run("hostile");
    let leak = the_leak(&hostile);
    assert_eq!(leak["bytes"].as_u64(), Some(LEAKED * LEAK_SIZE));
    // The cycle is walked to the kernel's bound, and said to be cut.
    let frames = python_frames(leak);
    assert!(
        frames.len() <= MAX_PY_DEPTH,
        "{} Python frames",
        frames.len()
    );
    assert_eq!(leak["truncated"], true, "{leak:#}");
    // A name that claims 2^40 characters is no name: the frame is unknown,
    // not named with the bytes that follow the string in the process.
    for f in &frames {
        let name = f["function"].as_str().unwrap_or_default();
        assert!(
            name.len() <= 1024 && !name.contains('\0'),
            "a frame named with the process's bytes: {f}"
        );
    }

    eprintln!(
        "tracer's peak RSS: {} MiB honest, {} MiB fake; {} Python frames in the cycle, the first {}",
        honest.peak_rss >> 20,
        hostile.peak_rss >> 20,
        frames.len(),
        frames.first().map(|f| f.to_string()).unwrap_or_default()
    );
    // Bounded: what an honest run of the same program takes, with room for
    // the allocator's slack.
    let bound = honest.peak_rss + honest.peak_rss / 4 + (32 << 20);
    assert!(
        hostile.peak_rss <= bound,
        "tracer peaked at {} MiB on the fake CPython, {} MiB on the honest one",
        hostile.peak_rss >> 20,
        honest.peak_rss >> 20
    );

    // Clean text: no control character but line ends.
    let text = hostile.report.stdout();
    if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\n') {
        panic!("the text report holds {c:?}:\n{text}");
    }
    assert!(text.contains("leaks"), "no text report on stdout:\n{text}");
    assert!(!hostile.report.stderr().contains("panicked"));
}
