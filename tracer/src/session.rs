//! One recording: attach to the targets, collect until told to stop, report.

use std::{
    collections::HashMap,
    fs,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    process::Child,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use log::{debug, info, warn};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, sleep, sleep_until},
};

use crate::{
    cli::RecordArgs,
    clock::monotonic_ns,
    collector::{Collector, Notice},
    host,
    launch::{self, Stage},
    probes::{AttachedFiles, Probes},
    proc_maps::ProcessMaps,
    report::{self, Counters, ProcessInfo, Report},
    symbolize::Symbolizer,
};

/// After an exec, the new image's libraries appear over a few milliseconds;
/// its maps are re-read this often, for this long, to probe them.
const EXEC_RESCAN_EVERY: Duration = Duration::from_millis(5);
const EXEC_RESCAN_FOR: Duration = Duration::from_secs(2);

struct Target {
    pid: u32,
    command: String,
    child: Option<Child>,
    exited: bool,
    exit_status: Option<String>,
}

/// The command line of a process, for display.
fn command_line(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Registers an owned descriptor with the runtime for readability.
fn readable<T: std::os::fd::AsRawFd>(inner: T) -> Result<AsyncFd<T>> {
    // SAFETY: every T used here (a ring buffer map, the log reader, a pidfd)
    // owns its descriptor and keeps it open and unchanged until dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("cannot poll a descriptor: {}", err.into_parts().1))
}

/// Reports `pid` on `exited` when the process has exited.
fn watch_exit(pid: u32, exited: mpsc::UnboundedSender<u32>) -> Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            bail!("pid {pid} exited before tracing began");
        }
        bail!("cannot watch pid {pid}: {err}");
    }
    // SAFETY: fd is a new descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let fd = readable(fd)?;
    tokio::spawn(async move {
        if fd.readable().await.is_ok() {
            let _ = exited.send(pid);
        }
    });
    Ok(())
}

fn check_pid(pid: u32) -> Result<ProcessMaps> {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("no process with pid {pid}: check the pid with `ps -p {pid}`");
    }
    ProcessMaps::read(pid).with_context(|| format!("cannot read the memory map of pid {pid}"))
}

fn drain(ring: &mut RingBuf<MapData>, collector: &mut Collector, notices: &mut Vec<Notice>) {
    while let Some(item) = ring.next() {
        if let Some(n) = collector.apply(&item) {
            notices.push(n);
        }
    }
}

pub async fn record(args: RecordArgs) -> Result<()> {
    if args.pids.is_empty() && args.command.is_empty() {
        bail!(
            "nothing to trace: give --pid PID or a command after --, e.g. `tracer record -- python3 app.py`"
        );
    }
    if !args.ring_mb.is_power_of_two() {
        bail!("--ring-mb must be a power of two, not {}", args.ring_mb);
    }
    let duration = match args.duration {
        Some(d) if !(d > 0.0 && d.is_finite()) => {
            bail!("--duration must be a positive number of seconds, not {d}")
        }
        Some(d) => Some(Duration::from_secs_f64(d)),
        None => None,
    };
    host::check()?;
    let mut pid_maps = Vec::new();
    for &pid in &args.pids {
        pid_maps.push((pid, check_pid(pid)?));
    }

    let mut probes = Probes::load(args.ring_mb << 20)?;
    let mut files = AttachedFiles::default();
    let mut collector = Collector::default();
    let mut targets = Vec::new();
    for (pid, maps) in pid_maps {
        collector.stacks.refresh_maps(pid);
        let allocators = files.attach_process(&mut probes, pid, &maps)?;
        if allocators.is_empty() {
            bail!(
                "pid {pid} ({}) maps no libc or other malloc implementation tracer can probe (statically linked without symbols?)",
                command_line(pid)
            );
        }
        probes.trace_pid(pid)?;
        targets.push(Target {
            pid,
            command: command_line(pid),
            child: None,
            exited: false,
            exit_status: None,
        });
    }

    let mut ring = readable(probes.take_events()?)?;
    let mut logger = readable(probes.take_logger()?)?;
    let start_ns = monotonic_ns();
    let started = Instant::now();

    if !args.command.is_empty() {
        let mut traced = false;
        let launched = launch::launch(&args.command, |pid, stage| {
            if !traced {
                probes.trace_pid(pid)?;
                traced = true;
            }
            let maps = ProcessMaps::read(pid)?;
            let allocators = files.attach_process(&mut probes, pid, &maps)?;
            if stage == Stage::Entry {
                collector.stacks.refresh_maps(pid);
                if allocators.is_empty() {
                    warn!("pid {pid} reached its entry point without a probed allocator");
                }
            }
            Ok(!allocators.is_empty())
        })?;
        info!("started pid {}", launched.pid);
        targets.push(Target {
            pid: launched.pid,
            command: command_line(launched.pid),
            child: Some(launched.child),
            exited: false,
            exit_status: None,
        });
    }

    let names: Vec<String> = targets
        .iter()
        .map(|t| format!("pid {} ({})", t.pid, t.command))
        .collect();
    eprintln!("tracer: recording {}; Ctrl-C to stop", names.join(", "));
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel();
    for t in &targets {
        watch_exit(t.pid, exit_tx.clone())?;
    }
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = duration.map(|d| started + d);
    let mut notices = Vec::new();
    let mut rescans: HashMap<u32, Instant> = HashMap::new();

    let why = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut collector, &mut notices);
                guard.clear_ready();
            }
            guard = logger.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = sigint.recv() => break "interrupted",
            _ = sigterm.recv() => break "terminated",
            _ = sleep_until(deadline.unwrap_or(started)), if deadline.is_some() => break "duration reached",
            Some(pid) = exit_rx.recv() => {
                // Its last events are queued already; a new process may reuse the pid.
                if let Err(err) = probes.untrace_pid(pid) {
                    debug!("{err:#}");
                }
                if let Some(t) = targets.iter_mut().find(|t| t.pid == pid) {
                    t.exited = true;
                    t.exit_status = match &mut t.child {
                        Some(child) => child.try_wait().ok().flatten().map(|s| describe_status(&s)),
                        None => Some("exited during the recording".to_owned()),
                    };
                }
                if targets.iter().all(|t| t.exited) {
                    break "every target exited";
                }
            }
            _ = sleep(EXEC_RESCAN_EVERY), if !rescans.is_empty() => {}
        }
        for notice in notices.drain(..) {
            if let Notice::Exec(pid) = notice {
                rescans.insert(pid, Instant::now() + EXEC_RESCAN_FOR);
                if let Some(t) = targets.iter_mut().find(|t| t.pid == pid) {
                    t.command = command_line(pid);
                }
            }
        }
        let now = Instant::now();
        rescans.retain(|pid, until| {
            if let Ok(maps) = ProcessMaps::read(*pid) {
                collector.stacks.refresh_maps(*pid);
                if let Err(err) = files.attach_process(&mut probes, *pid, &maps) {
                    warn!("pid {pid}: {err:#}");
                }
            }
            now < *until
        });
    };
    debug!("recording stopped: {why}");
    drain(ring.get_mut(), &mut collector, &mut notices);
    logger.get_mut().flush();
    // A launched command still running when the recording ends keeps running.
    for t in &mut targets {
        if let Some(child) = &mut t.child
            && t.exit_status.is_none()
        {
            t.exit_status = child.try_wait().ok().flatten().map(|s| describe_status(&s));
        }
    }

    let report = build_report(
        &probes,
        &collector,
        &targets,
        &args,
        start_ns,
        started.elapsed(),
    )?;
    print!("{}", report::text::render(&report, args.top));
    if let Some(dir) = &args.output {
        write_outputs(dir, &report, &targets, args.top)?;
    }
    Ok(())
}

