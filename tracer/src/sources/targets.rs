//! The processes a recording traces: named ones (`--pid` with its
//! descendants, a launched command), with `--all` every CPython process
//! found running or started later, and the processes any of them forks
//! (traced by the kernel from their first instruction). A process that
//! execs something else than CPython, or that `--all` finds is not one, is
//! let go. Exits are watched through pidfds.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ffi::OsString,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    process::Child,
    time::Duration,
};

use anyhow::{Result, bail};
use log::{debug, info, warn};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
    time::Instant,
};

use super::{
    adopt::{Found, Setup, describe, find_interpreter, probe_files, setup},
    launch::{self, Stage},
    probes::Probes,
    procfs,
};
use crate::{event::Pid, model::Model, proc_maps::ProcessMaps, process::ProcessInfo};

/// After an exec, the new image's libraries appear over a few milliseconds;
/// its map is read again for this long, at every rescan tick, to probe them.
const EXEC_RESCAN_FOR: Duration = Duration::from_secs(2);
/// `--all`: when an exec'd process not named python* is checked for a CPython.
const EXEC_SETTLE: Duration = Duration::from_millis(200);
/// A process that just exec'd is looked at this often, for this long: its
/// loader maps its libraries within a millisecond or two, and every
/// millisecond before its libc is probed and its interpreter found is one
/// of allocations unseen or without Python frames.
const YOUNG_RESCAN_EVERY: Duration = Duration::from_millis(1);
const YOUNG_FOR: Duration = Duration::from_millis(100);
/// Then this often.
const RESCAN_EVERY: Duration = Duration::from_millis(5);

/// How a target came to be traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// `--pid`, or the launched command.
    Named,
    /// `--all` found it.
    Found,
    /// A traced process forked it.
    Forked { parent: Pid },
}

struct Target {
    command: String,
    child: Option<Child>,
    origin: Origin,
    exited: bool,
    exit_status: Option<String>,
    /// What the report says of its allocators.
    notes: Vec<String>,
}

impl Target {
    fn new(pid: Pid, origin: Origin) -> Self {
        Self {
            command: procfs::command_line(pid),
            child: None,
            origin,
            exited: false,
            exit_status: None,
            notes: Vec::new(),
        }
    }
}

/// A process that may become a target once it shows a CPython: it exec'd,
/// or `--all` saw it exec.
#[derive(Clone, Copy)]
struct Candidate {
    /// When its exec was seen.
    since: Instant,
    /// When it exec'd, by the kernel's clock (CLOCK_MONOTONIC ns).
    since_ns: u64,
    /// Given up after this.
    until: Instant,
    /// The kernel traces it already (its events are held until it is
    /// adopted): `--all` traced it by name, or it descends from a target.
    traced: bool,
    /// The target it was forked from, if it was.
    parent: Option<Pid>,
}

/// What a rescan decided.
#[derive(Debug, Default)]
pub struct Decided {
    /// Now targets.
    pub adopted: Vec<Pid>,
    /// Traced by the kernel until now, let go (not CPython).
    pub dropped: Vec<Pid>,
}

pub struct Targets {
    targets: BTreeMap<Pid, Target>,
    candidates: HashMap<Pid, Candidate>,
    /// Children sharing their parent's memory (vfork), recorded from their
    /// exec on: by child, the target that made it.
    until_exec: HashMap<Pid, Pid>,
    /// Processes whose exit is watched.
    watched: HashSet<Pid>,
    exits: mpsc::UnboundedSender<Pid>,
    /// `--all`: new CPython processes are adopted as they appear.
    all: bool,
    /// `--match`: only those whose command line matches.
    matching: Option<regex::Regex>,
    last_rescan: Instant,
}

impl Targets {
    /// Also returns where exited processes are reported.
    pub fn new(all: bool) -> (Self, mpsc::UnboundedReceiver<Pid>) {
        let (exits, exited) = mpsc::unbounded_channel();
        let targets = Self {
            targets: BTreeMap::new(),
            candidates: HashMap::new(),
            until_exec: HashMap::new(),
            watched: HashSet::new(),
            exits,
            all,
            matching: None,
            last_rescan: Instant::now(),
        };
        (targets, exited)
    }

