//! The capture writer as a sink: events, processes, memory samples,
//! counters and newly seen stacks go to the capture's own thread (which
//! symbolizes and compresses) at every snapshot, which also makes the file
//! readable up to then. Without `-o` the capture is an unnamed temporary
//! file: every run's reports are made from a capture, the same way.

use std::{
    collections::{HashMap, HashSet},
    fs::{File, OpenOptions},
    io,
    os::unix::fs::OpenOptionsExt as _,
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow};

use super::{Ending, Sink, Snapshot};
use crate::{
    capture::{
        ProcessRecord, Record, Writer,
        background::{Background, NewStack},
    },
    census::Census,
    event::{HeapEvent, Pid, StackId, with_instance},
    model::Model,
    outputs::OutputDir,
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
    /// By capture pid (`event::with_instance`).
    processes_written: HashSet<Pid>,
    /// Processes that ended, by kernel pid: the next one with that pid is
    /// written as the next instance (`event::with_instance`).
    ended: HashMap<Pid, u32>,
}

impl CaptureSink {
    /// A capture in `dir/capture.tracer`, or without `dir` in an unnamed
    /// temporary file. `start_ns` is when recording began.
    pub fn create(
        dir: Option<&OutputDir>,
        start_ns: u64,
        probes: &str,
    ) -> Result<(Self, CaptureFile)> {
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
            events: vec![Record::Start {
                start_ns,
                probes: probes.to_owned(),
            }],
            stacks_written: 0,
            processes_written: HashSet::new(),
            ended: HashMap::new(),
        };
        Ok((sink, capture))
    }

    fn write_err(&self, err: io::Error) -> anyhow::Error {
        anyhow!("writing {}: {err}", self.capture.shown)
    }

    /// The capture's name of the process that has kernel pid `pid` now.
    fn key(&self, pid: Pid) -> Pid {
        with_instance(pid, self.ended.get(&pid).copied().unwrap_or(0))
    }

    fn process_record(&self, info: &ProcessInfo) -> Record {
        process_record(info, |pid| self.key(pid))
    }
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

/// A process's record, named in the capture by `key` of its pid (the
/// instance of a reused pid).
pub(super) fn process_record(info: &ProcessInfo, key: impl Fn(Pid) -> Pid) -> Record {
    Record::Process(ProcessRecord {
        pid: key(info.pid),
        command: clip_command(&info.command),
        python: info.python.clone(),
        notes: info.notes.clone(),
        explicit: info.explicit,
        parent: info.parent.map(key),
    })
}

/// The model's stacks from the `from`th on (those interned since a sink
/// last took them), with what symbolizing them needs.
pub fn new_stacks(model: &Model, from: usize) -> Vec<NewStack> {
    (from..model.stacks().count())
        .map(|i| {
            let id = StackId(i as u32);
            NewStack {
                id,
                stack: unsymbolized(model, id),
            }
        })
        .collect()
}

/// Stack `id` of the model, with what symbolizing it needs.
pub fn unsymbolized(model: &Model, id: StackId) -> Unsymbolized {
    let stacks = model.stacks();
    let stack = stacks.get(id);
    let python = stack.python.iter().map(|l| stacks.python_location(*l));
    Unsymbolized::new(stack, model.modules(), python)
}

impl Sink for CaptureSink {
    fn events(&mut self, events: &[HeapEvent]) -> Result<()> {
        for e in events {
            let mut e = *e;
            e.pid = self.key(e.pid);
            if let crate::event::EventKind::Fork { parent } = &mut e.kind {
                *parent = self.key(*parent);
            }
            self.events.push(Record::Event(e));
        }
        Ok(())
    }

    fn exited(&mut self, info: &ProcessInfo) -> Result<()> {
        let key = self.key(info.pid);
        let record = self.process_record(info);
        self.processes_written.insert(key);
        self.events.push(record);
        if let Some(status) = &info.exit_status {
            self.events.push(Record::ExitStatus {
                pid: key,
                status: status.clone(),
            });
        }
        *self.ended.entry(info.pid).or_default() += 1;
        Ok(())
    }

    fn snapshot(&mut self, s: &Snapshot<'_>) -> Result<()> {
        let mut records = std::mem::take(&mut self.events);
        records.extend(s.samples.iter().map(|sample| {
            Record::Sample(crate::process::MemorySample {
                pid: self.key(sample.pid),
                ..*sample
            })
        }));
        for info in s.processes {
            if self.processes_written.insert(self.key(info.pid)) {
                records.push(self.process_record(info));
            }
        }
        // A capture cut short still says what was lost until then.
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
        self.writer.flush().map_err(|e| self.write_err(e))
    }

    fn census(&mut self, census: &Census) -> Result<()> {
        self.events.push(Record::Census(census.clone()));
        Ok(())
    }

    fn finish(mut self: Box<Self>, end: &Ending) -> Result<()> {
        // Walks that ended after the last snapshot.
        let mut records = std::mem::take(&mut self.events);
        for info in &end.processes {
            records.push(self.process_record(info));
            if let Some(status) = &info.exit_status {
                records.push(Record::ExitStatus {
                    pid: self.key(info.pid),
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
