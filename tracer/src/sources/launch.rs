//! Starting a command so that it is traced from its first allocation.
//!
//! The command is started under ptrace and held in the dynamic loader: it is
//! stepped from syscall to syscall until a file defining `malloc` is mapped
//! (libc, before any of its code runs), then run to its entry point (every
//! startup library mapped), and only then let go. `prepare` is called at
//! each of those points to attach probes and add the pid to the traced set.
//! ptrace is detached before the program's own code runs; later execs of the
//! process are picked up from the kernel's exec events instead.

use std::{
    ffi::OsString,
    fs,
    os::unix::process::CommandExt as _,
    process::{Child, Command},
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
    mut prepare: impl FnMut(u32, Stage) -> Result<bool>,
) -> Result<Launched> {
    let (program, args) = command.split_first().context("no command given")?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: ptrace(PTRACE_TRACEME) is a single async-signal-safe syscall.
    unsafe {
        cmd.pre_exec(|| ptrace::traceme().map_err(std::io::Error::from));
    }
    let child = cmd
        .spawn()
        .map_err(|e| anyhow!("cannot run `{}`: {e}", program.to_string_lossy()))?;
    let pid = Pid::from_raw(child.id() as i32);
    let gate = hold_until_traced(pid, &mut prepare);
    if let Err(err) = gate {
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

fn hold_until_traced(pid: Pid, prepare: &mut impl FnMut(u32, Stage) -> Result<bool>) -> Result<()> {
    let raw = pid.as_raw() as u32;
    expect_stop(waitpid(pid, None)?, "starting")?;
    ptrace::setoptions(
        pid,
        Options::PTRACE_O_TRACESYSGOOD | Options::PTRACE_O_TRACEEXEC,
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
