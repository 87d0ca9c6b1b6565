//! Adopting a process as a target: the quick half (its interpreter) and
//! the slow half (probes on its files) of `adopt`, for one process or many,
//! and the checks that it is still the process it was (a pid is reused).

use anyhow::{Result, bail};
use log::{debug, info, warn};

use super::{Origin, Target, Targets};
use crate::{
    event::Pid,
    model::Model,
    process::ProcessInfo,
    sources::{
        adopt::{Found, Setup, find_interpreter, probe_files, setup},
        identity::watch_exit,
        probes::Probes,
        procfs,
    },
};

impl Targets {
    /// Whether `pid` is a target and still the same process.
    pub(super) fn is_current(&self, pid: Pid) -> bool {
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

    /// Traces `pid` if it runs a supported CPython. Returns whether it does.
    pub(super) fn adopt(
        &mut self,
        pid: Pid,
        origin: Origin,
        probes: &mut Probes,
        model: &mut Model,
    ) -> bool {
        if self.is_current(pid) {
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
    pub(super) fn adopt_start(
        &mut self,
        pid: Pid,
        origin: Origin,
        probes: &mut Probes,
        model: &mut Model,
    ) -> Option<Found> {
        // `--match`: a process found on the host is adopted only if its
        // command line matches (one forked by a target always is).
        let unmatched = origin == Origin::Found && self.unmatched(pid);
        if unmatched || !procfs::maps_python(pid) {
            return None;
        }
        match find_interpreter(pid, probes, model) {
            Ok(found) if found.is_python() => {
                let target = Target::new(pid, origin);
                // Gone before its start time could be read: not adopted.
                target.identity?;
                self.targets.insert(pid, target);
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
    pub(super) fn adopt_finish(
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
            }) => match self.trace_pid(pid, probes) {
                Ok(()) => {
                    if let (Some(notes), Some(t)) = (notes, self.targets.get_mut(&pid)) {
                        t.notes = notes;
                    }
                    // Both halves done: its allocators are probed now.
                    info!("pid {pid}: adopted");
                    return true;
                }
                Err(err) => warn!("pid {pid}: {err:#}"),
            },
            Ok(Setup {
                python: Err(err), ..
            }) => warn!(
                "pid {pid} ({}): not traced: {err}",
                crate::escape::text(&procfs::command_line(pid))
            ),
            Ok(_) => {}
            Err(err) => debug!("pid {pid}: {err:#}"),
        }
        self.targets.remove(&pid);
        false
    }

    /// `adopt::setup`, keeping the notes it makes for the target.
    pub(super) fn setup(
        &mut self,
        pid: Pid,
        probes: &mut Probes,
        model: &mut Model,
    ) -> Result<Setup> {
        let setup = setup(pid, probes, model)?;
        if let (Some(notes), Some(t)) = (&setup.notes, self.targets.get_mut(&pid)) {
            t.notes.clone_from(notes);
        }
        Ok(setup)
    }

    /// Adds `pid` to the kernel's traced set if it is still the process
    /// adopted: a process that exited meanwhile, whose pid another process
    /// may have now, is not traced.
    pub(super) fn trace_pid(&self, pid: Pid, probes: &mut Probes) -> Result<()> {
        probes.trace_pid(pid)?;
        if !self.is_current(pid) {
            probes.untrace_pid(pid);
            bail!("pid {pid} exited as it was adopted");
        }
        Ok(())
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
