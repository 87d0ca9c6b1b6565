//! The web service rows of the benchmark: a Flask JSON API on gunicorn (2
//! workers) loaded by wrk over loopback for a fixed time per mode, modes
//! interleaved round by round. A fresh server per run (memray must start
//! it); tracer attaches by `--pid` of the master, which covers its
//! workers. What is measured: requests/s and latency p50/p99 as wrk reports
//! them, tracer's own CPU over the load window, events lost, and how long
//! after SIGINT the workers' libc is free of probes.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use ::tests::{
    KillOnDrop, debian_unpacked,
    uprobes::probed_libc_bytes,
    web::{listening_within, site_packages, venv_python},
};
use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    Paths,
    children::{bpftool_list, wait_for_no_probes},
    results::median,
    round_order,
    run::{lost, start_tracer},
};

/// An interpreter the service runs on, with Flask and gunicorn importable.
pub(super) struct Python {
    pub(super) name: &'static str,
    pub(super) path: PathBuf,
    /// The web venv's site-packages for an interpreter outside it (Flask
    /// and gunicorn are pure Python; MarkupSafe falls back to Python).
    pub(super) pythonpath: Option<PathBuf>,
    /// memray publishes no build for every version.
    pub(super) memray: bool,
}

/// The interpreters of the test cache (`tests::web`, `tests::debian_unpacked`).
pub(super) fn pythons() -> Vec<Python> {
    vec![
        Python {
            name: "Debian python3.11 (glibc 2.36)",
            path: venv_python(),
            pythonpath: None,
            memray: true,
        },
        Python {
            name: "sid python3.15 (glibc 2.43)",
            path: debian_unpacked("sid", "3.15"),
            pythonpath: Some(site_packages()),
            memray: false,
        },
    ]
}

#[derive(Clone, Copy)]
enum WebTool {
    Untraced,
    Tracer(&'static [&'static str]),
    Memray,
}

struct WebMode {
    name: &'static str,
    tool: WebTool,
}

const WEB_MODES: [WebMode; 5] = [
    WebMode {
        name: "untraced",
        tool: WebTool::Untraced,
    },
    WebMode {
        name: "tracer (exact)",
        tool: WebTool::Tracer(&["--exact"]),
    },
    WebMode {
        name: "tracer --sample-bytes 64KiB",
        tool: WebTool::Tracer(&["--sample-bytes", "65536"]),
    },
    WebMode {
        name: "tracer --sample-bytes 256KiB (default of --all)",
        tool: WebTool::Tracer(&["--sample-bytes", "262144"]),
    },
    WebMode {
        name: "memray run --follow-fork",
        tool: WebTool::Memray,
    },
];

/// What one run under load measured.
struct WebRun {
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// tracer: its CPU over the load window, as a share of one core.
    tracer_cpu_share: Option<f64>,
    /// The same from `SETTLED` into the load on: without the first sight of
    /// each stack and code object, what it costs while the service runs.
    tracer_cpu_share_settled: Option<f64>,
    /// The share of one clock tick over that window: a settled share
    /// below it was not resolved (the quick bench's window is ~1 s).
    tracer_cpu_settled_resolution: Option<f64>,
    lost: Option<u64>,
    events: Option<u64>,
    /// tracer: from SIGINT to no probe left in the workers' libc.
    detach_ms: Option<f64>,
    /// tracer: what each of its programs cost over the load window.
    programs: Vec<ProgramCost>,
}

/// One eBPF program of tracer's over the load window (bpf_stats).
struct ProgramCost {
    name: String,
    runs: u64,
    ns: u64,
}

/// Run counts and times of the programs loaded since `before` (ids),
/// by id: tracer's own (the bench runs nothing else that loads any).
fn program_stats(before: &[u64]) -> Vec<(u64, ProgramCost)> {
    bpftool_list("prog")
        .iter()
        .filter_map(|p| {
            let id = p["id"].as_u64()?;
            (!before.contains(&id)).then(|| {
                (
                    id,
                    ProgramCost {
                        name: p["name"].as_str().unwrap_or("?").to_owned(),
                        runs: p["run_cnt"].as_u64().unwrap_or(0),
                        ns: p["run_time_ns"].as_u64().unwrap_or(0),
                    },
                )
            })
        })
        .collect()
}

