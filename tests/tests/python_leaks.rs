//! A Python workload leaking known-size buffers, traced from its start and
//! by pid: the leak report's top entry must hold the leaked bytes.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use tests::{
    DEBIAN_PYTHON, Recorded, frames, off_by_percent, pyenv_python, record, spawn_record, workload,
};

const COUNT: u64 = 400;
/// Above glibc's mmap threshold and far above pymalloc's 512-byte limit,
/// so every buffer is a libc malloc call.
const SIZE: u64 = 256 * 1024;
/// Native stacks without frame pointers end at malloc's caller, so the top
/// leak also holds the interpreter's other live objects made through the
/// same call: a few hundred KiB against 100 MiB.
const TOLERANCE_PERCENT: f64 = 5.0;

fn assert_top_leak(r: &Recorded) {
    let top = &r.entries("leaks")[0];
    let bytes = top["bytes"].as_u64().expect("bytes");
    // bytearray(n) allocates n + 1 bytes.
    let expected = COUNT * (SIZE + 1);
    assert!(
        off_by_percent(bytes, expected) <= TOLERANCE_PERCENT,
        "top leak {bytes} bytes, expected {expected} within {TOLERANCE_PERCENT}%:\n{}",
        r.stdout()
    );
    assert!(top["count"].as_u64().expect("count") >= COUNT);
    // The first frame is the probed allocator, named by tracer; a caller
    // must be symbolized from the binary (Debian's through python3.11-dbg).
    assert_eq!(frames(top)[0]["function"], "malloc");
    let symbolized = frames(top)[1..]
        .iter()
        .filter(|f| f["kind"] == "native" && f["function"] != "[unknown]")
        .count();
    assert!(symbolized >= 1, "no symbolized native caller in {top}");
    assert_eq!(r.counter("lost_events"), 0);
    // The leak set is the one taken when finalization began, not after teardown.
    assert_eq!(r.report["processes"][0]["leaks_taken_at"], "py_finalize");
}

fn leak_command(python: &str) -> Recorded {
    let script = workload("leak_buffers.py");
    record(&[
        "--",
        python,
        script.to_str().expect("utf-8 path"),
        &COUNT.to_string(),
        &SIZE.to_string(),
    ])
}

#[test]
fn command_debian_python() {
    let r = leak_command(DEBIAN_PYTHON);
    assert_top_leak(&r);
    assert!(
        r.stdout().contains("exited with status 0"),
        "{}",
        r.stdout()
    );
}

#[test]
fn command_pyenv_python() {
    let python = pyenv_python("3.11.7");
    let r = leak_command(python.to_str().expect("utf-8 path"));
    assert_top_leak(&r);
}

#[test]
fn attach_by_pid_after_start() {
    let mut target = Command::new(DEBIAN_PYTHON)
        .arg(workload("leak_buffers.py"))
        .args([COUNT.to_string(), SIZE.to_string(), "--wait".into()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start workload");
    let mut out = std::io::BufReader::new(target.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("read");
    assert_eq!(line.trim(), "ready");

    let pid = target.id().to_string();
    let tracer = spawn_record(&["--pid", &pid]);
    tracer.wait_for("tracer: recording", Duration::from_secs(30));
    // Let it leak; it exits afterwards, which ends the recording.
    target
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write");
    let r = tests::finish(tracer);
    assert!(target.wait().expect("wait").success());
    assert_top_leak(&r);
    assert_eq!(r.report["pids"], serde_json::json!([target.id()]));
}
