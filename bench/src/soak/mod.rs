//! `cargo xtask soak` (`bench soak`): `tracer daemon --all` (or `--match`)
//! for 30 minutes against Python services, with short-lived jobs started
//! and ending every 10 seconds, pushing every 5 s to the tests' ingestion
//! server (Pyroscope and Parca at once, a spool directory, a local rotating
//! capture). Every 30 s it samples tracer's resident memory and descriptors
//! (/proc) and its /metrics; at the end it prints the table, writes
//! target/soak/results.json, and fails if memory, descriptors or the spool
//! grew after the first 5 minutes (`verdict`).

mod verdict;

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ::tests::{
    DEBIAN_PYTHON as PYTHON, KillOnDrop,
    ingest::{IngestServer, free_port, try_http},
    resources::{open_descriptors, rss_kib},
    workload,
};
use anyhow::{Context as _, Result, bail};

use self::verdict::judge;

const SERVICES: usize = 3;
const JOB_EVERY: Duration = Duration::from_secs(10);
const SAMPLE_EVERY: Duration = Duration::from_secs(30);

/// tracer's /metrics: the page, or nothing while it does not answer.
fn scrape(port: u16) -> String {
    try_http(port, "GET", "/metrics", b"")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// A series of the page, or -1 when it is not there.
fn metric(text: &str, series: &str) -> f64 {
    ::tests::ingest::metric(text, series).unwrap_or(-1.0)
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        total += if p.is_dir() {
            dir_bytes(&p)
        } else {
            e.metadata().map_or(0, |m| m.len())
        };
    }
    total
}

/// One sample of tracer and its outputs.
#[derive(Clone, Copy)]
struct Row {
    minute: f64,
    rss_kib: u64,
    fds: u64,
    spool_bytes: u64,
    capture_bytes: u64,
    pushed: f64,
    refused: f64,
    processes: f64,
    tracked: f64,
    lost: f64,
    cpu_s: f64,
}

pub fn run(root: &Path, minutes: u64, matching: Option<&str>) -> Result<()> {
    let out = root.join("target/soak");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let server = IngestServer::logging_to(&out.join("requests.jsonl"));
    let mut children: Vec<KillOnDrop> = Vec::new();
    let service = workload("soak_service.py");
    for _ in 0..SERVICES {
        children.push(KillOnDrop(
            Command::new(PYTHON)
                .arg(&service)
                .stdout(Stdio::null())
                .spawn()?,
        ));
    }
    let metrics = free_port();
    let url = server.url();
    let mut tracer = ::tests::tracer();
    tracer.arg("daemon");
    match matching {
        Some(regex) => tracer.args(["--match", regex]),
        None => tracer.arg("--all"),
    };
    let tracer = tracer
        .args(["--interval", "5", "--pyroscope", &url, "--parca", &url])
        .arg("--spool-dir")
        .arg(out.join("spool"))
        .arg("-o")
        .arg(out.join("capture"))
        .args(["--max-capture-mb", "64", "--metrics", &metrics.to_string()])
        .stderr(fs::File::create(out.join("tracer.log"))?)
        .spawn()
        .context("starting tracer daemon")?;
    let pid = tracer.id();
    children.push(KillOnDrop(tracer));
    let started = Instant::now();
    let end = started + Duration::from_secs(minutes * 60);
    let mut next_job = started;
    let mut next_sample = started + SAMPLE_EVERY;
    let mut jobs = 0;
    let mut rows: Vec<Row> = Vec::new();
    eprintln!(
        "bench: soak for {minutes} minutes of {}; tracer pid {pid}, log in {}",
        matching.map_or("every CPython process".to_owned(), |r| format!(
            "the processes matching {r:?}"
        )),
        out.display()
    );
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_job {
            // A short job: it starts, allocates for 3 s and exits.
            children.retain_mut(|c| c.0.try_wait().ok().flatten().is_none());
            children.push(KillOnDrop(
                Command::new(PYTHON)
                    .arg(&service)
                    .arg("3")
                    .stdout(Stdio::null())
                    .spawn()?,
            ));
            jobs += 1;
            next_job += JOB_EVERY;
        }
        if now >= next_sample {
            let text = scrape(metrics);
            let row = Row {
                minute: started.elapsed().as_secs_f64() / 60.0,
                rss_kib: rss_kib(pid).unwrap_or(0),
                fds: open_descriptors(pid).unwrap_or(0),
                spool_bytes: dir_bytes(&out.join("spool")),
                capture_bytes: dir_bytes(&out.join("capture")),
                pushed: metric(
                    &text,
                    "tracer_push_windows_pushed_total{sink=\"pyroscope\"}",
                ),
                refused: metric(
                    &text,
                    "tracer_push_windows_failed_total{sink=\"pyroscope\"}",
                ),
                processes: metric(&text, "tracer_traced_processes"),
                tracked: metric(&text, "tracer_tracked_allocations"),
                lost: metric(&text, "tracer_lost_events_total"),
                cpu_s: metric(&text, "process_cpu_seconds_total"),
            };
            eprintln!(
                "bench: soak {:5.1} min: rss {} KiB, fds {}, spool {} B, capture {} B, pushed {}, processes {}",
                row.minute,
                row.rss_kib,
                row.fds,
                row.spool_bytes,
                row.capture_bytes,
                row.pushed,
                row.processes
            );
            rows.push(row);
            next_sample += SAMPLE_EVERY;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: kill sends SIGTERM to the tracer this task started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let stopped = Instant::now();
    if let Some(t) = children.iter_mut().find(|c| c.0.id() == pid) {
        let status = t.0.wait()?;
        if !status.success() {
            bail!(
                "tracer daemon ended with {status}: see {}",
                out.join("tracer.log").display()
            );
        }
    }
    let stop_s = stopped.elapsed().as_secs_f64();
    println!(
        "| minute | RSS (KiB) | fds | spool (B) | capture (B) | windows pushed | refused | processes | tracked | lost events | CPU (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            r.minute,
            r.rss_kib,
            r.fds,
            r.spool_bytes,
            r.capture_bytes,
            r.pushed,
            r.refused,
            r.processes,
            r.tracked,
            r.lost,
            r.cpu_s
        );
    }
    println!("short-lived jobs started: {jobs}; SIGTERM answered in {stop_s:.1} s");
    let json = serde_json::json!({
        "minutes": minutes,
        "match": matching,
        "jobs": jobs,
        "sigterm_s": stop_s,
        "rows": rows.iter().map(|r| serde_json::json!({
            "minute": r.minute, "rss_kib": r.rss_kib, "fds": r.fds,
            "spool_bytes": r.spool_bytes, "capture_bytes": r.capture_bytes,
            "pushed": r.pushed, "refused": r.refused, "processes": r.processes,
            "tracked": r.tracked, "lost_events": r.lost, "cpu_s": r.cpu_s,
        })).collect::<Vec<_>>(),
    });
    fs::write(out.join("results.json"), serde_json::to_vec_pretty(&json)?)?;
    let verdict = judge(&rows, stop_s)?;
    if !verdict.failures.is_empty() {
        bail!("soak: {}", verdict.failures.join("; "));
    }
    println!("soak: flat after the warm-up ({})", verdict.summary);
    Ok(())
}
