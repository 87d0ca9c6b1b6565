//! Forked workers are traced from their first instruction: a parent that
//! forks two workers, each allocating a known number of known-size
//! buffers at a known line and keeping some, traced by launching it, by
//! `--pid` of the parent (attached before the fork and after it) and by
//! `--all`. Each worker is reported on its own, its parent named, with its
//! hotspot and leak exact and the frees of what it inherited matched.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{
    DEBIAN_PYTHON, Recorded, Sum, at_python_line, is_buffers_leak, line_of, pyenv_python, record,
    spawn_record, workload,
};

const COUNT: u64 = 20_000;
const SIZE: u64 = 10_000;
const KEEP_EVERY: u64 = 100;
/// Buffers of SIZE + 3 bytes the parent loads before forking (prefork.py).
const PRELOADED: u64 = 100;
/// bytes(n) is one allocation of n + 33 bytes on 64-bit CPython.
const BYTES_HEADER: u64 = 33;

/// Whether tracer saw the parent load its data: then each worker's frees
/// of it must match what it inherited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Preload {
    Traced,
    BeforeAttach,
}

/// The pids the report has a process for.
fn pids(r: &Recorded) -> Vec<u64> {
    r.report["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect()
}

fn process(r: &Recorded, pid: u64) -> &Value {
    r.report["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["pid"].as_u64() == Some(pid)))
        .unwrap_or_else(|| panic!("pid {pid} not in the report:\n{}", r.stdout()))
}

/// Both workers of `parent` are in the report, each exact.
fn assert_workers(r: &Recorded, parent: u64, preload: Preload) {
    let script = workload("prefork.py");
    let (work, keep) = (line_of(&script, "# WORK"), line_of(&script, "# KEEP"));
    let workers: Vec<&Value> = r.report["processes"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["parent"].as_u64() == Some(parent))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        workers.len(),
        2,
        "two workers of pid {parent}:\n{}",
        r.stdout()
    );
    let preloaded_bytes = PRELOADED * (SIZE + 3 + BYTES_HEADER);
    let kept = COUNT / KEEP_EVERY;
    for w in workers {
        let pid = w["pid"].as_u64().expect("pid");
        let hot = at_python_line(
            w["hotspots"].as_array().expect("hotspots"),
            "work",
            "prefork.py",
            work,
        );
        // bytearray(n) allocates n + 1 bytes.
        assert_eq!(
            hot,
            Sum {
                bytes: COUNT * (SIZE + 1),
                count: COUNT
            },
            "worker {pid} at line {work}:\n{}",
            r.stdout()
        );
        let leak = at_python_line(
            w["leaks"].as_array().expect("leaks"),
            "work",
            "prefork.py",
            keep,
        );
        assert_eq!(
            leak,
            Sum {
                bytes: kept * (SIZE + 7 + BYTES_HEADER),
                count: kept
            },
            "worker {pid} leak at line {keep}:\n{}",
            r.stdout()
        );
        if preload == Preload::Traced {
            // Frees of inherited blocks count their bytes only if matched.
            let inherited = w["inherited_bytes"].as_u64().unwrap_or(0);
            let freed = w["summary"]["freed_bytes"].as_u64().unwrap_or(0);
            assert!(
                inherited >= preloaded_bytes && freed >= hot.bytes + preloaded_bytes,
                "worker {pid} inherited {inherited} bytes (the parent loaded {preloaded_bytes}) and freed {freed} (made {})",
                hot.bytes
            );
        }
        assert!(
            r.stdout().contains(&format!("(forked from pid {parent})")),
            "{}",
            r.stdout()
        );
    }
    assert_eq!(r.counter("lost_events"), 0);
}

#[test]
fn launched_command_and_its_workers() {
    let script = workload("prefork.py");
    let r = record(&[
        "--top",
        "20",
        "--",
        DEBIAN_PYTHON,
        script.to_str().expect("utf-8"),
        &COUNT.to_string(),
    ]);
    let parent = r.report["pids"][0].as_u64().expect("pid");
    assert!(process(&r, parent)["parent"].is_null());
    assert_workers(&r, parent, Preload::Traced);
    // Traced from their start: every free matches.
    for p in r.report["processes"].as_array().expect("processes") {
        assert_eq!(p["summary"]["unmatched_frees"], 0, "pid {}", p["pid"]);
    }
}

/// The workload, waiting for a line on stdin (before or after forking).
struct Waiting {
    child: Child,
    out: BufReader<ChildStdout>,
    /// The words after "ready" (the workers' pids when it forked first).
    ready: Vec<u64>,
}

fn start_waiting(mode: &str) -> Waiting {
    let mut child = Command::new(DEBIAN_PYTHON)
        .arg(workload("prefork.py"))
        .args([&COUNT.to_string(), mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start workload");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("ready"), "{line}");
    let ready = words.filter_map(|w| w.parse().ok()).collect();
    Waiting { child, out, ready }
}

fn by_pid_of_parent(mode: &str) -> (Recorded, u64, Vec<u64>) {
    let mut w = start_waiting(mode);
    let parent = w.child.id();
    let tracer = spawn_record(&["--top", "20", "--pid", &parent.to_string()]);
    tracer.wait_for("tracer: recording", Duration::from_secs(30));
    w.child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut w.out, &mut rest).expect("read");
    assert!(w.child.wait().expect("wait").success(), "{rest}");
    // The parent's exit ends the recording once its workers have exited.
    let r = tests::finish(tracer);
    (r, u64::from(parent), w.ready)
}

#[test]
fn pid_of_the_parent_attached_before_the_fork() {
    let (r, parent, _) = by_pid_of_parent("--wait-before-fork");
    assert_workers(&r, parent, Preload::Traced);
}

#[test]
fn pid_of_the_parent_attached_after_the_fork() {
    let (r, parent, workers) = by_pid_of_parent("--wait-after-fork");
    assert_eq!(workers.len(), 2);
    for pid in &workers {
        process(&r, *pid);
    }
    assert_workers(&r, parent, Preload::BeforeAttach);
}

#[test]
fn all_follows_the_workers() {
    let tracer = spawn_record(&["-v", "--all", "--exact", "--top", "20"]);
    tracer.wait_for("tracer: recording", Duration::from_secs(60));
    let mut w = start_waiting("--wait-before-fork");
    let parent = w.child.id();
    tracer.wait_for(&format!("pid {parent}: CPython"), Duration::from_secs(30));
    w.child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut w.out, &mut rest).expect("read");
    assert!(w.child.wait().expect("wait").success(), "{rest}");
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(tracer.child.id() as i32, libc::SIGINT) };
    let r = tests::finish(tracer);
    assert_workers(&r, u64::from(parent), Preload::Traced);
}

