//! The processes a recording traces: named ones (`--pid` with its
//! descendants, a launched command), with `--all` every CPython process
//! found running or started later, and the processes any of them forks
//! (traced by the kernel from their first instruction). A process that
//! execs something else than CPython, or that `--all` finds is not one, is
//! let go. A process that ends (the kernel's exit record, or its pidfd) is
//! no target any more: its pid may be another process's next, which is a
//! new target if it is one at all (`identity`).

use std::{
    collections::{BTreeMap, HashMap},
    ffi::OsString,
    path::Path,
    process::Child,
    time::Duration,
};

use anyhow::{Result, bail};
use log::{debug, info, warn};
use tokio::{sync::mpsc, time::Instant};

mod adoption;

use super::{
    adopt::describe,
    collector::Fork,
    identity::{Identity, describe_status},
    launch::{self, Launch, Stage},
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
    /// The launched command: its handle, and whether it is left running
    /// when tracer stops.
    child: Option<(Child, bool)>,
    origin: Origin,
    exit_status: Option<String>,
    /// What the report says of its allocators.
    notes: Vec<String>,
    /// Which process it is (`None`: gone before its start time was read).
    identity: Option<Identity>,
}

impl Target {
    fn new(pid: Pid, origin: Origin) -> Self {
        Self {
            command: procfs::command_line(pid),
            child: None,
            origin,
            exit_status: None,
            notes: Vec::new(),
            identity: Identity::of(pid),
        }
    }

