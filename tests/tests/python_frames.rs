//! Python frames, for every interpreter of the matrix: the leak report names
//! the Python function, file and line that leaked, with its callers.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{
    Interpreter, Recorded, at_python_line, interpreters, is_buffers_leak, line_of, off_by_percent,
    python_frames, record, spawn_record, workload,
};

/// Allocations of one process whose innermost Python frame is `function`
/// at `file:line`: (bytes, count) summed over entries.
fn run(python: &Interpreter, extra: &[&str], script: &str, args: &[&str]) -> Recorded {
    let script = workload(script);
    let mut all: Vec<&str> = vec!["--top", "50"];
    all.extend_from_slice(extra);
    all.push("--");
    all.push(python.path.to_str().expect("utf-8 path"));
    all.push(script.to_str().expect("utf-8 path"));
    all.extend_from_slice(args);
    record(&all)
}

/// Runs `check` for every interpreter, and fails with every failure at once.
fn for_each_interpreter(check: impl Fn(&Interpreter) -> Result<(), String>) {
    let failures: Vec<String> = interpreters()
        .iter()
        .filter_map(|i| check(i).err().map(|e| format!("{}: {e}", i.name)))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn leak_at_known_line_with_its_caller() {
    const COUNT: u64 = 200;
    const SIZE: u64 = 100_000;
    let leak_line = line_of(&workload("leak_buffers.py"), "# LEAK");
    let caller_line = line_of(&workload("leak_buffers.py"), "    leak(count, size)");
    for_each_interpreter(|python| {
        let r = run(
            python,
            &[],
            "leak_buffers.py",
            &[&COUNT.to_string(), &SIZE.to_string()],
        );
        let top = &r.entries("leaks")[0];
        let py = python_frames(top);
        let ok = py.len() >= 2
            && py[0]["function"] == "leak"
            && py[0]["line"].as_u64() == Some(leak_line)
            && py[0]["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("leak_buffers.py"))
            && py[1]["function"] == "main"
            && py[1]["line"].as_u64() == Some(caller_line);
        if !ok {
            return Err(format!(
                "top leak is not leak() at line {leak_line} called by main() at {caller_line}:\n{}",
                r.stdout()
            ));
        }
        let bytes = top["bytes"].as_u64().unwrap_or(0);
        let expected = COUNT * python.bytearray_bytes(SIZE);
        if off_by_percent(bytes, expected) > 5.0 {
            return Err(format!(
                "top leak {bytes} bytes, expected {expected} within 5%"
            ));
        }
        if top["truncated"] != false {
            return Err(format!("complete Python stack marked truncated: {top}"));
        }
        Ok(())
    });
}

#[test]
fn each_thread_leaks_in_its_own_function() {
    let script = workload("threads_leak.py");
    let (line_a, line_b) = (line_of(&script, "# LEAK A"), line_of(&script, "# LEAK B"));
    for_each_interpreter(|python| {
        let r = run(python, &[], "threads_leak.py", &[]);
        let leaks = r.entries("leaks");
        let a = at_python_line(leaks, "leak_in_a", "threads_leak.py", line_a);
        let b = at_python_line(leaks, "leak_in_b", "threads_leak.py", line_b);
        let (want_a, want_b) = (200 * 300_001, 100 * 500_001);
        if off_by_percent(a.bytes, want_a) > 5.0 || off_by_percent(b.bytes, want_b) > 5.0 {
            return Err(format!(
                "leak_in_a {} bytes (want {want_a}), leak_in_b {} bytes (want {want_b}):\n{}",
                a.bytes,
                b.bytes,
                r.stdout()
            ));
        }
        Ok(())
    });
}

#[test]
fn small_objects_with_pymalloc() {
    const COUNT: u64 = 5_000;
    let line = line_of(&workload("small_leak.py"), "# LEAK");
    for_each_interpreter(|python| {
        // LTO builds inline the object allocator into its callers, where no
        // probe can see it: they are traced exactly through libc when run
        // with PYTHONMALLOC=malloc, which tracer recognises.
        let mut args = vec!["record", "--top", "50", "--pymalloc", "-o"];
        let dir = tempfile::tempdir().expect("tempdir");
        args.push(dir.path().to_str().expect("utf-8"));
        let script = workload("small_leak.py");
        let mut cmd = tests::tracer();
        cmd.args(&args)
            .arg("--")
            .arg(&python.path)
            .arg(&script)
            .arg(COUNT.to_string());
        if python.lto {
            cmd.env("PYTHONMALLOC", "malloc");
        }
        let out = cmd.output().expect("run tracer");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "tracer failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let report: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("report.json")).expect("report.json"),
        )
        .expect("json");
        let leaks = report["leaks"].as_array().cloned().unwrap_or_default();
        let count = at_python_line(&leaks, "make_strings", "small_leak.py", line).count;
        if off_by_percent(count, COUNT) > 5.0 {
            return Err(format!(
                "{count} small leaks at small_leak.py:{line}, expected {COUNT} within 5%:\n{stdout}"
            ));
        }
        let notes = report["processes"][0]["notes"].to_string();
        let expected_note = if python.lto {
            "PYTHONMALLOC=malloc"
        } else {
            "--pymalloc: probing"
        };
        if !notes.contains(expected_note) {
            return Err(format!("notes {notes} do not say {expected_note:?}"));
        }
        Ok(())
    });
}

#[test]
fn deep_recursion_is_truncated_cleanly() {
    let line = line_of(&workload("deep.py"), "# LEAK");
    for_each_interpreter(|python| {
        let r = run(python, &[], "deep.py", &["150"]);
        let Some(leak) = r.entries("leaks").iter().find(|e| {
            python_frames(e)
                .first()
                .is_some_and(|f| f["function"] == "recurse" && f["line"].as_u64() == Some(line))
        }) else {
            return Err(format!(
                "no leak in recurse() at deep.py:{line}:\n{}",
                r.stdout()
            ));
        };
        let py = python_frames(leak);
        // bytearray(n) allocates n + 1 bytes; from 3.15 they are a bytes
        // object's, after its 32-byte header (gh-139871).
        let buffer = if python.minor() >= 15 { 33 } else { 1 } + (1 << 20);
        // tracer-common's MAX_PY_DEPTH innermost frames, marked truncated.
        let ok = py.len() == 80
            && py.iter().all(|f| f["function"] == "recurse")
            && leak["truncated"] == true
            && leak["bytes"].as_u64() == Some(buffer);
        if !ok {
            return Err(format!(
                "{} Python frames, truncated {}, {} bytes (want 80, true, {buffer}): {leak}",
                py.len(),
                leak["truncated"],
                leak["bytes"]
            ));
        }
        Ok(())
    });
}

#[test]
fn python_only_and_native_only_views() {
    let python = &interpreters()[3];
    let r = run(
        python,
        &["--python-only"],
        "leak_buffers.py",
        &["50", "100000"],
    );
    let top = &r.entries("leaks")[0];
    let kinds: Vec<&str> = tests::frames(top)
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    assert_eq!(kinds[0], "native", "the allocation function stays first");
    assert!(kinds[1..].iter().all(|k| *k == "python"), "{kinds:?}");
    let r = run(
        python,
        &["--native-only"],
        "leak_buffers.py",
        &["50", "100000"],
    );
    let top = &r.entries("leaks")[0];
    assert!(python_frames(top).is_empty(), "{top}");
}

/// `--all`, started before four interpreters of different versions (and
/// builds, two with their own libc; 3.15 with its thread states in a
/// thread-local): each one's leak is found under its pid.
#[test]
fn all_finds_processes_started_later() {
    let all = interpreters();
    let chosen: Vec<&Interpreter> = ["pyenv-3.9", "debian-3.11", "sid-3.14", "sid-3.15"]
        .iter()
        .map(|name| all.iter().find(|i| i.name == *name).expect("in the matrix"))
        .collect();
    let tracer = spawn_record(&["-v", "--all", "--exact", "--top", "20"]);
    tracer.wait_for("tracer: recording", Duration::from_secs(60));
    let line = line_of(&workload("leak_buffers.py"), "# LEAK");
    let mut started = Vec::new();
    for (i, python) in chosen.iter().enumerate() {
        let mut child = Command::new(&python.path)
            .arg(workload("leak_buffers.py"))
            .args([(100 + 50 * i).to_string(), "100000".into(), "--wait".into()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start interpreter");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut ready = String::new();
        out.read_line(&mut ready).expect("read");
        assert_eq!(ready.trim(), "ready", "{}", python.name);
        // tracer logs (-v) each process it adopts once its allocators
        // are probed (its CPython is found before: a process on a C
        // library of its own can allocate unseen in between).
        tracer.wait_for(
            &format!("pid {}: adopted", child.id()),
            Duration::from_secs(30),
        );
        // Its stdout stays open until it has printed its last line.
        started.push((child, 100 + 50 * i as u64, out));
    }
    for (child, _, _) in &mut started {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("write");
    }
    for (child, _, out) in &mut started {
        let mut rest = String::new();
        std::io::Read::read_to_string(out, &mut rest).expect("read");
        assert!(child.wait().expect("wait").success());
    }
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(tracer.child.id() as i32, libc::SIGINT) };
    let r = tests::finish(tracer);
    for ((child, count, _), python) in started.iter().zip(chosen) {
        let pid = child.id();
        let process = r.report["processes"]
            .as_array()
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
            })
            .unwrap_or_else(|| {
                panic!(
                    "{} (pid {pid}) not in the report:\n{}",
                    python.name,
                    r.stdout()
                )
            });
        let leaks = process["leaks"].as_array().cloned().unwrap_or_default();
        let leak = at_python_line(&leaks, "leak", "leak_buffers.py", line);
        // Adopted before it leaked: exact.
        assert!(
            is_buffers_leak(leak, *count, python.bytearray_bytes(100_000)),
            "{} (pid {pid}): {leak:?} at leak_buffers.py:{line}, want {count} buffers of {} bytes and their list:\n{}",
            python.name,
            python.bytearray_bytes(100_000),
            r.stdout()
        );
        assert!(
            process["python"]
                .as_str()
                .is_some_and(|p| p.starts_with("CPython 3.")),
            "{process}"
        );
    }
}
