//! The export thread: once the recording's symbolizer has defined the
//! stacks a batch uses (`symbolize::feed`), encodes each window as a pprof
//! profile and each heap walk as a types profile, hands them to every push
//! destination's queue, and keeps each stack's live bytes window by
//! window, and each process's last two walks, to log the growth ranking
//! every N windows. The event loop hands it batches through a bounded
//! channel and never waits: a batch that does not fit is dropped and
//! counted.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::Ordering::Relaxed,
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread::JoinHandle,
};

use log::warn;

use super::{
    push::{EncodedWindow, ProfileName, Pusher},
    stats::Stats,
    types_pprof,
    window_pprof::{self, ProcessWindow},
};
use crate::{
    census::{self, TypeCount},
    event::{Pid, StackId},
    frame::{FrameKind, SymbolizedStack, View},
    labels::Labels,
    report::{
        GrowthStatus,
        analysis::growth::{self, Tracker},
        render::numbers::human_bytes,
    },
    symbolize::feed::StackDefs,
};

/// Batches waiting for the export thread: a few intervals' worth.
const QUEUE_BATCHES: usize = 8;
/// Entries per process in the growth log.
const GROWTH_LOG_TOP: usize = 5;

/// One walk of one process's heap, labelled as its windows are.
#[derive(Clone, Debug, PartialEq)]
pub struct TypesWindow {
    pub pid: Pid,
    pub labels: Labels,
    /// When the walk began.
    pub at_unix_ns: u64,
    /// Most bytes first.
    pub types: Vec<TypeCount>,
}

/// Every process's window of one interval, and the heap walks that ended
/// in it.
pub struct Batch {
    pub windows: Vec<ProcessWindow>,
    pub types: Vec<TypesWindow>,
    /// Processes that exited: their last window and walks are in it.
    pub ended: Vec<Pid>,
    /// Stacks known when it was made: the windows use no other.
    pub stacks_known: usize,
    /// When it ends (CLOCK_MONOTONIC ns).
    pub ends_ns: u64,
}

/// How the export thread encodes and ranks.
#[derive(Clone, Copy, Debug)]
pub struct ExportSettings {
    /// pprof's `period`: the mean bytes between samples (1: every allocation).
    pub period: u64,
    pub window_s: f64,
    /// Log the growth ranking every this many windows (0: never).
    pub growth_every: u64,
    pub growth_windows: usize,
}

pub struct Exporter {
    batches: Option<SyncSender<Batch>>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// `defs`: the recording's stack definitions.
    pub fn start(
        settings: ExportSettings,
        pushers: Vec<Pusher>,
        stats: Arc<Stats>,
        defs: StackDefs,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_BATCHES);
        let thread = std::thread::Builder::new()
            .name("export".into())
            .spawn(move || run(rx, settings, pushers, &stats, defs))?;
        Ok(Self {
            batches: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands `batch` over without waiting; false if it had to be dropped.
    pub fn send(&self, batch: Batch) -> bool {
        match &self.batches {
            Some(tx) => match tx.try_send(batch) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    warn!("the export thread is behind: a window was dropped");
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            },
            None => false,
        }
    }

    /// Encodes what is queued, then lets every push destination flush
    /// (within its deadline) and spool what it could not send.
    pub fn finish(&mut self) {
        self.batches = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("the export thread panicked");
        }
    }
}

fn run(
    rx: Receiver<Batch>,
    settings: ExportSettings,
    pushers: Vec<Pusher>,
    stats: &Stats,
    mut defs: StackDefs,
) {
    let mut stacks: HashMap<StackId, SymbolizedStack> = HashMap::new();
    let mut tracker = Tracker::new(
        &growth::GrowthOptions {
            windows: settings.growth_windows,
            window_ns: None,
        },
        Vec::new(),
    );
    let mut names: HashMap<Pid, String> = HashMap::new();
    let mut walks: HashMap<Pid, Walks> = HashMap::new();
    for batch in rx {
        for i in defs.wait_for(batch.stacks_known) {
            let id = StackId(i as u32);
            if let Some(def) = defs.get(id) {
                stacks.insert(id, View::Mixed.show(def));
            }
        }
        let mut live = HashMap::new();
        for w in &batch.windows {
            names.insert(
                w.pid,
                w.labels.get("service_name").cloned().unwrap_or_default(),
            );
            for row in &w.rows {
                if row.live.bytes > 0 {
                    live.insert((w.pid, row.stack), row.live.bytes);
                }
            }
            match window_pprof::encode(w, &stacks, settings.period) {
                Ok(body) => {
                    let encoded = Arc::new(EncodedWindow {
                        profile: ProfileName::Memory,
                        labels: w.labels.clone(),
                        start_unix_ns: w.start_unix_ns,
                        end_unix_ns: w.end_unix_ns,
                        body,
                    });
                    for p in &pushers {
                        p.send(encoded.clone());
                    }
                }
                Err(err) => {
                    warn!("pid {}: cannot encode a window: {err}", w.pid);
                    stats.windows_dropped.fetch_add(1, Relaxed);
                }
            }
        }
        for t in batch.types {
            match types_pprof::encode(&t.types, t.at_unix_ns) {
                Ok(body) => {
                    let encoded = Arc::new(EncodedWindow {
                        profile: ProfileName::Types,
                        labels: t.labels,
                        start_unix_ns: t.at_unix_ns,
                        end_unix_ns: t.at_unix_ns,
                        body,
                    });
                    for p in &pushers {
                        p.send(encoded.clone());
                    }
                }
                Err(err) => warn!("pid {}: cannot encode its types: {err}", t.pid),
            }
            walks.entry(t.pid).or_default().add(t.at_unix_ns, t.types);
        }
        tracker.window(live);
        names.retain(|pid, _| batch.windows.iter().any(|w| w.pid == *pid));
        // Not by the windows: a process that has not allocated since its
        // baseline walk has none yet.
        walks.retain(|pid, _| !batch.ended.contains(pid));
        if settings.growth_every > 0 && tracker.windows.is_multiple_of(settings.growth_every) {
            log_growth(&tracker, &stacks, &names, &walks, settings.window_s);
        }
    }
    for p in pushers {
        p.finish();
    }
}

