//! Adopting a process as a target: the quick half (its interpreter) and
//! the slow half (probes on its files) of `setup`, for one process or many,
//! and the checks that it is still the process it was (a pid is reused).

use anyhow::{Result, bail};
use log::{debug, info, warn};

use super::{
    Lifecycle,
    setup::{Found, Setup, find_interpreter, probe_files},
    targets::{Origin, Target},
};
use crate::{event::Pid, model::Model, sources::procfs};

impl Lifecycle {
    /// Traces `pid` if it runs a supported CPython. Returns whether it does.
    pub(super) fn adopt(&mut self, pid: Pid, origin: Origin, model: &mut Model) -> bool {
        if self.targets.is_current(pid) {
            return true;
        }
        match self.adopt_start(pid, origin, model) {
            Some(found) => self.adopt_finish(pid, found, None),
            None => false,
        }
    }

    /// The quick half of adopting `pid` (`setup::find_interpreter`): `Some`
    /// if it runs a CPython tracer can read, a target from now on. Nothing
    /// is done in a process that maps no python file: a busy host execs
    /// hundreds of other programs a second.
    pub(super) fn adopt_start(
        &mut self,
        pid: Pid,
        origin: Origin,
        model: &mut Model,
    ) -> Option<Found> {
        // `--match`: a process found on the host is adopted only if its
        // command line matches (one forked by a target always is).
        let unmatched = origin == Origin::Found && self.targets.unmatched(pid);
        if unmatched || !procfs::maps_python(pid) {
            return None;
        }
        match find_interpreter(pid, &mut self.probes, model) {
            Ok(found) if found.is_python() => {
                let target = Target::new(pid, origin);
                // Gone before its start time could be read: not adopted.
                target.identity?;
                self.targets.targets.insert(pid, target);
                Some(found)
            }
            Ok(_) => None,
            Err(err) => {
                debug!("pid {pid}: {err:#}");
                None
            }
        }
    }

    /// The slow half (`setup::probe_files`); a process without an allocator
    /// tracer can probe is let go.
    pub(super) fn adopt_finish(&mut self, pid: Pid, found: Found, started_ns: Option<u64>) -> bool {
        match probe_files(pid, found, &mut self.probes, started_ns) {
            Ok(Setup {
                allocator: true,
                python: Ok(true),
                notes,
            }) => match self.trace(pid) {
                Ok(()) => {
                    if let (Some(notes), Some(t)) = (notes, self.targets.targets.get_mut(&pid)) {
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
        self.targets.targets.remove(&pid);
        false
    }

    /// Adds `pid` to the kernel's traced set if it is still the process
    /// adopted: a process that exited meanwhile, whose pid another process
    /// may have now, is not traced.
    pub(super) fn trace(&mut self, pid: Pid) -> Result<()> {
        self.probes.trace_pid(pid)?;
        if !self.targets.is_current(pid) {
            self.probes.untrace_pid(pid);
            bail!("pid {pid} exited as it was adopted");
        }
        Ok(())
    }
}
