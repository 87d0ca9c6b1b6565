//! How much of a capture a reader takes in. A capture may come from
//! anywhere (`tracer report` of a file someone sent), and zstd turns a few
//! hundred bytes into megabytes: every record, stack and string is bounded,
//! and so is what a reader keeps in memory (processes, stacks, samples;
//! events are read again for each pass and not kept). A capture beyond a
//! bound is reported as corrupt at that record, with what was read before.
//! The writer stays far inside them (`frame::MAX_TEXT`, command lines cut).

use super::{ProcessRecord, Record};
use crate::frame::{Frame, StackDef};

/// The largest record: a stack of 64 native frames with their inlined
/// callers and 80 Python frames, every string at its longest, is under
/// 4 MiB.
pub const MAX_RECORD: usize = 4 << 20;
/// Frames per stack, native or Python: the kernel walks 64 native frames
/// (each a few inlined ones when symbolized) and 80 Python ones.
pub const MAX_FRAMES: usize = 4096;
/// A string in a record (a name, a path, a command line).
pub const MAX_STRING: usize = 64 << 10;
/// What a reader keeps when nothing says less: 1 GiB, well over the
/// stacks and samples of a day's recording of a busy host.
const DEFAULT_KEPT: u64 = 1 << 30;

/// Why `record` is out of bounds, if it is.
pub fn check(record: &Record) -> Result<(), String> {
    match record {
        Record::Process(ProcessRecord {
            command,
            python,
            notes,
            ..
        }) => {
            string(command)?;
            python.iter().chain(notes).try_for_each(|s| string(s))
        }
        Record::ExitStatus { status, .. } => string(status),
        Record::Stack { def, .. } => stack(def),
        _ => Ok(()),
    }
}

fn stack(def: &StackDef) -> Result<(), String> {
    for frames in [&def.native, &def.python] {
        if frames.len() > MAX_FRAMES {
            return Err(format!(
                "a stack of {} frames (tracer reads at most {MAX_FRAMES})",
                frames.len()
            ));
        }
        for f in frames {
            string(&f.function)?;
            string(&f.module)?;
            f.file
                .iter()
                .chain(&f.unknown)
                .try_for_each(|s| string(s))?;
        }
    }
    Ok(())
}

fn string(s: &str) -> Result<(), String> {
    if s.len() > MAX_STRING {
        return Err(format!(
            "a string of {} bytes (tracer reads at most {MAX_STRING})",
            s.len()
        ));
    }
    Ok(())
}

/// The memory a reader holds for `record` once it keeps it: stacks,
/// samples and processes (events and counters are not kept).
pub fn kept_bytes(record: &Record) -> u64 {
    let text = |s: &String| s.capacity() as u64;
    let frames = |fs: &[Frame]| -> u64 {
        fs.iter()
            .map(|f| {
                size_of::<Frame>() as u64
                    + text(&f.function)
                    + text(&f.module)
                    + f.file.iter().chain(&f.unknown).map(text).sum::<u64>()
            })
            .sum()
    };
    // Map entries cost about their key and value again.
    match record {
        Record::Stack { def, .. } => {
            2 * size_of::<StackDef>() as u64 + frames(&def.native) + frames(&def.python)
        }
        Record::Sample(_) => size_of::<crate::process::MemorySample>() as u64,
        Record::Process(p) => {
            2 * size_of::<crate::process::ProcessInfo>() as u64
                + text(&p.command)
                + p.python.iter().chain(&p.notes).map(text).sum::<u64>()
        }
        Record::ExitStatus { status, .. } => text(status),
        _ => 0,
    }
}

/// How much a reader keeps: 1 GiB, or a quarter of the address space or
/// data limit (`ulimit -v`, `-d`) if one is set lower, so that a capture
/// too large for this process is an error rather than an abort.
pub fn kept_budget() -> u64 {
    [libc::RLIMIT_AS, libc::RLIMIT_DATA]
        .into_iter()
        .filter_map(|resource| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes the struct only.
            let ok = unsafe { libc::getrlimit(resource, &mut limit) } == 0;
            (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur / 4)
        })
        .fold(DEFAULT_KEPT, u64::min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::StackId, frame::FrameKind, process::MemorySample};

    fn frame(function: String) -> Frame {
        Frame {
            kind: FrameKind::Native,
            function,
            module: "m".into(),
            file: None,
            line: None,
            offset: None,
            inlined: false,
            unknown: None,
        }
    }

    fn stack_of(frames: Vec<Frame>) -> Record {
        Record::Stack {
            id: StackId(0),
            def: StackDef {
                native: frames,
                native_truncated: false,
                python: Vec::new(),
                python_truncated: false,
            },
        }
    }

    #[test]
    fn bounds_frames_and_strings() {
        assert!(check(&stack_of(vec![frame("f".into()); 64])).is_ok());
        let deep = check(&stack_of(vec![frame("f".into()); MAX_FRAMES + 1]));
        assert!(deep.is_err_and(|e| e.contains("frames")));
        let long = check(&stack_of(vec![frame("x".repeat(MAX_STRING + 1))]));
        assert!(long.is_err_and(|e| e.contains("string")));
    }

    #[test]
    fn counts_what_is_kept() {
        let sample = Record::Sample(MemorySample {
            pid: 1,
            ts_ns: 0,
            live_bytes: 0,
            rss_bytes: None,
        });
        assert!(kept_bytes(&sample) > 0);
        let one = kept_bytes(&stack_of(vec![frame("f".into())]));
        let ten = kept_bytes(&stack_of(vec![frame("f".into()); 10]));
        assert!(ten > one + 9 * size_of::<Frame>() as u64 - 1);
        assert!(kept_budget() <= DEFAULT_KEPT);
    }
}
