//! The processes a recording traces: named ones (`--pid`, a launched
//! command) and, with `--all`, every CPython process found running or
//! started later. Adopting a process probes the files it maps, finds its
//! interpreter and adds it to the kernel's traced set; its exit is watched
//! through a pidfd.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::OsString,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    process::Child,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use log::{debug, info, warn};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
    time::Instant,
};

use super::{
    launch::{self, Stage},
    probes::{FileProbes, Probes},
    procfs,
};
use crate::{
    event::Pid,
    model::Model,
    proc_maps::ProcessMaps,
    process::ProcessInfo,
    python::{self, DetectError},
};

/// After an exec, the new image's libraries appear over a few milliseconds;
/// its map is read again for this long, at every rescan tick, to probe them.
const EXEC_RESCAN_FOR: Duration = Duration::from_secs(2);
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
    fn new(pid: Pid, explicit: bool) -> Self {
        Self {
            command: procfs::command_line(pid),
            child: None,
            explicit,
            exited: false,
            exit_status: None,
            notes: Vec::new(),
        }
    }
}

/// A process whose image changed, read again until `until`.
#[derive(Clone, Copy)]
struct Rescan {
    until: Instant,
    /// `--all`: the kernel traces it already (its name starts with python).
    traced_by_name: bool,
}

/// What probing a process found.
struct Setup {
    /// An allocator (libc) of the process is probed.
    allocator: bool,
    /// Whether it runs a CPython, or why it runs one tracer cannot read.
    python: Result<bool, DetectError>,
}

pub struct Targets {
    targets: BTreeMap<Pid, Target>,
    rescans: HashMap<Pid, Rescan>,
    exits: mpsc::UnboundedSender<Pid>,
    /// `--all`: new CPython processes are adopted as they appear.
    all: bool,
}

impl Targets {
    /// Also returns where exited targets are reported.
    pub fn new(all: bool) -> (Self, mpsc::UnboundedReceiver<Pid>) {
        let (exits, exited) = mpsc::unbounded_channel();
        let targets = Self {
            targets: BTreeMap::new(),
            rescans: HashMap::new(),
            exits,
            all,
        };
        (targets, exited)
    }

