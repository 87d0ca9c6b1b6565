//! Helpers for the end-to-end tests: run the real `tracer` binary (built by
//! `cargo xtask test`, passed in TRACER_BIN) as root against real processes,
//! and read what it reports.

use std::{
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub use interpreters::{
    DEBIAN_PYTHON, GlibcBuild, GlibcVersion, Interpreter, debian_unpacked, glibc_builds,
    glibc_version, interpreters, pyenv_python, test_cache, unpacked_glibc,
};

pub mod ingest;
mod interpreters;
pub mod resources;
pub mod scripted;
pub mod uprobes;
pub mod web;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The tracer binary under test. Fails (does not skip) without root: these
/// tests exist to load the real eBPF programs.
pub fn tracer() -> Command {
    let mut cmd = Command::new(tracer_bin());
    // Commands tracer starts run as the user who ran sudo: the tests'
    // interpreters and workloads may be root's only.
    cmd.env_remove("SUDO_UID").env_remove("SUDO_GID");
    cmd
}

/// The path of the tracer binary under test (for tests that run it
/// through another program, such as tmux), checked as `tracer` does.
pub fn tracer_bin() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the end-to-end tests load eBPF programs: run them as root (`cargo xtask test`)"
    );
    let bin = std::env::var_os("TRACER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/release/tracer"));
    assert!(
        bin.exists(),
        "{} does not exist: run the tests through `cargo xtask test`",
        bin.display()
    );
    bin
}

pub fn workload(name: &str) -> PathBuf {
    root().join("tests/workloads").join(name)
}

/// The Python frames of a report entry, innermost first.
pub fn python_frames(entry: &Value) -> Vec<&Value> {
    frames(entry)
        .iter()
        .filter(|f| f["kind"] == "python")
        .collect()
}

/// What report entries add up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sum {
    pub bytes: u64,
    pub count: u64,
}

/// The entries whose innermost Python frame is `function` at `line` of a
/// file named `file`, summed.
pub fn at_python_line(entries: &[Value], function: &str, file: &str, line: u64) -> Sum {
    entries
        .iter()
        .filter(|e| {
            python_frames(e).first().is_some_and(|f| {
                f["function"] == function
                    && f["line"].as_u64() == Some(line)
                    && f["file"].as_str().is_some_and(|p| p.ends_with(file))
            })
        })
        .fold(Sum { bytes: 0, count: 0 }, |sum, e| Sum {
            bytes: sum.bytes + e["bytes"].as_u64().unwrap_or(0),
            count: sum.count + e["count"].as_u64().unwrap_or(0),
        })
}

/// Whether `sum`, at the line of leak_buffers.py that keeps its buffers,
/// is exactly `count` buffers of `buffer` bytes each
/// (`Interpreter::bytearray_bytes`) and the list that holds them: one
/// block of 8 bytes a slot with CPython's over-allocation, at that line
/// where the interpreter's frames say so (not on 3.12, whose list growth
/// is attributed elsewhere).
pub fn is_buffers_leak(sum: Sum, count: u64, buffer: u64) -> bool {
    let buffers = count * buffer;
    let list = 8 * count..=8 * (count + count / 8 + 16);
    (sum.count == count && sum.bytes == buffers)
        || (sum.count == count + 1
            && sum
                .bytes
                .checked_sub(buffers)
                .is_some_and(|rest| list.contains(&rest)))
}

/// The line number of the line of `file` that contains `marker`.
pub fn line_of(file: &Path, marker: &str) -> u64 {
    let text = std::fs::read_to_string(file).expect("read workload");
    let index = text
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("{marker} not in {}", file.display()));
    index as u64 + 1
}

/// What a tracer run left: its output and its report.json.
pub struct Recorded {
    pub output: Output,
    pub report: Value,
    pub dir: tempfile::TempDir,
}

impl Recorded {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn entries(&self, report: &str) -> &[Value] {
        self.report[report]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.report["counters"][name].as_u64().expect("counter")
    }
}

/// A child killed and reaped when dropped, if it still runs: a test (or a
/// bench run) that fails half-way must not leave its processes behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `tracer record -o DIR ARGS` to the end and reads DIR/report.json.
pub fn record(args: &[&str]) -> Recorded {
    let child = spawn_record(args);
    finish(child)
}

/// A tracer started in the background, with its output directory.
pub struct Running {
    pub child: Child,
    pub dir: tempfile::TempDir,
    /// Lines of stderr read so far (through `wait_for`).
    pub stderr_lines: mpsc::Receiver<String>,
}

pub fn spawn_record(args: &[&str]) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = tracer();
    cmd.arg("record").arg("-o").arg(dir.path()).args(args);
    run_in_background(cmd, dir)
}

/// Starts `tracer ARGS` in the background, its stdout piped, its stderr
/// read line by line (`Running::wait_for`).
pub fn spawn_tracer<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Running {
    let mut cmd = tracer();
    cmd.args(args);
    run_in_background(cmd, tempfile::tempdir().expect("tempdir"))
}