/// A child that execs is traced on only if it runs CPython: one that runs
/// `ls` is let go at its exec (not in the report), one that runs another
/// CPython is adopted, its parent named, and its leak is exact.
#[test]
fn an_exec_in_a_child_is_traced_only_if_it_runs_cpython() {
    const LEAKED: u64 = 300;
    const LEAK_SIZE: u64 = 100_000;
    let python = pyenv_python("3.12.1");
    let mut parent = Command::new(DEBIAN_PYTHON)
        .arg(workload("exec_children.py"))
        .arg(&python)
        .args([LEAKED.to_string(), LEAK_SIZE.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start workload");
    let mut stdin = parent.stdin.take().expect("stdin");
    let mut out = BufReader::new(parent.stdout.take().expect("stdout"));
    let mut said = |word: &str| {
        let mut line = String::new();
        out.read_line(&mut line).expect("read");
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some(word), "{line}");
        words.next().and_then(|w| w.parse::<u64>().ok())
    };
    said("ready");
    let pid = parent.id();
    let tracer = spawn_record(&["-v", "--top", "20", "--pid", &pid.to_string()]);
    tracer.wait_for("tracer: recording", Duration::from_secs(30));
    stdin.write_all(b"go\n").expect("write");
    let other = said("other").expect("pid of ls");
    let child = said("python").expect("pid of the Python child");
    tracer.wait_for(&format!("pid {child}: adopted"), Duration::from_secs(30));
    stdin.write_all(b"go\n").expect("write");
    assert!(parent.wait().expect("wait").success());
    let r = tests::finish(tracer);
    let pids = pids(&r);
    assert!(
        !pids.contains(&other),
        "ls (pid {other}) was traced: {pids:?}"
    );
    let traced = process(&r, child);
    assert_eq!(traced["parent"].as_u64(), Some(u64::from(pid)), "{traced}");
    assert!(
        traced["python"]
            .as_str()
            .is_some_and(|p| p.starts_with("CPython 3.12")),
        "{traced}"
    );
    let script = workload("leak_buffers.py");
    let line = line_of(&script, "# LEAK");
    let leak = at_python_line(
        traced["leaks"].as_array().expect("leaks"),
        "leak",
        "leak_buffers.py",
        line,
    );
    assert!(
        // bytearray(n) allocates n + 1 bytes on 3.12.
        is_buffers_leak(leak, LEAKED, LEAK_SIZE + 1),
        "{leak:?} at leak_buffers.py:{line}, want {LEAKED} buffers of {} bytes and their list:\n{}",
        LEAK_SIZE + 1,
        r.stdout()
    );
    assert_eq!(r.counter("lost_events"), 0);
}

/// A shell wrapper (an entrypoint script, pyenv's shim) forks subshells
/// before it execs the service. They run no CPython: they are not
/// reported. The service the wrapper became and its workers are, exact.
#[test]
fn a_shell_wrappers_subshells_are_not_reported() {
    let script = workload("prefork.py");
    // Bash forks for the command substitution and for the subshell.
    let command = format!(
        "greeting=$(echo hi); ( true ); exec {DEBIAN_PYTHON} {} {COUNT}",
        script.display()
    );
    let r = record(&["--top", "20", "--", "bash", "-c", &command]);
    let parent = r.report["pids"][0].as_u64().expect("pid");
    let pids = pids(&r);
    assert_eq!(
        pids.len(),
        3,
        "the service and its two workers only: {pids:?}\n{}",
        r.stdout()
    );
    assert_workers(&r, parent, Preload::Traced);
}