/// The programs' runs and time between two `program_stats`.
fn program_costs(start: &[(u64, ProgramCost)], end: Vec<(u64, ProgramCost)>) -> Vec<ProgramCost> {
    end.into_iter()
        .filter_map(|(id, e)| {
            let (_, s) = start.iter().find(|(i, _)| *i == id)?;
            let runs = e.runs.saturating_sub(s.runs);
            (runs > 0).then(|| ProgramCost {
                name: e.name,
                runs,
                ns: e.ns.saturating_sub(s.ns),
            })
        })
        .collect()
}

const PORT: u16 = 18_731;

/// How far into the load tracer's CPU is taken again for its settled share.
const SETTLED: Duration = Duration::from_secs(2);
/// wrk's load: 2 threads, 16 connections (the workers are the bottleneck).
const CONNECTIONS: &str = "16";

/// Every interpreter's rows: `rounds` interleaved rounds of every mode,
/// `secs` seconds of load each.
pub(super) fn run(paths: &Paths, rounds: usize, secs: u64) -> Result<Vec<Value>> {
    // Run counts and times of eBPF programs, as bpf_stats keeps them.
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let stats_were = fs::read_to_string(STATS).unwrap_or_default();
    fs::write(STATS, "1").with_context(|| format!("enabling {STATS}"))?;
    let rows = run_all(paths, rounds, secs);
    let _ = fs::write(STATS, stats_were.trim());
    rows
}

fn run_all(paths: &Paths, rounds: usize, secs: u64) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    for python in pythons() {
        let modes: Vec<&WebMode> = WEB_MODES
            .iter()
            .filter(|m| python.memray || !matches!(m.tool, WebTool::Memray))
            .collect();
        let mut runs: Vec<Vec<WebRun>> = modes.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for m in round_order(modes.len(), round) {
                let mode = modes[m];
                eprint!(
                    "bench: round {}/{rounds}: flask on {} / {} ... ",
                    round + 1,
                    python.name,
                    mode.name
                );
                let run = run_once(paths, &python, mode.tool, secs)
                    .with_context(|| format!("flask on {} under {}", python.name, mode.name))?;
                eprintln!("{:.0} requests/s", run.requests_per_s);
                runs[m].push(run);
            }
        }
        let base: Vec<f64> = runs[0].iter().map(|r| r.requests_per_s).collect();
        for (mode, these) in modes.iter().zip(&runs) {
            let shares: Vec<f64> = these
                .iter()
                .zip(&base)
                .map(|(r, b)| r.requests_per_s / b)
                .collect();
            let opt = |f: &dyn Fn(&WebRun) -> Option<f64>| {
                let xs: Vec<f64> = these.iter().filter_map(f).collect();
                (!xs.is_empty()).then(|| median(xs))
            };
            rows.push(json!({
                "workload": "flask",
                "python": python.name,
                "mode": mode.name,
                "load_s": secs,
                "requests_per_s": these.iter().map(|r| r.requests_per_s).collect::<Vec<_>>(),
                "requests_per_s_median": median(these.iter().map(|r| r.requests_per_s).collect()),
                "share_of_untraced_median": median(shares),
                "p50_ms_median": median(these.iter().map(|r| r.p50_ms).collect()),
                "p99_ms_median": median(these.iter().map(|r| r.p99_ms).collect()),
                "tracer_cpu_share_median": opt(&|r| r.tracer_cpu_share),
                "tracer_cpu_share_settled_median": opt(&|r| r.tracer_cpu_share_settled),
                "tracer_cpu_settled_resolution": these
                    .iter()
                    .filter_map(|r| r.tracer_cpu_settled_resolution)
                    .reduce(f64::max),
                "detach_ms_median": opt(&|r| r.detach_ms),
                "programs": program_summary(these, secs),
                "events": these.iter().map(|r| r.events).collect::<Vec<_>>(),
                "lost": these.iter().map(|r| r.lost).collect::<Vec<_>>(),
            }));
        }
    }
    Ok(rows)
}

