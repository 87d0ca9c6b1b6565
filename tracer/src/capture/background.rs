//! The capture written on a thread of its own: symbolizing new stacks
//! (blazesym reads a library's DWARF the first time, which can take a
//! second) and compressing never hold up the loop that drains the ring
//! buffer and samples memory.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    path::PathBuf,
    sync::mpsc::{self, Receiver, Sender},
    thread::JoinHandle,
};

use super::{Record, Writer};
use crate::{
    event::{EventKind, StackId},
    frame::StackDef,
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
    /// Ends the file with `End { end_ns }` and goes on in `next`.
    Rotate {
        next: Writer,
        end_ns: u64,
    },
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
        Self::spawn(writer, false)
    }

    /// The first segment of a capture that will `rotate`: the stacks'
    /// definitions are kept to write them again in later segments.
    pub fn start_segmented(writer: Writer) -> io::Result<Self> {
        Self::spawn(writer, true)
    }

    fn spawn(writer: Writer, segmented: bool) -> io::Result<Self> {
        let (jobs, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || run(writer, rx, segmented))?;
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

    /// Ends the current file (a segment of a rotating capture) and goes on
    /// in `next`, which gets the definitions of the stacks its events use
    /// again: every segment reads on its own.
    pub fn rotate(&self, next: Writer, end_ns: u64) -> io::Result<()> {
        self.send(Job::Rotate { next, end_ns })
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

/// The stack an event's allocation or mapping was made from.
fn stack_of(kind: &EventKind) -> Option<StackId> {
    match kind {
        EventKind::Alloc(b) | EventKind::Realloc { block: b, .. } => Some(b.stack),
        EventKind::Map { stack, .. } | EventKind::Remap { stack, .. } => Some(*stack),
        _ => None,
    }
}

fn run(mut writer: Writer, jobs: Receiver<Job>, segmented: bool) -> io::Result<File> {
    let mut symbolizer: Option<Symbolizer> = None;
    // Kept when the capture rotates: each new segment defines again the
    // stacks its events use.
    let mut defs: Option<HashMap<StackId, StackDef>> = segmented.then(HashMap::new);
    let mut in_segment: HashSet<StackId> = HashSet::new();
    for job in jobs {
        match job {
            Job::Records(records) => {
                for r in &records {
                    if let (Some(defs), Record::Event(e)) = (&defs, r)
                        && let Some(id) = stack_of(&e.kind)
                        && !in_segment.contains(&id)
                        && let Some(def) = defs.get(&id)
                    {
                        writer.write(&Record::Stack {
                            id,
                            def: def.clone(),
                        })?;
                        in_segment.insert(id);
                    }
                    writer.write(r)?;
                }
            }
            Job::Stacks { debug_dirs, stacks } => {
                // Debug directories are known once the targets' libraries are.
                let symbolizer = symbolizer.get_or_insert_with(|| Symbolizer::new(&debug_dirs));
                symbolizer.set_debug_dirs(&debug_dirs);
                for NewStack { id, stack } in stacks {
                    let def = symbolizer.symbolize(&stack);
                    writer.write(&Record::Stack {
                        id,
                        def: def.clone(),
                    })?;
                    if let Some(defs) = &mut defs {
                        defs.insert(id, def);
                        in_segment.insert(id);
                    }
                }
            }
            Job::Flush => writer.flush()?,
            Job::Rotate { next, end_ns } => {
                writer.write(&Record::End { end_ns })?;
                writer.finish()?;
                writer = next;
                in_segment.clear();
            }
        }
    }
    writer.finish()
}
