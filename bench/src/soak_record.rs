//! `cargo xtask soak-record` (`bench soak-record`): `tracer record --all`
//! for a long time (30 minutes by default) on a steady workload with churn (a long-running Python service,
//! and a short Python run and a short non-Python program every 0.35 s), with
//! tracer's resident set and open descriptors sampled every minute. After
//! the warm-up (5 minutes, or half a shorter run) every sample must stay
//! within 10% of the first one after it: a table to stay bounded for weeks
//! grows by less than that in a run. Not part of `test`: it takes the
//! machine for the whole run.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use ::tests::{
    DEBIAN_PYTHON as PYTHON, KillOnDrop,
    resources::{open_descriptors, rss_kib},
    workload,
};
use anyhow::{Context as _, Result, bail};

const CHURN_EVERY: Duration = Duration::from_millis(350);
const SAMPLE_EVERY: Duration = Duration::from_secs(60);
const WARM_UP_MINUTES: u64 = 5;
const TOLERANCE_PERCENT: u64 = 10;

struct Sample {
    minute: u64,
    rss_kib: u64,
    fds: u64,
}

pub fn run(root: &Path, minutes: u64) -> Result<()> {
    if minutes < 2 {
        bail!("--minutes must be at least 2 (one sample to warm up, one to compare)");
    }
    let out = root.join("target/soak");
    // Outputs are created new: a previous soak's are removed first.
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    let mut tracer = ::tests::tracer()
        .args(["record", "--all", "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tracer")?;
    wait_until_recording(&mut tracer)?;
    thread::sleep(Duration::from_secs(2));

    let rounds = (minutes * 60 + 60) * 50;
    let service = KillOnDrop(
        Command::new(PYTHON)
            .arg(workload("steady.py"))
            .arg(rounds.to_string())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the steady workload")?,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let churn = {
        let (stop, runs) = (stop.clone(), runs.clone());
        thread::spawn(move || churn(&stop, &runs))
    };

    let result = sample(tracer.id(), minutes, &runs);
    stop.store(true, Ordering::Relaxed);
    let _ = churn.join();
    drop(service);
    // SAFETY: kill has no memory effects; the pid is our child's.
    unsafe { libc::kill(tracer.id() as libc::pid_t, libc::SIGINT) };
    let status = tracer.wait().context("waiting for tracer")?;
    let samples = result?;
    if !status.success() {
        bail!("tracer {status}");
    }
    check(&samples, minutes)
}

/// Waits for tracer's "recording" line (its stderr is passed on, line by
/// line, from then on).
fn wait_until_recording(tracer: &mut Child) -> Result<()> {
    let stderr = tracer.stderr.take().context("tracer's stderr")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if line.starts_with("tracer: recording") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .context("tracer did not start recording within 60 s")
}

/// A short Python run and a short program, every `CHURN_EVERY`.
fn churn(stop: &AtomicBool, runs: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        let _ = Command::new(PYTHON)
            .args(["-c", "x = [bytearray(1000) for _ in range(1000)]"])
            .status();
        let _ = Command::new("/bin/true").status();
        runs.fetch_add(1, Ordering::Relaxed);
        thread::sleep(CHURN_EVERY);
    }
}

fn sample(pid: u32, minutes: u64, runs: &AtomicU64) -> Result<Vec<Sample>> {
    let start = Instant::now();
    let mut samples = Vec::new();
    for minute in 1..=minutes {
        let at = start + SAMPLE_EVERY * minute as u32;
        thread::sleep(at.saturating_duration_since(Instant::now()));
        let rss_kib = rss_kib(pid).context("tracer exited during the soak (no VmRSS)")?;
        let fds = open_descriptors(pid).context("tracer exited during the soak")?;
        println!(
            "minute {minute:>3}: rss {rss_kib} KiB, {fds} fds, {} short runs so far",
            runs.load(Ordering::Relaxed)
        );
        samples.push(Sample {
            minute,
            rss_kib,
            fds,
        });
    }
    Ok(samples)
}

fn check(samples: &[Sample], minutes: u64) -> Result<()> {
    let warm = WARM_UP_MINUTES.min(minutes / 2).max(1);
    let base = samples
        .iter()
        .find(|s| s.minute == warm)
        .context("no sample at the end of the warm-up")?;
    println!("\n| minute | RSS (KiB) | descriptors |\n|---|---|---|");
    for s in samples {
        println!("| {} | {} | {} |", s.minute, s.rss_kib, s.fds);
    }
    let within = |v: u64, b: u64| {
        v * 100 <= b * (100 + TOLERANCE_PERCENT) && v * 100 >= b * (100 - TOLERANCE_PERCENT)
    };
    let off: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.minute > warm)
        .filter(|s| !within(s.rss_kib, base.rss_kib) || !within(s.fds, base.fds))
        .collect();
    if let Some(s) = off.first() {
        bail!(
            "at minute {}: rss {} KiB and {} fds, against {} KiB and {} fds at minute {warm}: beyond {TOLERANCE_PERCENT}%",
            s.minute,
            s.rss_kib,
            s.fds,
            base.rss_kib,
            base.fds
        );
    }
    println!(
        "soak: RSS and descriptors within {TOLERANCE_PERCENT}% of minute {warm} for {} more minutes",
        minutes - warm
    );
    Ok(())
}
