//! `cargo xtask bench`: what tracing costs a Python process, measured side
//! by side with the tools an operator would otherwise reach for.
//!
//! Every workload in bench/workloads is run untraced and under each tool,
//! interleaved (one round of every mode, then the next round), so that drift
//! of the machine hits every mode alike. A workload sets up, says "ready",
//! and starts its timed work phase when it reads "go": attaching tools
//! attach in between, so the ratio is of the work phase alone. The slowdown
//! of a run is its work time over the untraced run's of the same round.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{apt_install, check};

/// The interpreter every workload runs on: Debian's own, as on a production
/// host (stripped, LTO, no frame pointers).
const PYTHON: &str = "/usr/bin/python3.11";
const MEMRAY_VERSION: &str = "1.20.0";
/// Sampling rate of the sampled tracer mode (and of the accuracy check).
const SAMPLE_BYTES: u64 = 65536;

/// bpftrace and bcc's memleak; bcc compiles its programs against kernel
/// headers, which this machine's kernel does not ship: Debian's (any
/// version: memleak only needs uapi and pt_regs) are merged into the cache.
const BENCH_PACKAGES: [(&str, &str); 3] = [
    ("bpftrace", "/usr/bin/bpftrace"),
    ("bpfcc-tools", "/usr/sbin/memleak-bpfcc"),
    ("linux-headers-amd64", "/usr/share/doc/linux-headers-amd64"),
];

const WORKLOADS: [&str; 5] = ["churn", "buffers", "leak", "threads", "maxrate"];

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Untraced,
    Tracer(&'static [&'static str]),
    Bpftrace,
    Memleak,
    Memray { native: bool },
}

struct Mode {
    name: &'static str,
    tool: Tool,
}

const SAMPLED: &[&str] = &["--sample-bytes", "65536"];

const MODES: [Mode; 8] = [
    Mode {
        name: "untraced",
        tool: Tool::Untraced,
    },
    Mode {
        name: "tracer",
        tool: Tool::Tracer(&[]),
    },
    Mode {
        name: "tracer --pymalloc",
        tool: Tool::Tracer(&["--pymalloc"]),
    },
    Mode {
        name: "tracer --sample-bytes 64KiB",
        tool: Tool::Tracer(SAMPLED),
    },
    Mode {
        name: "bpftrace (malloc/free + ustack)",
        tool: Tool::Bpftrace,
    },
    Mode {
        name: "bcc memleak",
        tool: Tool::Memleak,
    },
    Mode {
        name: "memray",
        tool: Tool::Memray { native: false },
    },
    Mode {
        name: "memray --native",
        tool: Tool::Memray { native: true },
    },
];

pub struct Options {
    pub quick: bool,
    pub rounds: Option<usize>,
    pub workloads: Vec<String>,
}

struct Paths {
    root: PathBuf,
    cache: PathBuf,
    work: PathBuf,
}

