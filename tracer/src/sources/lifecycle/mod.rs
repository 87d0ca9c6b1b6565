//! The one owner of process lifecycle. It takes what the kernel says of
//! the processes it traces (a fork, an exec, an exit, from the ring
//! buffer or a pidfd) and what tracer finds on the host (a process to
//! adopt), keeps the table of targets (`targets`), the events of processes
//! not adopted yet (`pending`), and the probes of each process (`Probes`,
//! attached and dropped only here), and returns what the engine must do
//! next, in order (`Step`): events to the sinks, targets ended, processes
//! forgotten. A process that ends is no target any more: its pid may be
//! another process's next (`identity`).

mod adoption;
mod identity;
pub mod launch;
mod pending;
mod setup;
mod targets;

use std::{ffi::OsString, path::Path};

use anyhow::{Result, bail};
use log::{debug, info, warn};
use tokio::{sync::mpsc, time::Instant};

pub use self::identity::Identity;
use self::{
    launch::{Launch, Stage},
    pending::Pending,
    setup::Setup,
    targets::{Candidate, Origin, Target, Targets},
};
use crate::{
    counters::Counters,
    event::{HeapEvent, Pid},
    model::Model,
    proc_maps::ProcessMaps,
    process::ProcessInfo,
    sources::{
        collector::{Collector, Notice},
        probes::Probes,
        procfs,
    },
};

/// What the engine does next, in order.
#[derive(Debug)]
pub enum Step {
    /// Events of targets, in order: to the sinks.
    Events(Vec<HeapEvent>),
    /// A target ended, after all its events: the sinks are told how, then
    /// the model forgets it.
    Ended(ProcessInfo),
    /// A process the kernel traced that is no target (it exited unadopted,
    /// or runs no CPython): the model forgets it.
    Forget(Pid),
}

/// Where the exits of watched targets arrive (their pidfds).
pub type Exits = mpsc::UnboundedReceiver<Identity>;

pub struct Lifecycle {
    targets: Targets,
    pending: Pending,
    probes: Probes,
    /// Learnt while a batch of records was applied, acted on after it:
    /// targets found ended under a pid a fork reused (their exit record
    /// was lost), and the execs seen.
    ended_unseen: Vec<ProcessInfo>,
    execs: Vec<Exec>,
}

/// An exec the kernel reported.
#[derive(Clone, Copy, Debug)]
struct Exec {
    pid: Pid,
    /// `--all`: the kernel started tracing it by its name.
    traced_by_name: bool,
}

impl Lifecycle {
    /// Also returns where the exits of watched targets arrive. `all`:
    /// every CPython process on the host is adopted as it appears;
    /// `matching`, only those whose command line matches.
    pub fn new(probes: Probes, all: bool, matching: Option<regex::Regex>) -> (Self, Exits) {
        let (mut targets, exits) = Targets::new(all);
        if let Some(re) = matching {
            targets.only_matching(re);
        }
        let lifecycle = Self {
            targets,
            pending: Pending::default(),
            probes,
            ended_unseen: Vec::new(),
            execs: Vec::new(),
        };
        (lifecycle, exits)
    }

