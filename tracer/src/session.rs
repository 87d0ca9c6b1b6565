//! One recording: attach to the targets, collect until told to stop, report.

use std::{
    collections::{BTreeMap, HashMap},
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
    capture::{self, Record},
    cli::RecordArgs,
    clock::monotonic_ns,
    collector::{Collector, Notice},
    host,
    launch::{self, Stage},
    probes::{AttachedFiles, Probes},
    proc_maps::ProcessMaps,
    python::{self, DetectError},
    report::{self, Counters, ProcessInfo, Recorded, Report},
    sampling::Sampling,
    symbolize::{Symbolizer, Unsymbolized, View},
};

/// How often the ring buffer is drained without a wakeup from the kernel.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// After an exec, the new image's libraries appear over a few milliseconds;
/// its map is read again this often, for this long, to probe them.
const EXEC_RESCAN_EVERY: Duration = Duration::from_millis(5);
const EXEC_RESCAN_FOR: Duration = Duration::from_secs(2);
/// The capture's name in `--output`.
pub const CAPTURE_FILE: &str = "capture.tracer";
/// `--all`: when an exec'd process not named python* is checked for a CPython.
const EXEC_SETTLE: Duration = Duration::from_millis(200);

struct Target {
    command: String,
    child: Option<Child>,
    /// Named by the user (`--pid`, the command), not found by `--all`.
    explicit: bool,
    exited: bool,
    exit_status: Option<String>,
    /// What the report says of its allocators.
    notes: Vec<String>,
}

impl Target {
    fn new(pid: u32, explicit: bool) -> Self {
        Self {
            command: command_line(pid),
            child: None,
            explicit,
            exited: false,
            exit_status: None,
            notes: Vec::new(),
        }
    }
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

/// Whether the process was started with PYTHONMALLOC=malloc (or
/// malloc_debug): then every object allocation goes through libc.
fn python_malloc_is_libc(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
        env.split(|b| *b == 0)
            .any(|v| v == b"PYTHONMALLOC=malloc" || v == b"PYTHONMALLOC=malloc_debug")
    })
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

fn check_pid(pid: u32) -> Result<()> {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("no process with pid {pid}: check the pid with `ps -p {pid}`");
    }
    ProcessMaps::read(pid).with_context(|| format!("cannot read the memory map of pid {pid}"))?;
    Ok(())
}

/// Whether `pid`'s map names a python file: a cheap first test of `--all`'s
/// candidates (the real one is `python::detect`).
fn maps_python(pid: u32) -> bool {
    ProcessMaps::read(pid).is_ok_and(|maps| {
        maps.files().any(|m| {
            m.path
                .rsplit('/')
                .next()
                .is_some_and(|n| n.contains("python"))
        })
    })
}

/// Every process on the host that may run CPython.
fn python_candidates() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && maps_python(pid))
        .collect()
}

fn drain(ring: &mut RingBuf<MapData>, collector: &mut Collector, notices: &mut Vec<Notice>) {
    while let Some(item) = ring.next() {
        if let Some(n) = collector.apply(&item) {
            notices.push(n);
        }
    }
}

/// What probing a process found.
struct Setup {
    /// An allocator (libc) of the process is probed.
    allocator: bool,
    /// Its CPython interpreter, if it runs one (and whether it is supported).
    python: Result<Option<String>, DetectError>,
}

/// The probes and everything recorded so far.
struct Recording {
    probes: Probes,
    files: AttachedFiles,
    collector: Collector,
    targets: BTreeMap<u32, Target>,
    capture: Option<Capture>,
}

/// The capture being written (`--output`).
struct Capture {
    path: std::path::PathBuf,
    writer: capture::background::Background,
    /// Stacks 0 to `stacks_written - 1` are in the file.
    stacks_written: usize,
    processes_written: std::collections::HashSet<u32>,
}

