//! A real pre-fork server: Flask on gunicorn (from PyPI) with two workers,
//! under load from wrk over loopback for a few seconds, traced by `--pid`
//! of the gunicorn master: the leak planted in the app is found in both
//! workers, at its line, with the bytes and count of the requests served.

use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;
use tests::{
    ingest::free_port,
    line_of, python_frames, spawn_record,
    web::{listening_within, venv_python},
    workload,
};

/// web_app.py keeps bytes(SIZE) per request: one allocation of SIZE + 33.
const LEAK_ALLOCATION: u64 = 10_000 + 33;
/// wrk's connections: at most this many requests may be in flight (served
/// but not counted by wrk) when it stops.
const CONNECTIONS: u64 = 4;

/// Requests completed by wrk, from its summary line.
fn wrk_requests(output: &str) -> u64 {
    output
        .lines()
        .find_map(|l| {
            let l = l.trim();
            let (n, rest) = l.split_once(' ')?;
            rest.starts_with("requests in").then(|| n.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{output}"))
}

#[test]
fn leak_in_a_flask_app_is_found_in_both_gunicorn_workers() {
    let port = free_port();
    let mut server = Command::new(venv_python())
        .args(["-m", "gunicorn", "-w", "2", "-b"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--chdir")
        .arg(workload(""))
        .arg("web_app:app")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gunicorn");
    assert!(
        listening_within(port, Duration::from_secs(30)),
        "gunicorn did not listen"
    );
    // Workers are up once they answer; give both time to import the app.
    thread::sleep(Duration::from_secs(1));
    let master = server.id();
    let tracer = spawn_record(&["--top", "20", "--pid", &master.to_string()]);
    tracer.wait_for("tracer: recording", Duration::from_secs(60));
    let wrk = Command::new("wrk")
        .args(["-t", "2", "-c", &CONNECTIONS.to_string(), "-d", "3s"])
        .arg(format!("http://127.0.0.1:{port}/leak"))
        .output()
        .expect("run wrk (installed by cargo xtask setup)");
    let wrk_out = String::from_utf8_lossy(&wrk.stdout).into_owned();
    assert!(wrk.status.success(), "wrk failed:\n{wrk_out}");
    let served = wrk_requests(&wrk_out);
    // gunicorn's master stops its workers on SIGTERM; they finalize, and
    // the recording ends when every process has exited.
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(master as i32, libc::SIGTERM) };
    assert!(server.wait().expect("wait for gunicorn").success());
    let r = tests::finish(tracer);

    let line = line_of(&workload("web_app.py"), "# LEAK");
    let workers: Vec<&Value> = r.report["processes"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["parent"].as_u64() == Some(u64::from(master)))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        workers.len(),
        2,
        "two workers of the gunicorn master {master}:\n{}",
        r.stdout()
    );
    let mut total = 0;
    for w in &workers {
        let (bytes, count) = w["leaks"]
            .as_array()
            .into_iter()
            .flatten()
            // The buffers; the list keeping them grows at the same line,
            // through realloc.
            .filter(|e| tests::frames(e)[0]["function"] != "realloc")
            .filter(|e| {
                python_frames(e).first().is_some_and(|f| {
                    f["function"] == "leak"
                        && f["line"].as_u64() == Some(line)
                        && f["file"]
                            .as_str()
                            .is_some_and(|p| p.ends_with("web_app.py"))
                })
            })
            .fold((0, 0), |(b, c), e| {
                (
                    b + e["bytes"].as_u64().unwrap_or(0),
                    c + e["count"].as_u64().unwrap_or(0),
                )
            });
        assert!(
            count > 0,
            "worker {} leaked nothing at web_app.py:{line}:\n{}",
            w["pid"],
            r.stdout()
        );
        assert_eq!(bytes, count * LEAK_ALLOCATION, "worker {}", w["pid"]);
        total += count;
    }
    assert!(
        (served..=served + CONNECTIONS).contains(&total),
        "{total} leaked buffers in the workers, wrk completed {served} requests"
    );
    assert_eq!(r.counter("lost_events"), 0);
}
