//! Standard output and error, written without panicking. A reader that
//! goes away (`tracer report ... | head`) or a terminal that hangs up (an
//! ssh session dropped) closes them; tracer still finishes its work (the
//! outputs written, the probes removed, a launched command stopped) and
//! then exits quietly. `print!` and `eprintln!` would panic there, and a
//! panic aborts (and may dump core).

use std::io::{self, Write as _};

/// Standard output was closed by its reader: not an error of tracer's.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct OutputClosed;

/// Writes `bytes` to standard output. A closed pipe or a terminal gone
/// (EPIPE, EIO after a hangup) is `OutputClosed`.
pub fn out(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(err) if is_closed(&err) => Err(OutputClosed.into()),
        Err(err) => Err(anyhow::anyhow!(
            "cannot write the report to standard output: {err}"
        )),
    }
}

/// Writes one line to standard error; nothing is done if it is closed.
/// The line is escaped (`escape::text`): it may hold what a traced process
/// named, and it stays one line.
pub fn line(text: &str) {
    let mut stderr = io::stderr().lock();
    let _ = writeln!(stderr, "{}", crate::escape::text(text));
}

fn is_closed(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::BrokenPipe || err.raw_os_error() == Some(libc::EIO)
}
