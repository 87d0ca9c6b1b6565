//! The capture writer as a sink: events, processes, memory samples,
//! counters and newly seen stacks go to the capture's own thread (which
//! symbolizes and compresses) at every snapshot, which also makes the file
//! readable up to then. Without `-o` the capture is an unnamed temporary
//! file: every run's reports are made from a capture, the same way.

use std::{
    collections::HashSet,
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow};

use super::{Ending, Sink, Snapshot};
use crate::{
    capture::{
        ProcessRecord, Record, Writer,
        background::{Background, NewStack},
    },
    event::{HeapEvent, Pid, StackId},
    model::Model,
    process::ProcessInfo,
    symbolize::Unsymbolized,
};

/// The capture's name in `--output`.
pub const CAPTURE_FILE: &str = "capture.tracer";

/// A capture being written, as its readers reach it: through the
/// descriptor it is written with, never by name.
#[derive(Clone)]
pub struct CaptureFile {
    pub file: Arc<File>,
    /// How errors name it.
    pub shown: String,
}

pub struct CaptureSink {
    capture: CaptureFile,
    writer: Background,
    /// Events since the last snapshot.
    events: Vec<Record>,
    /// Stacks 0 to `stacks_written - 1` are in the file.
    stacks_written: usize,
    processes_written: HashSet<Pid>,
}

impl CaptureSink {
    /// A capture in `dir/capture.tracer`, or without `dir` in an unnamed
    /// temporary file. `start_ns` is when recording began.
    pub fn create(dir: Option<&Path>, start_ns: u64) -> Result<(Self, CaptureFile)> {
        let (file, shown) = match dir {
            Some(dir) => {
                fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let path = dir.join(CAPTURE_FILE);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                (file, path.display().to_string())
            }
            None => (
                unnamed_file().context("cannot create a temporary capture")?,
                "the temporary capture".to_owned(),
            ),
        };
        let file = Arc::new(file);
        let writer = file
            .try_clone()
            .and_then(Writer::new)
            .and_then(Background::start)
            .with_context(|| format!("cannot write {shown}"))?;
        let capture = CaptureFile { file, shown };
        let sink = Self {
            capture: capture.clone(),
            writer,
            events: vec![Record::Start { start_ns }],
            stacks_written: 0,
            processes_written: HashSet::new(),
        };
        Ok((sink, capture))
    }

    fn write_err(&self, err: io::Error) -> anyhow::Error {
        anyhow!("writing {}: {err}", self.capture.shown)
    }
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

pub(super) fn process_record(info: &ProcessInfo) -> Record {
    Record::Process(ProcessRecord {
        pid: info.pid,
        command: info.command.clone(),
        python: info.python.clone(),
        notes: info.notes.clone(),
        explicit: info.explicit,
        parent: info.parent,
    })
}

/// Stack `id` of the model, with what symbolizing it needs.
pub(super) fn unsymbolized(model: &Model, id: StackId) -> Unsymbolized {
    let stacks = model.stacks();
    let stack = stacks.get(id);
    let python = stack.python.iter().map(|l| stacks.python_location(*l));
    Unsymbolized::new(stack, model.modules(), python)
}

impl Sink for CaptureSink {
    fn events(&mut self, events: &[HeapEvent]) -> Result<()> {
        self.events
            .extend(events.iter().copied().map(Record::Event));
        Ok(())
    }

    fn snapshot(&mut self, s: &Snapshot<'_>) -> Result<()> {
        let mut records = std::mem::take(&mut self.events);
        records.extend(s.samples.iter().copied().map(Record::Sample));
        for info in s.processes {
            if self.processes_written.insert(info.pid) {
                records.push(process_record(info));
            }
        }
        // A capture cut short still says what was lost until then.
        records.push(Record::Counters(s.counters));
        let known = s.model.stacks().count();
        let new: Vec<NewStack> = (self.stacks_written..known)
            .map(|i| {
                let id = StackId(i as u32);
                NewStack {
                    id,
                    stack: unsymbolized(s.model, id),
                }
            })
            .collect();
        self.stacks_written = known;
        self.writer
            .records(records)
            .map_err(|e| self.write_err(e))?;
        if !new.is_empty() {
            self.writer
                .stacks(s.model.debug_dirs(), new)
                .map_err(|e| self.write_err(e))?;
        }
        self.writer.flush().map_err(|e| self.write_err(e))
    }

    fn finish(self: Box<Self>, end: &Ending) -> Result<()> {
        let mut records = Vec::new();
        for info in &end.processes {
            records.push(process_record(info));
            if let Some(status) = &info.exit_status {
                records.push(Record::ExitStatus {
                    pid: info.pid,
                    status: status.clone(),
                });
            }
        }
        records.push(Record::End { end_ns: end.end_ns });
        let shown = self.capture.shown.clone();
        let write_err = |e| anyhow!("writing {shown}: {e}");
        self.writer.records(records).map_err(write_err)?;
        self.writer.finish().map_err(write_err)?;
        Ok(())
    }
}