fn run_once(paths: &Paths, python: &Python, tool: WebTool, secs: u64) -> Result<WebRun> {
    wait_for_no_probes()?;
    let out = paths.work.join("web");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let mut cmd = match tool {
        WebTool::Memray => {
            let mut cmd = Command::new(paths.cache.join("memray/bin/memray"));
            cmd.args(["run", "--quiet", "--force", "--follow-fork", "-o"])
                .arg(out.join("memray.bin"));
            // memray's own venv runs the server: Flask and gunicorn come
            // from the web venv.
            cmd.env("PYTHONPATH", site_packages());
            cmd
        }
        _ => {
            let mut cmd = Command::new(&python.path);
            if let Some(path) = &python.pythonpath {
                cmd.env("PYTHONPATH", path);
            }
            cmd
        }
    };
    cmd.args(["-m", "gunicorn", "-w", "2", "-b"])
        .arg(format!("127.0.0.1:{PORT}"))
        .arg("--chdir")
        .arg(paths.root.join("bench/workloads"))
        .arg("flask_api:app")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = KillOnDrop(cmd.spawn().with_context(|| format!("starting {cmd:?}"))?);
    if !listening_within(PORT, Duration::from_secs(60)) {
        bail!("nothing listens on port {PORT} after 60 s");
    }
    // Both workers booted and warm before anything is measured.
    wrk(2)?;
    let master = server_master(server.0.id(), &tool)?;
    let loaded_before: Vec<u64> = bpftool_list("prog")
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect();
    let workers = children_of(master);
    let tracer = match tool {
        WebTool::Tracer(args) => Some(start_tracer(master, args, &out)?),
        _ => None,
    };
    let tracer_pid = tracer.as_ref().map(|(t, _)| t.0.id());
    let cpu_before = tracer_pid.map(cpu_ticks);
    let settled = tracer_pid.map(|pid| {
        std::thread::spawn(move || {
            std::thread::sleep(SETTLED);
            (cpu_ticks(pid), Instant::now())
        })
    });
    let stats_before = program_stats(&loaded_before);
    let wrk_out = wrk(secs)?;
    let costs = program_costs(&stats_before, program_stats(&loaded_before));
    let mut run = parse_wrk(&wrk_out)?;
    if let (Some(pid), Some(before), Some(settled)) = (tracer_pid, cpu_before, settled) {
        let now = cpu_ticks(pid);
        run.tracer_cpu_share =
            Some(now.saturating_sub(before) as f64 / clock_ticks() / secs as f64);
        let (at_settled, when) = settled
            .join()
            .map_err(|_| anyhow::anyhow!("the CPU sampler panicked"))?;
        let window = when.elapsed().as_secs_f64().max(0.1);
        run.tracer_cpu_share_settled =
            Some(now.saturating_sub(at_settled) as f64 / clock_ticks() / window);
        run.tracer_cpu_settled_resolution = Some(1.0 / clock_ticks() / window);
    }
    run.programs = costs;
    if let Some((mut child, output)) = tracer {
        let interrupted = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGINT) };
        run.detach_ms = Some(wait_for_clean_text(&workers, interrupted)?);
        let status = child.0.wait()?;
        if !status.success() {
            bail!("tracer {status}:\n{}", output.rest().join("\n"));
        }
        let report: Value =
            serde_json::from_str(&fs::read_to_string(out.join("tracer/report.json"))?)?;
        let counters = &report["counters"];
        run.events = counters["events"].as_u64();
        run.lost = Some(lost(counters));
    }
    // SAFETY: signalling our own child (gunicorn's graceful stop).
    unsafe { libc::kill(server.0.id() as libc::pid_t, libc::SIGTERM) };
    let mut server = server;
    server.0.wait()?;
    Ok(run)
}

