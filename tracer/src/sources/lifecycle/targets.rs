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
    process::Child,
    time::Duration,
};

use log::debug;
use tokio::{sync::mpsc, time::Instant};

use super::{
    identity::{Identity, describe_status, watch_exit},
    setup::describe,
};
use crate::{
    event::Pid, model::Model, process::ProcessInfo, sources::collector::Fork, sources::procfs,
};

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
pub(super) enum Origin {
    /// `--pid`, or the launched command.
    Named,
    /// `--all` found it.
    Found,
    /// A traced process forked it.
    Forked { parent: Pid },
}

pub(super) struct Target {
    pub(super) command: String,
    /// The launched command: its handle, and whether it is left running
    /// when tracer stops.
    pub(super) child: Option<(Child, bool)>,
    pub(super) origin: Origin,
    pub(super) exit_status: Option<String>,
    /// What the report says of its allocators.
    pub(super) notes: Vec<String>,
    /// Which process it is (`None`: gone before its start time was read).
    pub(super) identity: Option<Identity>,
}

impl Target {
    pub(super) fn new(pid: Pid, origin: Origin) -> Self {
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
pub(super) struct Candidate {
    /// When its exec was seen.
    pub(super) since: Instant,
    /// When it exec'd, by the kernel's clock (CLOCK_MONOTONIC ns).
    pub(super) since_ns: u64,
    /// Given up after this.
    pub(super) until: Instant,
    /// The kernel traces it already (its events are held until it is
    /// adopted): `--all` traced it by name, or it descends from a target.
    pub(super) traced: bool,
    /// The target it was forked from, if it was.
    pub(super) parent: Option<Pid>,
    /// Which process it is, if it was still running when seen.
    pub(super) identity: Option<Identity>,
}

/// The table of the processes a recording traces and of those it may
/// trace yet, and what becomes of each as it forks, execs and exits.
pub struct Targets {
    pub(super) targets: BTreeMap<Pid, Target>,
    pub(super) candidates: HashMap<Pid, Candidate>,
    /// Children sharing their parent's memory (vfork), recorded from their
    /// exec on: by child, the target that made it.
    until_exec: HashMap<Pid, Pid>,
    exits: mpsc::UnboundedSender<Identity>,
    /// `--all`: new CPython processes are adopted as they appear.
    pub(super) all: bool,
    /// `--match`: only those whose command line matches.
    matching: Option<regex::Regex>,
    pub(super) last_rescan: Instant,
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
        // A pidfd of an earlier process with this pid says nothing of a
        // process that has it now: a run that exec'd under the pid the
        // moment the last one exited is a candidate already, whose exit
        // this is not (it would never be adopted).
        match process {
            None => {
                self.candidates.remove(&pid);
                self.until_exec.remove(&pid);
            }
            Some(p) => {
                if self
                    .candidates
                    .get(&pid)
                    .is_some_and(|c| c.identity == Some(p))
                {
                    self.candidates.remove(&pid);
                }
            }
        }
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
    pub(super) fn end(&mut self, pid: Pid, model: &Model) -> Option<ProcessInfo> {
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

    /// The recording ended: a launched command still running is stopped
    /// (unless `--detach-command`), and says how it ended. Returns the
    /// processes traced but never adopted, to be let go now.
    pub fn finish(&mut self) -> Vec<Pid> {
        for t in self.targets.values_mut() {
            if let Some((child, detach)) = &mut t.child
                && t.exit_status.is_none()
            {
                t.exit_status = Some(match child.try_wait() {
                    Ok(Some(status)) => describe_status(&status),
                    _ if *detach => "still running (--detach-command)".to_owned(),
                    _ => super::launch::stop(child),
                });
            }
        }
        self.candidates
            .drain()
            .map(|(pid, _)| pid)
            .filter(|pid| !self.targets.contains_key(pid))
            .collect()
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

    /// Whether `pid` is a target and still the same process.
    pub fn is_current(&self, pid: Pid) -> bool {
        self.targets
            .get(&pid)
            .is_some_and(|t| t.identity.is_none_or(|i| i.is_running()))
    }

    /// `--match` is given and `pid`'s command line does not match it.
    pub(super) fn unmatched(&self, pid: Pid) -> bool {
        self.matching
            .as_ref()
            .is_some_and(|re| !re.is_match(&procfs::command_line(pid)))
    }

    /// A target whose pid is another process's now (its exit was missed)
    /// is ended.
    pub(super) fn end_replaced(&mut self, pid: Pid, model: &Model) -> Option<ProcessInfo> {
        if self.targets.contains_key(&pid) && !self.is_current(pid) {
            return self.end(pid, model);
        }
        None
    }

    /// Watches target `pid`'s exit; false if it has exited already (or
    /// cannot be watched): then it is not traced any more either.
    pub(super) fn watch(&mut self, pid: Pid) -> bool {
        let Some(identity) = self.targets.get(&pid).and_then(|t| t.identity) else {
            return false;
        };
        match watch_exit(identity, self.exits.clone()) {
            Ok(()) => true,
            Err(err) => {
                debug!("{err:#}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_lifes_exit_leaves_the_process_that_has_its_pid_now() {
        let (mut targets, _exits) = Targets::new(true);
        let pid = std::process::id();
        targets.exec_seen(pid, true);
        let now = Identity::of(pid).expect("this process");
        let earlier = Identity {
            start: now.start.saturating_sub(1),
            ..now
        };
        let model = Model::default();
        assert!(targets.exited(pid, Some(earlier), &model).is_none());
        assert!(
            targets.candidates.contains_key(&pid),
            "the exit of an earlier life of the pid dropped the candidate"
        );
        targets.exited(pid, Some(now), &model);
        assert!(!targets.candidates.contains_key(&pid));
        targets.exec_seen(pid, true);
        targets.exited(pid, None, &model);
        assert!(
            !targets.candidates.contains_key(&pid),
            "the kernel's exit record"
        );
    }
}
