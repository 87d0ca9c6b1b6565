//! Captures and every report made from them, each export read back by an
//! independent reader (inferno's flamegraph tool, pprof's own profile.proto
//! through Python's protobuf package and `go tool pprof`, speedscope's JSON
//! schema, Chromium),
//! with byte totals that match report.json exactly.
//!
//! The workload, report_shapes.py, makes one of each shape at known lines:
//! a leak, a 32 MiB spike freed before the end (the peak), temporary
//! buffers, and a leak made by a second thread. The readers and schema are
//! fetched by `cargo xtask test` into tests/cache; the recording, each
//! export and the HTML report's screenshot stay in
//! target/test-output/reports for a person to look at.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
    time::Duration,
};

use serde_json::Value;
use tests::{
    DEBIAN_PYTHON, line_of, pyenv_python, root, spawn_record, test_cache, tracer, workload,
};

const LEAK_COUNT: u64 = 200;
const LEAK_SIZE: u64 = 64 * 1024;
const SPIKE_SIZE: u64 = 32 * 1024 * 1024;
const TEMPORARY_COUNT: u64 = 2000;
const TEMPORARY_SIZE: u64 = 100_000;
const THREAD_COUNT: u64 = 100;
const THREAD_SIZE: u64 = 10_000;

/// bytearray(n) allocates n + 1 bytes; a group may also hold a few of the
/// interpreter's own allocations made through the same line.
fn assert_bytes(what: &str, got: u64, count: u64, size: u64) {
    let expected = count * (size + 1);
    let slack = expected / 50;
    assert!(
        got >= expected && got <= expected + slack,
        "{what}: {got} bytes, expected {expected} (+2%)"
    );
}

struct Recording {
    dir: PathBuf,
    report: Value,
    script: PathBuf,
}

impl Recording {
    fn capture(&self) -> PathBuf {
        self.dir.join("capture.tracer")
    }

    fn total(&self, name: &str) -> u64 {
        self.report["totals"][name].as_u64().expect("total")
    }

    fn line(&self, marker: &str) -> u64 {
        line_of(&self.script, marker)
    }
}

fn output_dir() -> PathBuf {
    root().join("target/test-output/reports")
}

