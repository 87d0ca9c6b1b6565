//! The daemon's local capture: `DIR/capture-NNNNNN.tracer` segments, each a
//! whole capture (its own start, the processes and stack definitions its
//! events use, an end), a new one begun when the current one reaches an
//! eighth of `--max-capture-mb`, the oldest deleted to stay under it; the
//! heap walks (`--types-every`) are written as `tracer record` writes them.
//! `tracer report DIR` reads the segments left, in order, as one capture.

use std::{
    collections::HashSet,
    fs::{self, File},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow};
use log::warn;

use super::{
    Ending, Sink, Snapshot,
    capture::{new_stacks, process_record},
};
use crate::{
    capture::{Record, Writer, background::Background, segment_number},
    census::Census,
    clock::monotonic_ns,
    event::{HeapEvent, Pid},
    outputs::OutputDir,
};

/// Segments per capture cap: the most that one rotation deletes at once.
const SEGMENTS: u64 = 8;
/// A segment is at least this large (a small cap still rotates sensibly).
const MIN_SEGMENT: u64 = 256 << 10;
/// Events held before they are written within a window: about 100 KiB
/// compressed, well under `MIN_SEGMENT`.
const FLUSH_EVENTS: usize = 20_000;

pub struct SegmentsSink {
    /// Checked as `record -o` checks its directory (outputs.rs): segments
    /// are created in it through its descriptor.
    out: OutputDir,
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    seq: u64,
    /// The segment being written, to measure it.
    current: Arc<File>,
    writer: Background,
    events: Vec<Record>,
    stacks_written: usize,
    /// Processes declared in the current segment.
    declared: HashSet<Pid>,
    /// How the probes were attached, said at each segment's start.
    probes: String,
}

fn open_segment(out: &OutputDir, seq: u64) -> Result<(File, PathBuf)> {
    let name = format!("capture-{seq:06}.tracer");
    Ok((out.create_file(&name)?, out.path().join(name)))
}

/// The segments in `dir`, oldest first, with their sizes.
fn segments(dir: &Path) -> Vec<(u64, PathBuf, u64)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf, u64)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let seq = segment_number(name.to_str()?)?;
            let md = e.metadata().ok()?;
            md.is_file().then(|| (seq, e.path(), md.len()))
        })
        .collect();
    found.sort();
    found
}

impl SegmentsSink {
    /// A rotating capture in `dir`, numbered after any segments already
    /// there (an earlier run's, kept).
    pub fn create(dir: &Path, max_bytes: u64, start_ns: u64, probes: &str) -> Result<Self> {
        let out = OutputDir::create(dir)?;
        let seq = segments(dir).last().map_or(1, |(seq, _, _)| seq + 1);
        let (file, path) = open_segment(&out, seq)?;
        let current = Arc::new(file);
        let writer = current
            .try_clone()
            .and_then(Writer::new)
            .and_then(Background::start_segmented)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self {
            out,
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: (max_bytes / SEGMENTS).max(MIN_SEGMENT),
            seq,
            current,
            writer,
            events: vec![Record::Start {
                start_ns,
                probes: probes.to_owned(),
            }],
            stacks_written: 0,
            declared: HashSet::new(),
            probes: probes.to_owned(),
        })
    }

    fn write_err(&self, err: std::io::Error) -> anyhow::Error {
        anyhow!("writing the capture in {}: {err}", self.dir.display())
    }

    /// Begins the next segment if the current one is full, then deletes
    /// the oldest while the capture is over its cap.
    fn rotate_if_full(&mut self) -> Result<()> {
        let size = self.current.metadata().map_or(0, |m| m.len());
        if size < self.segment_bytes {
            return Ok(());
        }
        let (file, path) = open_segment(&self.out, self.seq + 1)?;
        let file = Arc::new(file);
        let next = file
            .try_clone()
            .and_then(Writer::new)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let now = monotonic_ns();
        self.writer
            .rotate(next, now)
            .map_err(|e| self.write_err(e))?;
        self.seq += 1;
        self.current = file;
        self.declared.clear();
        self.events.push(Record::Start {
            start_ns: now,
            probes: self.probes.clone(),
        });
        let mut all = segments(&self.dir);
        let mut total: u64 = all.iter().map(|(_, _, len)| len).sum();
        // The segment just completed stays even when it alone is over the
        // cap (a burst between two windows): deleting it would leave an
        // empty capture, not the newest one.
        all.retain(|(seq, _, _)| *seq + 1 < self.seq);
        for (_, path, len) in all {
            if total <= self.max_bytes {
                break;
            }
            match fs::remove_file(&path) {
                Ok(()) => total = total.saturating_sub(len),
                Err(err) => warn!("cannot delete {}: {err}", path.display()),
            }
        }
        Ok(())
    }
}

impl Sink for SegmentsSink {
    fn events(&mut self, events: &[HeapEvent]) -> Result<()> {
        self.events
            .extend(events.iter().copied().map(Record::Event));
        // A busy window writes more than a segment: its events go out in
        // parts, each followed by a rotation if the segment is full, so that
        // the cap holds within a window too.
        if self.events.len() >= FLUSH_EVENTS {
            let records = std::mem::take(&mut self.events);
            self.writer
                .records(records)
                .map_err(|e| self.write_err(e))?;
            self.rotate_if_full()?;
        }
        Ok(())
    }

    fn snapshot(&mut self, s: &Snapshot<'_>) -> Result<()> {
        let mut records = std::mem::take(&mut self.events);
        records.extend(s.samples.iter().copied().map(Record::Sample));
        for info in s.processes {
            if self.declared.insert(info.pid) {
                records.push(process_record(info, |pid| pid));
            }
        }
        records.push(Record::Counters(s.counters));
        let new = new_stacks(s.model, self.stacks_written);
        self.stacks_written = s.model.stacks().count();
        self.writer
            .records(records)
            .map_err(|e| self.write_err(e))?;
        if !new.is_empty() {
            self.writer
                .stacks(s.model.debug_dirs(), new)
                .map_err(|e| self.write_err(e))?;
        }
        self.writer.flush().map_err(|e| self.write_err(e))?;
        self.rotate_if_full()
    }

    fn census(&mut self, census: &Census) -> Result<()> {
        self.events.push(Record::Census(census.clone()));
        Ok(())
    }

    fn finish(self: Box<Self>, end: &Ending) -> Result<()> {
        let mut records = Vec::new();
        for info in &end.processes {
            records.push(process_record(info, |pid| pid));
            if let Some(status) = &info.exit_status {
                records.push(Record::ExitStatus {
                    pid: info.pid,
                    status: status.clone(),
                });
            }
        }
        records.push(Record::End { end_ns: end.end_ns });
        let dir = self.dir.clone();
        let write_err = |e| anyhow!("writing the capture in {}: {e}", dir.display());
        self.writer.records(records).map_err(write_err)?;
        self.writer.finish().map_err(write_err)?;
        Ok(())
    }
}
