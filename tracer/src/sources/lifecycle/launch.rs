//! Starting a command so that it is traced from its first allocation.
//!
//! The command is started under ptrace and held in the dynamic loader: it is
//! stepped from syscall to syscall until a file defining `malloc` is mapped
//! (libc, before any of its code runs), then run to its entry point (every
//! startup library mapped), and only then let go. `prepare` is called at
//! each of those points to attach probes and add the pid to the traced set.
//! ptrace is detached before the program's own code runs; later execs of the
//! process are picked up from the kernel's exec events instead.
//!
//! The command runs as the user tracer acts for (not as root), with the
//! resource limits tracer started with, and ends with tracer: if tracer
//! dies while holding it, the kernel kills it (`PTRACE_O_EXITKILL`); if
//! tracer is killed later, it gets SIGTERM (`PR_SET_PDEATHSIG`); when the
//! recording stops, SIGTERM and, `STOP_GRACE` later, SIGKILL. Unless
//! `--detach-command`.

use std::{
    ffi::OsString,
    fs,
    os::unix::process::CommandExt as _,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    sys::{
        ptrace::{self, Options},
        signal::Signal,
        wait::{WaitStatus, waitpid},
    },
    unistd::Pid,
};

use super::identity::describe_status;
use crate::{host, user::User};

/// How long a command has to exit after SIGTERM when tracer stops.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Who the command runs as, and whether it outlives tracer.
#[derive(Clone, Debug)]
pub struct Launch {
    pub user: User,
    /// `--detach-command`: left running when tracer stops.
    pub detach: bool,
}

/// Why `prepare` is being called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Right after exec, and after each new file mapping while in the
    /// loader. `prepare` returns true once an allocator is probed.
    Loading,
    /// At the program's entry point, all startup libraries mapped.
    Entry,
}

/// A started command, running and traced.
pub struct Launched {
    pub pid: u32,
    pub child: Child,
}

/// Safety net: a loader makes a few hundred syscalls at most.
const MAX_LOADER_SYSCALLS: u32 = 20_000;
const SYS_MMAP: u64 = 9;
const AT_ENTRY: u64 = 9;

pub fn launch(
    command: &[OsString],
    how: &Launch,
    mut prepare: impl FnMut(u32, Stage) -> Result<bool>,
) -> Result<Launched> {
    let (program, args) = command.split_first().context("no command given")?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    let user = how.user.clone();
    if !user.is_root()
        && let Ok(Some(account)) = nix::unistd::User::from_uid(user.uid.into())
    {
        cmd.env("HOME", account.dir)
            .env("USER", &account.name)
            .env("LOGNAME", &account.name);
    }
    let limits = host::original_limits();
    let death_signal = if how.detach { 0 } else { libc::SIGTERM };
    // SAFETY: the closure makes only async-signal-safe system calls
    // (setrlimit, setgroups, setgid, setuid, prctl, ptrace) on data
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(move || become_user(&user, limits, death_signal));
    }
    let child = cmd.spawn().map_err(|e| {
        anyhow!(
            "cannot run `{}` as {}: {e}",
            program.to_string_lossy(),
            how.user.name
        )
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    if let Err(err) = hold_until_traced(pid, &mut prepare) {
        if let Some(status) = ended_while_held(pid, &err) {
            // Say how it ended, not which ptrace call found it gone.
            return Err(expect_stop(status, "tracer was attaching its probes")
                .err()
                .unwrap_or(err));
        }
        // Never leave a half-started command behind.
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(err);
    }
    Ok(Launched {
        pid: child.id(),
        child,
    })
}

/// In the child, before exec: tracer's limits as they were, the user's
/// groups and ids, a signal when tracer dies, and traced by tracer.
fn become_user(
    user: &User,
    limits: Option<host::Limits>,
    death_signal: libc::c_int,
) -> std::io::Result<()> {
    let check = |ret: libc::c_int| {
        if ret == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain system calls on values owned by this closure.
    unsafe {
        if let Some(limits) = limits {
            check(libc::setrlimit(libc::RLIMIT_NOFILE, &limits.nofile))?;
            // Raising it back may not be allowed; lowering always is.
            let _ = libc::setrlimit(libc::RLIMIT_MEMLOCK, &limits.memlock);
        }
        if libc::geteuid() == 0 && !user.is_root() {
            check(libc::setgroups(user.groups.len(), user.groups.as_ptr()))?;
            check(libc::setgid(user.gid))?;
            check(libc::setuid(user.uid))?;
        }
        // After setuid, which clears it.
        if death_signal != 0 {
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                death_signal as libc::c_ulong,
            ))?;
        }
    }
    ptrace::traceme().map_err(std::io::Error::from)
}

/// Stops a launched command still running when the recording ends:
/// SIGTERM, then SIGKILL if it has not exited `STOP_GRACE` later. Returns
/// how it ended.
pub fn stop(child: &mut Child) -> String {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return format!("{} (stopped by tracer)", describe_status(&status));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    match child.wait() {
        Ok(status) => format!(
            "{} (did not exit within {} s of SIGTERM)",
            describe_status(&status),
            STOP_GRACE.as_secs()
        ),
        Err(_) => "killed by tracer".to_owned(),
    }
}