    /// With `--all`: adopts only the processes whose command line matches
    /// `re` (and what they fork).
    pub fn only_matching(&mut self, re: regex::Regex) {
        self.matching = Some(re);
    }

    /// Forgets the targets that have exited (a daemon's, once their last
    /// window is out); returns their pids.
    pub fn forget_exited(&mut self) -> Vec<Pid> {
        let gone: Vec<Pid> = self
            .targets
            .iter()
            .filter(|(_, t)| t.exited)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in &gone {
            self.targets.remove(pid);
        }
        gone
    }

    /// Whether `pid`'s events go to the sinks.
    pub fn contains(&self, pid: Pid) -> bool {
        self.targets.contains_key(&pid)
    }

    /// Traces a process named by `--pid`, and its descendants: one that
    /// tracer cannot trace is an error.
    pub fn add_pid(&mut self, pid: Pid, probes: &mut Probes, model: &mut Model) -> Result<()> {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}: check the pid with `ps -p {pid}`");
        }
        self.targets.insert(pid, Target::new(pid, Origin::Named));
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
        probes.trace_pid(pid)?;
        for c in procfs::descendants(pid) {
            if !self.targets.contains_key(&c.pid) {
                let origin = Origin::Forked { parent: c.parent };
                if !self.adopt(c.pid, origin, probes, model) {
                    debug!(
                        "pid {}, a child of pid {}: not CPython, not traced",
                        c.pid, c.parent
                    );
                }
            }
        }
        Ok(())
    }

    /// `--all`: every CPython process running now; and the C library of
    /// every process, where new ones will allocate from their start.
    pub fn adopt_running(&mut self, probes: &mut Probes, model: &mut Model) {
        for pid in procfs::all_processes() {
            if let Ok(maps) = ProcessMaps::read(pid)
                && let Err(err) = probes.attach_libc(pid, &maps)
            {
                debug!("pid {pid}: {err:#}");
            }
        }
        for pid in procfs::python_candidates() {
            let origin = match procfs::parent(pid) {
                Some(parent) if self.targets.contains_key(&parent) => Origin::Forked { parent },
                _ => Origin::Found,
            };
            self.adopt(pid, origin, probes, model);
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
                self.targets.insert(pid, Target::new(pid, Origin::Named));
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
    pub fn watch_exits(&mut self) -> Result<()> {
        let pids: Vec<Pid> = self.targets.keys().copied().collect();
        for pid in pids {
            self.watch(pid)?;
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
            return format!("recording {} and what they fork", names.join(", "));
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
        self.candidates.remove(&pid);
        self.until_exec.remove(&pid);
        self.watched.remove(&pid);
        if let Some(t) = self.targets.get_mut(&pid) {
            t.exited = true;
            t.exit_status = match &mut t.child {
                Some(child) => child.try_wait().ok().flatten().map(|s| describe_status(&s)),
                None => Some("exited during the recording".to_owned()),
            };
        }
        !self.all && self.candidates.is_empty() && self.targets.values().all(|t| t.exited)
    }

    /// A traced process forked `child`, which the kernel traces from its
    /// first instruction: a new target, with its parent's facts; or, if it
    /// shares its parent's memory, one once it execs a CPython.
    pub fn forked(&mut self, child: Pid, parent: Pid, shares_memory: bool) {
        let Some(p) = self.targets.get(&parent) else {
            // A child of a process not adopted yet: judged on its own.
            self.candidates.insert(
                child,
                Candidate {
                    since: Instant::now(),
                    since_ns: crate::clock::monotonic_ns(),
                    until: Instant::now() + EXEC_RESCAN_FOR,
                    traced: true,
                    parent: None,
                },
            );
            return;
        };
        if shares_memory {
            self.until_exec.insert(child, parent);
        } else {
            let target = Target {
                command: p.command.clone(),
                child: None,
                origin: Origin::Forked { parent },
                exited: false,
                exit_status: None,
                notes: p.notes.clone(),
            };
            self.targets.insert(child, target);
        }
        if let Err(err) = self.watch(child) {
            debug!("pid {child}: {err:#}");
        }
    }

    /// A process called execve: a named target is read again for its new
    /// libraries; a forked one must show a CPython again to stay; with
    /// `--all` another process is looked at once.
    pub fn exec_seen(&mut self, pid: Pid, traced_by_name: bool) {
        let now = Instant::now();
        let origin = self.targets.get(&pid).map(|t| t.origin);
        if origin == Some(Origin::Named) {
            self.candidates.insert(
                pid,
                Candidate {
                    since: now,
                    since_ns: crate::clock::monotonic_ns(),
                    until: now + EXEC_RESCAN_FOR,
                    traced: true,
                    parent: None,
                },
            );
            if let Some(t) = self.targets.get_mut(&pid) {
                t.command = procfs::command_line(pid);
            }
            return;
        }
        // Anything else is judged again on its new image; the kernel still
        // traces it, and its events are held until then.
        let was_target = self.targets.remove(&pid).is_some();
        let parent = match origin {
            Some(Origin::Forked { parent }) => Some(parent),
            _ => self.until_exec.remove(&pid),
        };
        let descends = was_target || parent.is_some();
        if !descends && !self.all {
            return;
        }
        let traced = traced_by_name || descends;
        // --all: other processes' execs are looked at once, when their
        // loader is done: a busy host execs hundreds a second.
        let wait = if traced { EXEC_RESCAN_FOR } else { EXEC_SETTLE };
        self.candidates.insert(
            pid,
            Candidate {
                since: now,
                since_ns: crate::clock::monotonic_ns(),
                until: now + wait,
                traced,
                parent,
            },
        );
    }

    /// When processes that exec'd should be looked at again, if any are
    /// being looked at: a deadline, so that a busy event loop cannot put
    /// it off.
    pub fn next_rescan(&self) -> Option<Instant> {
        let young = Instant::now().checked_sub(YOUNG_FOR);
        let youngest = self.candidates.values().map(|c| c.since).max()?;
        let every = match young {
            Some(t) if youngest < t => RESCAN_EVERY,
            _ => YOUNG_RESCAN_EVERY,
        };
        Some(self.last_rescan + every)
    }

    /// Looks at the processes that exec'd again: probes for a named
    /// target's new libraries; adopts another once it shows a CPython, or
    /// lets it go when its time is up.
    pub fn rescan(&mut self, probes: &mut Probes, model: &mut Model) -> Decided {
        let now = Instant::now();
        self.last_rescan = now;
        let mut decided = Decided::default();
        let pending: Vec<(Pid, Candidate)> =
            self.candidates.iter().map(|(p, c)| (*p, *c)).collect();
        let mut found = Vec::new();
        for &(pid, candidate) in &pending {
            if self.targets.contains_key(&pid) {
                // A named target that exec'd: probes for its new libraries.
                if let Err(err) = self.setup(pid, probes, model) {
                    debug!("pid {pid}: {err:#}");
                }
            } else if candidate.traced || now >= candidate.until {
                let origin = candidate
                    .parent
                    .map_or(Origin::Found, |parent| Origin::Forked { parent });
                if let Some(f) = self.adopt_start(pid, origin, probes, model) {
                    found.push((pid, f));
                }
            }
        }
        // The slow half after every process's quick one.
        for (pid, f) in found {
            let started_ns = self.candidates.get(&pid).map(|c| c.since_ns);
            if self.adopt_finish(pid, f, probes, started_ns) {
                if let Err(err) = self.watch(pid) {
                    debug!("pid {pid}: {err:#}");
                }
                if let Some(c) = self.candidates.remove(&pid) {
                    debug!(
                        "pid {pid}: adopted {:.1} ms after its exec",
                        c.since.elapsed().as_secs_f64() * 1e3
                    );
                }
                decided.adopted.push(pid);
            }
        }
        for (pid, candidate) in pending {
            if now < candidate.until || !self.candidates.contains_key(&pid) {
                continue;
            }
            self.candidates.remove(&pid);
            if candidate.traced && !self.targets.contains_key(&pid) {
                probes.untrace_pid(pid);
                model.forget(pid);
                decided.dropped.push(pid);
            }
        }
        decided
    }

    /// The recording ended: how launched commands ended, if they did.
    /// Returns the processes traced but never adopted, let go now.
    pub fn finish(&mut self, model: &mut Model) -> Vec<Pid> {
        // A launched command still running when the recording ends keeps running.
        for t in self.targets.values_mut() {
            if let Some(child) = &mut t.child
                && t.exit_status.is_none()
            {
                t.exit_status = child.try_wait().ok().flatten().map(|s| describe_status(&s));
            }
        }
        let dropped: Vec<Pid> = self
            .candidates
            .drain()
            .map(|(pid, _)| pid)
            .filter(|pid| !self.targets.contains_key(pid))
            .collect();
        for pid in &dropped {
            model.forget(*pid);
        }
        dropped
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
                explicit: t.origin == Origin::Named,
                parent: match t.origin {
                    Origin::Forked { parent } => Some(parent),
                    _ => None,
                },
                command: t.command.clone(),
                python: model
                    .interpreter(pid)
                    .map(|i| describe(&i.version, &i.module)),
                notes: t.notes.clone(),
                exit_status: t.exit_status.clone(),
            })
            .collect()
    }

    /// Adds a note to what the report says of `pid`.
    pub fn note(&mut self, pid: Pid, note: String) {
        if let Some(t) = self.targets.get_mut(&pid) {
            t.notes.push(note);
        }
    }

    /// Traces `pid` if it runs a supported CPython. Returns whether it does.
    fn adopt(&mut self, pid: Pid, origin: Origin, probes: &mut Probes, model: &mut Model) -> bool {
        if self.targets.contains_key(&pid) {
            return true;
        }
        match self.adopt_start(pid, origin, probes, model) {
            Some(found) => self.adopt_finish(pid, found, probes, None),
            None => false,
        }
    }

    /// The quick half of adopting `pid` (`adopt::find_interpreter`): `Some`
    /// if it runs a CPython tracer can read, a target from now on. Nothing
    /// is done in a process that maps no python file: a busy host execs
    /// hundreds of other programs a second.
    fn adopt_start(
        &mut self,
        pid: Pid,
        origin: Origin,
        probes: &mut Probes,
        model: &mut Model,
    ) -> Option<Found> {
        let unmatched = origin == Origin::Found
            && self
                .matching
                .as_ref()
                .is_some_and(|re| !re.is_match(&procfs::command_line(pid)));
        if unmatched || !procfs::maps_python(pid) {
            return None;
        }
        match find_interpreter(pid, probes, model) {
            Ok(found) if found.is_python() => {
                self.targets.insert(pid, Target::new(pid, origin));
                Some(found)
            }
            Ok(_) => None,
            Err(err) => {
                debug!("pid {pid}: {err:#}");
                None
            }
        }
    }

    /// The slow half (`adopt::probe_files`); a process without an allocator
    /// tracer can probe is let go.
    fn adopt_finish(
        &mut self,
        pid: Pid,
        found: Found,
        probes: &mut Probes,
        started_ns: Option<u64>,
    ) -> bool {
        match probe_files(pid, found, probes, started_ns) {
            Ok(Setup {
                allocator: true,
                python: Ok(true),
                notes,
            }) => match probes.trace_pid(pid) {
                Ok(()) => {
                    if let (Some(notes), Some(t)) = (notes, self.targets.get_mut(&pid)) {
                        t.notes = notes;
                    }
                    return true;
                }
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

    /// `adopt::setup`, keeping the notes it makes for the target.
    fn setup(&mut self, pid: Pid, probes: &mut Probes, model: &mut Model) -> Result<Setup> {
        let setup = setup(pid, probes, model)?;
        if let (Some(notes), Some(t)) = (&setup.notes, self.targets.get_mut(&pid)) {
            t.notes.clone_from(notes);
        }
        Ok(setup)
    }

    fn watch(&mut self, pid: Pid) -> Result<()> {
        if self.watched.insert(pid) {
            watch_exit(pid, self.exits.clone())?;
        }
        Ok(())
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

fn describe_status(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".to_owned(),
    }
}