/// A process's resident set in bytes, from /proc/PID/statm.
fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // An exited process not yet reaped reads as zero pages.
    if pages == 0 {
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

impl Recording {
    /// Sends the capture what it lacks: a memory sample of each running
    /// target (of the heap model as just drained), the events since the
    /// last call, new processes, new stacks, the counters; then has it all
    /// made readable from the file. The capture's thread does the writing.
    fn write_capture(&mut self) -> Result<()> {
        if self.capture.is_none() {
            return Ok(());
        }
        // A capture cut short still says what was lost until then.
        let counters = self.counters()?;
        let now = monotonic_ns();
        let mut records: Vec<Record> = self
            .targets
            .iter()
            .filter(|(_, t)| !t.exited)
            .map(|(&pid, _)| Record::Sample {
                pid,
                ts_ns: now,
                live_bytes: self
                    .collector
                    .heap
                    .process(pid)
                    .map_or(0, |p| p.totals().live_bytes),
                rss_bytes: rss_bytes(pid),
            })
            .collect();
        let infos = Self::infos(&self.targets, &self.collector);
        let Some(cap) = &mut self.capture else {
            return Ok(());
        };
        let events = self
            .collector
            .journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        records.extend(events.into_iter().map(Record::Event));
        for info in &infos {
            if cap.processes_written.insert(info.pid) {
                records.push(process_record(info));
            }
        }
        records.push(Record::Counters(counters));
        let stacks = &self.collector.stacks;
        let new: Vec<_> = (cap.stacks_written..stacks.len())
            .map(|id| {
                let id = crate::stacks::StackId(id as u32);
                (id, Unsymbolized::new(stacks, id))
            })
            .collect();
        cap.stacks_written = stacks.len();
        let path = cap.path.display().to_string();
        let write_err = |e| anyhow::anyhow!("writing {path}: {e}");
        cap.writer.records(records).map_err(write_err)?;
        if !new.is_empty() {
            cap.writer
                .stacks(stacks.modules.debug_dirs(), new)
                .map_err(write_err)?;
        }
        cap.writer.flush().map_err(write_err)
    }

    /// Ends the capture: the last events and counters, final process
    /// facts, the end time; waits for its thread to write them.
    fn finish_capture(&mut self, end_ns: u64) -> Result<Option<std::path::PathBuf>> {
        self.write_capture()?;
        let infos = Self::infos(&self.targets, &self.collector);
        let Some(cap) = self.capture.take() else {
            return Ok(None);
        };
        let mut records = Vec::new();
        for info in &infos {
            records.push(process_record(info));
            if let Some(status) = &info.exit_status {
                records.push(Record::ExitStatus {
                    pid: info.pid,
                    status: status.clone(),
                });
            }
        }
        records.push(Record::End { end_ns });
        let shown = cap.path.display().to_string();
        let write_err = |e| anyhow::anyhow!("writing {shown}: {e}");
        cap.writer.records(records).map_err(write_err)?;
        cap.writer.finish().map_err(write_err)?;
        Ok(Some(cap.path))
    }

    /// The kernel's counters and the collector's.
    fn counters(&self) -> Result<Counters> {
        let k = self.probes.counters()?;
        Ok(Counters {
            events: k.events,
            lost_events: k.lost_events,
            lost_stacks: k.lost_stacks,
            in_flight_full: k.in_flight_full,
            stale_in_flight: k.stale_in_flight,
            unmatched_returns: k.unmatched_returns,
            nested_calls: k.nested_calls,
            lost_code: k.lost_code,
            unsampled: k.unsampled,
            malformed_records: self.collector.malformed,
            ..Counters::default()
        })
    }

    fn process_infos(&self) -> Vec<ProcessInfo> {
        Self::infos(&self.targets, &self.collector)
    }

    fn infos(targets: &BTreeMap<u32, Target>, collector: &Collector) -> Vec<ProcessInfo> {
        targets
            .iter()
            .map(|(&pid, t)| ProcessInfo {
                pid,
                explicit: t.explicit,
                command: t.command.clone(),
                exit: None,
                exit_status: t.exit_status.clone(),
                python: collector
                    .stacks
                    .python
                    .interpreter(pid)
                    .map(|i| describe(&i.version, &i.module)),
                notes: t.notes.clone(),
            })
            .collect()
    }

    /// Probes the files `pid` maps, opens them for its stacks, and if it
    /// runs CPython configures its Python frames. Safe to repeat.
    fn setup(&mut self, pid: u32) -> Result<Setup> {
        let maps = ProcessMaps::read(pid)
            .with_context(|| format!("cannot read the memory map of pid {pid}"))?;
        self.collector.stacks.refresh_maps(pid);
        let probed = self.files.attach_process(&mut self.probes, pid, &maps)?;
        let allocator = probed.iter().any(|f| f.is_allocator());
        if let Some(interp) = self.collector.stacks.python.interpreter(pid) {
            let described = describe(&interp.version, &interp.module);
            return Ok(Setup {
                allocator,
                python: Ok(Some(described)),
            });
        }
        let python = match python::detect(pid, &maps) {
            Ok(Some(interp)) => {
                self.probes.trace_python(pid, &interp.config)?;
                let described = describe(&interp.version, &interp.module);
                info!("pid {pid}: {described}");
                if let Some(t) = self.targets.get_mut(&pid) {
                    t.notes = allocator_notes(pid, &probed, self.files.pymalloc);
                    t.notes.extend(self.collector.sampling.map(|s| s.note()));
                }
                self.collector.stacks.python.add(pid, interp);
                Ok(Some(described))
            }
            Ok(None) => Ok(None),
            Err(err) => Err(err),
        };
        Ok(Setup { allocator, python })
    }
}

fn process_record(info: &ProcessInfo) -> Record {
    Record::Process {
        pid: info.pid,
        command: info.command.clone(),
        python: info.python.clone(),
        notes: info.notes.clone(),
        explicit: info.explicit,
    }
}

fn describe(version: &str, module: &str) -> String {
    format!("CPython {version} ({module})")
}

/// What the report should say about how much of a Python process's object
/// allocation tracer sees.
fn allocator_notes(pid: u32, probed: &[crate::probes::FileProbes], pymalloc: bool) -> Vec<String> {
    if python_malloc_is_libc(pid) {
        return vec![
            "PYTHONMALLOC=malloc: every object allocation goes through libc, and is traced".into(),
        ];
    }
    let hooked: Vec<&str> = probed
        .iter()
        .flat_map(|f| f.pymalloc.iter().map(|(name, _)| name.as_str()))
        .collect();
    if !pymalloc {
        return vec!["objects of 512 bytes or less come from CPython's own allocator and are not traced (see --pymalloc)".into()];
    }
    if hooked.is_empty() {
        return vec!["--pymalloc: no object allocator function found to probe".into()];
    }
    let lto = hooked.iter().any(|n| n.contains(".lto_priv."));
    let mut note = format!("--pymalloc: probing {}", hooked.join(", "));
    if lto {
        note.push_str(
            "; this is an LTO build that inlines the object allocator into its callers, so only the calls that reach these functions are seen (a few percent): run it with PYTHONMALLOC=malloc for every object",
        );
    }
    vec![note]
}

pub async fn record(args: RecordArgs) -> Result<()> {
    if args.pids.is_empty() && args.command.is_empty() && !args.all {
        bail!(
            "nothing to trace: give --pid PID, --all, or a command after --, e.g. `tracer record -- python3 app.py`"
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
    let sampling = match args.sample_bytes {
        Some(0) => bail!("--sample-bytes must be at least 1"),
        n => n.map(|mean_bytes| Sampling { mean_bytes }),
    };
    host::check()?;
    for &pid in &args.pids {
        check_pid(pid)?;
    }
    let fsbase = host::fsbase_offset().unwrap_or_else(|err| {
        warn!("no Python frames: {err:#}");
        0
    });
    let capture = match &args.output {
        Some(dir) => {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let path = dir.join(CAPTURE_FILE);
            let writer = capture::Writer::create(&path)
                .and_then(capture::background::Background::start)
                .with_context(|| format!("cannot create {}", path.display()))?;
            Some(Capture {
                path,
                writer,
                stacks_written: 0,
                processes_written: Default::default(),
            })
        }
        None => None,
    };
    let mut rec = Recording {
        probes: Probes::load(args.ring_mb << 20, fsbase, args.all, sampling)?,
        files: AttachedFiles::new(args.pymalloc),
        collector: Collector::new(capture.is_some(), sampling),
        targets: BTreeMap::new(),
        capture,
    };
    for &pid in &args.pids {
        rec.targets.insert(pid, Target::new(pid, true));
        let setup = rec.setup(pid)?;
        if !setup.allocator {
            bail!(
                "pid {pid} ({}) maps no libc or other malloc implementation tracer can probe (statically linked without symbols?)",
                command_line(pid)
            );
        }
        if let Err(err) = &setup.python {
            bail!("pid {pid}: {err}");
        }
        rec.probes.trace_pid(pid)?;
    }
    if args.all {
        for pid in python_candidates() {
            adopt(&mut rec, pid);
        }
    }

    let mut ring = readable(rec.probes.take_events()?)?;
    let mut logger = readable(rec.probes.take_logger()?)?;
    let start_ns = monotonic_ns();
    let started = Instant::now();
    if let Some(cap) = &mut rec.capture {
        cap.writer
            .records(vec![Record::Start { start_ns }])
            .with_context(|| format!("writing {}", cap.path.display()))?;
    }
    let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(Duration::from_millis(args.sample_ms.max(10)));
    // A late tick is one sample late, not a burst of samples of one moment.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    if !args.command.is_empty() {
        let mut traced = false;
        let launched = launch::launch(&args.command, |pid, stage| {
            if !traced {
                rec.targets.insert(pid, Target::new(pid, true));
                rec.probes.trace_pid(pid)?;
                traced = true;
            }
            let setup = rec.setup(pid)?;
            if stage == Stage::Entry {
                if let Err(err) = setup.python {
                    bail!("{err}");
                }
                if !setup.allocator {
                    warn!("pid {pid} reached its entry point without a probed allocator");
                }
            }
            Ok(setup.allocator)
        })?;
        info!("started pid {}", launched.pid);
        if let Some(t) = rec.targets.get_mut(&launched.pid) {
            t.command = command_line(launched.pid);
            t.child = Some(launched.child);
        }
    }

    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel();
    for pid in rec.targets.keys() {
        watch_exit(*pid, exit_tx.clone())?;
    }
    let names: Vec<String> = rec
        .targets
        .iter()
        .map(|(pid, t)| format!("pid {pid} ({})", t.command))
        .collect();
    if args.all {
        eprintln!(
            "tracer: recording every CPython process ({} now{}); Ctrl-C to stop",
            names.len(),
            if names.is_empty() {
                String::new()
            } else {
                format!(": {}", names.join(", "))
            }
        );
    } else {
        eprintln!("tracer: recording {}; Ctrl-C to stop", names.join(", "));
    }
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = duration.map(|d| started + d);
    let mut notices = Vec::new();
    // Processes whose image changed, read again until this time.
    let mut rescans: HashMap<u32, (Instant, bool)> = HashMap::new();

    let why = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut rec.collector, &mut notices);
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
                rec.probes.untrace_pid(pid);
                rescans.remove(&pid);
                if let Some(t) = rec.targets.get_mut(&pid) {
                    t.exited = true;
                    t.exit_status = match &mut t.child {
                        Some(child) => child.try_wait().ok().flatten().map(|s| describe_status(&s)),
                        None => Some("exited during the recording".to_owned()),
                    };
                }
                if !args.all && rec.targets.values().all(|t| t.exited) {
                    break "every target exited";
                }
            }
            _ = sleep(EXEC_RESCAN_EVERY), if !rescans.is_empty() => {}
            // The kernel wakes tracer only when its ring fills up (see
            // `wakeup` in tracer-ebpf): drain it regularly.
            _ = drain_tick.tick() => {
                drain(ring.get_mut(), &mut rec.collector, &mut notices);
            }
            _ = tick.tick(), if rec.capture.is_some() => {
                // Take the newest events first: a sample is of the heap now.
                drain(ring.get_mut(), &mut rec.collector, &mut notices);
                rec.write_capture()?;
            }
        }
        for notice in notices.drain(..) {
            if let Notice::Exec {
                pid,
                traced_by_name,
            } = notice
                && (rec.targets.contains_key(&pid) || args.all)
            {
                // --all: other processes' execs are looked at once, when their
                // loader is done: a busy host execs hundreds a second.
                let wait = if traced_by_name || rec.targets.contains_key(&pid) {
                    EXEC_RESCAN_FOR
                } else {
                    EXEC_SETTLE
                };
                rescans.insert(pid, (Instant::now() + wait, traced_by_name));
                if let Some(t) = rec.targets.get_mut(&pid) {
                    t.command = command_line(pid);
                }
            }
        }
        let now = Instant::now();
        let mut done = Vec::new();
        for (&pid, &(until, traced_by_name)) in &rescans {
            match rec.targets.contains_key(&pid) {
                true => {
                    if let Err(err) = rec.setup(pid) {
                        debug!("pid {pid}: {err:#}");
                    }
                }
                // --all: a new process, adopted once it shows a CPython.
                false if traced_by_name || now >= until => {
                    if adopt(&mut rec, pid) {
                        watch_exit(pid, exit_tx.clone()).unwrap_or_else(|e| debug!("{e:#}"));
                        done.push(pid);
                        continue;
                    }
                    if now >= until && traced_by_name {
                        rec.probes.untrace_pid(pid);
                        rec.collector.heap.forget(pid);
                    }
                }
                false => {}
            }
            if now >= until {
                done.push(pid);
            }
        }
        for pid in done {
            rescans.remove(&pid);
        }
    };
    debug!("recording stopped: {why}");
    drain(ring.get_mut(), &mut rec.collector, &mut notices);
    logger.get_mut().flush();
    // A launched command still running when the recording ends keeps running.
    for t in rec.targets.values_mut() {
        if let Some(child) = &mut t.child
            && t.exit_status.is_none()
        {
            t.exit_status = child.try_wait().ok().flatten().map(|s| describe_status(&s));
        }
    }
    // --all: processes the kernel traced by name that never showed a CPython.
    for (pid, _) in rescans {
        if !rec.targets.contains_key(&pid) {
            rec.collector.heap.forget(pid);
        }
    }

    let end_ns = monotonic_ns();
    let view = args.view.view();
    let report = match (rec.finish_capture(end_ns)?, &args.output) {
        (Some(path), Some(dir)) => {
            // Every report is made from the capture, as `tracer report`
            // makes it: what is printed is what the files hold.
            let (contents, _, error) = capture::Contents::read_file(&path);
            if let Some(error) = error {
                bail!("reading back {}: {error}", path.display());
            }
            let full = report::from_capture(
                &contents,
                view,
                args.view.min_age_ns(),
                report::replay::Temporary::Within { ns: 1_000_000 },
            );
            write_outputs(dir, &full, args.view.top)?;
            full
        }
        _ => build_report(&rec, &args, view, start_ns, end_ns)?,
    };
    print!("{}", report::text::render(&report, args.view.top));
    use std::io::Write as _;
    std::io::stdout().flush()?;
    drop((ring, logger));
    rec.probes.detach_in_background();
    Ok(())
}

