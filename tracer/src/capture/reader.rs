//! Reading a capture: record by record, and into `Contents`, the
//! processes, stacks, samples and counters the reports need, with the
//! events left in the file to be read once per pass.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{self, Read},
    os::unix::fs::FileExt as _,
    sync::Arc,
};

use super::{
    CaptureError, MAGIC, ProcessRecord, Record, VERSION,
    limits::{self, MAX_RECORD},
};
use crate::{
    census::Census,
    counters::Counters,
    event::{HeapEvent, Pid, StackId},
    frame::StackDef,
    process::{MemorySample, ProcessInfo},
};

/// A capture's records, organised for reports.
#[derive(Default)]
pub struct Contents {
    pub start_ns: u64,
    /// How the recording's probes were attached.
    pub probes: String,
    /// The end of the recording; for a capture cut short, its last event.
    pub end_ns: u64,
    pub processes: BTreeMap<Pid, ProcessInfo>,
    pub events: Events,
    pub stacks: HashMap<StackId, StackDef>,
    pub samples: Vec<MemorySample>,
    pub counters: Counters,
    /// Walks of the processes' heaps, in the order they were made.
    pub censuses: Vec<Census>,
}

/// What reading a capture file gave.
pub struct FileRead {
    pub contents: Contents,
    /// Records read.
    pub records: u64,
    /// Why reading stopped early, if it did: what was read before is kept.
    pub error: Option<CaptureError>,
}

/// A capture's events: in memory, or read again from its file for each
/// pass over them. A long recording's events do not fit in memory (an hour
/// at 500,000 a second is 60 GB of them); what the reports keep while
/// reading them is the live set.
pub enum Events {
    Memory(Vec<HeapEvent>),
    /// Read through the descriptor the capture was opened (or written)
    /// with, never by its name again.
    File(Arc<File>),
    /// The segments of a rotating capture, in order.
    Segments(Vec<Arc<File>>),
}

impl Default for Events {
    fn default() -> Self {
        Events::Memory(Vec::new())
    }
}

impl Events {
    /// Hands each event to `f`, in order, until it returns false. A file
    /// is read up to where its first reading stopped (`Contents::read_file`
    /// reported why).
    pub fn each(&self, f: &mut dyn FnMut(&HeapEvent) -> bool) {
        match self {
            Events::Memory(events) => {
                for e in events {
                    if !f(e) {
                        break;
                    }
                }
            }
            Events::File(file) => {
                let _ = read_each(FromStart::from(file), &mut |record| match record {
                    Record::Event(e) => Ok(f(&e)),
                    _ => Ok(true),
                });
            }
            Events::Segments(files) => {
                let mut more = true;
                for file in files {
                    let _ = read_each(FromStart::from(file), &mut |record| match record {
                        Record::Event(e) => {
                            more = f(&e);
                            Ok(more)
                        }
                        _ => Ok(true),
                    });
                    if !more {
                        break;
                    }
                }
            }
        }
    }
}

/// Reads a file from its start through positional reads, so that several
/// passes (and the writer, which appends) never share an offset.
pub(super) struct FromStart<'a> {
    file: &'a File,
    at: u64,
}

impl<'a> From<&'a Arc<File>> for FromStart<'a> {
    fn from(file: &'a Arc<File>) -> Self {
        Self { file, at: 0 }
    }
}

impl Read for FromStart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl Contents {
    pub fn new(records: Vec<Record>) -> Self {
        let mut c = Contents::default();
        let mut last_ts = 0;
        for record in records {
            if let Record::Event(e) = &record
                && let Events::Memory(events) = &mut c.events
            {
                events.push(*e);
            }
            c.add(record, &mut last_ts);
        }
        c.finish(last_ts)
    }

    /// Reads a capture's processes, stacks, samples and counters, leaving
    /// its events in the file (see `Events`), with the number of records
    /// read and why reading stopped early, if it did. What it keeps is
    /// bounded (`limits::kept_budget`).
    pub fn read_file(file: Arc<File>) -> FileRead {
        let mut c = Contents::default();
        let mut last_ts = 0;
        let mut records = 0;
        let budget = limits::kept_budget();
        let mut kept = 0u64;
        let error = read_each(FromStart::from(&file), &mut |record| {
            kept += limits::kept_bytes(&record);
            if kept > budget {
                return Err(format!(
                    "its stacks, samples and processes need more than the {} MiB tracer keeps of a capture",
                    budget >> 20
                ));
            }
            records += 1;
            c.add(record, &mut last_ts);
            Ok(true)
        })
        .err();
        c.events = Events::File(file);
        FileRead {
            contents: c.finish(last_ts),
            records,
            error,
        }
    }