fn hold_until_traced(pid: Pid, prepare: &mut impl FnMut(u32, Stage) -> Result<bool>) -> Result<()> {
    let raw = pid.as_raw() as u32;
    expect_stop(waitpid(pid, None)?, "starting")?;
    // EXITKILL: if tracer dies while holding the command, the kernel kills
    // it rather than leave it stopped or half-traced.
    ptrace::setoptions(
        pid,
        Options::PTRACE_O_TRACESYSGOOD | Options::PTRACE_O_TRACEEXEC | Options::PTRACE_O_EXITKILL,
    )?;

    let mut probed = prepare(raw, Stage::Loading)?;
    let mut syscalls = 0;
    let mut signal = None;
    while !probed {
        syscalls += 1;
        if syscalls > MAX_LOADER_SYSCALLS {
            bail!(
                "the command mapped no libc or allocator in its first {MAX_LOADER_SYSCALLS} system calls: is it statically linked without symbols?"
            );
        }
        ptrace::syscall(pid, signal.take())?;
        match waitpid(pid, None)? {
            WaitStatus::PtraceSyscall(_) => {
                let regs = ptrace::getregs(pid)?;
                // Syscall stops alternate entry/exit; rax holds -ENOSYS on entry.
                let at_exit = regs.rax as i64 != -(libc::ENOSYS as i64);
                if at_exit && regs.orig_rax == SYS_MMAP {
                    probed = prepare(raw, Stage::Loading)?;
                }
            }
            WaitStatus::PtraceEvent(_, _, _) => probed = prepare(raw, Stage::Loading)?,
            WaitStatus::Stopped(_, sig) => signal = Some(sig),
            other => expect_stop(other, "loading")?,
        }
    }

    run_to_entry(pid)?;
    prepare(raw, Stage::Entry)?;
    ptrace::detach(pid, None)?;
    Ok(())
}

/// Runs the stopped tracee until its entry point, with a one-byte breakpoint
/// that is removed again.
fn run_to_entry(pid: Pid) -> Result<()> {
    let entry = entry_point(pid.as_raw() as u32)?;
    let addr = entry as ptrace::AddressType;
    let original = ptrace::read(pid, addr)?;
    ptrace::write(pid, addr, (original & !0xff) | 0xcc)?;
    let mut signal = None;
    loop {
        ptrace::cont(pid, signal.take())?;
        match waitpid(pid, None)? {
            WaitStatus::Stopped(_, Signal::SIGTRAP) => {
                let mut regs = ptrace::getregs(pid)?;
                if regs.rip == entry + 1 {
                    ptrace::write(pid, addr, original)?;
                    regs.rip = entry;
                    ptrace::setregs(pid, regs)?;
                    return Ok(());
                }
            }
            WaitStatus::Stopped(_, sig) => signal = Some(sig),
            WaitStatus::PtraceEvent(..) | WaitStatus::PtraceSyscall(_) => {}
            other => expect_stop(other, "starting its program")?,
        }
    }
}

fn entry_point(pid: u32) -> Result<u64> {
    let auxv = fs::read(format!("/proc/{pid}/auxv")).context("reading the command's auxv")?;
    auxv.chunks_exact(16)
        .find_map(|pair| {
            let key = u64::from_ne_bytes(pair[..8].try_into().ok()?);
            let value = u64::from_ne_bytes(pair[8..].try_into().ok()?);
            (key == AT_ENTRY).then_some(value)
        })
        .context("the command's auxv has no entry point")
}

/// How the held command ended, if `err` came of its ending (killed from
/// outside: a held command runs only between ptrace calls, so ESRCH means
/// it is gone); it is reaped.
fn ended_while_held(pid: Pid, err: &anyhow::Error) -> Option<WaitStatus> {
    let gone = err
        .chain()
        .any(|e| e.downcast_ref::<nix::errno::Errno>() == Some(&nix::errno::Errno::ESRCH));
    let flags = (!gone).then_some(nix::sys::wait::WaitPidFlag::WNOHANG);
    loop {
        match waitpid(pid, flags).ok()? {
            status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => return Some(status),
            // Still stopped (and not gone): not how this failed.
            _ if !gone => return None,
            // Stops reported on its way out.
            _ => {}
        }
    }
}

fn expect_stop(status: WaitStatus, stage: &str) -> Result<()> {
    match status {
        WaitStatus::Stopped(..) | WaitStatus::PtraceEvent(..) | WaitStatus::PtraceSyscall(_) => {
            Ok(())
        }
        WaitStatus::Exited(_, code) => bail!("the command exited with status {code} while {stage}"),
        WaitStatus::Signaled(_, sig, _) => bail!("the command was killed by {sig} while {stage}"),
        other => bail!("unexpected state of the command while {stage}: {other:?}"),
    }
}
