//! A directory of captures: the daemon's rotating segments
//! (`capture-NNNNNN.tracer`), or the `capture.tracer` of `record -o DIR`,
//! read in order as one capture. Only regular files named so are read,
//! never through a symlink.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    sync::Arc,
};

use super::{
    CaptureError, Contents, Events, Record,
    reader::{FromStart, read_each},
};

/// The number of a segment's file name (`capture.tracer` is 0).
pub fn segment_number(name: &str) -> Option<u64> {
    if name == "capture.tracer" {
        return Some(0);
    }
    let digits = name.strip_prefix("capture-")?.strip_suffix(".tracer")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The captures in `dir`, in order, opened, with their names.
pub fn capture_files(dir: &Path) -> io::Result<Vec<(String, Arc<File>)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(seq) = segment_number(&name) else {
            continue;
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(entry.path());
        // A segment deleted by a running daemon since it was listed.
        let Ok(file) = file else { continue };
        if file.metadata().is_ok_and(|m| m.is_file()) {
            found.push((seq, name, Arc::new(file)));
        }
    }
    found.sort_by_key(|(seq, _, _)| *seq);
    Ok(found.into_iter().map(|(_, n, f)| (n, f)).collect())
}

impl Contents {
    /// Reads segments in order as one capture: the first one's start, the
    /// last one's end. Returns the records read and, for each segment that
    /// was cut short or damaged, its name and why (reading goes on with the
    /// next one).
    pub fn read_segments(
        files: Vec<(String, Arc<File>)>,
    ) -> (Self, u64, Vec<(String, CaptureError)>) {
        let mut c = Contents::default();
        let mut last_ts = 0;
        let mut records = 0;
        let mut errors = Vec::new();
        let mut started = false;
        // What is kept of every segment together is bounded, as of a file.
        let budget = super::limits::kept_budget();
        let mut kept = 0u64;
        for (i, (name, file)) in files.iter().enumerate() {
            let result = read_each(FromStart::from(file), &mut |record| {
                kept += super::limits::kept_bytes(&record);
                if kept > budget {
                    return Err(format!(
                        "its stacks, samples and processes need more than the {} MiB tracer keeps of a capture",
                        budget >> 20
                    ));
                }
                records += 1;
                match record {
                    // Each segment has its own; the capture starts with the first.
                    Record::Start { .. } if started => {}
                    // A segment that ended is followed by the next.
                    Record::End { .. } if i + 1 < files.len() => {}
                    other => {
                        started |= matches!(other, Record::Start { .. });
                        c.add(other, &mut last_ts);
                    }
                }
                Ok(true)
            });
            if let Err(err) = result {
                errors.push((name.clone(), err));
            }
        }
        c.events = Events::Segments(files.into_iter().map(|(_, f)| f).collect());
        (c.finish(last_ts), records, errors)
    }
}