/// One recording of report_shapes.py under pyenv's 3.11, shared by the
/// tests of this file.
fn recording() -> &'static Recording {
    static RECORDING: OnceLock<Recording> = OnceLock::new();
    RECORDING.get_or_init(|| {
        let dir = output_dir().join("recording");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("output dir");
        let script = workload("report_shapes.py");
        let python = pyenv_python("3.11.7");
        let out = tracer()
            .arg("record")
            .arg("-o")
            .arg(&dir)
            .arg("--")
            .arg(&python)
            .arg(&script)
            .output()
            .expect("run tracer");
        assert_success("tracer record", &out);
        let json = fs::read_to_string(dir.join("report.json")).expect("report.json");
        Recording {
            report: serde_json::from_str(&json).expect("report.json is JSON"),
            dir,
            script,
        }
    })
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tracer report CAPTURE ARGS`, which must succeed.
fn report(args: &[&str]) -> Output {
    let out = tracer()
        .arg("report")
        .arg(recording().capture())
        .args(args)
        .output()
        .expect("run tracer report");
    assert_success(&format!("tracer report {args:?}"), &out);
    out
}

/// `tracer report CAPTURE KIND ARGS -o FILE`; returns FILE, kept in the
/// test output.
fn export(kind: &str, args: &[&str], file: &str) -> PathBuf {
    let path = output_dir().join(file);
    let mut all = vec![kind];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", path.to_str().expect("utf-8 path")]);
    let out = report(&all);
    assert!(out.stdout.is_empty(), "-o writes nothing to stdout");
    path
}

fn json_report(kind: &str) -> Value {
    let out = report(&[kind, "--format", "json", "--python-only"]);
    serde_json::from_slice(&out.stdout).expect("--format json is JSON")
}

/// Whether a (JSON report) entry's innermost Python frame is `line` of the
/// workload.
fn at_line(entry: &Value, line: u64) -> bool {
    entry["stack"]
        .as_array()
        .and_then(|s| s.iter().find(|f| f["kind"] == "python"))
        .is_some_and(|f| {
            f["line"].as_u64() == Some(line)
                && f["file"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("report_shapes.py"))
        })
}

fn entry_at(list: &Value, line: u64) -> &Value {
    list.as_array()
        .and_then(|l| l.iter().find(|e| at_line(e, line)))
        .unwrap_or_else(|| panic!("no entry at report_shapes.py:{line} in {list:#}"))
}

#[test]
fn leaks_and_hotspots_offline_match_the_recording() {
    let r = recording();
    let leaks = json_report("leaks");
    let top = &leaks["leaks"][0];
    assert!(
        at_line(top, r.line("# LEAK")),
        "top leak is not the leak line: {top:#}"
    );
    assert_bytes(
        "top leak",
        top["bytes"].as_u64().expect("bytes"),
        LEAK_COUNT,
        LEAK_SIZE,
    );
    // Made again from the capture, the totals are the recording's own.
    assert_eq!(leaks["totals"], r.report["totals"]);
    let text = String::from_utf8(report(&["leaks"]).stdout).expect("utf-8");
    assert!(
        text.contains(&format!("report_shapes.py:{}", r.line("# LEAK"))),
        "{text}"
    );
    let hot = entry_at(&leaks["hotspots"], r.line("# TEMPORARY"));
    assert_bytes(
        "temporary hotspot",
        hot["bytes"].as_u64().expect("bytes"),
        TEMPORARY_COUNT,
        TEMPORARY_SIZE,
    );
}

#[test]
fn peak_is_the_spike() {
    let r = recording();
    let peak = json_report("peak");
    let top = &peak["history"]["peak"][0];
    assert!(
        at_line(top, r.line("# SPIKE")),
        "the largest entry at the peak is not the spike: {top:#}"
    );
    assert_bytes(
        "spike",
        top["bytes"].as_u64().expect("bytes"),
        1,
        SPIKE_SIZE,
    );
    // The leak was live then too.
    let leak = entry_at(&peak["history"]["peak"], r.line("# LEAK"));
    assert_bytes(
        "leak at the peak",
        leak["bytes"].as_u64().expect("bytes"),
        LEAK_COUNT,
        LEAK_SIZE,
    );
    let summary = &peak["processes"][0]["summary"];
    let peak_bytes = summary["peak_bytes"].as_u64().expect("peak_bytes");
    assert!(
        peak_bytes >= SPIKE_SIZE + LEAK_COUNT * LEAK_SIZE,
        "peak {peak_bytes} below spike + leak"
    );
    assert!(peak_bytes > summary["leaked_bytes"].as_u64().expect("leaked"));
}

#[test]
fn temporary_allocations_by_time_and_by_count() {
    let r = recording();
    let line = r.line("# TEMPORARY");
    let by_time = json_report("temporary");
    assert!(
        by_time["history"]["temporary_rule"]
            .as_str()
            .is_some_and(|s| s.contains("1 ms"))
    );
    let top = &by_time["history"]["temporary"][0];
    assert!(at_line(top, line), "top temporary entry: {top:#}");
    // Each buffer is freed microseconds after it is made, but a thread
    // preempted in between (two cores, the tracer beside it) takes longer:
    // a few may miss 1 ms.
    let count = top["count"].as_u64().expect("count");
    assert!(
        (TEMPORARY_COUNT * 95 / 100..=TEMPORARY_COUNT + TEMPORARY_COUNT / 50).contains(&count),
        "{count} temporary buffers of {TEMPORARY_COUNT}"
    );
    let bytes = top["bytes"].as_u64().expect("bytes");
    assert!(
        bytes >= count * (TEMPORARY_SIZE + 1),
        "{bytes} bytes in {count}"
    );
    // Nothing the leak line made was freed.
    assert!(
        by_time["history"]["temporary"]
            .as_array()
            .expect("list")
            .iter()
            .all(|e| !at_line(e, r.line("# LEAK"))),
        "leaked buffers reported as temporary"
    );
    // memray's rule: freed before one more allocation of the thread.
    let out = report(&[
        "temporary",
        "--temporary-allocations",
        "1",
        "--format",
        "json",
        "--python-only",
    ]);
    let by_count: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let e = entry_at(&by_count["history"]["temporary"], line);
    assert_eq!(e["count"].as_u64(), Some(TEMPORARY_COUNT), "{e:#}");
}

#[test]
fn summary_per_process_and_thread() {
    let r = recording();
    let summary = &json_report("summary")["processes"][0]["summary"];
    let totals = &r.report["totals"];
    assert_eq!(summary["allocated_bytes"], totals["bytes_allocated"]);
    assert_eq!(summary["freed_bytes"], totals["bytes_freed"]);
    assert_eq!(summary["leaked_bytes"], totals["live_bytes"]);
    let threads = summary["threads"].as_object().expect("threads");
    assert_eq!(threads.len(), 2, "main thread and worker: {summary:#}");
    let sum = |field: &str| -> u64 {
        threads
            .values()
            .map(|t| t[field].as_u64().expect("number"))
            .sum()
    };
    assert_eq!(
        Some(sum("allocated_bytes")),
        summary["allocated_bytes"].as_u64()
    );
    assert_eq!(Some(sum("leaked_bytes")), summary["leaked_bytes"].as_u64());
    // The worker's leak is charged to the worker.
    let pid = r.report["pids"][0].as_u64().expect("pid").to_string();
    let (_, worker) = threads
        .iter()
        .find(|(tid, _)| **tid != pid)
        .expect("a second thread");
    let leaked = worker["leaked_bytes"].as_u64().expect("leaked");
    assert!(
        (THREAD_COUNT * THREAD_SIZE..2 * THREAD_COUNT * THREAD_SIZE).contains(&leaked),
        "worker leaked {leaked}: {summary:#}"
    );
    let text = String::from_utf8(report(&["summary"]).stdout).expect("utf-8");
    assert!(
        text.contains("Summary") && text.contains("thread "),
        "{text}"
    );
}

#[test]
fn memory_over_time_has_the_spike_and_the_resident_set() {
    let r = recording();
    let timeline = r.report["history"]["timeline"]
        .as_array()
        .expect("timeline");
    assert!(timeline.len() >= 5, "{} samples", timeline.len());
    let times: Vec<f64> = timeline
        .iter()
        .map(|p| p["t"].as_f64().expect("t"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // The spike lives 400 ms: samples every 100 ms see it.
    let most = timeline
        .iter()
        .map(|p| p["live_bytes"].as_u64().expect("live"))
        .max()
        .expect("a sample");
    assert!(most >= SPIKE_SIZE, "largest sampled heap {most}");
    for p in timeline {
        let rss = p["rss_bytes"].as_u64().expect("the resident set is read");
        assert!(rss > 0);
    }
    let spike_rss = timeline
        .iter()
        .filter(|p| p["live_bytes"].as_u64() >= Some(SPIKE_SIZE))
        .map(|p| p["rss_bytes"].as_u64().expect("rss"))
        .max()
        .expect("a sample of the spike");
    // bytearray zeroes its buffer: the spike is resident.
    assert!(
        spike_rss >= SPIKE_SIZE,
        "resident set {spike_rss} at the spike"
    );
}

/// The `all (N bytes, 100%)` of an inferno flamegraph.
fn flamegraph_total(svg: &str) -> u64 {
    let start = svg.find("<title>all (").expect("a root frame") + "<title>all (".len();
    let digits: String = svg[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().expect("a total")
}

/// Draws `folded` with inferno's own flamegraph tool, which must accept
/// every line, and returns the total it counted.
fn inferno_total(folded: &Path) -> u64 {
    let out = Command::new("inferno-flamegraph")
        .args(["--countname", "bytes"])
        .arg(folded)
        .output()
        .expect("inferno-flamegraph (installed by `cargo xtask test`)");
    assert_success("inferno-flamegraph", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("Ignored"),
        "{}: {stderr}",
        folded.display()
    );
    flamegraph_total(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn folded_stacks_read_by_inferno() {
    let r = recording();
    assert_eq!(
        inferno_total(&r.dir.join("stacks.folded")),
        r.total("live_bytes")
    );
    assert_eq!(
        inferno_total(&r.dir.join("hotspots.folded")),
        r.total("bytes_allocated")
    );
    // inferno's collapse tools take our folded lines as their own input.
    let out = Command::new("inferno-collapse-recursive")
        .arg(r.dir.join("stacks.folded"))
        .output()
        .expect("inferno-collapse-recursive");
    assert_success("inferno-collapse-recursive", &out);
    let recollapsed = output_dir().join("leaks.recursive.folded");
    fs::write(&recollapsed, &out.stdout).expect("write");
    assert_eq!(inferno_total(&recollapsed), r.total("live_bytes"));
}

#[test]
fn svg_flamegraphs_of_leaks_hotspots_and_peak() {
    let r = recording();
    for (of, total) in [
        ("leaks", r.total("live_bytes")),
        ("hotspots", r.total("bytes_allocated")),
    ] {
        let svg = fs::read_to_string(export("flamegraph", &["--of", of], &format!("{of}.svg")))
            .expect("svg");
        assert!(svg.starts_with("<?xml") && svg.contains("<script"), "{of}");
        assert_eq!(flamegraph_total(&svg), total, "{of}");
    }
    let peak =
        fs::read_to_string(export("flamegraph", &["--of", "peak"], "peak.svg")).expect("svg");
    let spike = format!("spike (report_shapes.py:{})", recording().line("# SPIKE"));
    assert!(peak.contains(&spike), "{spike} not in the peak flamegraph");
}

/// Runs a reader from tests/validators with Debian's python3 (which has
/// the protobuf and jsonschema packages) and returns its JSON.
fn validator(script: &str, args: &[&Path]) -> Value {
    let out = Command::new(DEBIAN_PYTHON)
        .arg(root().join("tests/validators").join(script))
        .args(args)
        .output()
        .expect("run validator");
    assert_success(script, &out);
    serde_json::from_slice(&out.stdout).expect("validator prints JSON")
}

#[test]
fn pprof_decoded_with_the_official_proto() {
    let r = recording();
    let profile = export("pprof", &[], "profile.pb.gz");
    let decoded = validator("pprof_read.py", &[&test_cache().join("pprof"), &profile]);
    assert_eq!(
        decoded["types"],
        serde_json::json!([
            "alloc_objects/count",
            "alloc_space/bytes",
            "inuse_objects/count",
            "inuse_space/bytes"
        ])
    );
    assert_eq!(decoded["default"], "inuse_space");
    let totals = &decoded["totals"];
    assert_eq!(totals["inuse_space"].as_u64(), Some(r.total("live_bytes")));
    assert_eq!(
        totals["alloc_space"].as_u64(),
        Some(r.total("bytes_allocated"))
    );
    assert_eq!(totals["alloc_objects"].as_u64(), Some(r.total("allocs")));
    let live_count: u64 = r.report["leaks"]
        .as_array()
        .expect("leaks")
        .iter()
        .map(|e| e["count"].as_u64().expect("count"))
        .sum();
    assert!(totals["inuse_objects"].as_u64() >= Some(live_count));
    // go tool pprof, pprof's own reader, sums the same.
    let out = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(&profile)
        .output()
        .expect("go tool pprof (Debian's golang-go, installed by `cargo xtask test`)");
    assert_success("go tool pprof -raw", &out);
    let mut sums = [0u64; 4];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((values, _locations)) = line.split_once(':') else {
            continue;
        };
        let values: Vec<u64> = values
            .split_whitespace()
            .map_while(|v| v.parse().ok())
            .collect();
        if let [a, b, c, d] = values[..] {
            for (sum, v) in sums.iter_mut().zip([a, b, c, d]) {
                *sum += v;
            }
        }
    }
    assert_eq!(
        sums[1],
        r.total("bytes_allocated"),
        "go tool pprof alloc_space"
    );
    assert_eq!(sums[3], r.total("live_bytes"), "go tool pprof inuse_space");
    // Python frames are functions with their file and line.
    let heaviest = &decoded["heaviest"]["inuse_space"]["frames"];
    let leak_line = r.line("# LEAK");
    assert!(
        heaviest.as_array().expect("frames").iter().any(|f| {
            f["function"] == "leak"
                && f["line"].as_u64() == Some(leak_line)
                && f["filename"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("report_shapes.py"))
        }),
        "heaviest inuse sample is not the leak: {heaviest:#}"
    );
}

#[test]
fn speedscope_valid_against_its_schema() {
    let r = recording();
    let schema = test_cache().join("speedscope/file-format-schema.json");
    for (of, total, marker) in [
        ("leaks", r.total("live_bytes"), "# LEAK"),
        ("hotspots", r.total("bytes_allocated"), "# TEMPORARY"),
    ] {
        let file = export(
            "speedscope",
            &["--of", of],
            &format!("{of}.speedscope.json"),
        );
        let profiles = validator("speedscope_read.py", &[&schema, &file]);
        let [profile] = profiles.as_array().expect("profiles").as_slice() else {
            panic!("one process, one profile: {profiles:#}");
        };
        assert_eq!(profile["unit"], "bytes");
        assert_eq!(profile["total"].as_u64(), Some(total), "{of}");
        let line = r.line(marker);
        assert!(
            profile["heaviest"]
                .as_array()
                .expect("frames")
                .iter()
                .any(|f| f["line"].as_u64() == Some(line)),
            "{of}: heaviest sample lacks report_shapes.py:{line}: {profile:#}"
        );
    }
}

/// Headless Chromium with nothing that reaches the network.
fn chromium(profile: &Path) -> Command {
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .stdin(Stdio::null());
    cmd
}

#[test]
fn html_report_renders_in_chromium() {
    let r = recording();
    let html = export("html", &[], "report.html");
    let page = fs::read_to_string(&html).expect("html");
    // Self-contained: nothing to fetch.
    for fetch in [
        "src=\"http",
        "src='http",
        "href=\"http",
        "href='http",
        "@import",
    ] {
        assert!(!page.contains(fetch), "the page fetches: {fetch}");
    }
    let profile = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", html.display());
    let out = chromium(profile.path())
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("chromium (installed by `cargo xtask test`)");
    assert_success("chromium --dump-dom", &out);
    let dom = String::from_utf8_lossy(&out.stdout);
    let leak = format!("report_shapes.py:{}", r.line("# LEAK"));
    assert!(dom.contains(&leak), "{leak} is not in the rendered page");
    assert!(dom.contains("Memory over time") && dom.contains("<polyline"));
    // Every console message is a failure: the page logs nothing itself.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(
        console.is_empty(),
        "console messages:\n{}",
        console.join("\n")
    );

    let screenshot = output_dir().join("report.png");
    let _ = fs::remove_file(&screenshot);
    let out = chromium(profile.path())
        .arg("--window-size=1280,2400")
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(&url)
        .output()
        .expect("chromium --screenshot");
    assert_success("chromium --screenshot", &out);
    let png = fs::read(&screenshot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000);
    eprintln!("screenshot: {}", screenshot.display());
}

#[test]
fn reports_need_no_root() {
    let r = recording();
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = dir.path().join("capture.tracer");
    fs::copy(r.capture(), &capture).expect("copy");
    // tracer writes its outputs 0600 (root's): shared with another user,
    // as an operator would.
    fs::set_permissions(&capture, fs::Permissions::from_mode(0o644)).expect("chmod capture");
    let mut perms = fs::metadata(dir.path()).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(dir.path(), perms).expect("chmod");
    let bin = tracer().get_program().to_owned();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin)
        .arg("report")
        .arg(&capture)
        .args(["leaks", "--format", "json"])
        .output()
        .expect("setpriv");
    assert_success("tracer report as nobody", &out);
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["totals"], r.report["totals"]);
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The byte offset a capture error names.
fn error_offset(stderr: &str) -> u64 {
    let at = stderr
        .find("at byte ")
        .unwrap_or_else(|| panic!("no offset: {stderr}"));
    stderr[at + "at byte ".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no offset: {stderr}"))
}

#[test]
fn truncated_and_corrupt_captures_report_what_was_read() {
    let r = recording();
    let bytes = fs::read(r.capture()).expect("capture");
    let dir = tempfile::tempdir().expect("tempdir");
    let cut = dir.path().join("cut.tracer");
    fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let out = tracer()
        .arg("report")
        .arg(&cut)
        .args(["hotspots", "--format", "json"])
        .output()
        .expect("run");
    assert!(!out.status.success(), "a cut capture is an error");
    let stderr = stderr_of(&out);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cut short at byte"), "{stderr}");
    assert!(error_offset(&stderr) > 0);
    let partial: Value = serde_json::from_slice(&out.stdout).expect("a report of what was read");
    let allocs = partial["totals"]["allocs"].as_u64().expect("allocs");
    assert!(
        allocs > 0 && allocs < r.total("allocs"),
        "{allocs} of {} allocations read",
        r.total("allocs")
    );

    let mut garbled = bytes.clone();
    let mid = garbled.len() / 2;
    for b in &mut garbled[mid..mid + 64] {
        *b ^= 0xa5;
    }
    let bad = dir.path().join("bad.tracer");
    fs::write(&bad, &garbled).expect("write");
    let out = tracer()
        .arg("report")
        .arg(&bad)
        .arg("summary")
        .output()
        .expect("run");
    assert!(!out.status.success(), "a corrupt capture is an error");
    let stderr = stderr_of(&out);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("corrupt at byte") || stderr.contains("cut short at byte"),
        "{stderr}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Summary"), "no partial report: {text}");
}

#[test]
fn capture_of_a_killed_tracer_is_readable() {
    let script = workload("steady.py");
    let mut target = Command::new(DEBIAN_PYTHON)
        .arg(&script)
        .arg("100000")
        .stdout(Stdio::null())
        .spawn()
        .expect("start target");
    let pid = target.id().to_string();
    let running = spawn_record(&["--pid", &pid, "--sample-ms", "50"]);
    running.wait_for("recording pid", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(running.child.id() as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    let still_running = target.try_wait().expect("try_wait").is_none();
    let capture = running.dir.path().join("capture.tracer");
    let out = tracer()
        .arg("report")
        .arg(&capture)
        .args(["hotspots", "--format", "json", "--python-only"])
        .output()
        .expect("run");
    let _ = target.kill();
    let _ = target.wait();
    assert!(still_running, "the target died with its tracer");
    let stderr = stderr_of(&out);
    assert!(stderr.contains("cut short at byte"), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(
        report["totals"]["allocs"].as_u64() > Some(1000),
        "{report:#}"
    );
    let line = line_of(&script, "bytes([n % 256])");
    assert!(
        report["hotspots"]
            .as_array()
            .expect("hotspots")
            .iter()
            .any(|e| e["stack"]
                .as_array()
                .is_some_and(|s| s.iter().any(|f| f["line"].as_u64() == Some(line)))),
        "steady.py:{line} not among the hotspots: {report:#}"
    );
    // Counters are written with every flush: a killed capture has them.
    assert!(report["counters"]["events"].as_u64() > Some(0));
}