/// wrk's output for `secs` seconds of load.
fn wrk(secs: u64) -> Result<String> {
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", CONNECTIONS, "-d"])
        .arg(format!("{secs}s"))
        .arg("--latency")
        .arg(format!("http://127.0.0.1:{PORT}/items?page=3"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed:\n{text}");
    }
    Ok(text)
}

/// Requests/s and the 50th and 99th latency percentiles from wrk's
/// `--latency` output. Errors (non-2xx, sockets) fail the run.
fn parse_wrk(text: &str) -> Result<WebRun> {
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
            .with_context(|| format!("no {prefix:?} in wrk's output:\n{text}"))
    };
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("the service failed requests:\n{text}");
    }
    Ok(WebRun {
        requests_per_s: field("Requests/sec:")?.parse()?,
        p50_ms: millis(field("50%")?)?,
        p99_ms: millis(field("99%")?)?,
        tracer_cpu_share: None,
        tracer_cpu_share_settled: None,
        tracer_cpu_settled_resolution: None,
        lost: None,
        events: None,
        detach_ms: None,
        programs: Vec::new(),
    })
}

/// wrk's "1.23ms", "456.78us" or "1.02s".
fn millis(value: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = value.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1e3)
    } else {
        bail!("a latency of {value:?}")
    };
    Ok(number.parse::<f64>()? * scale)
}

/// The gunicorn master: the server process itself, or memray's child.
fn server_master(pid: u32, tool: &WebTool) -> Result<u32> {
    match tool {
        WebTool::Memray => children_of(pid)
            .first()
            .copied()
            .context("memray started no server"),
        _ => Ok(pid),
    }
}

fn children_of(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name's closing parenthesis: fields 3 on; utime and
    // stime are the 14th and 15th.
    stat.rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|f| f.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// Milliseconds from `since` until the executable text of every worker's
/// libc is byte for byte the file's again: a uprobe is an int3 (or a call,
/// where the kernel optimizes it) written into that text.
fn wait_for_clean_text(workers: &[u32], since: Instant) -> Result<f64> {
    let deadline = since + Duration::from_secs(30);
    loop {
        let mut dirty = 0;
        for &pid in workers {
            dirty += probed_libc_bytes(pid)?;
        }
        if dirty == 0 {
            return Ok(since.elapsed().as_secs_f64() * 1e3);
        }
        if Instant::now() > deadline {
            bail!("{dirty} bytes of the workers' libc still probed 30 s after SIGINT");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Each program's ns per run and runs per request, over every run of a
/// mode.
fn program_summary(runs: &[WebRun], secs: u64) -> Vec<Value> {
    let requests: f64 = runs.iter().map(|r| r.requests_per_s * secs as f64).sum();
    let mut by_name: Vec<(String, u64, u64)> = Vec::new();
    for p in runs.iter().flat_map(|r| &r.programs) {
        match by_name.iter_mut().find(|(n, _, _)| *n == p.name) {
            Some(e) => {
                e.1 += p.runs;
                e.2 += p.ns;
            }
            None => by_name.push((p.name.clone(), p.runs, p.ns)),
        }
    }
    by_name.sort_by_key(|p| std::cmp::Reverse(p.2));
    by_name
        .into_iter()
        .map(|(name, runs, ns)| {
            json!({
                "name": name,
                "ns_per_run": ns as f64 / runs.max(1) as f64,
                "runs_per_request": runs as f64 / requests.max(1.0),
                "us_per_request": ns as f64 / 1e3 / requests.max(1.0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_latency_output() {
        let text = "Running 5s test @ http://127.0.0.1:1/items\n  Latency Distribution\n     50%    3.21ms\n     75%    4.00ms\n     90%    5.00ms\n     99%  812.00us\n  1234 requests in 5.00s, 1.2MB read\nRequests/sec:    246.80\nTransfer/sec:    100KB\n";
        let run = parse_wrk(text).expect("parses");
        assert_eq!(run.requests_per_s, 246.8);
        assert_eq!(run.p50_ms, 3.21);
        assert!((run.p99_ms - 0.812).abs() < 1e-9);
        assert!(parse_wrk("Requests/sec: 1\nNon-2xx or 3xx responses: 4").is_err());
    }
}