    /// Traces a process named by `--pid`: one that tracer cannot trace is
    /// an error.
    pub fn add_pid(&mut self, pid: Pid, probes: &mut Probes, model: &mut Model) -> Result<()> {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}: check the pid with `ps -p {pid}`");
        }
        self.targets.insert(pid, Target::new(pid, true));
        let setup = self.setup(pid, probes, model)?;
        if !setup.allocator {
            bail!(
                "pid {pid} ({}) maps no libc or other malloc implementation tracer can probe (statically linked without symbols?)",
                procfs::command_line(pid)
            );
        }
        if let Err(err) = &setup.python {
            bail!("pid {pid}: {err}");
        }
        probes.trace_pid(pid)
    }

    /// `--all`: every CPython process running now.
    pub fn adopt_running(&mut self, probes: &mut Probes, model: &mut Model) {
        for pid in procfs::python_candidates() {
            self.adopt(pid, probes, model);
        }
    }

    /// Starts `command`, traced from its first allocation.
    pub fn launch(
        &mut self,
        command: &[OsString],
        probes: &mut Probes,
        model: &mut Model,
    ) -> Result<()> {
        let mut traced = false;
        let launched = launch::launch(command, |pid, stage| {
            if !traced {
                self.targets.insert(pid, Target::new(pid, true));
                probes.trace_pid(pid)?;
                traced = true;
            }
            let setup = self.setup(pid, probes, model)?;
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
        if let Some(t) = self.targets.get_mut(&launched.pid) {
            t.command = procfs::command_line(launched.pid);
            t.child = Some(launched.child);
        }
        Ok(())
    }

    /// Watches every target adopted so far for its exit.
    pub fn watch_exits(&self) -> Result<()> {
        for pid in self.targets.keys() {
            watch_exit(*pid, self.exits.clone())?;
        }
        Ok(())
    }

    /// The line that says what is being recorded.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .targets
            .iter()
            .map(|(pid, t)| format!("pid {pid} ({})", t.command))
            .collect();
        if !self.all {
            return format!("recording {}", names.join(", "));
        }
        let listed = if names.is_empty() {
            String::new()
        } else {
            format!(": {}", names.join(", "))
        };
        format!(
            "recording every CPython process ({} now{listed})",
            names.len()
        )
    }

    /// `pid` exited: its last events are queued already, and a new process
    /// may reuse its pid. Returns whether every target has exited (never
    /// with `--all`, which waits for new ones).
    pub fn exited(&mut self, pid: Pid, probes: &mut Probes) -> bool {
        probes.untrace_pid(pid);
        self.rescans.remove(&pid);
        if let Some(t) = self.targets.get_mut(&pid) {
            t.exited = true;
            t.exit_status = match &mut t.child {
                Some(child) => child.try_wait().ok().flatten().map(|s| describe_status(&s)),
                None => Some("exited during the recording".to_owned()),
            };
        }
        !self.all && self.targets.values().all(|t| t.exited)
    }

    /// A process called execve: a target is read again for its new
    /// libraries; with `--all` another process is looked at once.
    pub fn exec_seen(&mut self, pid: Pid, traced_by_name: bool) {
        let is_target = self.targets.contains_key(&pid);
        if !is_target && !self.all {
            return;
        }
        // --all: other processes' execs are looked at once, when their
        // loader is done: a busy host execs hundreds a second.
        let wait = if traced_by_name || is_target {
            EXEC_RESCAN_FOR
        } else {
            EXEC_SETTLE
        };
        self.rescans.insert(
            pid,
            Rescan {
                until: Instant::now() + wait,
                traced_by_name,
            },
        );
        if let Some(t) = self.targets.get_mut(&pid) {
            t.command = procfs::command_line(pid);
        }
    }

    /// Whether processes that exec'd are being read again.
    pub fn rescanning(&self) -> bool {
        !self.rescans.is_empty()
    }

    /// Reads the processes that exec'd again: probes for a target's new
    /// libraries; `--all` adopts a new process once it shows a CPython.
    pub fn rescan(&mut self, probes: &mut Probes, model: &mut Model) {
        let now = Instant::now();
        let pending: Vec<(Pid, Rescan)> = self.rescans.iter().map(|(p, r)| (*p, *r)).collect();
        for (pid, rescan) in pending {
            let due = now >= rescan.until;
            if self.targets.contains_key(&pid) {
                if let Err(err) = self.setup(pid, probes, model) {
                    debug!("pid {pid}: {err:#}");
                }
            } else if rescan.traced_by_name || due {
                if self.adopt(pid, probes, model) {
                    watch_exit(pid, self.exits.clone()).unwrap_or_else(|e| debug!("{e:#}"));
                    self.rescans.remove(&pid);
                    continue;
                }
                if due && rescan.traced_by_name {
                    probes.untrace_pid(pid);
                    model.forget(pid);
                }
            }
            if due {
                self.rescans.remove(&pid);
            }
        }
    }

    /// The recording ended: how launched commands ended, if they did, and
    /// what `--all` traced by name without it turning out to be a CPython
    /// is dropped.
    pub fn finish(&mut self, model: &mut Model) {
        // A launched command still running when the recording ends keeps running.
        for t in self.targets.values_mut() {
            if let Some(child) = &mut t.child
                && t.exit_status.is_none()
            {
                t.exit_status = child.try_wait().ok().flatten().map(|s| describe_status(&s));
            }
        }
        for (pid, _) in self.rescans.drain() {
            if !self.targets.contains_key(&pid) {
                model.forget(pid);
            }
        }
    }

    /// The targets still running.
    pub fn running(&self) -> impl Iterator<Item = Pid> + '_ {
        self.targets
            .iter()
            .filter(|(_, t)| !t.exited)
            .map(|(pid, _)| *pid)
    }

    pub fn infos(&self, model: &Model) -> Vec<ProcessInfo> {
        self.targets
            .iter()
            .map(|(&pid, t)| ProcessInfo {
                pid,
                explicit: t.explicit,
                command: t.command.clone(),
                python: model
                    .interpreter(pid)
                    .map(|i| describe(&i.version, &i.module)),
                notes: t.notes.clone(),
                exit_status: t.exit_status.clone(),
            })
            .collect()
    }

    /// `--all`: traces `pid` if it runs a supported CPython. Returns whether it does.
    fn adopt(&mut self, pid: Pid, probes: &mut Probes, model: &mut Model) -> bool {
        if self.targets.contains_key(&pid) {
            return true;
        }
        if !procfs::maps_python(pid) {
            return false;
        }
        self.targets.insert(pid, Target::new(pid, false));
        match self.setup(pid, probes, model) {
            Ok(Setup {
                allocator: true,
                python: Ok(true),
            }) => match probes.trace_pid(pid) {
                Ok(()) => return true,
                Err(err) => warn!("pid {pid}: {err:#}"),
            },
            Ok(Setup {
                python: Err(err), ..
            }) => warn!(
                "pid {pid} ({}): not traced: {err}",
                procfs::command_line(pid)
            ),
            Ok(_) => {}
            Err(err) => debug!("pid {pid}: {err:#}"),
        }
        self.targets.remove(&pid);
        false
    }

    /// Probes the files `pid` maps, opens them for its stacks, and if it
    /// runs CPython configures its Python frames. Safe to repeat.
    fn setup(&mut self, pid: Pid, probes: &mut Probes, model: &mut Model) -> Result<Setup> {
        let maps = ProcessMaps::read(pid)
            .with_context(|| format!("cannot read the memory map of pid {pid}"))?;
        model.refresh_maps(pid);
        let probed = probes.attach_process(pid, &maps)?;
        let allocator = probed.iter().any(FileProbes::is_allocator);
        if model.interpreter(pid).is_some() {
            return Ok(Setup {
                allocator,
                python: Ok(true),
            });
        }
        let python = match python::detect(pid, &maps) {
            Ok(Some(interp)) => {
                probes.trace_python(pid, &interp.config)?;
                info!("pid {pid}: {}", describe(&interp.version, &interp.module));
                let warning = interp.layout.warning();
                if let Some(warning) = &warning {
                    warn!("pid {pid}: {warning}");
                }
                if let Some(t) = self.targets.get_mut(&pid) {
                    t.notes = allocator_notes(pid, &probed, probes.pymalloc());
                    t.notes.extend(probes.sampling().map(|s| s.note()));
                    t.notes.extend(warning);
                }
                model.add_interpreter(pid, interp);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(err) => Err(err),
        };
        Ok(Setup { allocator, python })
    }
}

