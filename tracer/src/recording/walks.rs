//! The recording's heap walks (types of live objects): the baseline, the
//! periodic ones, a launched command held at its finalization, and the
//! last ones; each census goes to every sink.

use anyhow::Result;
use log::warn;

use super::Engine;
use crate::{
    census::{Census, Moment},
    event::Pid,
    sources::{
        hold::{self, Held},
        walks::Walks,
    },
    stdio,
};

/// The next census of a walk that ended, if walks are made.
pub(super) async fn recv_census(walks: &mut Option<Walks>) -> Option<Census> {
    match walks {
        Some(w) => w.done.recv().await,
        None => std::future::pending().await,
    }
}

/// The next periodic walk's tick, if walks are periodic.
pub(super) async fn next_tick(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Engine {
    /// A walk of every running target whose previous walk has ended.
    pub(super) fn walk_running(&mut self, moment: Moment) {
        let running: Vec<Pid> = self.lifecycle.running().collect();
        for pid in running {
            if !self.walking.contains(&pid) {
                self.walk(pid, moment);
            }
        }
    }

    /// A walk ended: its census goes to every sink.
    pub(super) fn censused(&mut self, census: &Census) -> Result<()> {
        self.walking.remove(&census.pid);
        // Growth is counted from this walk, not from the attach: say when
        // it is taken, and what it cost.
        if census.moment == Moment::Start {
            let c = &census.coverage;
            let objects: u64 = census.types.iter().map(|t| t.count).sum();
            stdio::line(&format!(
                "tracer: baseline of live objects of pid {}: {objects} objects, {} reads in {} ms{}",
                census.pid,
                c.reads,
                c.micros / 1000,
                if c.estimated {
                    " (capped: estimated)"
                } else {
                    ""
                }
            ));
        }
        for sink in &mut self.sinks {
            sink.census(census)?;
        }
        Ok(())
    }

    /// Asks for a walk of `pid`, marked as walking until its census comes.
    pub(super) fn walk(&mut self, pid: Pid, moment: Moment) {
        if let Some(walks) = &self.walks
            && walks.walk(&self.model, pid, moment, None)
        {
            self.walking.insert(pid);
        }
    }

    /// `pid` entered `Py_FinalizeEx`: if it was to be held, the kernel
    /// stopped it; its walk continues it.
    pub(super) fn finalizing(&mut self, pid: Pid) {
        let Some(i) = self.armed.iter().position(|&p| p == pid) else {
            return;
        };
        self.armed.swap_remove(i);
        let Some(walks) = &self.walks else { return };
        match Held::new(pid) {
            Ok(held) => {
                walks.walk(&self.model, pid, Moment::Finalize, Some(held));
            }
            Err(err) => warn!("not holding pid {pid} at its finalization: {err:#}"),
        }
    }

    /// A held process whose finalization marker was lost (the ring was
    /// full) is stopped all the same: its walk starts now.
    pub(super) fn held_without_marker(&mut self) {
        let fired: Vec<Pid> = self
            .armed
            .iter()
            .copied()
            .filter(|&pid| !self.lifecycle.hold_armed(pid))
            .collect();
        for pid in fired {
            self.finalizing(pid);
        }
    }
    /// The walks at the end: of a launched command stopped just now, and of
    /// every target still running (unless walks are periodic: the last one
    /// stands for the end, and a stopping daemon is not held up by a walk
    /// of every process); then what every walk found goes to the sinks, and
    /// no process is held any more.
    pub(super) fn last_walks(&mut self, periodic: bool) -> Result<()> {
        if self.walks.is_none() {
            return Ok(());
        }
        for pid in std::mem::take(&mut self.armed) {
            if self.lifecycle.hold_armed(pid) {
                self.lifecycle.unhold(pid);
            }
            // Between the two, the kernel may have stopped it.
            if !self.lifecycle.hold_armed(pid) && hold::is_stopped(pid) {
                self.armed.push(pid);
                self.finalizing(pid);
            }
        }
        let Some(walks) = self.walks.take() else {
            return Ok(());
        };
        let running: Vec<Pid> = self.lifecycle.running().collect();
        for pid in running {
            if !periodic && !hold::is_stopped(pid) {
                walks.walk(&self.model, pid, Moment::End, None);
            }
        }
        let censuses = walks.finish();
        if let Some(guard) = self.guard.take() {
            guard.release();
        }
        for census in &censuses {
            for sink in &mut self.sinks {
                sink.census(census)?;
            }
        }
        Ok(())
    }
}
