//! A process that makes new code objects without end, each allocation under
//! 80 never seen before, beside an honest target that leaks: the kernel
//! copies code objects under a per-process budget (the excess counted), so
//! the flood cannot crowd the honest target's events out of the ring.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

use tests::{DEBIAN_PYTHON, finish, frames, line_of, python_frames, spawn_record, workload};

const COUNT: u64 = 20_000;
const SIZE: u64 = 10_000;
const FLOOD_SECS: &str = "20";

#[test]
fn a_code_object_flood_leaves_an_honest_leak_exact() {
    let tracer = spawn_record(&["-v", "--all", "--exact", "--top", "50"]);
    tracer.wait_for("tracer: recording", Duration::from_secs(60));

    let mut flood = Command::new(DEBIAN_PYTHON)
        .arg(workload("code_flood.py"))
        .arg(FLOOD_SECS)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the flood");
    tracer.wait_for(
        &format!("pid {}: CPython", flood.id()),
        Duration::from_secs(30),
    );
    let mut flood_out = BufReader::new(flood.stdout.take().expect("stdout"));
    let mut line = String::new();
    flood_out.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "flooding");
    // Let the flood spend its burst.
    std::thread::sleep(Duration::from_secs(2));

    let script = workload("leak_buffers.py");
    let mut honest = Command::new(DEBIAN_PYTHON)
        .arg(&script)
        .args([&COUNT.to_string(), &SIZE.to_string(), "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the honest target");
    tracer.wait_for(
        &format!("pid {}: CPython", honest.id()),
        Duration::from_secs(30),
    );
    honest
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write");
    let honest_out = honest.wait_with_output().expect("wait");
    assert!(honest_out.status.success());

    line.clear();
    flood_out.read_line(&mut line).expect("read");
    assert!(flood.wait().expect("wait").success());
    eprintln!("the flood made {}", line.trim());
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(tracer.child.id() as i32, libc::SIGINT) };
    let r = finish(tracer);

    let leak_line = line_of(&script, "# LEAK");
    let (bytes, count) = r
        .entries("leaks")
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(u64::from(honest_out_pid(&r, &script))))
        // The buffers' mallocs: not the list's reallocs or the object
        // allocator's arena made at the same line.
        .filter(|e| frames(e).first().is_some_and(|f| f["function"] == "malloc"))
        .filter(|e| {
            python_frames(e)
                .first()
                .is_some_and(|f| f["function"] == "leak" && f["line"] == leak_line)
        })
        .fold((0, 0), |(b, c), e| {
            (
                b + e["bytes"].as_u64().unwrap_or(0),
                c + e["count"].as_u64().unwrap_or(0),
            )
        });
    // bytearray(n) allocates n + 1 bytes.
    assert_eq!(
        (bytes, count),
        (COUNT * (SIZE + 1), COUNT),
        "the honest leak is not exact:\n{}",
        r.stdout()
    );
    assert_eq!(r.counter("lost_events"), 0, "{}", r.stdout());
    let over = r.counter("code_over_budget");
    eprintln!(
        "code objects over budget: {over}, lost code copies: {}",
        r.counter("lost_code")
    );
    assert!(over > 0, "the flood never reached its budget");
}

/// The honest target's pid, by its command line.
fn honest_out_pid(r: &tests::Recorded, script: &std::path::Path) -> u32 {
    let script = script.to_str().expect("utf-8 path");
    r.report["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["command"].as_str().is_some_and(|c| c.contains(script)))
        .and_then(|p| p["pid"].as_u64())
        .expect("the honest target in the report") as u32
}
