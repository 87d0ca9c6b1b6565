//! Holding a launched command at its finalization while its objects'
//! types are read, and making sure it never stays held.
//!
//! The kernel stops the process (SIGSTOP from its `Py_FinalizeEx` probe,
//! `HOLD_AT_FINALIZE`); the heap walk continues it (`resume`) when it is
//! done, within its time limit. Should tracer die first, even by SIGKILL,
//! a guard process continues it: the guard reads the pids that may be held
//! from a pipe whose writing end only tracer holds, and when that end
//! closes without a last "done", sends SIGCONT to each (through pidfds, so
//! never to another process that reused a pid), a few times over a second
//! for a probe that fires as tracer's programs are being removed.

use std::{
    fs,
    io::Write as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use anyhow::{Result, bail};

/// What the guard reads when tracer ends normally, every hold released.
const DONE: u32 = u32::MAX;
/// Pids the guard watches at most (a launched command and what it forks).
const MAX_WATCHED: usize = 64;

/// The guard process, through the writing end of its pipe.
pub struct Guard {
    pipe: fs::File,
}

impl Guard {
    /// Starts the guard, a child of tracer that outlives it.
    pub fn start() -> Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            bail!(
                "cannot start the hold guard: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: both are new descriptors owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child only makes async-signal-safe calls (dup2, open,
        // close_range, signal, read, syscall, usleep) before _exit.
        match unsafe { libc::fork() } {
            -1 => bail!(
                "cannot start the hold guard: {}",
                std::io::Error::last_os_error()
            ),
            0 => unsafe { guard(read.as_raw_fd()) },
            _ => Ok(Self {
                pipe: fs::File::from(write),
            }),
        }
    }

    /// `pid` may be held from now on.
    pub fn watch(&mut self, pid: u32) -> Result<()> {
        self.pipe.write_all(&pid.to_ne_bytes())?;
        Ok(())
    }

    /// Every hold is released: the guard ends without a signal.
    pub fn release(mut self) {
        let _ = self.pipe.write_all(&DONE.to_ne_bytes());
    }
}

/// The guard's whole life, in the forked child.
///
/// # Safety
/// Only in a child just forked: it never returns.
unsafe fn guard(read: RawFd) -> ! {
    unsafe {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // Ctrl-C reaches tracer's whole process group: the guard stays.
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::dup2(read, 0);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        libc::dup2(null, 1);
        libc::dup2(null, 2);
        // Nothing of tracer's stays open here (its programs' links, the
        // pipe's writing end), or its probes would outlive it.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        let mut pidfds = [-1 as libc::c_long; MAX_WATCHED];
        let mut watched = 0;
        loop {
            let mut buf = [0u8; 4];
            let n = libc::read(0, buf.as_mut_ptr().cast(), 4);
            if n == 4 {
                let pid = u32::from_ne_bytes(buf);
                if pid == DONE {
                    libc::_exit(0);
                }
                if watched < MAX_WATCHED {
                    pidfds[watched] = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0);
                    watched += 1;
                }
            } else if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            } else {
                break;
            }
        }
        for _ in 0..10 {
            for &fd in &pidfds[..watched] {
                if fd >= 0 {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd as libc::c_int,
                        libc::SIGCONT,
                        std::ptr::null::<libc::siginfo_t>(),
                        0u32,
                    );
                }
            }
            libc::usleep(100_000);
        }
        libc::_exit(0)
    }
}

/// A held process, by a pidfd taken while it could not have exited.
pub struct Held {
    pidfd: OwnedFd,
}

impl Held {
    /// `pid`, held now (stopped by the kernel at its finalization).
    pub fn new(pid: u32) -> Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
        if fd < 0 {
            bail!("pid {pid}: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor owned by nobody else.
        Ok(Self {
            pidfd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
        })
    }

    /// Continues the process.
    pub fn resume(self) {
        // SAFETY: a valid pidfd, a signal, no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGCONT,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            );
        }
    }
}

/// Whether `pid` is stopped (state `T` in /proc/PID/stat).
pub fn is_stopped(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The command may hold spaces and parentheses: the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        == Some("T")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_stopped_child_and_resumes_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let held = Held::new(pid).expect("pidfd");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !is_stopped(pid) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(is_stopped(pid));
        held.resume();
        while is_stopped(pid) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!is_stopped(pid));
        let _ = child.kill();
        let _ = child.wait();
        assert!(!is_stopped(u32::MAX));
    }
}