    pub(super) fn finish(mut self, last_ts: u64) -> Self {
        if self.end_ns == 0 {
            self.end_ns = last_ts;
        }
        self
    }

    /// Takes in every record but the events themselves.
    pub(super) fn add(&mut self, record: Record, last_ts: &mut u64) {
        match record {
            Record::Start { start_ns, probes } => {
                self.start_ns = start_ns;
                self.probes = probes;
            }
            Record::Process(ProcessRecord {
                pid,
                command,
                python,
                notes,
                explicit,
                parent,
            }) => {
                let p = self.processes.entry(pid).or_default();
                p.pid = pid;
                p.command = command;
                p.python = python;
                p.notes = notes;
                p.explicit = explicit;
                p.parent = parent;
            }
            Record::ExitStatus { pid, status } => {
                self.processes.entry(pid).or_default().exit_status = Some(status);
            }
            Record::Stack { id, def } => {
                self.stacks.insert(id, def);
            }
            Record::Event(e) => *last_ts = (*last_ts).max(e.ts_ns),
            Record::Sample(sample) => {
                *last_ts = (*last_ts).max(sample.ts_ns);
                self.samples.push(sample);
            }
            Record::Counters(counters) => self.counters = counters,
            Record::End { end_ns } => self.end_ns = end_ns,
            Record::Census(census) => self.censuses.push(census),
        }
    }
}

/// Every record a capture holds, and why reading stopped early, if it did:
/// what was read before an error is kept.
pub fn read(input: impl Read) -> (Vec<Record>, Option<CaptureError>) {
    let mut records = Vec::new();
    let budget = limits::kept_budget();
    let mut kept = 0u64;
    let error = read_each(input, &mut |r| {
        kept += limits::kept_bytes(&r) + size_of::<Record>() as u64;
        if kept > budget {
            return Err(format!("more than {} MiB of records", budget >> 20));
        }
        records.push(r);
        Ok(true)
    })
    .err();
    (records, error)
}

/// Hands each record of a capture to `each`, in order, until it returns
/// false, or why it cannot take it (then the capture is corrupt there).
pub(super) fn read_each(
    mut input: impl Read,
    each: &mut dyn FnMut(Record) -> Result<bool, String>,
) -> Result<(), CaptureError> {
    let mut head = [0u8; 10];
    input
        .read_exact(&mut head)
        .map_err(|_| CaptureError::NotCapture)?;
    if &head[..8] != MAGIC {
        return Err(CaptureError::NotCapture);
    }
    let version = u16::from_le_bytes([head[8], head[9]]);
    if version != VERSION {
        return Err(CaptureError::Version(version));
    }
    let zstd = zstd::stream::read::Decoder::new(input).map_err(|e| CaptureError::Corrupt {
        offset: 0,
        records: 0,
        reason: e.to_string(),
    })?;
    let mut stream = Counted {
        inner: zstd,
        offset: 0,
    };
    let mut body = Vec::new();
    let mut count = 0u64;
    let mut ended = false;
    loop {
        let start = stream.offset;
        let truncated = || CaptureError::Truncated {
            offset: start,
            records: count,
        };
        let corrupt = |reason: String| CaptureError::Corrupt {
            offset: start,
            records: count,
            reason,
        };
        let len = match read_len(&mut stream) {
            Ok(Some(len)) => len,
            // zstd reads a stream cut at a flush as one that ended: only
            // the end record says the recording finished.
            Ok(None) if ended => return Ok(()),
            Ok(None) | Err(Short::End) => return Err(truncated()),
            Err(Short::Io(e)) => return Err(corrupt(e)),
        };
        if len > MAX_RECORD {
            return Err(corrupt(format!("a record of {len} bytes")));
        }
        body.resize(len, 0);
        match read_full(&mut stream, &mut body) {
            Ok(()) => {}
            Err(Short::End) => return Err(truncated()),
            Err(Short::Io(e)) => return Err(corrupt(e)),
        }
        let record: Record = postcard::from_bytes(&body).map_err(|e| corrupt(e.to_string()))?;
        limits::check(&record).map_err(corrupt)?;
        ended = matches!(record, Record::End { .. });
        if !each(record).map_err(corrupt)? {
            return Ok(());
        }
        count += 1;
    }
}