    fn info(&self, pid: Pid, model: &Model) -> ProcessInfo {
        ProcessInfo {
            pid,
            explicit: self.origin == Origin::Named,
            parent: match self.origin {
                Origin::Forked { parent } => Some(parent),
                _ => None,
            },
            command: self.command.clone(),
            python: model
                .interpreter(pid)
                .map(|i| describe(&i.version, &i.module)),
            notes: self.notes.clone(),
            exit_status: self.exit_status.clone(),
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
    /// Which process it is, if it was still running when seen.
    identity: Option<Identity>,
}

/// What a rescan decided.
#[derive(Debug, Default)]
pub struct Decided {
    /// Now targets.
    pub adopted: Vec<Pid>,
    /// Traced by the kernel until now, let go (not CPython).
    pub dropped: Vec<Pid>,
    /// Targets found to have ended (their pid is another process's now),
    /// to be ended before the adopted ones' events go on.
    pub ended: Vec<ProcessInfo>,
}

pub struct Targets {
    targets: BTreeMap<Pid, Target>,
    candidates: HashMap<Pid, Candidate>,
    /// Children sharing their parent's memory (vfork), recorded from their
    /// exec on: by child, the target that made it.
    until_exec: HashMap<Pid, Pid>,
    exits: mpsc::UnboundedSender<Identity>,
    /// `--all`: new CPython processes are adopted as they appear.
    all: bool,
    /// `--match`: only those whose command line matches.
    matching: Option<regex::Regex>,
    last_rescan: Instant,
}

impl Targets {
    /// Also returns where exited processes are reported.
    pub fn new(all: bool) -> (Self, mpsc::UnboundedReceiver<Identity>) {
        let (exits, exited) = mpsc::unbounded_channel();
        let targets = Self {
            targets: BTreeMap::new(),
            candidates: HashMap::new(),
            until_exec: HashMap::new(),
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

    /// Starts `command` as `how` says, traced from its first allocation;
    /// `at_entry` is called at its entry point, while it is still held there.
    pub fn launch(
        &mut self,
        command: &[OsString],
        how: &Launch,
        probes: &mut Probes,
        model: &mut Model,
        mut at_entry: impl FnMut(Pid, &mut Probes) -> Result<()>,
    ) -> Result<()> {
        let mut traced = false;
        let launched = launch::launch(command, how, |pid, stage| {
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
                at_entry(pid, probes)?;
            }
            Ok(setup.allocator)
        })?;
        info!("started pid {}", launched.pid);
        if let Some(t) = self.targets.get_mut(&launched.pid) {
            t.command = procfs::command_line(launched.pid);
            t.identity = Identity::of(launched.pid);
            t.child = Some((launched.child, how.detach));
        }
        Ok(())
    }

    /// Watches every target adopted so far for its exit. One that exited
    /// already is ended: its info is returned for the sinks.
    pub fn watch_exits(&mut self, model: &Model) -> Vec<ProcessInfo> {
        let pids: Vec<Pid> = self.targets.keys().copied().collect();
        let gone: Vec<Pid> = pids.into_iter().filter(|&pid| !self.watch(pid)).collect();
        gone.into_iter()
            .filter_map(|pid| self.end(pid, model))
            .collect()
    }

    /// The line that says what is being recorded.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .targets
            .iter()
            .map(|(pid, t)| format!("pid {pid} ({})", crate::escape::text(&t.command)))
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

    /// `process` exited (its pidfd), or with `None` the process that has
    /// `pid` now (the kernel's exit record, after its last events): it is
    /// no target any more. Returns what the sinks are told of it, if it
    /// was one.
    pub fn exited(
        &mut self,
        pid: Pid,
        process: Option<Identity>,
        model: &Model,
    ) -> Option<ProcessInfo> {
        self.candidates.remove(&pid);
        self.until_exec.remove(&pid);
        let target = self.targets.get(&pid)?;
        // A pidfd of an earlier process with this pid says nothing of this one.
        if process.is_some() && target.identity.is_some() && process != target.identity {
            return None;
        }
        self.end(pid, model)
    }

    /// Whether every target has exited (never with `--all`, which waits
    /// for new ones).
    pub fn all_exited(&self) -> bool {
        !self.all
            && self.targets.is_empty()
            && self.candidates.is_empty()
            && self.until_exec.is_empty()
    }

    /// Removes target `pid`, with how it ended (read before the model
    /// forgets it).
    fn end(&mut self, pid: Pid, model: &Model) -> Option<ProcessInfo> {
        let mut target = self.targets.remove(&pid)?;
        target.exit_status = Some(match &mut target.child {
            // It exited: reaping it takes no time.
            Some((child, _)) => child
                .wait()
                .map_or_else(|_| "ended".to_owned(), |s| describe_status(&s)),
            None => "exited during the recording".to_owned(),
        });
        Some(target.info(pid, model))
    }

    /// A traced process forked a child, which the kernel traces from its
    /// first instruction: a new target, with its parent's facts; or, if it
    /// is recorded only once it execs (it shares its parent's memory, or its
    /// parent runs no CPython), one once it execs a CPython. A target still
    /// known under the child's pid has ended (its exit record was lost): it
    /// is returned, to be ended first.
    pub fn forked(&mut self, fork: &Fork, model: &Model) -> Option<ProcessInfo> {
        let (child, parent) = (fork.child, fork.parent);
        if self.is_current(child) {
            // Found already (`--pid`'s descendants, as it was forked).
            return None;
        }
        let ended = self.end(child, model);
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
                    identity: Identity::of(child),
                },
            );
            return ended;
        };
        if fork.until_exec {
            if !fork.shares_memory && model.interpreter(parent).is_some() {
                // Forked between its parent's exec and the parent's
                // CPython being found: not followed (docs/allocation-matching.md).
                self.note(
                    parent,
                    format!(
                        "pid {child} was forked before tracer found this process's CPython: it is traced only if it execs one"
                    ),
                );
            }
            self.until_exec.insert(child, parent);
        } else {
            let target = Target {
                command: p.command.clone(),
                child: None,
                origin: Origin::Forked { parent },
                exit_status: None,
                notes: p.notes.clone(),
                identity: Identity::of(child),
            };
            self.targets.insert(child, target);
            if !self.watch(child) {
                debug!("pid {child} exited as it was forked");
            }
        }
        ended
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
                    identity: Identity::of(pid),
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
        // `--match`: a Python program the kernel traces by name whose
        // command line does not match is let go at the next look, not
        // watched for its CPython. (Other programs are not traced while
        // they wait, and are not worth a read of their command line: a busy
        // host execs hundreds a second.)
        let unmatched = traced_by_name && !descends && self.unmatched(pid);
        // --all: other processes' execs are looked at once, when their
        // loader is done: a busy host execs hundreds a second.
        let wait = if unmatched {
            Duration::ZERO
        } else if traced {
            EXEC_RESCAN_FOR
        } else {
            EXEC_SETTLE
        };
        self.candidates.insert(
            pid,
            Candidate {
                since: now,
                since_ns: crate::clock::monotonic_ns(),
                until: now + wait,
                traced,
                parent,
                identity: Identity::of(pid),
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
            if self.is_current(pid) {
                // A named target that exec'd: probes for its new libraries.
                if let Err(err) = self.setup(pid, probes, model) {
                    debug!("pid {pid}: {err:#}");
                }
            } else if candidate.traced || now >= candidate.until {
                let origin = candidate
                    .parent
                    .map_or(Origin::Found, |parent| Origin::Forked { parent });
                decided.ended.extend(self.end_replaced(pid, model));
                if let Some(f) = self.adopt_start(pid, origin, probes, model) {
                    found.push((pid, f));
                }
            }
        }
        // The slow half after every process's quick one.
        for (pid, f) in found {
            let started_ns = self.candidates.get(&pid).map(|c| c.since_ns);
            if self.adopt_finish(pid, f, probes, started_ns) {
                if !self.watch(pid) {
                    // Gone already: its kernel exit record ends it.
                    debug!("pid {pid} exited as it was adopted");
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
                // Its pid may be another process's now, traced for itself.
                if candidate.identity.is_some_and(|i| i.is_running()) {
                    probes.untrace_pid(pid);
                }
                model.forget(pid);
                decided.dropped.push(pid);
            }
        }
        decided
    }

    /// The recording ended: a launched command still running is stopped
    /// (unless `--detach-command`), and says how it ended. Returns the
    /// processes traced but never adopted, let go now.
    pub fn finish(&mut self, model: &mut Model) -> Vec<Pid> {
        for t in self.targets.values_mut() {
            if let Some((child, detach)) = &mut t.child
                && t.exit_status.is_none()
            {
                t.exit_status = Some(match child.try_wait() {
                    Ok(Some(status)) => describe_status(&status),
                    _ if *detach => "still running (--detach-command)".to_owned(),
                    _ => launch::stop(child),
                });
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
        self.targets.keys().copied()
    }

    pub fn infos(&self, model: &Model) -> Vec<ProcessInfo> {
        self.targets
            .iter()
            .map(|(&pid, t)| t.info(pid, model))
            .collect()
    }

    /// Adds a note to what the report says of `pid`.
    pub fn note(&mut self, pid: Pid, note: String) {
        if let Some(t) = self.targets.get_mut(&pid) {
            t.notes.push(note);
        }
    }
}
