//! Live objects by type, read from outside: a workload leaking N `Session`
//! objects (each with a 2 KiB `bytes` and a dict) is typed at its
//! finalization (held there, then continued), or at the end of a `--pid`
//! recording with the growth since tracing began; without `--pymalloc` and
//! without PYTHONMALLOC, so small objects are found by the heap walk, on
//! every interpreter of the matrix (3.8 to 3.15, pyenv and Debian's LTO
//! builds).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{Interpreter, interpreters, line_of, off_by_percent, record, spawn_record, workload};

const SESSIONS: u64 = 5_000;
/// `b"%08d" % i * 256`: a 2,048-byte bytes object, 2,081 bytes with its header.
const PAYLOAD: u64 = 2_048;

/// The type `name` in a list of `{"type", "count", "bytes"}`.
fn of<'a>(types: &'a Value, name: &str) -> Option<&'a Value> {
    types.as_array()?.iter().find(|t| t["type"] == name)
}

fn count(types: &Value, name: &str) -> u64 {
    of(types, name)
        .and_then(|t| t["count"].as_u64())
        .unwrap_or(0)
}

fn bytes(types: &Value, name: &str) -> u64 {
    of(types, name)
        .and_then(|t| t["bytes"].as_u64())
        .unwrap_or(0)
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
fn sessions_typed_at_finalization_of_a_launched_command() {
    let script = workload("sessions.py");
    let payload_line = line_of(&script, "# PAYLOAD");
    for_each_interpreter(|python| {
        let r = record(&[
            "--top",
            "20",
            "--",
            python.path.to_str().expect("utf-8"),
            script.to_str().expect("utf-8"),
            &SESSIONS.to_string(),
        ]);
        let p = &r.report["processes"][0];
        let types = &p["types"];
        let walk = &p["types_walk"];
        let summary = format!("types {types}\nwalk {walk}");
        if walk["at"] != "finalize" || p["exit_status"] != "exited with status 0" {
            return Err(format!(
                "not typed at its finalization, or not continued after: {} {summary}",
                p["exit_status"]
            ));
        }
        if walk["coverage"]["held_micros"].as_u64().unwrap_or(0) == 0 {
            return Err(format!("no hold time: {summary}"));
        }
        if count(types, "Session") != SESSIONS {
            return Err(format!("Session count is not {SESSIONS}: {summary}"));
        }
        // Every Session's dict, and the interpreter's own.
        if count(types, "dict") < SESSIONS {
            return Err(format!("fewer dicts than Sessions: {summary}"));
        }
        if count(types, "bytes") < SESSIONS || bytes(types, "bytes") < SESSIONS * PAYLOAD {
            return Err(format!("fewer than {SESSIONS} bytes of 2 KiB: {summary}"));
        }
        // The leak at the payload's line is N bytes objects, by their type.
        let entry = r.entries("leaks").iter().find(|e| {
            tests::python_frames(e)
                .first()
                .is_some_and(|f| f["line"].as_u64() == Some(payload_line))
        });
        let Some(entry) = entry else {
            return Err(format!("no leak at line {payload_line}:\n{}", r.stdout()));
        };
        let got = count(&entry["types"], "bytes");
        if off_by_percent(got, SESSIONS) > 5.0
            || off_by_percent(bytes(&entry["types"], "bytes"), SESSIONS * (PAYLOAD + 33)) > 5.0
        {
            return Err(format!("leak entry's types: {}", entry["types"]));
        }
        if !r.stdout().contains("Live objects by type of pid") {
            return Err(format!("no types section in the text:\n{}", r.stdout()));
        }
        // The same, later, from the capture.
        let out = tests::tracer()
            .arg("report")
            .arg(r.dir.path().join("capture.tracer"))
            .args(["types", "--format", "json"])
            .output()
            .map_err(|e| e.to_string())?;
        let json: Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {out:?}"))?;
        let again = &json["processes"][0]["types"];
        if count(again, "Session") != SESSIONS || bytes(again, "bytes") != bytes(types, "bytes") {
            return Err(format!("`report types` differs: {again}"));
        }
        Ok(())
    });
}

#[test]
fn sessions_typed_by_pid_with_their_growth() {
    // Debian's LTO build, pyenv's 3.8 and sid's 3.15: both object headers
    // and GC headers of the range.
    let chosen = ["debian-3.11", "pyenv-3.8", "pyenv-3.12", "sid-3.15"];
    let failures: Vec<String> = interpreters()
        .into_iter()
        .filter(|i| chosen.contains(&i.name))
        .filter_map(|python| {
            let mut child = tests::waiting_sessions(&python.path, SESSIONS);
            let pid = child.id().to_string();
            let running = spawn_record(&["--pid", &pid, "--top", "30"]);
            running.wait_for("Ctrl-C to stop", Duration::from_secs(60));
            // Growth counts from the first walk, made apart after the attach.
            running.wait_for("baseline of live objects", Duration::from_secs(10));
            // Leak now, while traced; give the events a moment to arrive.
            writeln!(child.stdin.as_mut().expect("stdin")).expect("go");
            std::thread::sleep(Duration::from_secs(2));
            // SAFETY: signalling our own child.
            unsafe { libc::kill(running.child.id() as i32, libc::SIGINT) };
            let r = tests::finish(running);
            // The workload was never stopped: it ends when told to.
            drop(child.stdin.take());
            let status = child.wait().expect("wait");
            let p = &r.report["processes"][0];
            let walk = &p["types_walk"];
            let growth = &walk["growth"];
            let check = || -> Result<(), String> {
                if !status.success() {
                    return Err(format!("the workload ended with {status}"));
                }
                if walk["at"] != "end" || walk["growth_since_s"].is_null() {
                    return Err(format!("no two walks: {walk}"));
                }
                // Up to 3.10 each Session also has its own __dict__.
                let dicts = if python.minor() <= 10 {
                    2 * SESSIONS
                } else {
                    SESSIONS
                };
                for (name, want) in [("Session", SESSIONS), ("bytes", SESSIONS), ("dict", dicts)] {
                    let got = count(growth, name);
                    if off_by_percent(got, want) > 5.0 {
                        return Err(format!(
                            "{name} grew by {got}, not {want} within 5%: {growth}"
                        ));
                    }
                }
                // The most grown bytes: the payloads.
                if growth[0]["type"] != "bytes" {
                    return Err(format!("bytes did not grow most: {growth}"));
                }
                Ok(())
            };
            check().err().map(|e| format!("{}: {e}", python.name))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_growing_type_comes_first() {
    // Order objects (no dict: __slots__) grow; nothing else does much.
    let python = &interpreters()[0];
    assert_eq!(python.name, "pyenv-3.8");
    for python in [
        python.clone(),
        tests::Interpreter {
            name: "debian-3.11",
            path: tests::DEBIAN_PYTHON.into(),
            lto: true,
        },
    ] {
        let mut child = Command::new(&python.path)
            .arg(workload("growing.py"))
            .arg("orders")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the workload");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("ready");
        let pid = child.id().to_string();
        let r = record(&["--pid", &pid, "-d", "3"]);
        let _ = child.kill();
        let _ = child.wait();
        let growth = &r.report["processes"][0]["types_walk"]["growth"];
        assert_eq!(growth[0]["type"], "Order", "{}: {growth}", python.name);
        // 4,000 a second for about 3 s.
        let grew = growth[0]["count"].as_u64().unwrap_or(0);
        assert!(
            (8_000..=16_000).contains(&grew),
            "{}: {growth}",
            python.name
        );
    }
}