/// Why a read came up short.
enum Short {
    /// The stream ended (or the zstd frame was cut: a killed recording).
    End,
    Io(String),
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> Result<(), Short> {
    let mut at = 0;
    while at < buf.len() {
        match input.read(&mut buf[at..]) {
            Ok(0) => return Err(Short::End),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // zstd reports a frame cut short as an error of its own.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(Short::End),
            Err(e) => return Err(Short::Io(e.to_string())),
        }
    }
    Ok(())
}

/// A LEB128 length; `None` at a clean end of the stream.
fn read_len(input: &mut impl Read) -> Result<Option<usize>, Short> {
    let mut value: usize = 0;
    for shift in (0..64).step_by(7) {
        let mut byte = [0u8];
        match read_full(input, &mut byte) {
            Err(Short::End) if shift == 0 => return Ok(None),
            other => other?,
        }
        value |= usize::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Err(Short::Io("a record length of more than 64 bits".into()))
}

/// A reader that counts the bytes it has read.
struct Counted<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        capture::Writer,
        event::{Block, EventKind},
        frame::{Frame, FrameKind},
    };

    fn sample_records() -> Vec<Record> {
        vec![
            Record::Start {
                start_ns: 5,
                probes: String::new(),
            },
            Record::Event(HeapEvent {
                pid: 1,
                tid: 1,
                ts_ns: 10,
                kind: EventKind::Alloc(Block {
                    addr: 0x1000,
                    size: 64,
                    count: 1,
                    stack: StackId(0),
                }),
            }),
            Record::Stack {
                id: StackId(0),
                def: StackDef {
                    native: vec![Frame {
                        kind: FrameKind::Native,
                        function: "malloc".into(),
                        module: "libc.so.6".into(),
                        file: None,
                        line: None,
                        offset: Some(16),
                        inlined: false,
                        unknown: None,
                    }],
                    native_truncated: true,
                    python: vec![],
                    python_truncated: false,
                },
            },
            Record::End { end_ns: 20 },
        ]
    }

    fn write_all(records: &[Record], flush_each: bool) -> Vec<u8> {
        let mut w = Writer::new(tempfile::tempfile().expect("tempfile")).expect("create");
        for r in records {
            w.write(r).expect("write");
            if flush_each {
                w.flush().expect("flush");
            }
        }
        let file = w.finish().expect("finish");
        let mut bytes = Vec::new();
        FromStart::from(&Arc::new(file))
            .read_to_end(&mut bytes)
            .expect("read");
        bytes
    }

    #[test]
    fn round_trip() {
        let records = sample_records();
        let (read_back, err) = read(&write_all(&records, false)[..]);
        assert_eq!(err, None);
        assert_eq!(read_back, records);
    }

    #[test]
    fn cut_captures_keep_what_was_flushed() {
        let records = sample_records();
        let bytes = write_all(&records, true);
        // Cut inside the last record's block: the earlier ones survive.
        let (read_back, err) = read(&bytes[..bytes.len() - 12]);
        assert!(
            matches!(err, Some(CaptureError::Truncated { .. })),
            "{err:?}"
        );
        assert!(read_back.len() >= 2, "{read_back:?}");
        assert_eq!(read_back[..], records[..read_back.len()]);
    }

    #[test]
    fn a_capture_killed_after_a_flush_reads_whole_but_says_it_was_cut() {
        let records = sample_records();
        let file = Arc::new(tempfile::tempfile().expect("tempfile"));
        let mut w = Writer::new(file.try_clone().expect("clone")).expect("create");
        for r in &records[..3] {
            w.write(r).expect("write");
        }
        w.flush().expect("flush");
        // Killed here: never finished, no end record.
        std::mem::forget(w);
        let (read_back, err) = read(FromStart::from(&file));
        assert_eq!(read_back, records[..3]);
        assert!(
            matches!(err, Some(CaptureError::Truncated { records: 3, .. })),
            "{err:?}"
        );
        let read = Contents::read_file(file);
        let mut events = 0;
        read.contents.events.each(&mut |_| {
            events += 1;
            true
        });
        assert_eq!((read.records, events), (3, 1));
        assert!(matches!(read.error, Some(CaptureError::Truncated { .. })));
    }

    #[test]
    fn bad_headers_and_corruption_are_errors() {
        assert_eq!(read(&b"nonsense!!!!"[..]).1, Some(CaptureError::NotCapture));
        let mut bytes = write_all(&sample_records(), true);
        bytes[8] = 9;
        assert_eq!(read(&bytes[..]).1, Some(CaptureError::Version(9)));
        let mut bytes = write_all(&sample_records(), true);
        let n = bytes.len();
        for b in &mut bytes[20..n - 20] {
            *b ^= 0x5a;
        }
        let (_, err) = read(&bytes[..]);
        assert!(err.is_some(), "corruption went unnoticed");
    }
}
