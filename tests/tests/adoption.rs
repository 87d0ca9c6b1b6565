//! Nothing a process does before tracer adopts it is lost: `--all` started
//! before three interpreters of different versions that leak from their
//! first line, with no pause for tracer to attach. The two on the host's
//! C library (probed when `--all` starts) are exact. The third maps a glibc
//! of its own that tracer has never seen: its leak is exact too unless
//! probing that file took longer than the interpreter's start, and then the
//! report says so (attaching uprobes can take ~100 ms each while another
//! recording's probes are removed).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::{at_python_line, interpreters, is_buffers_leak, line_of, spawn_record, workload};

const SIZE: u64 = 10_000;

#[test]
fn all_keeps_what_processes_do_before_they_are_adopted() {
    let all = interpreters();
    // pyenv 3.9, Debian's 3.11 (the host's libc), sid 3.14 (its own glibc).
    let chosen = [&all[1], &all[6], &all[8]];
    // Attaching the probes of a C library tracer has not seen (sid's) waits
    // while an earlier recording's probes are being removed: start clean.
    tests::wait_until_no_tracer_is_loaded();
    // Each interpreter's files read once before (as a service's are): on a
    // cold page cache, finding the interpreter of the largest (Debian's
    // static 3.11) can take longer than the leak, whose allocations are then
    // recorded without their Python frames (docs/allocation-matching.md).
    for python in chosen {
        Command::new(&python.path)
            .args(["-c", "pass"])
            .status()
            .expect("start interpreter");
    }
    let tracer = spawn_record(&["-v", "--all", "--exact", "--top", "20"]);
    tracer.wait_for("tracer: recording", Duration::from_secs(60));
    let line = line_of(&workload("leak_buffers.py"), "# LEAK");
    let counts = [2_000u64, 2_000, 2_000];
    let mut started: Vec<_> = chosen
        .iter()
        .zip(counts)
        .map(|(python, count)| {
            let child = Command::new(&python.path)
                .arg(workload("leak_buffers.py"))
                // They go on after leaking, as services do: one that exits
                // before tracer has probed its interpreter's Py_FinalizeEx
                // has its leak set taken at exit(), after teardown.
                .args([
                    count.to_string(),
                    SIZE.to_string(),
                    "--linger".into(),
                    "1".into(),
                ])
                .stdout(Stdio::null())
                .spawn()
                .expect("start interpreter");
            (child, count, python)
        })
        .collect();
    for (child, _, python) in &mut started {
        assert!(child.wait().expect("wait").success(), "{}", python.name);
    }
    // Each was adopted (tracer logs -v each CPython it adopts).
    let adopted = |seen: &[String], pid: u32| {
        seen.iter()
            .any(|l| l.contains(&format!("pid {pid}: CPython")))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen: Vec<String> = Vec::new();
    while !started.iter().all(|(c, _, _)| adopted(&seen, c.id())) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tracer.stderr_lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(err) => panic!(
                "not all of {:?} adopted ({err}); tracer said:\n{}",
                started
                    .iter()
                    .map(|(c, _, n)| (c.id(), n.name))
                    .collect::<Vec<_>>(),
                seen.join("\n")
            ),
        }
    }
    // Let the last records be drained before stopping.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(tracer.child.id() as i32, libc::SIGINT) };
    let r = tests::finish(tracer);
    let mut failures = Vec::new();
    for (child, count, python) in &started {
        let name = python.name;
        let pid = u64::from(child.id());
        let Some(process) = r.report["processes"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["pid"].as_u64() == Some(pid)))
        else {
            failures.push(format!("{name} (pid {pid}) not in the report"));
            continue;
        };
        let leak = at_python_line(
            process["leaks"].as_array().map_or(&[], Vec::as_slice),
            "leak",
            "leak_buffers.py",
            line,
        );
        let buffer = python.bytearray_bytes(SIZE);
        let exact = is_buffers_leak(leak, *count, buffer);
        let said_late = process["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n.as_str().is_some_and(|n| n.contains("was first probed")));
        let own_libc = name == "sid-3.14";
        if !(exact || own_libc && said_late) {
            failures.push(format!(
                "{name} (pid {pid}): leaked {leak:?} at line {line}, want {count} buffers of {buffer} bytes and their list; notes {}",
                process["notes"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n{}\ntracer said:\n{}\n{}",
        failures.join("\n"),
        r.stdout(),
        seen.join("\n"),
        r.stderr()
    );
    assert_eq!(r.counter("lost_events"), 0);
}
