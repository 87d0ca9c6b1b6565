//! Capture files: everything a recording saw, to report again later,
//! elsewhere, without root. Every report is made from one, live or offline.
//!
//! Layout: the 8-byte magic `TRACECAP` and a little-endian u16 version, then
//! one zstd stream of records, each a LEB128 length and a postcard-encoded
//! [`Record`]. The writer ends a zstd block at every flush (at least every
//! `--sample-ms`), so a capture cut short (the tracer killed) reads up to
//! its last flush. Stacks are written symbolized, after the events that use
//! them; readers resolve them at the end. See docs/captures.md.

pub mod background;
mod directory;
mod limits;
mod reader;
mod writer;

use serde::{Deserialize, Serialize};

pub use directory::{capture_files, segment_number};
pub use reader::{Contents, Events, FileRead, read};
pub use writer::Writer;

use crate::{
    census::Census,
    counters::Counters,
    event::{HeapEvent, Pid, StackId},
    frame::StackDef,
    process::MemorySample,
};

pub const MAGIC: &[u8; 8] = b"TRACECAP";
/// 3: events as {pid, tid, ts_ns, kind}; counters by name. 4: mappings say
/// whether they are thread stacks; forks and execs, inherited allocations,
/// processes' parents. 5: how probes were attached; live objects by
/// type (`Census`).
pub const VERSION: u16 = 5;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// When recording began (CLOCK_MONOTONIC ns), and how its probes were
    /// attached (`LinkKind`, as the report says it).
    Start {
        start_ns: u64,
        probes: String,
    },
    /// A traced process; written again when it changes (exec).
    Process(ProcessRecord),
    ExitStatus {
        pid: Pid,
        status: String,
    },
    Stack {
        id: StackId,
        def: StackDef,
    },
    Event(HeapEvent),
    /// Memory over time: the heap model's live bytes and the process's
    /// resident set at one moment.
    Sample(MemorySample),
    Counters(Counters),
    End {
        end_ns: u64,
    },
    /// Live objects by type: one walk of a process's heap.
    Census(Census),
}

/// A traced process as the capture describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: Pid,
    pub command: String,
    pub python: Option<String>,
    pub notes: Vec<String>,
    /// Named by the user rather than found by `--all`.
    pub explicit: bool,
    /// The traced process it was forked from.
    pub parent: Option<Pid>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaptureError {
    #[error("cannot open it: {0}")]
    Open(String),
    #[error("not a tracer capture (no TRACECAP header)")]
    NotCapture,
    #[error("capture version {0}, this tracer reads version {VERSION}")]
    Version(u16),
    /// Offsets count the decompressed record stream, after the header.
    #[error(
        "cut short at byte {offset} of its records, after {records} complete records (a recording that was killed ends so)"
    )]
    Truncated { offset: u64, records: u64 },
    #[error("corrupt at byte {offset} of its records, after {records} complete records: {reason}")]
    Corrupt {
        offset: u64,
        records: u64,
        reason: String,
    },
}
