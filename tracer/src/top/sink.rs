//! `tracer top`'s sink: at each refresh, each running process's live and
//! allocated amounts per (thread, stack), for the view; the frames of new
//! stacks (Python ones at once, native ones once the recording's
//! symbolizer has named them); and, while the objects view is open, a walk
//! of the shown process's heap every few seconds.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::view::{Cell, Loc, ProcessData, StackInfo, Update};
use crate::{
    census::Moment,
    event::{EventKind, HeapEvent, Pid, StackId, Tid},
    frame::Frame,
    model::{Model, heap::Amount},
    sinks::{Ending, Sink, Snapshot, interval::Interval},
    sources::walks::Walks,
    symbolize::feed::StackDefs,
};

/// What the view is sent.
pub enum Message {
    Update(Update),
    Symbolized(StackId, Vec<Loc>),
    Census(crate::census::Census),
    /// The recording ended.
    End,
}

/// Between the view and the recording.
#[derive(Default)]
pub struct Shared {
    /// The viewer quit.
    pub quit: AtomicBool,
    /// The pid whose heap the objects view shows (0: none).
    pub walk_pid: AtomicU32,
}

/// How often the objects view walks the heap: a walk reads every arena.
const WALK_EVERY: Duration = Duration::from_secs(5);

pub struct TopSink {
    view: mpsc::Sender<Message>,
    shared: Arc<Shared>,
    stacks_sent: usize,
    /// Allocations made per (process, thread, stack), and at the last refresh.
    allocated: HashMap<(Pid, Tid, StackId), Amount>,
    refreshed: Interval<(Pid, Tid, StackId)>,
    /// Per process: bytes allocated (and events, as the count) at the last
    /// refresh.
    totals: Interval<Pid>,
    last_refresh: Option<Instant>,
    sampling: Option<u64>,
    walks: Walks,
    last_walk: Option<Instant>,
}

impl TopSink {
    pub fn new(
        view: mpsc::Sender<Message>,
        shared: Arc<Shared>,
        sampling: Option<u64>,
        mut defs: StackDefs,
    ) -> Self {
        // Native frames come as the recording's symbolizer names them,
        // between refreshes too (`--once` waits for those it shows).
        let to_view = view.clone();
        let _ = thread::Builder::new()
            .name("tracer-top-symbols".into())
            .spawn(move || {
                while let Some(id) = defs.recv() {
                    let Some(def) = defs.get(id) else { break };
                    let native = def.native.iter().map(loc).collect();
                    if to_view.send(Message::Symbolized(id, native)).is_err() {
                        break;
                    }
                }
            });
        Self {
            view,
            shared,
            stacks_sent: 0,
            allocated: HashMap::new(),
            refreshed: Interval::default(),
            totals: Interval::default(),
            last_refresh: None,
            sampling,
            walks: Walks::new(),
            last_walk: None,
        }
    }

    /// The stacks interned since the last refresh, with their Python frames.
    fn new_stacks(&mut self, model: &Model) -> Vec<(StackId, StackInfo)> {
        let stacks = model.stacks();
        let known = stacks.count();
        let out = (self.stacks_sent..known)
            .map(|i| {
                let id = StackId(i as u32);
                let python = stacks
                    .get(id)
                    .python
                    .iter()
                    .map(|l| {
                        let l = stacks.python_location(*l);
                        Loc {
                            function: l.function.clone(),
                            file: l.file.clone(),
                            line: l.line,
                            module: l.module.clone(),
                        }
                    })
                    .collect();
                (
                    id,
                    StackInfo {
                        python,
                        native: None,
                    },
                )
            })
            .collect();
        self.stacks_sent = known;
        out
    }

