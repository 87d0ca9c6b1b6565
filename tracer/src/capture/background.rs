//! The capture written on a thread of its own: symbolizing new stacks
//! (blazesym reads a library's DWARF the first time, which can take a
//! second) and compressing never hold up the loop that drains the ring
//! buffer and samples memory.

use std::{
    fs::File,
    io,
    path::PathBuf,
    sync::mpsc::{self, Receiver, Sender},
    thread::JoinHandle,
};

use super::{Record, Writer};
use crate::{
    event::StackId,
    symbolize::{Symbolizer, Unsymbolized},
};

enum Job {
    Records(Vec<Record>),
    /// New stacks, and where debug files may be for the modules known now.
    Stacks {
        debug_dirs: Vec<PathBuf>,
        stacks: Vec<NewStack>,
    },
    Flush,
}

/// A stack interned since the last ones were sent.
pub struct NewStack {
    pub id: StackId,
    pub stack: Unsymbolized,
}

pub struct Background {
    jobs: Sender<Job>,
    thread: JoinHandle<io::Result<File>>,
}

impl Background {
    pub fn start(writer: Writer) -> io::Result<Self> {
        let (jobs, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || run(writer, rx))?;
        Ok(Self { jobs, thread })
    }

    pub fn records(&self, records: Vec<Record>) -> io::Result<()> {
        self.send(Job::Records(records))
    }

    pub fn stacks(&self, debug_dirs: Vec<PathBuf>, stacks: Vec<NewStack>) -> io::Result<()> {
        self.send(Job::Stacks { debug_dirs, stacks })
    }

    /// Makes everything sent so far readable from the file.
    pub fn flush(&self) -> io::Result<()> {
        self.send(Job::Flush)
    }

    /// Writes what is queued, ends the file and returns it, or the first
    /// error.
    pub fn finish(self) -> io::Result<File> {
        drop(self.jobs);
        self.thread
            .join()
            .map_err(|_| io::Error::other("the capture thread panicked"))?
    }

    fn send(&self, job: Job) -> io::Result<()> {
        // The thread stops at its first error; `finish` returns it.
        self.jobs
            .send(job)
            .map_err(|_| io::Error::other("the capture thread stopped"))
    }
}

fn run(mut writer: Writer, jobs: Receiver<Job>) -> io::Result<File> {
    let mut symbolizer: Option<Symbolizer> = None;
    for job in jobs {
        match job {
            Job::Records(records) => {
                for r in &records {
                    writer.write(r)?;
                }
            }
            Job::Stacks { debug_dirs, stacks } => {
                // Debug directories are known once the targets' libraries are.
                let symbolizer = symbolizer.get_or_insert_with(|| Symbolizer::new(&debug_dirs));
                symbolizer.set_debug_dirs(&debug_dirs);
                for NewStack { id, stack } in stacks {
                    let def = symbolizer.symbolize(&stack);
                    writer.write(&Record::Stack { id, def })?;
                }
            }
            Job::Flush => writer.flush()?,
        }
    }
    writer.finish()
}
