//! The capture writer as a sink, for `record` and the daemon alike:
//! events, processes (each life of a reused pid told apart, and how each
//! ended), memory samples, counters and heap walks go to the capture's own
//! thread, which writes the stacks' definitions as the recording's
//! symbolizer makes them; every snapshot makes the capture readable up to
//! then. Its size bound (`--max-capture-mb`) is a policy: `record`'s one
//! file stops the recording there (`Limit::Stop`); the daemon's
//! `DIR/capture-NNNNNN.tracer` segments, each a whole capture, rotate at
//! an eighth of it and the oldest are deleted to stay under it
//! (`Limit::Rotate`). `tracer report DIR` reads what is left as one.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow};
use log::warn;

use super::{Ending, Sink, Snapshot};
use crate::{
    capture::{ProcessRecord, Record, Writer, background::Background, segment_number},
    census::Census,
    clock::monotonic_ns,
    event::{EventKind, HeapEvent, Pid, with_instance},
    outputs::OutputDir,
    process::ProcessInfo,
    stdio,
    symbolize::feed::StackDefs,
};

/// The capture's name in `record --output`.
pub const CAPTURE_FILE: &str = "capture.tracer";

/// Segments per capture cap: the most that one rotation deletes at once.
const SEGMENTS: u64 = 8;
/// A segment is at least this large (a small cap still rotates sensibly).
const MIN_SEGMENT: u64 = 256 << 10;
/// Events held before they are written between snapshots: about 100 KiB
/// compressed, well under `MIN_SEGMENT`.
const FLUSH_EVENTS: usize = 20_000;

/// A capture being written, as its readers reach it: through the
/// descriptor it is written with, never by name.
#[derive(Clone)]
pub struct CaptureFile {
    pub file: Arc<File>,
    /// How errors name it.
    pub shown: String,
}

/// Where a capture is written, and what its size bound does.
enum Place {
    /// One file (`record`): at the bound, the recording stops.
    File,
    /// Segments in a directory (the daemon): at an eighth of the bound the
    /// next one begins, and the oldest go.
    Segments {
        out: OutputDir,
        dir: PathBuf,
        segment_bytes: u64,
        seq: u64,
    },
}

pub struct CaptureSink {
    place: Place,
    max_bytes: u64,
    /// The file being written, to measure it.
    current: CaptureFile,
    writer: Background,
    /// Records since they were last handed to the writer.
    records: Vec<Record>,
    /// Stacks the model knew at the last snapshot: the writer defines them
    /// before it flushes.
    stacks_known: usize,
    /// Processes declared in the current file, by capture pid.
    declared: HashSet<Pid>,
    /// Processes that ended, by kernel pid: the next one with that pid is
    /// written as the next instance (`event::with_instance`).
    ended: HashMap<Pid, u32>,
    /// How the probes were attached, said at each file's start.
    probes: String,
    /// `Place::File` reached its bound.
    full: bool,
}

impl CaptureSink {
    /// `record`'s capture: `dir/capture.tracer`, or without `dir` an
    /// unnamed temporary file (every run's reports are made from a
    /// capture). `start_ns` is when recording began; `defs`, the stacks'
    /// definitions.
    pub fn file(
        dir: Option<&OutputDir>,
        max_bytes: u64,
        start_ns: u64,
        probes: &str,
        defs: StackDefs,
    ) -> Result<Self> {
        let (file, shown) = match dir {
            Some(dir) => (
                dir.create_file(CAPTURE_FILE)?,
                dir.path().join(CAPTURE_FILE).display().to_string(),
            ),
            None => (
                unnamed_file().context("cannot create a temporary capture")?,
                "the temporary capture".to_owned(),
            ),
        };
        Self::start(Place::File, file, shown, max_bytes, start_ns, probes, defs)
    }

    /// The daemon's rotating capture in `dir`, numbered after any segments
    /// already there (an earlier run's, kept).
    pub fn segments(
        dir: &Path,
        max_bytes: u64,
        start_ns: u64,
        probes: &str,
        defs: StackDefs,
    ) -> Result<Self> {
        let out = OutputDir::create(dir)?;
        let seq = segments(dir).last().map_or(1, |s| s.seq + 1);
        let (file, shown) = open_segment(&out, seq)?;
        let place = Place::Segments {
            out,
            dir: dir.to_path_buf(),
            segment_bytes: (max_bytes / SEGMENTS).max(MIN_SEGMENT),
            seq,
        };
        Self::start(place, file, shown, max_bytes, start_ns, probes, defs)
    }

