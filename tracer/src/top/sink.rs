//! `tracer top`'s sink: at each refresh, each running process's live and
//! allocated amounts per (thread, stack), for the view; the frames of new
//! stacks (Python ones at once, native ones symbolized on a thread of
//! their own); and, while the objects view is open, a walk of the shown
//! process's heap every few seconds.

use std::{
    collections::HashMap,
    path::PathBuf,
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
    sinks::{Ending, Sink, Snapshot},
    sources::walks::Walks,
    symbolize::{Symbolizer, Unsymbolized},
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
    symbolizer: mpsc::Sender<(StackId, Unsymbolized, Vec<PathBuf>)>,
    stacks_sent: usize,
    /// Allocations made per (process, thread, stack), and at the last refresh.
    allocated: HashMap<(Pid, Tid, StackId), Amount>,
    allocated_before: HashMap<(Pid, Tid, StackId), u64>,
    /// Per process: bytes allocated and events at the last refresh.
    totals_before: HashMap<Pid, (u64, u64)>,
    last_refresh: Option<Instant>,
    sampling: Option<u64>,
    walks: Walks,
    last_walk: Option<Instant>,
}

impl TopSink {
    pub fn new(view: mpsc::Sender<Message>, shared: Arc<Shared>, sampling: Option<u64>) -> Self {
        let (symbolizer, stacks) = mpsc::channel::<(StackId, Unsymbolized, Vec<PathBuf>)>();
        let to_view = view.clone();
        // Native frames need blazesym, which reads a library's DWARF the
        // first time (up to a second): off the recording's thread.
        let _ = thread::Builder::new()
            .name("tracer-top-symbols".into())
            .spawn(move || {
                let mut symbolizer: Option<Symbolizer> = None;
                for (id, stack, dirs) in stacks.iter() {
                    let s = symbolizer.get_or_insert_with(|| Symbolizer::new(&dirs));
                    let def = s.symbolize(&stack);
                    let native = def.native.iter().map(loc).collect();
                    if to_view.send(Message::Symbolized(id, native)).is_err() {
                        break;
                    }
                }
            });
        Self {
            view,
            shared,
            symbolizer,
            stacks_sent: 0,
            allocated: HashMap::new(),
            allocated_before: HashMap::new(),
            totals_before: HashMap::new(),
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
        let dirs = model.debug_dirs();
        let out = (self.stacks_sent..known)
            .map(|i| {
                let id = StackId(i as u32);
                let _ = self.symbolizer.send((
                    id,
                    crate::sinks::capture::unsymbolized(model, id),
                    dirs.clone(),
                ));
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
                self.totals_before.insert(pid, (0, 0));
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
                let before = self.allocated_before.insert((p, tid, stack), amount.bytes);
                let c = cells.entry((tid, stack)).or_insert_with(|| Cell {
                    tid,
                    stack,
                    ..Cell::default()
                });
                c.allocations = amount.count;
                c.last_bytes = amount.bytes - before.unwrap_or(0);
            }
            let t = heap.totals();
            let (bytes_before, events_before) = self
                .totals_before
                .insert(pid, (t.bytes_allocated, t.allocs + t.frees))
                .unwrap_or((t.bytes_allocated, t.allocs + t.frees));
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
                alloc_rate: (t.bytes_allocated - bytes_before) as f64 / dt,
                events_rate: (t.allocs + t.frees - events_before) as f64 / dt,
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

    fn stop_requested(&self) -> bool {
        self.shared.quit.load(Ordering::Relaxed)
    }

    fn finish(self: Box<Self>, _end: &Ending) -> Result<()> {
        let _ = self.view.send(Message::End);
        Ok(())
    }
}
