//! One run: a workload started, a tool attached to it, its timing line
//! read, and what the tool says of it.

use std::{
    fs,
    io::Write,
    path::Path,
    process::{ChildStdin, Command, Stdio},
    time::Duration,
};

use ::tests::{KillOnDrop, line_of, python_frames};
use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    Mode, PYTHON, Paths, Run, Tool,
    children::{Lines, wait_for_no_probes, wait_for_perf_events, wait_usage},
};

struct Workload {
    child: KillOnDrop,
    stdin: ChildStdin,
    stdout: Lines,
}

fn start_workload(
    paths: &Paths,
    name: &str,
    tool: Tool,
    scale: f64,
    out: &Path,
) -> Result<Workload> {
    let script = paths.root.join(format!("bench/workloads/{name}.py"));
    let mut cmd = match tool {
        Tool::Memray { native } => {
            let mut cmd = Command::new(paths.cache.join("memray/bin/memray"));
            cmd.args(["run", "--quiet", "--force", "-o"])
                .arg(out.join("memray.bin"));
            if native {
                cmd.arg("--native");
            }
            cmd
        }
        _ => Command::new(PYTHON),
    };
    cmd.arg(&script)
        .arg(scale.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let stdin = child.stdin.take().context("no stdin")?;
    let mut stdout = Lines::spawn(child.stdout.take().context("no stdout")?);
    let child = KillOnDrop(child);
    stdout.wait_for(Duration::from_secs(60), |l| l == "ready")?;
    Ok(Workload {
        child,
        stdin,
        stdout,
    })
}

/// A tool attached to a running workload.
struct Daemon {
    child: KillOnDrop,
    output: Lines,
    /// Whether it exits by itself when its target does (else: SIGINT).
    exits_with_target: bool,
}

fn attach(paths: &Paths, tool: Tool, pid: u32, out: &Path) -> Result<Option<Daemon>> {
    let daemon = match tool {
        Tool::Untraced | Tool::Memray { .. } => return Ok(None),
        Tool::Tracer(args) => {
            let (child, output) = start_tracer(pid, args, out)?;
            Daemon {
                child,
                output,
                exits_with_target: true,
            }
        }
        Tool::Bpftrace => {
            let template = fs::read_to_string(paths.root.join("bench/tools/malloc_free.bt"))?;
            let script = out.join("malloc_free.bt");
            fs::write(&script, template.replace("LIBC", &libc_of(pid)?))?;
            let mut child = Command::new("bpftrace")
                .args(["-p", &pid.to_string()])
                .arg(&script)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting bpftrace")?;
            let mut output = Lines::spawn(child.stdout.take().context("no stdout")?);
            let child = KillOnDrop(child);
            output.wait_for(Duration::from_secs(60), |l| l == "ready")?;
            Daemon {
                child,
                output,
                exits_with_target: true,
            }
        }
        Tool::Memleak => {
            // A report interval longer than any run: the cost measured is
            // tracing, not printing.
            let mut child = Command::new("memleak-bpfcc")
                .args(["-p", &pid.to_string(), "3600"])
                .env("BCC_KERNEL_SOURCE", paths.cache.join("kernel-headers"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting memleak-bpfcc")?;
            let mut output = Lines::spawn(child.stdout.take().context("no stdout")?);
            let child = KillOnDrop(child);
            output.wait_for(Duration::from_secs(120), |l| {
                l.starts_with("Attaching to pid")
            })?;
            // It says so before attaching: 9 functions with return probes,
            // then free and munmap.
            wait_for_perf_events(child.0.id(), 20)?;
            Daemon {
                child,
                output,
                exits_with_target: false,
            }
        }
    };
    Ok(Some(daemon))
}

/// `tracer record --pid PID ARGS -o OUT/tracer`, once it records.
pub(super) fn start_tracer(pid: u32, args: &[&str], out: &Path) -> Result<(KillOnDrop, Lines)> {
    let mut child = ::tests::tracer()
        .args(["record", "--pid", &pid.to_string(), "-o"])
        .arg(out.join("tracer"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tracer")?;
    let mut output = Lines::spawn(child.stderr.take().context("no stderr")?);
    let child = KillOnDrop(child);
    output.wait_for(Duration::from_secs(60), |l| {
        l.starts_with("tracer: recording")
    })?;
    Ok((child, output))
}

/// The file the process maps as its libc.
fn libc_of(pid: u32) -> Result<String> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so"))
        .map(str::to_owned)
        .with_context(|| format!("process {pid} maps no libc"))
}

pub(super) fn run_once(paths: &Paths, workload: &str, mode: &Mode, scale: f64) -> Result<Run> {
    wait_for_no_probes()?;
    let out = paths.work.join("run");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let mut w = start_workload(paths, workload, mode.tool, scale, &out)?;
    let daemon = attach(paths, mode.tool, w.child.0.id(), &out)?;
    writeln!(w.stdin, "go")?;
    let line = w
        .stdout
        .wait_for(Duration::from_secs(900), |l| l.starts_with('{'))?;
    let facts: Value = serde_json::from_str(&line).context("the workload's timing line")?;
    let status = w.child.0.wait()?;
    if !status.success() {
        bail!("the workload {status}");
    }
    let mut run = Run {
        elapsed_s: facts["elapsed_s"].as_f64().context("no elapsed_s")?,
        ..Run::default()
    };
    let Some(daemon) = daemon else {
        return Ok(run);
    };
    let interrupt_after = if daemon.exits_with_target {
        Duration::from_secs(120)
    } else {
        Duration::ZERO
    };
    let usage = wait_usage(&daemon.child.0, interrupt_after, Duration::from_secs(180))?;
    run.daemon_cpu_s = Some(usage.cpu_s);
    run.daemon_rss_mib = Some(usage.rss_mib);
    let output = daemon.output.rest();
    match mode.tool {
        Tool::Tracer(_) => read_tracer_report(paths, &out.join("tracer/report.json"), &mut run)?,
        Tool::Bpftrace => {
            run.events = output
                .iter()
                .find_map(|l| l.strip_prefix("@events: "))
                .and_then(|n| n.trim().parse().ok());
            run.lost = Some(0);
        }
        _ => {}
    }
    Ok(run)
}

fn read_tracer_report(paths: &Paths, path: &Path, run: &mut Run) -> Result<()> {
    let report: Value = serde_json::from_str(
        &fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let counters = &report["counters"];
    run.events = counters["events"].as_u64();
    run.lost = Some(lost(counters));
    // The line of leak.py marked `# LEAK_LINE`.
    let line = line_of(&paths.root.join("bench/workloads/leak.py"), "# LEAK_LINE");
    let at_line = |e: &&Value| {
        python_frames(e).first().is_some_and(|f| {
            f["file"].as_str().is_some_and(|p| p.ends_with("leak.py")) && f["line"] == line
        })
    };
    let bytes: u64 = report["leaks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(at_line)
        .filter_map(|e| e["bytes"].as_u64())
        .sum();
    run.leak_line_bytes = Some(bytes);
    Ok(())
}

/// What a report.json's counters say was lost: events, stacks, and calls
/// whose entry found the in-flight table full.
pub(super) fn lost(counters: &Value) -> u64 {
    ["lost_events", "lost_stacks", "in_flight_full"]
        .iter()
        .filter_map(|k| counters[k].as_u64())
        .sum()
}