    fn start(
        place: Place,
        file: File,
        shown: String,
        max_bytes: u64,
        start_ns: u64,
        probes: &str,
        defs: StackDefs,
    ) -> Result<Self> {
        let file = Arc::new(file);
        let segmented = matches!(place, Place::Segments { .. });
        let writer = file
            .try_clone()
            .and_then(Writer::new)
            .and_then(|w| Background::start(w, defs, segmented))
            .with_context(|| format!("cannot write {shown}"))?;
        Ok(Self {
            place,
            max_bytes,
            current: CaptureFile { file, shown },
            writer,
            records: vec![Record::Start {
                start_ns,
                probes: probes.to_owned(),
            }],
            stacks_known: 0,
            declared: HashSet::new(),
            ended: HashMap::new(),
            probes: probes.to_owned(),
            full: false,
        })
    }

    /// The capture file (the current segment's, when rotating).
    pub fn capture(&self) -> CaptureFile {
        self.current.clone()
    }

    fn write_err(&self, err: io::Error) -> anyhow::Error {
        anyhow!("writing {}: {err}", self.current.shown)
    }

    /// The capture's name of the process that has kernel pid `pid` now.
    fn key(&self, pid: Pid) -> Pid {
        with_instance(pid, self.ended.get(&pid).copied().unwrap_or(0))
    }

    fn process_record(&self, info: &ProcessInfo) -> Record {
        let key = |pid| self.key(pid);
        Record::Process(ProcessRecord {
            pid: key(info.pid),
            command: clip_command(&info.command),
            python: info.python.clone(),
            notes: info.notes.clone(),
            explicit: info.explicit,
            parent: info.parent.map(key),
        })
    }

    /// Hands the records so far to the writer.
    fn write_records(&mut self) -> Result<()> {
        let records = std::mem::take(&mut self.records);
        self.writer.records(records).map_err(|e| self.write_err(e))
    }

    /// At the bound: `Place::File` asks the recording to stop (and says
    /// so); segments rotate.
    fn bound(&mut self) -> Result<()> {
        let size = self.current.file.metadata().map_or(0, |m| m.len());
        match &self.place {
            Place::File if size >= self.max_bytes && !self.full => {
                self.full = true;
                stdio::line(&format!(
                    "tracer: {} reached {} MiB (--max-capture-mb): recording stopped; the reports cover what was recorded",
                    self.current.shown,
                    self.max_bytes >> 20
                ));
                Ok(())
            }
            Place::Segments { segment_bytes, .. } if size >= *segment_bytes => self.rotate(),
            _ => Ok(()),
        }
    }

    /// Begins the next segment, then deletes the oldest while the capture
    /// is over its bound.
    fn rotate(&mut self) -> Result<()> {
        let Place::Segments { out, dir, seq, .. } = &mut self.place else {
            return Ok(());
        };
        let (file, shown) = open_segment(out, *seq + 1)?;
        let file = Arc::new(file);
        let next = file
            .try_clone()
            .and_then(Writer::new)
            .with_context(|| format!("cannot write {shown}"))?;
        let now = monotonic_ns();
        *seq += 1;
        let (dir, seq) = (dir.clone(), *seq);
        self.writer
            .rotate(next, now)
            .map_err(|e| self.write_err(e))?;
        self.current = CaptureFile { file, shown };
        self.declared.clear();
        self.records.push(Record::Start {
            start_ns: now,
            probes: self.probes.clone(),
        });
        let mut all = segments(&dir);
        let mut total: u64 = all.iter().map(|s| s.len).sum();
        // The segment just completed stays even when it alone is over the
        // bound (a burst between two windows): deleting it would leave an
        // empty capture, not the newest one.
        all.retain(|s| s.seq + 1 < seq);
        for s in all {
            if total <= self.max_bytes {
                break;
            }
            match fs::remove_file(&s.path) {
                Ok(()) => total = total.saturating_sub(s.len),
                Err(err) => warn!("cannot delete {}: {err}", s.path.display()),
            }
        }
        Ok(())
    }
}

