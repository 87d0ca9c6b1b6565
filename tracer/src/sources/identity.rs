//! Which process a pid is. Pids are reused: a pid names a process only
//! together with the process's start time (`/proc/PID/stat`), and a pidfd
//! names one process for good. tracer keeps the start time of each target,
//! and watches each target's pidfd, which wakes the loop when that process
//! exits (the kernel's exit record usually says so first).

use std::os::fd::{FromRawFd as _, OwnedFd};

use anyhow::{Result, bail};
use tokio::sync::mpsc;

use super::poll::readable;
use crate::event::Pid;

/// A process: its pid and when it started (clock ticks after boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub pid: Pid,
    pub start: u64,
}

impl Identity {
    /// The process that has `pid` now, if any.
    pub fn of(pid: Pid) -> Option<Self> {
        Some(Self {
            pid,
            start: start_time(pid)?,
        })
    }

    /// Whether this process still runs (not another one under its pid).
    pub fn is_running(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started.
fn start_time(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) may hold spaces and parentheses: fields resume
    // after its last ')', at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Sends `process` on `exited` once it has exited. A process that is gone
/// already (or whose pid is another process's now) is an error: the caller
/// treats it as exited.
pub fn watch_exit(process: Identity, exited: mpsc::UnboundedSender<Identity>) -> Result<()> {
    let pid = process.pid;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            bail!("pid {pid} exited");
        }
        bail!("cannot watch pid {pid}: {err}");
    }
    // SAFETY: fd is a new descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The pidfd names whatever process had the pid when it was opened.
    if !process.is_running() {
        bail!("pid {pid} exited");
    }
    let fd = readable(fd)?;
    tokio::spawn(async move {
        if fd.readable().await.is_ok() {
            let _ = exited.send(process);
        }
    });
    Ok(())
}

/// How a process ended, from its wait status.
pub fn describe_status(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_processes_apart() {
        let me = Identity::of(std::process::id()).expect("this process");
        assert!(me.is_running());
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        let it = Identity::of(pid);
        child.wait().expect("reap");
        assert!(it.is_some_and(|it| !it.is_running()));
        let other = Identity {
            start: me.start + 1,
            ..me
        };
        assert!(!other.is_running(), "same pid, another start");
    }
}