/// Starts `cmd` (a tracer) with its stdout piped and its stderr read line
/// by line; `dir` lives as long as it does.
fn run_in_background(mut cmd: Command, dir: tempfile::TempDir) -> Running {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tracer");
    let stderr_lines = forward_lines(child.stderr.take().expect("stderr"));
    Running {
        child,
        dir,
        stderr_lines,
    }
}

/// Reads `reader`'s lines (a child's stdout or stderr) on a thread, so that
/// the child never blocks on a full pipe, and hands them over one by one.
pub fn forward_lines(reader: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Drop for Running {
    /// A test that fails while tracer runs must not leave it running.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Running {
    /// Waits until tracer prints a stderr line containing `text`; returns
    /// the lines read so far.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "tracer did not print {text:?} within {timeout:?}; stderr so far:\n{}",
            seen.join("\n")
        );
    }
}

/// Waits for a background tracer and reads its report.
pub fn finish(mut running: Running) -> Recorded {
    let mut stdout = String::new();
    if let Some(mut out) = running.child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout).expect("read tracer stdout");
    }
    let status = running.child.wait().expect("wait for tracer");
    let rest: Vec<String> = running.stderr_lines.iter().collect();
    let mut output = Output {
        status,
        stdout: stdout.into_bytes(),
        stderr: Vec::new(),
    };
    output.stderr = rest.join("\n").into_bytes();
    assert!(
        output.status.success(),
        "tracer failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let json = std::fs::read_to_string(running.dir.path().join("report.json"))
        .expect("report.json written");
    let report = serde_json::from_str(&json).expect("report.json is JSON");
    // The directory outlives the (dropped) Running.
    let dir = std::mem::replace(&mut running.dir, tempfile::tempdir().expect("tempdir"));
    Recorded {
        output,
        report,
        dir,
    }
}

/// Ctrl-C to a background tracer, and its report: it must end within a
/// minute (a watchdog kills it otherwise, and the test fails saying so).
pub fn interrupt(running: Running) -> Recorded {
    let pid = running.child.id() as i32;
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let (done, watched) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        let hung = watched.recv_timeout(Duration::from_secs(60)).is_err();
        if hung {
            // SAFETY: as above; the pid is still our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        hung
    });
    let recorded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| finish(running)));
    let _ = done.send(());
    assert!(
        !watchdog.join().unwrap_or(true),
        "tracer did not end within 60 s of Ctrl-C"
    );
    recorded.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Whether any frame of `entry` is `function`.
pub fn has_function(entry: &Value, function: &str) -> bool {
    frames(entry).iter().any(|f| f["function"] == function)
}

pub fn frames(entry: &Value) -> &[Value] {
    entry["stack"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Whether a frame of `entry` is at `file` (by file name) and `line`.
pub fn has_line(entry: &Value, file: &str, line: u64) -> bool {
    frames(entry).iter().any(|f| {
        f["line"].as_u64() == Some(line)
            && f["file"]
                .as_str()
                .is_some_and(|p| Path::new(p).file_name() == Path::new(file).file_name())
    })
}

/// Builds a C program from tests/workloads into `dir`.
pub fn compile_c(source: &str, dir: &Path, flags: &[&str]) -> PathBuf {
    let src = workload(source);
    let out = dir.join(source.trim_end_matches(".c"));
    let status = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed on {}", src.display());
    out
}

/// Starts `sessions.py COUNT --wait` under `python`, waiting for it to be
/// ready: a line on its stdin makes it leak COUNT `Session` objects.
pub fn waiting_sessions(python: &Path, count: u64) -> Child {
    let mut child = Command::new(python)
        .arg(workload("sessions.py"))
        .arg(count.to_string())
        .arg("--wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the workload");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "ready");
    // Keep reading its stdout: "leaked" comes later.
    thread::spawn(move || {
        let mut line = String::new();
        while out.read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
        }
    });
    child
}

/// Percentage difference of `got` from `expected`.
pub fn off_by_percent(got: u64, expected: u64) -> f64 {
    (got as f64 - expected as f64).abs() * 100.0 / expected as f64
}

/// Names of tracer's eBPF programs (tracer-ebpf/src/main.rs) that
/// `bpftool prog list` shows.
pub const PROGRAMS: [&str; 4] = ["malloc_entry", "free_entry", "alloc_return", "mmap_enter"];

/// How many of tracer's programs are loaded, in any tracer on the host.
pub fn loaded_tracer_programs() -> usize {
    loaded_tracer_program_ids().len()
}

/// The ids of tracer's programs loaded now, in any tracer on the host.
pub fn loaded_tracer_program_ids() -> std::collections::BTreeSet<u32> {
    let out = Command::new("bpftool")
        .args(["prog", "list"])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    assert!(out.status.success(), "bpftool prog list failed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| PROGRAMS.iter().any(|p| l.contains(&format!(" name {p} "))))
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .collect()
}

/// Waits until no tracer's programs are loaded: an earlier recording's
/// probes are removed in the background for seconds after it ends, and
/// while they are, attaching new uprobes waits (up to hundreds of ms each).
pub fn wait_until_no_tracer_is_loaded() {
    let deadline = Instant::now() + Duration::from_secs(60);
    while loaded_tracer_programs() > 0 {
        assert!(
            Instant::now() < deadline,
            "another tracer's programs stayed loaded for 60 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
}