/// One run of one workload in one mode.
#[derive(Default)]
struct Run {
    elapsed_s: f64,
    /// The tool's own process (tracer, bpftrace, memleak): CPU seconds from
    /// start to exit, and peak resident set.
    daemon_cpu_s: Option<f64>,
    daemon_rss_mib: Option<f64>,
    events: Option<u64>,
    lost: Option<u64>,
    /// tracer: bytes of the leak report's entries at leak.py's leaking line.
    leak_line_bytes: Option<u64>,
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    let paths = Paths {
        root: root.to_path_buf(),
        cache: root.join("bench/cache"),
        work: root.join("target/bench"),
    };
    ensure(&paths)?;
    let rounds = options.rounds.unwrap_or(if options.quick { 1 } else { 5 });
    let scale = if options.quick { 0.1 } else { 1.0 };
    let workloads: Vec<&str> = WORKLOADS
        .into_iter()
        .filter(|w| options.workloads.is_empty() || options.workloads.iter().any(|o| o == w))
        .collect();
    if workloads.is_empty() {
        bail!(
            "no such workload; the workloads are {}",
            WORKLOADS.join(", ")
        );
    }
    let collector = collector_throughput(&paths.root)?;
    let started = Instant::now();
    let mut runs: BTreeMap<(usize, usize), Vec<Run>> = BTreeMap::new();
    for round in 0..rounds {
        for (w, workload) in workloads.iter().enumerate() {
            for (m, mode) in MODES.iter().enumerate() {
                eprint!(
                    "xtask: bench round {}/{rounds}: {workload} / {} ... ",
                    round + 1,
                    mode.name
                );
                let run = run_once(&paths, workload, mode, scale)
                    .with_context(|| format!("{workload} under {}", mode.name))?;
                eprintln!("{:.3} s", run.elapsed_s);
                runs.entry((w, m)).or_default().push(run);
            }
        }
    }
    let results = summarize(&workloads, &runs, rounds, scale, options.quick, &collector);
    print!("{}", markdown(&results));
    let out = paths.root.join("bench/results/latest.json");
    fs::create_dir_all(out.parent().expect("has a parent"))?;
    fs::write(&out, serde_json::to_string_pretty(&results)? + "\n")?;
    eprintln!(
        "xtask: bench took {:.0} s; results in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

fn ensure(paths: &Paths) -> Result<()> {
    apt_install(&BENCH_PACKAGES)?;
    let headers = paths.cache.join("kernel-headers");
    if !headers.join("include/linux/kconfig.h").exists() {
        eprintln!("xtask: merging Debian's kernel headers for bcc");
        merge_kernel_headers(&headers)?;
    }
    let memray = paths.cache.join("memray/bin/memray");
    let installed = Command::new(&memray)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(MEMRAY_VERSION));
    if !installed {
        eprintln!("xtask: installing memray {MEMRAY_VERSION} into a venv");
        let venv = paths.cache.join("memray");
        check(Command::new(PYTHON).args(["-m", "venv"]).arg(&venv))?;
        check(
            Command::new(venv.join("bin/pip"))
                .args(["install", "-q"])
                .arg(format!("memray=={MEMRAY_VERSION}")),
        )?;
    }
    crate::build()
}

/// Debian splits a kernel's headers into an arch tree (generated files)
/// and a common tree; bcc wants one tree.
fn merge_kernel_headers(dest: &Path) -> Result<()> {
    let trees: Vec<PathBuf> = fs::read_dir("/usr/src")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("linux-headers-"))
        })
        .collect();
    let common = trees
        .iter()
        .filter(|p| p.to_string_lossy().ends_with("-common"))
        .max()
        .context("no linux-headers-*-common under /usr/src")?;
    let prefix = common
        .to_string_lossy()
        .trim_end_matches("-common")
        .to_owned();
    let arch = trees
        .iter()
        .find(|p| p.to_string_lossy() == format!("{prefix}-amd64"))
        .with_context(|| format!("no {prefix}-amd64 beside {}", common.display()))?;
    let _ = fs::remove_dir_all(dest);
    fs::create_dir_all(dest)?;
    for tree in [common, arch] {
        check(Command::new("cp").arg("-a").arg(tree.join(".")).arg(dest))?;
    }
    Ok(())
}