/// A process's last two heap walks, for the growth per type between them.
#[derive(Default)]
struct Walks {
    earlier: Option<(u64, Vec<TypeCount>)>,
    later: Option<(u64, Vec<TypeCount>)>,
}

impl Walks {
    fn add(&mut self, at_unix_ns: u64, types: Vec<TypeCount>) {
        self.earlier = self.later.take();
        self.later = Some((at_unix_ns, types));
    }
}

/// The types that grew most between a process's last two walks
/// (pympler's tracker diff), if it was walked twice, as a log line.
fn types_growth(pid: Pid, walks: &Walks) -> Option<String> {
    let ((from, earlier), (to, later)) = walks.earlier.as_ref().zip(walks.later.as_ref())?;
    let grew: Vec<String> = census::growth(earlier, later)
        .into_iter()
        .filter(|g| g.bytes > 0)
        .take(GROWTH_LOG_TOP)
        .map(|g| {
            format!(
                "{} {:+} objects, +{} (now {})",
                g.name,
                g.count,
                human_bytes(g.bytes.unsigned_abs()),
                human_bytes(g.now_bytes)
            )
        })
        .collect();
    Some(format!(
        "tracer:   types of pid {pid} grown most over the {:.0} s between its last two walks: {}",
        to.saturating_sub(*from) as f64 / 1e9,
        if grew.is_empty() {
            "none".to_owned()
        } else {
            grew.join("; ")
        }
    ))
}

/// The innermost Python frame of a stack as `file:line (function)`, else
/// its innermost named frame.
fn place(stack: &SymbolizedStack) -> String {
    let python = stack.frames.iter().find(|f| f.kind == FrameKind::Python);
    match python.or(stack.frames.first()) {
        Some(f) => match (&f.file, f.line) {
            (Some(file), Some(line)) => {
                let file = file.rsplit('/').next().unwrap_or(file);
                format!("{file}:{line} ({})", f.function)
            }
            _ => f.function.clone(),
        },
        None => "(no frames)".to_owned(),
    }
}

/// Logs each traced process's growing and plateaued stacks.
fn log_growth(
    tracker: &Tracker,
    stacks: &HashMap<StackId, SymbolizedStack>,
    names: &HashMap<Pid, String>,
    walks: &HashMap<Pid, Walks>,
    window_s: f64,
) {
    let report = tracker.report(window_s, |id| {
        stacks.get(&id).cloned().unwrap_or(SymbolizedStack {
            frames: Vec::new(),
            truncated: true,
        })
    });
    let mut pids: Vec<Pid> = names.keys().copied().collect();
    pids.sort_unstable();
    for pid in pids {
        let mine: Vec<_> = report
            .entries
            .iter()
            .filter(|e| e.entry.pid == pid && e.status != GrowthStatus::Steady)
            .take(GROWTH_LOG_TOP)
            .collect();
        eprintln!(
            "tracer: growth of pid {pid} ({}) after {} windows, trend over the last {}: {}",
            names.get(&pid).map_or("", String::as_str),
            report.windows,
            report.tested.min(report.windows as usize),
            if mine.is_empty() {
                "no growing or plateaued stack"
            } else {
                "suspects first"
            }
        );
        for (i, e) in mine.iter().enumerate() {
            let rate = if e.status == GrowthStatus::Growing {
                format!(" at {}/hour", human_bytes(e.bytes_per_hour.max(0.0) as u64))
            } else {
                String::new()
            };
            eprintln!(
                "tracer:   #{} {}{rate}, {} live: {}",
                i + 1,
                e.status.name(),
                human_bytes(e.entry.bytes),
                place(&SymbolizedStack {
                    frames: e.entry.stack.clone(),
                    truncated: e.entry.truncated,
                }),
            );
        }
        if let Some(line) = walks.get(&pid).and_then(|w| types_growth(pid, w)) {
            eprintln!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, count: u64, bytes: u64) -> TypeCount {
        TypeCount::new(name, count, bytes)
    }

    #[test]
    fn the_types_line_names_the_most_grown_between_the_last_two_walks() {
        let mut walks = Walks::default();
        walks.add(1_000_000_000, vec![t("dict", 10, 640), t("Session", 1, 56)]);
        assert_eq!(types_growth(7, &walks), None, "one walk: no growth yet");
        walks.add(
            61_000_000_000,
            vec![t("dict", 20, 1280), t("Session", 1, 56)],
        );
        walks.add(
            121_000_000_000,
            vec![
                t("Session", 1001, 56_056),
                t("dict", 20, 1280),
                t("str", 5, 300),
            ],
        );
        let line = types_growth(7, &walks).expect("two walks");
        assert!(line.contains("pid 7") && line.contains("60 s"), "{line}");
        // The last two walks only: dict did not grow between them.
        assert!(line.contains("Session +1000 objects"), "{line}");
        assert!(!line.contains("dict"), "{line}");
        assert!(
            line.find("Session").expect("Session") < line.find("str").expect("str"),
            "{line}"
        );
    }
}