/// `--all`: traces `pid` if it runs a supported CPython. Returns whether it does.
fn adopt(rec: &mut Recording, pid: u32) -> bool {
    if rec.targets.contains_key(&pid) {
        return true;
    }
    if !maps_python(pid) {
        return false;
    }
    rec.targets.insert(pid, Target::new(pid, false));
    match rec.setup(pid) {
        Ok(Setup {
            allocator: true,
            python: Ok(Some(_)),
        }) => match rec.probes.trace_pid(pid) {
            Ok(()) => return true,
            Err(err) => warn!("pid {pid}: {err:#}"),
        },
        Ok(Setup {
            python: Err(err), ..
        }) => warn!("pid {pid} ({}): not traced: {err}", command_line(pid)),
        Ok(_) => {}
        Err(err) => debug!("pid {pid}: {err:#}"),
    }
    rec.targets.remove(&pid);
    false
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
    rec: &Recording,
    args: &RecordArgs,
    view: View,
    start_ns: u64,
    end_ns: u64,
) -> Result<Report> {
    let collector = &rec.collector;
    let mut symbolizer = Symbolizer::new(&collector.stacks.modules.debug_dirs());
    Ok(report::build(
        Recorded {
            heap: &collector.heap,
            processes: rec.process_infos(),
            counters: rec.counters()?,
            start_ns,
            end_ns,
        },
        args.view.min_age_ns(),
        |id| view.show(symbolizer.stack(&collector.stacks, id)),
    ))
}

fn write_outputs(dir: &Path, report: &Report, top: usize) -> Result<()> {
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("report.json", report::json::render(report, top)?)?;
    let command_of = |pid| report::command_name(report, pid);
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