/// Reads a child's output lines on a thread, so that it never blocks on a
/// full pipe, and hands them over with timeouts.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn spawn(reader: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// The first line for which `want` holds, within `timeout`.
    fn wait_for(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!(
                    "gave up waiting after {} s; output so far:\n{}",
                    timeout.as_secs(),
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Everything still to come (the writer has exited).
    fn rest(mut self) -> Vec<String> {
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        self.seen
    }
}

/// What `wait4` says of a finished child: CPU seconds and peak RSS in MiB.
struct Usage {
    cpu_s: f64,
    rss_mib: f64,
}

/// Waits for `child` with `wait4`, interrupting it (SIGINT) after
/// `interrupt_after` and killing it at `deadline`.
fn wait_usage(child: &Child, interrupt_after: Duration, deadline: Duration) -> Result<Usage> {
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let mut interrupted = false;
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pointers to locals; pid is our child.
        let got = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if got == pid {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            return Ok(Usage {
                cpu_s: secs(ru.ru_utime) + secs(ru.ru_stime),
                rss_mib: ru.ru_maxrss as f64 / 1024.0,
            });
        }
        if got < 0 {
            bail!("wait4({pid}): {}", std::io::Error::last_os_error());
        }
        let waited = start.elapsed();
        if waited > deadline {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        } else if waited > interrupt_after && !interrupted {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
            interrupted = true;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A child killed if it is still running when dropped (a run that failed
/// half-way must not leave a tool attached to the next one).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

struct Workload {
    child: Guard,
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
    let child = Guard(child);
    stdout.wait_for(Duration::from_secs(60), |l| l == "ready")?;
    Ok(Workload {
        child,
        stdin,
        stdout,
    })
}

/// A tool attached to a running workload.
struct Daemon {
    child: Guard,
    output: Lines,
    /// Whether it exits by itself when its target does (else: SIGINT).
    exits_with_target: bool,
}

fn attach(paths: &Paths, tool: Tool, pid: u32, out: &Path) -> Result<Option<Daemon>> {
    let daemon = match tool {
        Tool::Untraced | Tool::Memray { .. } => return Ok(None),
        Tool::Tracer(args) => {
            let mut child = Command::new(paths.root.join("target/release/tracer"))
                .args(["record", "--pid", &pid.to_string(), "-o"])
                .arg(out.join("tracer"))
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting tracer")?;
            let mut output = Lines::spawn(child.stderr.take().context("no stderr")?);
            let child = Guard(child);
            output.wait_for(Duration::from_secs(60), |l| {
                l.starts_with("tracer: recording")
            })?;
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
            let child = Guard(child);
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
            let child = Guard(child);
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

/// The file the process maps as its libc.
fn libc_of(pid: u32) -> Result<String> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so"))
        .map(str::to_owned)
        .with_context(|| format!("process {pid} maps no libc"))
}

/// Uprobes with programs attached, on the whole host.
fn uprobes() -> usize {
    let listed =
        crate::output(Command::new("bpftool").args(["perf", "list", "-j"])).unwrap_or_default();
    serde_json::from_str::<Vec<Value>>(&listed)
        .unwrap_or_default()
        .iter()
        .filter(|e| e["fd_type"].as_str().is_some_and(|t| t.contains("uprobe")))
        .count()
}

/// Waits until process `pid` holds at least `n` perf events (bcc opens one
/// per uprobe; `bpftool perf list` run from here sometimes lists only some).
fn wait_for_perf_events(pid: u32, n: usize) -> Result<()> {
    let count = || {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .filter(|l| l.to_string_lossy() == "anon_inode:[perf_event]")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if count() >= n {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("process {pid} opened {} uprobes, expected {n}", count())
}

/// BPF links to perf events (tracer's uprobes and tracepoints), which
/// `bpftool perf list` does not show.
fn perf_links() -> usize {
    let listed =
        crate::output(Command::new("bpftool").args(["link", "list", "-j"])).unwrap_or_default();
    serde_json::from_str::<Vec<Value>>(&listed)
        .unwrap_or_default()
        .iter()
        .filter(|l| l["type"] == "perf_event")
        .count()
}

/// Waits until no tool's probe is left on the host: a uprobe traps in
/// every process that maps its file until it is removed (tracer removes its
/// own in the background after it exits), and would tax the next run; and
/// the kernel refuses a second tool's uprobe where another's still is.
fn wait_for_no_probes() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    // tracer's background child closes the uprobes' perf events after
    // their links, and they trap until it has.
    let tracers = || crate::output(Command::new("pgrep").args(["-x", "tracer"])).is_some();
    while uprobes() + perf_links() > 0 || tracers() {
        if Instant::now() > deadline {
            bail!(
                "{} uprobes and {} perf links still attached after 120 s",
                uprobes(),
                perf_links()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn run_once(paths: &Paths, workload: &str, mode: &Mode, scale: f64) -> Result<Run> {
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
    run.lost = Some(
        ["lost_events", "lost_stacks", "in_flight_full"]
            .iter()
            .filter_map(|k| counters[k].as_u64())
            .sum(),
    );
    let line = leak_line(&paths.root)?;
    let at_line = |e: &&Value| {
        e["stack"].as_array().is_some_and(|frames| {
            frames
                .iter()
                .find(|f| f["kind"] == "python")
                .is_some_and(|f| {
                    f["file"].as_str().is_some_and(|p| p.ends_with("leak.py")) && f["line"] == line
                })
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

/// The line of bench/workloads/leak.py marked `# LEAK_LINE`.
fn leak_line(root: &Path) -> Result<u64> {
    let text = fs::read_to_string(root.join("bench/workloads/leak.py"))?;
    text.lines()
        .position(|l| l.contains("# LEAK_LINE"))
        .map(|i| i as u64 + 1)
        .context("leak.py has no # LEAK_LINE")
}

/// Runs the collector benchmark (tracer/benches/collector.rs): its last
/// line is a JSON object.
fn collector_throughput(root: &Path) -> Result<Value> {
    eprintln!("xtask: measuring the collector on synthetic records");
    let out = crate::output(
        Command::new("cargo")
            .args([
                "bench",
                "--quiet",
                "--package",
                "tracer",
                "--bench",
                "collector",
            ])
            .current_dir(root),
    )
    .context("cargo bench --bench collector failed")?;
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("collector benchmark said {last:?}"))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn summarize(
    workloads: &[&str],
    runs: &BTreeMap<(usize, usize), Vec<Run>>,
    rounds: usize,
    scale: f64,
    quick: bool,
    collector: &Value,
) -> Value {
    let mut rows = Vec::new();
    let mut sampling = Value::Null;
    for (w, workload) in workloads.iter().enumerate() {
        let base = &runs[&(w, 0)];
        for (m, mode) in MODES.iter().enumerate() {
            let these = &runs[&(w, m)];
            let ratios: Vec<f64> = these
                .iter()
                .zip(base)
                .map(|(r, b)| r.elapsed_s / b.elapsed_s)
                .collect();
            let opt_median = |f: &dyn Fn(&Run) -> Option<f64>| {
                let xs: Vec<f64> = these.iter().filter_map(f).collect();
                (!xs.is_empty()).then(|| median(xs))
            };
            let events_per_s = opt_median(&|r| r.events.map(|e| e as f64 / r.elapsed_s));
            rows.push(json!({
                "workload": workload,
                "mode": mode.name,
                "elapsed_s": these.iter().map(|r| r.elapsed_s).collect::<Vec<_>>(),
                "slowdown_median": median(ratios.clone()),
                "slowdown_min": ratios.iter().copied().fold(f64::INFINITY, f64::min),
                "slowdown_max": ratios.iter().copied().fold(0.0, f64::max),
                "events_per_s": events_per_s,
                "events": these.iter().map(|r| r.events).collect::<Vec<_>>(),
                "lost": these.iter().map(|r| r.lost).collect::<Vec<_>>(),
                "daemon_cpu_s": opt_median(&|r| r.daemon_cpu_s),
                "daemon_peak_rss_mib": opt_median(&|r| r.daemon_rss_mib),
            }));
        }
        if *workload == "leak" {
            sampling = sampling_check(w, runs);
        }
    }
    json!({
        "machine": machine(),
        "python": PYTHON,
        "quick": quick,
        "rounds": rounds,
        "scale": scale,
        "results": rows,
        "sampling_accuracy": sampling,
        "collector": collector,
    })
}

/// Sampled tracer against exact tracer on the leak workload: the bytes at
/// the leaking line, per round.
fn sampling_check(w: usize, runs: &BTreeMap<(usize, usize), Vec<Run>>) -> Value {
    let index = |name: &str| MODES.iter().position(|m| m.name == name).expect("mode");
    let exact: Vec<u64> = runs[&(w, index("tracer"))]
        .iter()
        .filter_map(|r| r.leak_line_bytes)
        .collect();
    let sampled: Vec<u64> = runs[&(w, index("tracer --sample-bytes 64KiB"))]
        .iter()
        .filter_map(|r| r.leak_line_bytes)
        .collect();
    let errors: Vec<f64> = exact
        .iter()
        .zip(&sampled)
        .map(|(&e, &s)| (s as f64 - e as f64) / e.max(1) as f64)
        .collect();
    let worst = errors.iter().map(|e| e.abs()).fold(0.0, f64::max);
    json!({
        "sample_bytes": SAMPLE_BYTES,
        "exact_leak_bytes": exact,
        "sampled_leak_bytes": sampled,
        "relative_errors": errors,
        "worst_abs_error": worst,
        "within_10_percent": worst <= 0.10 && !errors.is_empty(),
    })
}

fn machine() -> Value {
    let uname = crate::output(Command::new("uname").arg("-sr")).unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    json!({"kernel": uname.trim(), "cpus": cpus})
}

fn markdown(results: &Value) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "\nOverhead on {} ({} CPUs), {}, {} rounds, scale {}\n\n",
        results["machine"]["kernel"].as_str().unwrap_or("?"),
        results["machine"]["cpus"],
        PYTHON,
        results["rounds"],
        results["scale"]
    ));
    s.push_str("| workload | mode | slowdown (median) | spread | events/s | lost | daemon CPU s | daemon peak RSS MiB |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
    let num = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or_else(|| "–".to_owned(), |x| format!("{x:.digits$}"))
    };
    for row in results["results"].as_array().into_iter().flatten() {
        if row["mode"] == "untraced" {
            let times = row["elapsed_s"].as_array().cloned().unwrap_or_default();
            let t: Vec<f64> = times.iter().filter_map(Value::as_f64).collect();
            s.push_str(&format!(
                "| {} | untraced | {:.3} s | | | | | |\n",
                row["workload"].as_str().unwrap_or("?"),
                median(t)
            ));
            continue;
        }
        let lost: u64 = row["lost"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .sum();
        let has_lost = row["lost"]
            .as_array()
            .is_some_and(|l| l.iter().any(Value::is_u64));
        s.push_str(&format!(
            "| {} | {} | {:.2}x | {:.2}–{:.2} | {} | {} | {} | {} |\n",
            row["workload"].as_str().unwrap_or("?"),
            row["mode"].as_str().unwrap_or("?"),
            row["slowdown_median"].as_f64().unwrap_or(f64::NAN),
            row["slowdown_min"].as_f64().unwrap_or(f64::NAN),
            row["slowdown_max"].as_f64().unwrap_or(f64::NAN),
            row["events_per_s"]
                .as_f64()
                .map_or_else(|| "–".to_owned(), |x| format!("{:.0}", x)),
            if has_lost {
                lost.to_string()
            } else {
                "–".to_owned()
            },
            num(&row["daemon_cpu_s"], 2),
            num(&row["daemon_peak_rss_mib"], 1),
        ));
    }
    let sampling = &results["sampling_accuracy"];
    if !sampling.is_null() {
        s.push_str(&format!(
            "\nSampling ({} bytes) on leak.py: bytes at the leaking line, exact {} vs sampled {}; worst error {:.1}% ({})\n",
            sampling["sample_bytes"],
            sampling["exact_leak_bytes"],
            sampling["sampled_leak_bytes"],
            sampling["worst_abs_error"].as_f64().unwrap_or(f64::NAN) * 100.0,
            if sampling["within_10_percent"] == true { "within 10%" } else { "NOT within 10%" },
        ));
    }
    let c = &results["collector"];
    s.push_str(&format!(
        "\nCollector on one core (synthetic records): {} events/s decoded and applied to the heap model; {} bytes of state per live allocation\n",
        num(&c["events_per_s"], 0),
        num(&c["bytes_per_live_allocation"], 0),
    ));
    s
}