/// A segment of a rotating capture.
struct Segment {
    seq: u64,
    path: PathBuf,
    len: u64,
}

fn open_segment(out: &OutputDir, seq: u64) -> Result<(File, String)> {
    let name = format!("capture-{seq:06}.tracer");
    Ok((
        out.create_file(&name)?,
        out.path().join(name).display().to_string(),
    ))
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> Vec<Segment> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<Segment> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let seq = segment_number(name.to_str()?)?;
            let md = e.metadata().ok()?;
            md.is_file().then(|| Segment {
                seq,
                path: e.path(),
                len: md.len(),
            })
        })
        .collect();
    found.sort_by_key(|s| s.seq);
    found
}

/// A command line as a capture keeps it: `ARG_MAX` allows 2 MB, a reader
/// takes 64 KiB (`capture::limits`), and a report shows one line.
fn clip_command(command: &str) -> String {
    const MAX: usize = 16 << 10;
    let mut end = command.len().min(MAX);
    while !command.is_char_boundary(end) {
        end -= 1;
    }
    command[..end].to_owned()
}

/// A file in the temporary directory with no name, gone with its last
/// descriptor.
fn unnamed_file() -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(std::env::temp_dir())
}

impl Sink for CaptureSink {
    fn events(&mut self, events: &[HeapEvent]) -> Result<()> {
        for e in events {
            let mut e = *e;
            e.pid = self.key(e.pid);
            if let EventKind::Fork { parent } = &mut e.kind {
                *parent = self.key(*parent);
            }
            self.records.push(Record::Event(e));
        }
        // A busy interval writes more than a segment: its events go out in
        // parts, each followed by a rotation if the segment is full, so that
        // the bound holds within an interval too.
        if self.records.len() >= FLUSH_EVENTS {
            self.write_records()?;
            if matches!(self.place, Place::Segments { .. }) {
                self.bound()?;
            }
        }
        Ok(())
    }

    fn exited(&mut self, info: &ProcessInfo) -> Result<()> {
        let key = self.key(info.pid);
        let record = self.process_record(info);
        self.declared.insert(key);
        self.records.push(record);
        if let Some(status) = &info.exit_status {
            self.records.push(Record::ExitStatus {
                pid: key,
                status: status.clone(),
            });
        }
        *self.ended.entry(info.pid).or_default() += 1;
        Ok(())
    }

    fn snapshot(&mut self, s: &Snapshot<'_>) -> Result<()> {
        for sample in s.samples {
            self.records
                .push(Record::Sample(crate::process::MemorySample {
                    pid: self.key(sample.pid),
                    ..*sample
                }));
        }
        for info in s.processes {
            if self.declared.insert(self.key(info.pid)) {
                let record = self.process_record(info);
                self.records.push(record);
            }
        }
        // A capture cut short still says what was lost until then.
        self.records.push(Record::Counters(s.counters));
        self.stacks_known = s.model.stacks().count();
        self.write_records()?;
        self.writer
            .flush(self.stacks_known)
            .map_err(|e| self.write_err(e))?;
        self.bound()
    }

    fn census(&mut self, census: &Census) -> Result<()> {
        self.records.push(Record::Census(census.clone()));
        Ok(())
    }

    fn stop_requested(&self) -> Option<&'static str> {
        self.full.then_some("the capture reached --max-capture-mb")
    }

    fn finish(mut self: Box<Self>, end: &Ending) -> Result<()> {
        // Walks that ended after the last snapshot, then every process as
        // it ended.
        for info in &end.processes {
            let record = self.process_record(info);
            self.records.push(record);
            if let Some(status) = &info.exit_status {
                self.records.push(Record::ExitStatus {
                    pid: self.key(info.pid),
                    status: status.clone(),
                });
            }
        }
        self.write_records()?;
        self.writer
            .flush(self.stacks_known)
            .map_err(|e| self.write_err(e))?;
        self.records.push(Record::End { end_ns: end.end_ns });
        self.write_records()?;
        let shown = self.current.shown.clone();
        self.writer
            .finish()
            .map_err(|e| anyhow!("writing {shown}: {e}"))?;
        Ok(())
    }
}