/// Registers an owned descriptor with the runtime for readability.
pub fn readable<T: std::os::fd::AsRawFd>(inner: T) -> Result<AsyncFd<T>> {
    // SAFETY: every T used here (a ring buffer map, the log reader, a pidfd)
    // owns its descriptor and keeps it open and unchanged until dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("cannot poll a descriptor: {}", err.into_parts().1))
}

/// Reports `pid` on `exited` when the process has exited.
fn watch_exit(pid: Pid, exited: mpsc::UnboundedSender<Pid>) -> Result<()> {
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

fn describe(version: &str, module: &str) -> String {
    format!("CPython {version} ({module})")
}

fn describe_status(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".to_owned(),
    }
}

/// What the report should say about how much of a Python process's object
/// allocation tracer sees.
fn allocator_notes(pid: Pid, probed: &[FileProbes], pymalloc: bool) -> Vec<String> {
    if procfs::python_malloc_is_libc(pid) {
        return vec![
            "PYTHONMALLOC=malloc: every object allocation goes through libc, and is traced".into(),
        ];
    }
    if !pymalloc {
        return vec!["objects of 512 bytes or less come from CPython's own allocator and are not traced (see --pymalloc)".into()];
    }
    let hooked: Vec<&str> = probed
        .iter()
        .flat_map(|f| f.pymalloc.iter().map(|p| p.function.as_str()))
        .collect();
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
