//! `tracer daemon` end to end: real eBPF on real Python processes, every
//! window pushed to a loopback ingestion server that takes what Pyroscope
//! and Parca take (tests/validators/ingest_server.py, itself checked with
//! the official pyroscope-io clients in tests/tests/ingest_server.rs) and
//! decodes each profile with pprof's profile.proto. Totals are compared
//! with the capture the same run writes, exactly (exact mode).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    DEBIAN_PYTHON, KillOnDrop, Running,
    ingest::{
        IngestServer, accepted_profiles, free_port, http, metric, named, profile_name, total,
    },
    line_of, spawn_tracer, tracer, workload,
};

struct Workload(KillOnDrop);

impl Workload {
    fn pid(&self) -> String {
        self.0.0.id().to_string()
    }
}

/// Starts a workload under Debian's python3.11 and waits for its first line.
fn start(script: &str, args: &[&str]) -> Workload {
    let mut child = Command::new(DEBIAN_PYTHON)
        .arg(workload(script))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the workload");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("workload output");
    Workload(KillOnDrop(child))
}

/// Waits for the daemon to exit by itself; returns its stderr.
fn exits(mut d: Running, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = d.child.try_wait().expect("wait") {
            let mut err = Vec::new();
            while let Ok(line) = d.stderr_lines.recv_timeout(Duration::from_secs(2)) {
                err.push(line);
            }
            let err = err.join("\n");
            assert!(status.success(), "tracer daemon failed ({status}):\n{err}");
            return err;
        }
        assert!(
            Instant::now() < deadline,
            "tracer daemon still running after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tracer report DIR summary --format json`.
fn capture_report(dir: &Path) -> Value {
    let out = tracer()
        .arg("report")
        .arg(dir)
        .args(["summary", "--format", "json"])
        .output()
        .expect("tracer report");
    assert!(
        out.status.success(),
        "tracer report {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_owned()
}

#[test]
fn pushed_windows_add_up_to_the_capture_exactly() {
    let server = IngestServer::start();
    let w = start("daemon_exact.py", &[]);
    let out = tempfile::tempdir().expect("tempdir");
    let d = spawn_tracer(&[
        "daemon",
        "--pid",
        &w.pid(),
        "--exact",
        "--interval",
        "1",
        "--duration",
        "6",
        "--label",
        "team=memory",
        "--pyroscope",
        &server.url(),
        "--parca",
        &server.url(),
        "-o",
        out.path().to_str().expect("utf-8"),
    ]);
    exits(d, Duration::from_secs(40));
    let capture = capture_report(out.path());
    let allocated = capture["totals"]["bytes_allocated"]
        .as_i64()
        .expect("bytes");
    assert!(allocated > 10_000_000, "the workload allocated {allocated}");
    let live_at_end = capture["processes"][0]["summary"]["live_bytes"]
        .as_i64()
        .expect("live");
    let requests = server.requests();
    assert!(
        requests.iter().all(|r| r["status"] == 200),
        "a push was refused: {requests:#?}"
    );
    for kind in ["pyroscope-ingest", "parca"] {
        // The heap walk at the start is a types profile of its own.
        let windows = named(accepted_profiles(&requests, kind), "memory");
        // 6 s in windows of 1 s; the last one may be cut in two.
        assert!(
            (5..=7).contains(&windows.len()),
            "{kind}: {} windows",
            windows.len()
        );
        let pushed: i64 = windows.iter().map(|p| total(p, "alloc_space")).sum();
        assert_eq!(pushed, allocated, "{kind}: alloc_space of every window");
        let last = windows.last().expect("a window");
        assert_eq!(
            total(last, "inuse_space"),
            live_at_end,
            "{kind}: inuse_space of the last window"
        );
        for p in &windows {
            let profile = &p["profile"];
            assert_eq!(
                profile["types"],
                json!([
                    "alloc_objects/count",
                    "alloc_space/bytes",
                    "inuse_objects/count",
                    "inuse_space/bytes"
                ])
            );
            assert_eq!(profile["period_type"], "space/bytes");
            assert_eq!(profile["default"], "inuse_space");
            let duration = profile["duration_nanos"].as_i64().expect("duration");
            assert!(duration <= 1_300_000_000, "{kind}: window of {duration} ns");
            let labels = &p["labels"];
            assert_eq!(labels["service_name"], "daemon_exact", "{kind}: {labels}");
            assert_eq!(labels["host"], host_name());
            assert_eq!(labels["process"], "python3.11 daemon_exact.py");
            assert_eq!(labels["team"], "memory");
            assert!(labels.get("pid").is_none(), "pid only when asked");
        }
        // Windows follow each other.
        for pair in windows.windows(2) {
            let end = pair[0]["profile"]["time_nanos"].as_i64().unwrap_or(0)
                + pair[0]["profile"]["duration_nanos"].as_i64().unwrap_or(0);
            let next = pair[1]["profile"]["time_nanos"].as_i64().unwrap_or(0);
            assert!(
                (next - end).abs() < 50_000_000,
                "{kind}: a gap of {} ns",
                next - end
            );
        }
    }
    let ingest = accepted_profiles(&requests, "pyroscope-ingest");
    // Memory windows, and the heap walk at the start as a types profile,
    // both named so by Pyroscope from their sample types alone.
    let names: std::collections::BTreeSet<&str> = ingest.iter().map(profile_name).collect();
    assert_eq!(names, ["memory", "types"].into(), "profile names");
    assert_eq!(ingest[0]["spy"], "tracer");
    let ingest = named(ingest, "memory");
    let parca = named(accepted_profiles(&requests, "parca"), "memory");
    assert!(
        parca[0]["profile_types"]
            .as_array()
            .expect("types")
            .contains(&json!("memory:alloc_space:bytes:space:bytes:delta"))
    );
    // The Python line that keeps its buffers is the heaviest live stack.
    let script = workload("daemon_exact.py");
    let kept = line_of(&script, "# KEPT") as i64;
    let top = &ingest.last().expect("window")["profile"]["top"][0]["frames"];
    assert!(
        top.as_array()
            .expect("frames")
            .iter()
            .any(|f| f["line"] == kept
                && f["file"]
                    .as_str()
                    .is_some_and(|s| s.ends_with("daemon_exact.py"))),
        "heaviest inuse sample is not daemon_exact.py:{kept}: {top:#}"
    );
}

/// Waits for `tracer_...{sink=...}` on /metrics to reach `at_least`.
fn wait_metric(port: u16, series: &str, at_least: f64, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (_, text) = http(port, "GET", "/metrics", b"");
        if metric(&text, series).is_some_and(|v| v >= at_least) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} did not reach {at_least} within {within:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_outage_is_retried_spooled_and_caught_up_and_a_400_is_not_retried() {
    // Nothing listens yet: connection refused.
    let port = free_port();
    let metrics = free_port();
    let w = start("daemon_exact.py", &[]);
    let out = tempfile::tempdir().expect("tempdir");
    let spool = tempfile::tempdir().expect("spool");
    let url = format!("http://127.0.0.1:{port}");
    let d = spawn_tracer(&[
        "daemon",
        "--pid",
        &w.pid(),
        "--exact",
        "--interval",
        "1",
        "--duration",
        "9",
        "--pyroscope",
        &url,
        "--parca",
        &url,
        "--spool-dir",
        spool.path().to_str().expect("utf-8"),
        "--metrics",
        &metrics.to_string(),
        "-o",
        out.path().to_str().expect("utf-8"),
    ]);
    d.wait_for("recording", Duration::from_secs(30));
    // Refused connections are retried, and the windows wait on disk.
    let text = wait_metric(
        metrics,
        "tracer_push_retries_total{sink=\"pyroscope\"}",
        1.0,
        Duration::from_secs(10),
    );
    // The retry is counted once its window is on disk.
    let spooled = metric(&text, "tracer_spool_bytes{sink=\"pyroscope\"}").unwrap_or(0.0);
    assert!(spooled > 0.0, "a failed window is spooled:\n{text}");
    // Then the server answers 503, then recovers; Parca's next push is
    // refused with a 400, for good.
    let server = IngestServer::start_on(port);
    server.control(&json!({"status": 503, "retry_after": "1", "count": 2, "path": "/ingest"}));
    server.wait_for("a 503", Duration::from_secs(10), |r| {
        r.iter().any(|x| x["status"] == 503)
    });
    server.control(&json!({"status": 400, "count": 1, "path": "/api/profiles/writeraw"}));
    let stderr = exits(d, Duration::from_secs(40));
    let capture = capture_report(out.path());
    let allocated = capture["totals"]["bytes_allocated"]
        .as_i64()
        .expect("bytes");
    let requests = server.requests();
    let pyroscope: i64 = accepted_profiles(&requests, "pyroscope-ingest")
        .iter()
        .map(|p| total(p, "alloc_space"))
        .sum();
    assert_eq!(
        pyroscope, allocated,
        "every window reached Pyroscope in the end"
    );
    let refused: Vec<&Value> = requests
        .iter()
        .filter(|r| r["kind"] == "parca" && r["status"] == 400)
        .collect();
    assert_eq!(refused.len(), 1, "one 400");
    let refused_bytes = total(&refused[0]["series"][0], "alloc_space");
    let refused_time = &refused[0]["series"][0]["profile"]["time_nanos"];
    let parca = accepted_profiles(&requests, "parca");
    assert!(
        parca
            .iter()
            .all(|p| &p["profile"]["time_nanos"] != refused_time),
        "the refused window was sent again"
    );
    let parca_bytes: i64 = parca.iter().map(|p| total(p, "alloc_space")).sum();
    assert_eq!(parca_bytes + refused_bytes, allocated);
    // The counters, as the daemon says them at exit.
    assert!(
        stderr.contains("pyroscope: ") && stderr.contains("0 refused"),
        "{stderr}"
    );
    assert!(
        stderr.contains("parca: ") && stderr.contains("1 refused"),
        "{stderr}"
    );
    let retries = stderr
        .lines()
        .find(|l| l.contains("tracer: pyroscope: "))
        .and_then(|l| l.split(", ").find_map(|p| p.strip_suffix(" retries")))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("retries in the exit line");
    assert!(retries >= 2, "{stderr}");
    let left: Vec<_> = walk(spool.path());
    assert!(left.is_empty(), "spool not empty at the end: {left:?}");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `tracer report CAPTURE growth` of growth_shapes.py: the leak is #1
/// `growing`, the cache `plateaued`, the spike `steady` if listed at all.
/// Returns the report.
fn assert_growth_shapes(capture: &Path, script: &Path) -> Value {
    let report = tracer()
        .arg("report")
        .arg(capture)
        .args(["growth", "--format", "json", "--python-only", "-T", "50"])
        .output()
        .expect("tracer report growth");
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let json: Value = serde_json::from_slice(&report.stdout).expect("JSON");
    let entries = json["history"]["growth"]["entries"]
        .as_array()
        .expect("entries");
    let line_of_entry = |e: &Value| {
        e["stack"]
            .as_array()
            .and_then(|s| s.iter().find(|f| f["kind"] == "python"))
            .and_then(|f| f["line"].as_u64())
    };
    assert_eq!(entries[0]["status"], "growing", "{entries:#?}");
    assert_eq!(line_of_entry(&entries[0]), Some(line_of(script, "# LEAK")));
    let cache = entries
        .iter()
        .find(|e| line_of_entry(e) == Some(line_of(script, "# CACHE")))
        .expect("the cache in the growth report");
    assert_eq!(cache["status"], "plateaued");
    let spike = line_of(script, "# SPIKE");
    assert!(
        entries
            .iter()
            .filter(|e| line_of_entry(e) == Some(spike))
            .all(|e| e["status"] == "steady"),
        "the spike: {entries:#?}"
    );
    json
}

#[test]
fn growth_ranks_the_leak_first_the_cache_plateaued_and_the_spike_not_at_all() {
    let server = IngestServer::start();
    let go = tempfile::tempdir().expect("tempdir");
    let go_file = go.path().join("go");
    let w = start(
        "growth_shapes.py",
        &[go_file.to_str().expect("utf-8"), "40"],
    );
    let out = tempfile::tempdir().expect("tempdir");
    let d = spawn_tracer(&[
        "daemon",
        "--pid",
        &w.pid(),
        "--sample-bytes",
        "65536",
        "--interval",
        "1",
        "--duration",
        "24",
        "--growth-every",
        "22",
        "--pyroscope",
        &server.url(),
        "-o",
        out.path().to_str().expect("utf-8"),
    ]);
    d.wait_for("recording", Duration::from_secs(30));
    std::fs::write(&go_file, b"").expect("go");
    let log = d.wait_for("growth of pid", Duration::from_secs(40));
    let mut lines = log;
    lines.extend(d.wait_for("#2", Duration::from_secs(5)));
    let stderr = format!(
        "{}\n{}",
        lines.join("\n"),
        exits(d, Duration::from_secs(40))
    );
    let script = workload("growth_shapes.py");
    let at = |marker| format!("growth_shapes.py:{}", line_of(&script, marker));
    let first = stderr
        .lines()
        .find(|l| l.contains("#1 "))
        .unwrap_or_else(|| panic!("no ranking in the log:\n{stderr}"));
    assert!(
        first.contains("#1 growing") && first.contains(&at("# LEAK")),
        "the leak is not #1 growing:\n{stderr}"
    );
    let cache = stderr
        .lines()
        .find(|l| l.contains(&at("# CACHE")))
        .unwrap_or_else(|| panic!("the cache is not ranked:\n{stderr}"));
    assert!(cache.contains("plateaued"), "{cache}");
    assert!(
        !stderr.lines().any(|l| l.contains(&at("# SPIKE"))),
        "the spike is a suspect:\n{stderr}"
    );
    // The same from the capture.
    assert_growth_shapes(out.path(), &script);
    let text = tracer()
        .arg("report")
        .arg(out.path())
        .args(["growth", "--python-only"])
        .output()
        .expect("text");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("#1   growing"), "{text}");
}

/// The growth report of a `record` capture: its windows are the
/// `--sample-ms` samples, or `--window-secs` ones.
#[test]
fn growth_of_a_record_capture_takes_its_samples_as_windows() {
    let go = tempfile::tempdir().expect("tempdir");
    let go_file = go.path().join("go");
    let w = start(
        "growth_shapes.py",
        &[go_file.to_str().expect("utf-8"), "24"],
    );
    let out = tempfile::tempdir().expect("tempdir");
    let d = spawn_tracer(&[
        "record",
        "--pid",
        &w.pid(),
        "--sample-bytes",
        "65536",
        "--sample-ms",
        "1000",
        "--duration",
        "24",
        "-o",
        out.path().to_str().expect("utf-8"),
    ]);
    d.wait_for("recording", Duration::from_secs(30));
    std::fs::write(&go_file, b"").expect("go");
    exits(d, Duration::from_secs(60));
    let script = workload("growth_shapes.py");
    let capture = out.path().join("capture.tracer");
    let json = assert_growth_shapes(&capture, &script);
    let growth = &json["history"]["growth"];
    // The median gap between samples: 1 s, give or take a timer's delay.
    let window_s = growth["window_s"].as_f64().expect("window_s");
    assert!((window_s - 1.0).abs() < 0.05, "windows of {window_s} s");
    // The capture's span in 1 s samples (the samples as recording begins
    // and just before it ends make no windows of their own).
    let span = json["duration_s"].as_f64().expect("duration_s");
    let windows = growth["windows"].as_u64().expect("windows") as f64;
    assert!(
        (windows - span).abs() <= 1.0,
        "{windows} windows in {span} s"
    );
    // Longer windows than the samples: the leak still leads.
    let report = tracer()
        .arg("report")
        .arg(&capture)
        .args(["growth", "--format", "json", "--python-only"])
        .args(["--window-secs", "2", "--growth-windows", "10"])
        .output()
        .expect("tracer report growth --window-secs");
    let json: Value = serde_json::from_slice(&report.stdout).expect("JSON");
    let growth = &json["history"]["growth"];
    let window_s = growth["window_s"].as_f64().expect("window_s");
    assert!((window_s - 2.0).abs() < 1e-9, "windows of {window_s} s");
    assert_eq!(growth["tested"], 10, "{growth:#}");
    // Every 2 s of the span, the rest joined to the last.
    let windows = growth["windows"].as_u64().expect("windows") as f64;
    assert!(
        (windows - span / 2.0).abs() <= 1.0,
        "{windows} windows of 2 s in {span} s"
    );
    assert_eq!(growth["entries"][0]["status"], "growing", "{growth:#}");
}

#[test]
fn sigterm_flushes_the_last_window_and_sighup_reloads_labels() {
    let server = IngestServer::start();
    let w = start("daemon_exact.py", &[]);
    let conf = tempfile::tempdir().expect("tempdir");
    let config = conf.path().join("daemon.toml");
    let write = |team: &str| {
        std::fs::write(
            &config,
            format!(
                "pid = [{}]\ninterval = 2\nexact = true\n[labels]\nteam = \"{team}\"\n[pyroscope]\nurl = \"{}\"\ntenant = \"acme\"\nbearer_token = \"s3cret\"\n",
                w.pid(),
                server.url()
            ),
        )
        .expect("config");
    };
    write("blue");
    let d = spawn_tracer(&["daemon", "--config", config.to_str().expect("utf-8")]);
    server.wait_for("a first window", Duration::from_secs(30), |r| !r.is_empty());
    write("green");
    let pid = d.child.id() as i32;
    // SAFETY: kill sends a signal to the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    server.wait_for(
        "a window with the new label",
        Duration::from_secs(10),
        |r| r.iter().any(|x| x["labels"]["team"] == "green"),
    );
    let before = server.requests().len();
    std::thread::sleep(Duration::from_millis(700));
    let sent = Instant::now();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let stderr = exits(d, Duration::from_secs(15));
    assert!(sent.elapsed() < Duration::from_secs(15));
    let requests = server.requests();
    assert!(
        requests.len() > before,
        "no window pushed after SIGTERM:\n{stderr}"
    );
    let last = requests.last().expect("request");
    assert_eq!(last["status"], 200);
    assert_eq!(last["labels"]["team"], "green");
    assert_eq!(last["tenant"], "acme");
    assert_eq!(last["authorization"], "Bearer s3cret");
    assert!(stderr.contains("configuration reloaded"), "{stderr}");
    let first = &requests[0];
    assert_eq!(first["labels"]["team"], "blue");
}

#[test]
fn bad_settings_are_one_line_errors() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["daemon", "--all", "--pyroscope", "localhost:4040"],
            "http://",
        ),
        (
            &["daemon", "--all", "--config", "/nonexistent/daemon.toml"],
            "cannot read",
        ),
        (&["daemon", "--all", "--label", "team"], "KEY=VALUE"),
        (&["daemon", "--pid", "1", "--interval", "0"], "--interval"),
        (
            &["daemon", "--pid", "1", "--types-every", "100000"],
            "--types-every",
        ),
    ];
    for (args, says) in cases {
        let out = tracer().args(args).output().expect("run tracer");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn the_capture_rotates_under_its_cap_and_reads_as_one() {
    let w = start("busy_buffers.py", &[]);
    let out = tempfile::tempdir().expect("tempdir");
    let d = spawn_tracer(&[
        "daemon",
        "--pid",
        &w.pid(),
        "--exact",
        "--interval",
        "1",
        "--duration",
        "8",
        "--max-capture-mb",
        "1",
        "-o",
        out.path().to_str().expect("utf-8"),
    ]);
    exits(d, Duration::from_secs(40));
    let mut segments: Vec<(String, u64)> = std::fs::read_dir(out.path())
        .expect("dir")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().expect("md").len(),
            )
        })
        .collect();
    segments.sort();
    assert!(segments.len() >= 2, "no rotation: {segments:?}");
    assert_ne!(
        segments[0].0, "capture-000001.tracer",
        "the oldest was not deleted: {segments:?}"
    );
    let total: u64 = segments.iter().map(|s| s.1).sum();
    assert!(total <= 2 << 20, "{total} bytes kept: {segments:?}");
    let report = capture_report(out.path());
    assert!(report["totals"]["allocs"].as_u64().expect("allocs") > 0);
}

