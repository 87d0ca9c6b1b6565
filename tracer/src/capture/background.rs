//! The capture written on a thread of its own: compressing never holds up
//! the loop that drains the ring buffer and samples memory, and the
//! stacks' definitions, which the recording's symbolizer makes on its own
//! thread (`sinks::symbols`), are written as they come: at the latest when
//! the capture is flushed, which waits for every stack known then.

use std::{
    collections::HashSet,
    fs::File,
    io,
    sync::mpsc::{self, Receiver, Sender},
    thread::JoinHandle,
};

use super::{Record, Writer};
use crate::{
    event::{EventKind, StackId},
    symbolize::feed::StackDefs,
};

enum Job {
    Records(Vec<Record>),
    /// Makes the file readable up to now, once stacks 0 to `stacks - 1`
    /// are defined in it.
    Flush {
        stacks: usize,
    },
    /// Ends the file with `End { end_ns }` and goes on in `next`.
    Rotate {
        next: Writer,
        end_ns: u64,
    },
}

pub struct Background {
    jobs: Sender<Job>,
    thread: JoinHandle<io::Result<File>>,
}

impl Background {
    /// Writes into `writer`; `segmented`: the capture will `rotate`, and
    /// each segment defines again the stacks its events use.
    pub fn start(writer: Writer, defs: StackDefs, segmented: bool) -> io::Result<Self> {
        let (jobs, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || run(writer, &rx, defs, segmented))?;
        Ok(Self { jobs, thread })
    }

    pub fn records(&self, records: Vec<Record>) -> io::Result<()> {
        self.send(Job::Records(records))
    }

    /// Makes everything sent so far, and stacks 0 to `stacks - 1`,
    /// readable from the file.
    pub fn flush(&self, stacks: usize) -> io::Result<()> {
        self.send(Job::Flush { stacks })
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

/// The stack definitions the current file holds.
struct Defined {
    defs: StackDefs,
    in_file: HashSet<StackId>,
}

impl Defined {
    /// Writes stack `id`'s definition if it has one and the file does not.
    fn write(&mut self, writer: &mut Writer, id: StackId) -> io::Result<()> {
        if self.in_file.contains(&id) {
            return Ok(());
        }
        if let Some(def) = self.defs.get(id) {
            writer.write(&Record::Stack {
                id,
                def: (**def).clone(),
            })?;
            self.in_file.insert(id);
        }
        Ok(())
    }

    /// Writes the definitions in `ids`.
    fn write_all(&mut self, writer: &mut Writer, ids: std::ops::Range<usize>) -> io::Result<()> {
        for i in ids {
            self.write(writer, StackId(i as u32))?;
        }
        Ok(())
    }
}

fn run(
    mut writer: Writer,
    jobs: &Receiver<Job>,
    defs: StackDefs,
    segmented: bool,
) -> io::Result<File> {
    let mut defined = Defined {
        defs,
        in_file: HashSet::new(),
    };
    for job in jobs {
        match job {
            Job::Records(records) => {
                let new = defined.defs.received();
                defined.write_all(&mut writer, new)?;
                for r in &records {
                    // A segment defines the stacks defined in earlier ones
                    // before its events use them.
                    if segmented
                        && let Record::Event(e) = r
                        && let Some(id) = stack_of(&e.kind)
                    {
                        defined.write(&mut writer, id)?;
                    }
                    writer.write(r)?;
                }
            }
            Job::Flush { stacks } => {
                let new = defined.defs.wait_for(stacks);
                defined.write_all(&mut writer, new)?;
                writer.flush()?;
            }
            Job::Rotate { next, end_ns } => {
                writer.write(&Record::End { end_ns })?;
                writer.finish()?;
                writer = next;
                defined.in_file.clear();
            }
        }
    }
    writer.finish()
}
