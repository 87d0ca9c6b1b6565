//! The heap walks of a recording (`python::heap`), on a thread of their
//! own so that the event loop keeps draining while a process's memory is
//! read: when tracing begins (the baseline for growth), at a held launched
//! command's finalization (continued as soon as its walk ends), every
//! `--types-every` in the daemon, and at the end for the targets still
//! running.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use log::debug;
use tokio::sync::mpsc as tokio_mpsc;

use super::hold::Held;
use crate::{
    census::{Census, Moment},
    clock::monotonic_ns,
    event::Pid,
    model::Model,
    python::heap::{self, HeapTarget, Limits, TracedBlock},
};

/// How long a walk may take: at the start, a held process (the hold's
/// bound), and at the end.
const START_LIMIT: Duration = Duration::from_secs(2);
pub const HOLD_LIMIT: Duration = Duration::from_secs(5);
const END_LIMIT: Duration = Duration::from_secs(5);

/// One walk to make.
struct Job {
    pid: Pid,
    moment: Moment,
    target: HeapTarget,
    blocks: Vec<TracedBlock>,
    limits: Limits,
    /// Continue the process when the walk ends.
    held: Option<(Held, Instant)>,
}

/// The walking thread and what it found.
pub struct Walks {
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<JoinHandle<()>>,
    /// Periodic walks still queued are skipped: a recording that stops
    /// does not wait for a round of walks of every process.
    skip_periodic: Arc<AtomicBool>,
    /// Censuses as walks end.
    pub done: tokio_mpsc::UnboundedReceiver<Census>,
}

impl Default for Walks {
    fn default() -> Self {
        Self::new()
    }
}

impl Walks {
    pub fn new() -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, done) = tokio_mpsc::unbounded_channel();
        let skip_periodic = Arc::new(AtomicBool::new(false));
        let skip = skip_periodic.clone();
        let worker = thread::Builder::new()
            .name("tracer-walks".into())
            .spawn(move || {
                for job in rx {
                    if job.moment == Moment::Periodic && skip.load(Relaxed) {
                        continue;
                    }
                    let census = run(job);
                    if tx.send(census).is_err() {
                        break;
                    }
                }
            })
            .ok();
        Self {
            jobs: Some(jobs),
            worker,
            skip_periodic,
            done,
        }
    }

    /// Walks `pid` now, its traced live blocks typed too; continues it
    /// afterwards if `held`. False if no walk was queued (not a CPython
    /// known to the model, or no walking thread): no census will come.
    pub fn walk(&self, model: &Model, pid: Pid, moment: Moment, held: Option<Held>) -> bool {
        let Some(interp) = model.interpreter(pid) else {
            if let Some(h) = held {
                h.resume();
            }
            return false;
        };
        let limit = match moment {
            Moment::Start | Moment::Periodic => START_LIMIT,
            Moment::Finalize => HOLD_LIMIT,
            Moment::End => END_LIMIT,
        };
        let job = Job {
            pid,
            moment,
            target: interp.heap.clone(),
            blocks: live_blocks(model, pid),
            limits: Limits::within(limit),
            held: held.map(|h| (h, Instant::now())),
        };
        let unsent = match &self.jobs {
            Some(jobs) => jobs.send(job).err().map(|mpsc::SendError(job)| job),
            None => Some(job),
        };
        match unsent {
            None => true,
            Some(job) => {
                // No worker: never leave a process held.
                if let Some((h, _)) = job.held {
                    h.resume();
                }
                false
            }
        }
    }

    /// Waits for every walk asked for, but the periodic ones not begun,
    /// and returns what they found.
    pub fn finish(mut self) -> Vec<Census> {
        self.skip_periodic.store(true, Relaxed);
        drop(self.jobs.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        let mut out = Vec::new();
        while let Ok(c) = self.done.try_recv() {
            out.push(c);
        }
        out
    }
}

/// The traced live blocks (not mappings) of `pid` now.
pub fn live_blocks(model: &Model, pid: Pid) -> Vec<TracedBlock> {
    model.heap().process(pid).map_or_else(Vec::new, |p| {
        p.live_blocks()
            .map(|(addr, a)| TracedBlock {
                addr,
                size: a.size,
                count: a.count,
                stack: a.stack,
            })
            .collect()
    })
}

fn run(job: Job) -> Census {
    let mut census = heap::walk(&heap::Request {
        pid: job.pid,
        ts_ns: monotonic_ns(),
        moment: job.moment,
        target: &job.target,
        blocks: &job.blocks,
        limits: job.limits,
    });
    if let Some((held, since)) = job.held {
        held.resume();
        census.coverage.held_micros = since.elapsed().as_micros() as u64;
    }
    debug!(
        "pid {}: heap walk {:?}: {} types, {:?}",
        census.pid,
        census.moment,
        census.types.len(),
        census.coverage
    );
    census
}