fn describe_status(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".to_owned(),
    }
}

fn build_report(
    probes: &Probes,
    collector: &Collector,
    targets: &[Target],
    args: &RecordArgs,
    start_ns: u64,
    elapsed: Duration,
) -> Result<Report> {
    let k = probes.counters()?;
    let mut counters = Counters {
        events: k.events,
        lost_events: k.lost_events,
        lost_stacks: k.lost_stacks,
        in_flight_full: k.in_flight_full,
        stale_in_flight: k.stale_in_flight,
        unmatched_returns: k.unmatched_returns,
        malformed_records: collector.malformed,
        ..Counters::default()
    };
    let heap = &collector.heap;
    let totals = report::summarize(heap, &mut counters);
    let min_age_ns = (args.min_age.max(0.0) * 1e9) as u64;
    let mut symbolizer = Symbolizer::default();
    let mut stack_of = |id| symbolizer.stack(&collector.stacks, id).clone();
    let leaks = report::entries(
        &report::leaks(heap, monotonic_ns(), min_age_ns),
        &mut stack_of,
    );
    let hotspots = report::entries(&report::hotspots(heap), &mut stack_of);
    counters.truncated_stacks = hotspots.iter().filter(|e| e.truncated).count() as u64;
    let processes = targets
        .iter()
        .map(|t| ProcessInfo {
            pid: t.pid,
            command: t.command.clone(),
            exit: heap
                .process(t.pid)
                .and_then(|p| p.exit_snapshot())
                .map(|s| (s.reason, s.ts_ns.saturating_sub(start_ns) as f64 / 1e9)),
            exit_status: t.exit_status.clone(),
        })
        .collect();
    Ok(Report {
        duration_s: elapsed.as_secs_f64(),
        processes,
        totals,
        counters,
        min_age_s: args.min_age,
        leaks,
        hotspots,
    })
}

fn write_outputs(dir: &Path, report: &Report, targets: &[Target], top: usize) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("report.json", report::json::render(report, top)?)?;
    let command_of = |pid: u32| {
        targets
            .iter()
            .find(|t| t.pid == pid)
            .and_then(|t| t.command.split_whitespace().next())
            .map(|c| c.rsplit('/').next().unwrap_or(c).to_owned())
            .unwrap_or_else(|| "process".to_owned())
    };
    write(
        "stacks.folded",
        report::folded::render(&report.leaks, command_of),
    )?;
    write(
        "hotspots.folded",
        report::folded::render(&report.hotspots, command_of),
    )?;
    Ok(())
}