/// A type's `[count, bytes]` in a decoded types profile: the sample whose
/// one frame is named for it.
fn type_values(p: &Value, name: &str) -> Option<(u64, u64)> {
    let sample = p["profile"]["top"]
        .as_array()?
        .iter()
        .find(|s| s["frames"][0]["function"] == name)?;
    Some((sample["values"][0].as_u64()?, sample["values"][1].as_u64()?))
}

/// A type's count and bytes in a `{"type", "count", "bytes"}` list.
fn listed(types: &Value, name: &str) -> Option<(u64, u64)> {
    let t = types.as_array()?.iter().find(|t| t["type"] == name)?;
    Some((t["count"].as_u64()?, t["bytes"].as_u64()?))
}

#[test]
fn types_are_walked_pushed_as_their_own_profile_and_kept_in_the_capture() {
    const SESSIONS: u64 = 5_000;
    let server = IngestServer::start();
    let mut child = tests::waiting_sessions(Path::new(DEBIAN_PYTHON), SESSIONS);
    let pid = child.id();
    let out = tempfile::tempdir().expect("tempdir");
    let d = spawn_tracer(&[
        "daemon",
        "--pid",
        &pid.to_string(),
        // Objects outside CPython's arenas and GC lists (the 2 KiB bytes)
        // are typed through the traced allocations: every one, not an
        // estimate from samples.
        "--exact",
        "--interval",
        "1",
        "--types-every",
        "3",
        "--growth-every",
        "1",
        "--duration",
        "12",
        "--pyroscope",
        &server.url(),
        "--parca",
        &server.url(),
        "-o",
        out.path().to_str().expect("utf-8"),
    ]);
    d.wait_for("baseline of live objects", Duration::from_secs(30));
    // Leak now, between two walks.
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), b"\n").expect("go");
    let stderr = exits(d, Duration::from_secs(40));
    drop(child.stdin.take());
    let _ = child.wait();
    let requests = server.requests();
    assert!(
        requests.iter().all(|r| r["status"] == 200),
        "a push was refused: {requests:#?}"
    );
    for kind in ["pyroscope-ingest", "parca"] {
        let profiles = accepted_profiles(&requests, kind);
        let types = named(profiles.clone(), "types");
        // The start's walk and one every 3 s of 12.
        assert!(
            (3..=6).contains(&types.len()),
            "{kind}: {} types profiles",
            types.len()
        );
        // The baseline, walked before the leak (the process had not
        // allocated since the attach: it had no window yet), went too.
        let baseline = type_values(&types[0], "Session").map_or(0, |(count, _)| count);
        assert_eq!(
            baseline, 0,
            "{kind}: the first types profile is not the baseline"
        );
        let last = types.last().expect("a types profile");
        let p = &last["profile"];
        assert_eq!(p["types"], json!(["type_objects/count", "types/bytes"]));
        assert_eq!(p["default"], "types");
        assert_eq!(p["duration_nanos"], 0, "{kind}: a walk is an instant");
        let (count, bytes) = type_values(last, "Session")
            .unwrap_or_else(|| panic!("{kind}: no Session sample: {p:#}"));
        assert!(
            tests::off_by_percent(count, SESSIONS) <= 5.0,
            "{kind}: {count} Session objects, not {SESSIONS} within 5%"
        );
        assert!(bytes >= count * 32, "{kind}: {bytes} bytes of Session");
        // Each Session's 2 KiB payload, and the interpreter's own few.
        let (payloads, payload_bytes) =
            type_values(last, "bytes").unwrap_or_else(|| panic!("{kind}: no bytes: {p:#}"));
        assert!(
            (SESSIONS..=SESSIONS * 6 / 5).contains(&payloads),
            "{kind}: {payloads} bytes objects for {SESSIONS} payloads"
        );
        assert!(
            payload_bytes >= SESSIONS * 2048,
            "{kind}: {payload_bytes} bytes in {payloads} bytes objects"
        );
        // Labelled as the process's memory windows are.
        let memory = named(profiles, "memory");
        let window = memory.last().expect("a memory window");
        let without_name = |v: &Value| {
            let mut l = v["labels"].clone();
            if let Some(m) = l.as_object_mut() {
                m.remove("__name__");
            }
            l
        };
        assert_eq!(without_name(last), without_name(window), "{kind}: labels");
        assert_eq!(last["labels"]["service_name"], "sessions", "{kind}");
    }
    let parca = named(accepted_profiles(&requests, "parca"), "types");
    assert_eq!(
        parca[0]["profile_types"],
        json!([
            "types:type_objects:count:objects:count",
            "types:types:bytes:objects:count"
        ])
    );
    // The growth log names what grew between the two walks around the leak.
    let grew = stderr
        .lines()
        .filter(|l| l.contains(&format!("types of pid {pid} grown most")))
        .find_map(|l| {
            let after = l.split("Session +").nth(1)?;
            after.split(' ').next()?.parse::<u64>().ok()
        })
        .unwrap_or_else(|| panic!("no Session growth in the log:\n{stderr}"));
    assert!(
        tests::off_by_percent(grew, SESSIONS) <= 5.0,
        "the log says Session grew by {grew}:\n{stderr}"
    );
    // The capture keeps the walks: `tracer report DIR types`.
    let report = tracer()
        .arg("report")
        .arg(out.path())
        .args(["types", "--format", "json"])
        .output()
        .expect("tracer report types");
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let json: Value = serde_json::from_slice(&report.stdout).expect("JSON");
    let process = &json["processes"][0];
    let (count, _) = listed(&process["types"], "Session")
        .unwrap_or_else(|| panic!("no Session in `report types`: {process:#}"));
    assert!(
        tests::off_by_percent(count, SESSIONS) <= 5.0,
        "`report types`: {count} Session objects"
    );
    let (payloads, _) = listed(&process["types"], "bytes").expect("bytes");
    assert!(
        (SESSIONS..=SESSIONS * 6 / 5).contains(&payloads),
        "`report types`: {payloads} bytes objects"
    );
    let walk = &process["types_walk"];
    assert_eq!(walk["at"], "periodic", "{walk:#}");
    let (grown, _) = listed(&walk["growth"], "Session").expect("growth since the start");
    assert!(
        tests::off_by_percent(grown, SESSIONS) <= 5.0,
        "`report types`: Session grew by {grown}"
    );
}
