//! `--all --sample-bytes` with two forked workers that allocate at the same
//! addresses and free everything: one worker's free must not take another's
//! sample (the kernel's map of sampled allocations is keyed by process and
//! address), so neither leaks.

use std::{
    io::{Read as _, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{DEBIAN_PYTHON, finish, off_by_percent, python_frames, spawn_record, workload};

const ROUNDS: u64 = 200;
const BUFFERS: u64 = 64;
/// Under glibc's mmap threshold: from the heap both workers inherit, so the
/// same addresses in both.
const SIZE: u64 = 65_536;
const MEAN: u64 = 16_384;
/// Each buffer is sampled with p = 1 - exp(-SIZE/MEAN) = 0.98: the estimate
/// of the allocated bytes is within a fraction of a percent; 5% is loose.
const TOLERANCE_PERCENT: f64 = 5.0;

/// Bytes of `report`'s entries of `pid` made in `work`.
fn in_work(r: &tests::Recorded, report: &str, pid: u64) -> u64 {
    r.entries(report)
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(pid))
        .filter(|e| python_frames(e).iter().any(|f| f["function"] == "work"))
        .filter_map(|e: &Value| e["bytes"].as_u64())
        .sum()
}

#[test]
fn forked_workers_that_free_everything_leak_nothing() {
    let tracer = spawn_record(&[
        "-v",
        "--all",
        "--sample-bytes",
        &MEAN.to_string(),
        "--top",
        "1000",
    ]);
    tracer.wait_for("tracer: recording", Duration::from_secs(60));
    let mut parent = Command::new(DEBIAN_PYTHON)
        .arg(workload("free_all_workers.py"))
        .args([ROUNDS, BUFFERS, SIZE].map(|n| n.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the workers' parent");
    tracer.wait_for(
        &format!("pid {}: CPython", parent.id()),
        Duration::from_secs(30),
    );
    parent
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write");
    let mut out = String::new();
    parent
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    assert!(parent.wait().expect("wait").success(), "{out}");
    let workers: Vec<u64> = out
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect();
    assert_eq!(workers.len(), 2, "{out}");
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(tracer.child.id() as i32, libc::SIGINT) };
    let r = finish(tracer);

    let expected = ROUNDS * BUFFERS * (SIZE + 1);
    for &pid in &workers {
        let allocated = in_work(&r, "hotspots", pid);
        assert!(
            off_by_percent(allocated, expected) <= TOLERANCE_PERCENT,
            "worker {pid}: {allocated} bytes estimated allocated in work(), expected {expected}:\n{}",
            r.stdout()
        );
        let leaked = in_work(&r, "leaks", pid);
        assert_eq!(leaked, 0, "worker {pid} leaks in work():\n{}", r.stdout());
    }
    assert_eq!(r.counter("lost_events"), 0);
}
