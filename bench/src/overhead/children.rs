//! The processes a run starts, and the probes they leave: output read off
//! the pipe on a thread, resource usage from `wait4`, and waiting for the
//! host's uprobes to come and go.

use std::{
    fs,
    io::Read,
    process::{Child, Command},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use ::tests::forward_lines;
use anyhow::{Result, bail};
use serde_json::Value;

/// A child's output lines, read on a thread (`tests::forward_lines`) so
/// that it never blocks on a full pipe, handed over with timeouts.
pub(super) struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    pub(super) fn spawn(reader: impl Read + Send + 'static) -> Self {
        Self {
            rx: forward_lines(reader),
            seen: Vec::new(),
        }
    }

    /// The first line for which `want` holds, within `timeout`.
    pub(super) fn wait_for(
        &mut self,
        timeout: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Result<String> {
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
    pub(super) fn rest(mut self) -> Vec<String> {
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        self.seen
    }
}

/// What `wait4` says of a finished child: CPU seconds and peak RSS in MiB.
pub(super) struct Usage {
    pub(super) cpu_s: f64,
    pub(super) rss_mib: f64,
}

/// Waits for `child` with `wait4`, interrupting it (SIGINT) after
/// `interrupt_after` and killing it at `deadline`.
pub(super) fn wait_usage(
    child: &Child,
    interrupt_after: Duration,
    deadline: Duration,
) -> Result<Usage> {
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

/// A command's stdout, if it ran and succeeded.
pub(super) fn output(cmd: &mut Command) -> Option<String> {
    let o = cmd.output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `bpftool OBJECT list -j`, as JSON values (none if it fails).
pub(super) fn bpftool_list(object: &str) -> Vec<Value> {
    let listed = output(Command::new("bpftool").args([object, "list", "-j"])).unwrap_or_default();
    serde_json::from_str(&listed).unwrap_or_default()
}

/// Uprobes with programs attached, on the whole host.
fn uprobes() -> usize {
    bpftool_list("perf")
        .iter()
        .filter(|e| e["fd_type"].as_str().is_some_and(|t| t.contains("uprobe")))
        .count()
}

/// Waits until process `pid` holds at least `n` perf events (bcc opens one
/// per uprobe; `bpftool perf list` run from here sometimes lists only some).
pub(super) fn wait_for_perf_events(pid: u32, n: usize) -> Result<()> {
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
    bpftool_list("link")
        .iter()
        .filter(|l| l["type"] == "perf_event")
        .count()
}

/// Waits until no tool's probe is left on the host: a uprobe traps in
/// every process that maps its file until it is removed (tracer removes its
/// own in the background after it exits), and would tax the next run; and
/// the kernel refuses a second tool's uprobe where another's still is.
pub(super) fn wait_for_no_probes() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    // tracer's background child closes the uprobes' perf events after
    // their links, and they trap until it has.
    let tracers = || output(Command::new("pgrep").args(["-x", "tracer"])).is_some();
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