    /// Each running process's amounts per (thread, stack) now.
    fn processes(&mut self, s: &Snapshot<'_>, dt: f64) -> Vec<ProcessData> {
        let mut out = Vec::new();
        for sample in s.samples {
            let pid = sample.pid;
            let Some(heap) = s.model.heap().process(pid) else {
                // Nothing allocated yet: the rates start from zero.
                self.totals.count(pid, Amount::default());
                continue;
            };
            let mut cells: HashMap<(Tid, StackId), Cell> = HashMap::new();
            for a in heap.live() {
                let c = cells.entry((a.tid, a.stack)).or_insert_with(|| Cell {
                    tid: a.tid,
                    stack: a.stack,
                    ..Cell::default()
                });
                c.live.bytes += a.size;
                c.live.count += u64::from(a.count);
            }
            for (&(p, tid, stack), amount) in self.allocated.iter().filter(|((p, ..), _)| *p == pid)
            {
                let grew = self.refreshed.count((p, tid, stack), *amount);
                let c = cells.entry((tid, stack)).or_insert_with(|| Cell {
                    tid,
                    stack,
                    ..Cell::default()
                });
                c.allocations = amount.count;
                c.last_bytes = grew.bytes;
            }
            let t = heap.totals();
            let total = Amount {
                bytes: t.bytes_allocated,
                count: t.allocs + t.frees,
            };
            // First seen with a heap: its rates start at this refresh.
            if !self.totals.knows(&pid) {
                self.totals.count(pid, total);
            }
            let grew = self.totals.count(pid, total);
            let command = s
                .processes
                .iter()
                .find(|p| p.pid == pid)
                .map_or_else(String::new, |p| p.command.clone());
            out.push(ProcessData {
                pid,
                command,
                live_bytes: sample.live_bytes,
                rss_bytes: sample.rss_bytes,
                alloc_rate: grew.bytes as f64 / dt,
                events_rate: grew.count as f64 / dt,
                cells: cells.into_values().collect(),
            });
        }
        out
    }

    /// Walks the heap the objects view shows, every `WALK_EVERY`.
    fn walk(&mut self, model: &Model) {
        while let Ok(c) = self.walks.done.try_recv() {
            let _ = self.view.send(Message::Census(c));
        }
        let pid = self.shared.walk_pid.load(Ordering::Relaxed);
        let due = self.last_walk.is_none_or(|t| t.elapsed() >= WALK_EVERY);
        if pid != 0 && due {
            self.walks.walk(model, pid, Moment::Periodic, None);
            self.last_walk = Some(Instant::now());
        }
    }
}

fn loc(f: &Frame) -> Loc {
    Loc {
        function: f.function.clone(),
        file: f.file.clone(),
        line: f.line,
        module: f.module_name().to_owned(),
    }
}

impl Sink for TopSink {
    fn events(&mut self, events: &[HeapEvent]) -> Result<()> {
        for e in events {
            let (stack, bytes, count) = match e.kind {
                EventKind::Alloc(b) | EventKind::Realloc { block: b, .. } => {
                    (b.stack, b.size, u64::from(b.count))
                }
                EventKind::Map { stack, len, .. } | EventKind::Remap { stack, len, .. } => {
                    (stack, len, 1)
                }
                _ => continue,
            };
            let a = self.allocated.entry((e.pid, e.tid, stack)).or_default();
            a.bytes += bytes;
            a.count += count;
        }
        Ok(())
    }

    fn snapshot(&mut self, s: &Snapshot<'_>) -> Result<()> {
        let now = Instant::now();
        let dt = self
            .last_refresh
            .map_or(1.0, |t| now.duration_since(t).as_secs_f64().max(1e-3));
        self.last_refresh = Some(now);
        let stacks = self.new_stacks(s.model);
        let processes = self.processes(s, dt);
        self.walk(s.model);
        let update = Update {
            processes,
            stacks,
            lost_events: s.counters.get(tracer_common::counter::LOST_EVENTS),
            sampling: self.sampling,
            interval_s: dt,
        };
        // The view is gone only when it quit: the recording ends next.
        let _ = self.view.send(Message::Update(update));
        Ok(())
    }

    fn stop_requested(&self) -> Option<&'static str> {
        self.shared.quit.load(Ordering::Relaxed).then_some("quit")
    }

    fn finish(self: Box<Self>, _end: &Ending) -> Result<()> {
        let _ = self.view.send(Message::End);
        Ok(())
    }
}