    /// Traces a process named by `--pid`, and its descendants: one that
    /// tracer cannot trace is an error.
    pub fn add_pid(&mut self, pid: Pid, model: &mut Model) -> Result<()> {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}: check the pid with `ps -p {pid}`");
        }
        self.targets
            .targets
            .insert(pid, Target::new(pid, Origin::Named));
        let setup = self.attach(pid, model)?;
        if !setup.allocator {
            bail!(
                "pid {pid} ({}) maps no libc or other malloc implementation tracer can probe (statically linked without symbols?)",
                procfs::command_line(pid)
            );
        }
        if let Err(err) = &setup.python {
            bail!("pid {pid}: {err}");
        }
        self.probes.trace_pid(pid)?;
        for c in procfs::descendants(pid) {
            if !self.targets.targets.contains_key(&c.pid) {
                let origin = Origin::Forked { parent: c.parent };
                if !self.adopt(c.pid, origin, model) {
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
    pub fn adopt_running(&mut self, model: &mut Model) {
        for pid in procfs::all_processes() {
            if let Ok(maps) = ProcessMaps::read(pid)
                && let Err(err) = self.probes.attach_libc(pid, &maps)
            {
                debug!("pid {pid}: {err:#}");
            }
        }
        for pid in procfs::python_candidates() {
            let origin = match procfs::parent(pid) {
                Some(parent) if self.targets.targets.contains_key(&parent) => {
                    Origin::Forked { parent }
                }
                _ => Origin::Found,
            };
            self.adopt(pid, origin, model);
        }
    }

    /// Starts `command` as `how` says, traced from its first allocation.
    /// At its entry point, while it is still held there, `at_entry` is
    /// called and then, if `hold_at_finalize`, the kernel is told to stop
    /// it at its finalization. Returns its pid.
    pub fn launch(
        &mut self,
        command: &[OsString],
        how: &Launch,
        model: &mut Model,
        hold_at_finalize: bool,
        mut at_entry: impl FnMut(Pid) -> Result<()>,
    ) -> Result<Pid> {
        let mut traced = false;
        let launched = launch::launch(command, how, |pid, stage| {
            if !traced {
                self.targets
                    .targets
                    .insert(pid, Target::new(pid, Origin::Named));
                self.probes.trace_pid(pid)?;
                traced = true;
            }
            let setup = self.attach(pid, model)?;
            if stage == Stage::Entry {
                if let Err(err) = setup.python {
                    bail!("{err}");
                }
                if !setup.allocator {
                    warn!("pid {pid} reached its entry point without a probed allocator");
                }
                at_entry(pid)?;
                if hold_at_finalize {
                    self.probes.hold_at_finalize(pid)?;
                }
            }
            Ok(setup.allocator)
        })?;
        info!("started pid {}", launched.pid);
        if let Some(t) = self.targets.targets.get_mut(&launched.pid) {
            t.command = procfs::command_line(launched.pid);
            t.identity = Identity::of(launched.pid);
            t.child = Some((launched.child, how.detach));
        }
        Ok(launched.pid)
    }

    /// Attaches the probes of process `pid`: its files' (those not probed
    /// yet), and how to read its Python frames if it runs CPython; keeps
    /// what its report says of its allocators. Safe to repeat (after an
    /// exec, as new libraries appear).
    pub fn attach(&mut self, pid: Pid, model: &mut Model) -> Result<Setup> {
        let setup = setup::setup(pid, &mut self.probes, model)?;
        if let (Some(notes), Some(t)) = (&setup.notes, self.targets.targets.get_mut(&pid)) {
            t.notes.clone_from(notes);
        }
        Ok(setup)
    }

    /// Drops what the kernel keeps to trace process `pid`.
    pub fn detach(&mut self, pid: Pid) {
        self.probes.untrace_pid(pid);
    }

    /// Watches every target adopted so far for its exit. One that exited
    /// already is ended.
    pub fn watch_exits(&mut self, model: &Model) -> Vec<Step> {
        self.targets
            .watch_exits(model)
            .into_iter()
            .map(|info| self.ended(info))
            .collect()
    }

    /// The line that says what is being recorded.
    pub fn describe(&self) -> String {
        self.targets.describe()
    }

    /// What the kernel said of a process, in a record just applied to the
    /// model (`collector` holds the events applied before it).
    pub fn notice(
        &mut self,
        notice: Notice,
        model: &Model,
        collector: &mut Collector,
    ) -> Vec<Step> {
        match notice {
            // A forked child is a target before its first event is
            // admitted: its fork must reach the sinks in order with its
            // parent's events.
            Notice::Fork(fork) => {
                // A target still known under the child's pid ended unseen
                // (its exit record was lost with others).
                self.ended_unseen.extend(self.targets.forked(&fork, model));
                Vec::new()
            }
            // Its last records first, then its end.
            Notice::Exited(pid) => {
                let flushed = self.flush(collector);
                let mut steps = vec![flushed];
                steps.extend(self.exited_pid(pid, None, model));
                steps
            }
            Notice::Exec {
                pid,
                traced_by_name,
            } => {
                self.execs.push(Exec {
                    pid,
                    traced_by_name,
                });
                Vec::new()
            }
            Notice::Exiting(_) => Vec::new(),
        }
    }

    /// A batch of records was applied: the events so far go on, then what
    /// was learnt while applying them is acted on; a process that just
    /// exec'd is looked at once now, not a tick later.
    pub fn drained(&mut self, model: &mut Model, collector: &mut Collector) -> Vec<Step> {
        let mut steps = vec![self.flush(collector)];
        for info in std::mem::take(&mut self.ended_unseen) {
            steps.push(self.ended(info));
        }
        let execs = std::mem::take(&mut self.execs);
        for exec in &execs {
            self.targets.exec_seen(exec.pid, exec.traced_by_name);
        }
        if !execs.is_empty() {
            steps.extend(self.rescan(model));
        }
        steps
    }

    /// The events applied since the last flush: the targets' to the sinks,
    /// the others held.
    fn flush(&mut self, collector: &mut Collector) -> Step {
        let targets = &self.targets;
        Step::Events(
            self.pending
                .admit(collector.take_events(), |pid| targets.contains(pid)),
        )
    }

    /// `process` exited (its pidfd): a target is ended. Its last records
    /// are drained first.
    pub fn exited(&mut self, process: Identity, model: &Model) -> Vec<Step> {
        self.exited_pid(process.pid, Some(process), model)
    }

    /// `pid` exited: `process` from its pidfd, or `None` from the kernel's
    /// exit record (after its last records, and the pid traced no more).
    /// A target is ended; nothing of a process that was not one is kept.
    fn exited_pid(&mut self, pid: Pid, process: Option<Identity>, model: &Model) -> Vec<Step> {
        match self.targets.exited(pid, process, model) {
            Some(info) => vec![self.ended(info)],
            None if process.is_none() => {
                self.pending.drop_pid(pid);
                vec![Step::Forget(pid)]
            }
            None => Vec::new(),
        }
    }

    /// A target ended: nothing of it is held any more.
    fn ended(&mut self, info: ProcessInfo) -> Step {
        self.pending.drop_pid(info.pid);
        Step::Ended(info)
    }

    /// When processes that exec'd should be looked at again, if any are
    /// being looked at.
    pub fn next_rescan(&self) -> Option<Instant> {
        self.targets.next_rescan()
    }

    /// Looks at the processes that exec'd again: probes for a named
    /// target's new libraries; adopts another once it shows a CPython (its
    /// held events go on, after any target found ended under its pid), or
    /// lets it go when its time is up.
    pub fn rescan(&mut self, model: &mut Model) -> Vec<Step> {
        let now = Instant::now();
        self.targets.last_rescan = now;
        let mut ended = Vec::new();
        let pending: Vec<(Pid, Candidate)> = self
            .targets
            .candidates
            .iter()
            .map(|(p, c)| (*p, *c))
            .collect();
        let mut found = Vec::new();
        for &(pid, candidate) in &pending {
            if self.targets.is_current(pid) {
                // A named target that exec'd: probes for its new libraries.
                if let Err(err) = self.attach(pid, model) {
                    debug!("pid {pid}: {err:#}");
                }
            } else if candidate.traced || now >= candidate.until {
                let origin = candidate
                    .parent
                    .map_or(Origin::Found, |parent| Origin::Forked { parent });
                ended.extend(self.targets.end_replaced(pid, model));
                if let Some(f) = self.adopt_start(pid, origin, model) {
                    found.push((pid, f));
                }
            }
        }
        let mut steps: Vec<Step> = ended.into_iter().map(|info| self.ended(info)).collect();
        // The slow half after every process's quick one.
        for (pid, f) in found {
            let started_ns = self.targets.candidates.get(&pid).map(|c| c.since_ns);
            if self.adopt_finish(pid, f, started_ns) {
                if !self.targets.watch(pid) {
                    // Gone already: its kernel exit record ends it.
                    debug!("pid {pid} exited as it was adopted");
                }
                if let Some(c) = self.targets.candidates.remove(&pid) {
                    debug!(
                        "pid {pid}: adopted {:.1} ms after its exec",
                        c.since.elapsed().as_secs_f64() * 1e3
                    );
                }
                steps.push(self.release(pid));
            }
        }
        for (pid, candidate) in pending {
            if now < candidate.until || !self.targets.candidates.contains_key(&pid) {
                continue;
            }
            self.targets.candidates.remove(&pid);
            if candidate.traced && !self.targets.targets.contains_key(&pid) {
                // Its pid may be another process's now, traced for itself.
                if candidate.identity.is_some_and(|i| i.is_running()) {
                    self.detach(pid);
                }
                self.pending.drop_pid(pid);
                steps.push(Step::Forget(pid));
            }
        }
        steps
    }

    /// `pid` was adopted: what it did before goes on to the sinks, and its
    /// report says what could not be held.
    fn release(&mut self, pid: Pid) -> Step {
        let released = self.pending.release(pid);
        if released.lost > 0 {
            self.targets.note(
                pid,
                format!(
                    "{} events before it was adopted could not be held (see docs/allocation-matching.md)",
                    released.lost
                ),
            );
        }
        Step::Events(released.events)
    }

    /// Whether every target has exited (never with `--all`, which waits
    /// for new ones).
    pub fn all_exited(&self) -> bool {
        self.targets.all_exited()
    }

    /// The targets still running.
    pub fn running(&self) -> impl Iterator<Item = Pid> + '_ {
        self.targets.running()
    }

    /// Every target so far, as the sinks see it.
    pub fn infos(&self, model: &Model) -> Vec<ProcessInfo> {
        self.targets.infos(model)
    }

    /// The kernel's counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        self.probes.counters()
    }

    /// How the probes are attached, as the report says it.
    pub fn links(&self) -> String {
        self.probes.links().to_string()
    }

    /// `pid` is not to be held at its finalization any more.
    pub fn unhold(&mut self, pid: Pid) {
        self.probes.unhold(pid);
    }

    /// Whether `pid` is still to be held: false once the kernel stopped it.
    pub fn hold_armed(&self, pid: Pid) -> bool {
        self.probes.hold_armed(pid)
    }

    /// The recording ended: a launched command still running is stopped
    /// (unless `--detach-command`); the processes traced but never adopted
    /// are let go.
    pub fn finish(&mut self) -> Vec<Step> {
        let dropped = self.targets.finish();
        dropped
            .into_iter()
            .map(|pid| {
                self.pending.drop_pid(pid);
                Step::Forget(pid)
            })
            .collect()
    }

    /// Removes every uprobe now where the links allow it (`Probes::remove_uprobes`).
    pub fn remove_uprobes(&mut self) {
        self.probes.remove_uprobes();
    }

    /// Removes every probe (`Probes::detach`).
    pub fn detach_all(self) {
        self.probes.detach();
    }
}
