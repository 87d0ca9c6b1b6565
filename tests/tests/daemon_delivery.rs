//! How the daemon delivers windows, beyond daemon.rs's totals and outage:
//! basic auth from the config file, a 429 whose Retry-After is honoured,
//! `--match` choosing processes by command line, and a spooled window over
//! an hour old dropped and counted (Pyroscope would reject it).

use std::{
    fs,
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use tests::{
    DEBIAN_PYTHON, KillOnDrop, Running,
    ingest::{IngestServer, accepted_profiles, free_port},
    spawn_tracer, workload,
};

/// Starts a workload and waits for its "ready".
fn start(script: &str) -> KillOnDrop {
    let mut child = Command::new(DEBIAN_PYTHON)
        .arg(workload(script))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the workload");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("workload output");
    KillOnDrop(child)
}

/// Waits for the daemon to end by itself; its stderr.
fn exits(mut d: Running, within: Duration) -> String {
    let deadline = Instant::now() + within;
    while d.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the daemon ran past {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = d.child.wait().expect("wait");
    let err: Vec<String> = d.stderr_lines.try_iter().collect();
    let err = err.join("\n");
    assert!(status.success(), "tracer daemon failed ({status}):\n{err}");
    err
}

/// The number before `what` in the daemon's exit line for `sink`
/// ("tracer: pyroscope: 5 pushed, 0 refused, 1 retries, 0 dropped, ...").
fn exit_count(stderr: &str, sink: &str, what: &str) -> u64 {
    stderr
        .lines()
        .find(|l| l.starts_with(&format!("tracer: {sink}: ")) && l.contains(" pushed, "))
        .and_then(|l| {
            l.split(", ")
                .find_map(|p| p.rsplit(": ").next()?.strip_suffix(&format!(" {what}")))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {what} count for {sink} in:\n{stderr}"))
}

#[test]
fn basic_auth_a_429_with_retry_after_and_match_choose_what_is_sent() {
    let server = IngestServer::start();
    server.control(&json!({"status": 429, "retry_after": "2", "count": 1, "path": "/ingest"}));
    let matched = start("daemon_exact.py");
    let other = start("busy_buffers.py");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("daemon.toml");
    fs::write(
        &config,
        format!(
            "interval = 1\nexact = true\n[pyroscope]\nurl = \"{}\"\nusername = \"ops\"\npassword = \"pa:ss\"\n",
            server.url()
        ),
    )
    .expect("write config");
    let d = spawn_tracer(&[
        "daemon",
        "--config",
        config.to_str().expect("utf-8"),
        "--match",
        "daemon_exact",
        "--duration",
        "7",
    ]);
    let stderr = exits(d, Duration::from_secs(60));

    let requests = server.of_kind("pyroscope-ingest");
    assert!(requests.len() >= 4, "{} pushes", requests.len());
    // base64("ops:pa:ss"): the password may hold a colon.
    for r in &requests {
        assert_eq!(r["authorization"], "Basic b3BzOnBhOnNz", "{r}");
    }
    // The 429 was retried no sooner than its Retry-After said.
    assert_eq!(requests[0]["status"], 429);
    let at = |r: &Value| r["at"].as_f64().expect("at");
    let waited = at(&requests[1]) - at(&requests[0]);
    assert!(
        waited >= 1.9,
        "retried {waited:.2} s after a 429 with Retry-After: 2"
    );
    assert!(exit_count(&stderr, "pyroscope", "retries") >= 1, "{stderr}");
    // Only the matching process's windows.
    let pushed = accepted_profiles(&requests, "pyroscope-ingest");
    assert!(pushed.len() >= 3, "{} accepted", pushed.len());
    let matched_pid = matched.0.id().to_string();
    for p in &pushed {
        let labels = &p["labels"];
        let process = labels["process"].as_str().unwrap_or_default();
        assert!(
            process.contains("daemon_exact.py") && !process.contains("busy_buffers"),
            "a window of another process: {labels}"
        );
    }
    assert!(
        stderr.contains(&matched_pid),
        "the daemon did not say it traces pid {matched_pid}:\n{stderr}"
    );
    assert!(
        !stderr.contains(&format!("pid {}", other.0.id())),
        "the daemon took the unmatched process:\n{stderr}"
    );
}

/// The spooled windows of `dir` (the daemon's `--spool-dir`).
fn spooled(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sink in fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in fs::read_dir(sink.path()).into_iter().flatten().flatten() {
            out.push(f.path());
        }
    }
    out
}

/// Moves a spooled window's time back by `by`, as if it had waited on disk
/// that long (the spool's layout: 8-byte magic, the metadata's length as a
/// little-endian u32, the metadata as JSON, the profile).
fn age(window: &Path, by: Duration) {
    let raw = fs::read(window).expect("read window");
    let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes")) as usize;
    let mut meta: Value = serde_json::from_slice(&raw[12..12 + len]).expect("metadata");
    let back = by.as_nanos() as u64;
    for key in ["start_unix_ns", "end_unix_ns"] {
        let t = meta[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} in {meta}"));
        meta[key] = json!(t - back);
    }
    let meta = serde_json::to_vec(&meta).expect("json");
    let mut out = raw[..8].to_vec();
    out.extend((meta.len() as u32).to_le_bytes());
    out.extend(meta);
    out.extend(&raw[12 + len..]);
    fs::write(window, out).expect("write window");
}

/// Three seconds of the daemon on `pid`, pushing to `url` and spooling in
/// `spool_dir`; its stderr.
fn spool_run(pid: &str, url: &str, spool_dir: &str) -> String {
    let d = spawn_tracer(&[
        "daemon",
        "--pid",
        pid,
        "--exact",
        "--interval",
        "1",
        "--duration",
        "3",
        "--pyroscope",
        url,
        "--spool-dir",
        spool_dir,
    ]);
    exits(d, Duration::from_secs(60))
}

#[test]
fn windows_spooled_over_an_hour_ago_are_dropped_and_counted() {
    let w = start("daemon_exact.py");
    let pid = w.0.id().to_string();
    let spool = tempfile::tempdir().expect("spool");
    let spool_dir = spool.path().to_str().expect("utf-8");
    // Nothing listens: every window is spooled, and stays at exit.
    let down = format!("http://127.0.0.1:{}", free_port());
    spool_run(&pid, &down, spool_dir);
    let old = spooled(spool.path());
    assert!(!old.is_empty(), "nothing spooled while the server was down");
    for window in &old {
        age(window, Duration::from_secs(2 * 3600));
    }

    let server = IngestServer::start();
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let stderr = spool_run(&pid, &server.url(), spool_dir);
    assert_eq!(
        exit_count(&stderr, "pyroscope", "dropped"),
        old.len() as u64,
        "{stderr}"
    );
    let pushed = accepted_profiles(&server.requests(), "pyroscope-ingest");
    assert!(!pushed.is_empty(), "nothing pushed");
    // Every window sent is of this run (its time after the run began,
    // give or take a window), none of the aged ones.
    for p in &pushed {
        let t = p["profile"]["time_nanos"].as_u64().expect("time_nanos");
        assert!(
            t + 2_000_000_000 >= started,
            "a window from {} s before the run was sent",
            (started - t) / 1_000_000_000
        );
    }
    assert!(spooled(spool.path()).is_empty(), "the spool is not empty");
}
