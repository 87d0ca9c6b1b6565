//! Checks that this host can run tracer, each failing with one line that
//! says what to do.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use log::{debug, info};

/// Oldest kernel with everything used: BPF ring buffers (5.8),
/// `bpf_get_current_task_btf`, `bpf_task_pt_regs` and uprobe attach cookies
/// (5.15), `bpf_loop` (5.17).
const MIN_KERNEL: (u32, u32) = (5, 17);

pub fn check() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("tracer needs root to load eBPF programs and read other processes: run it with sudo");
    }
    let release = nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned();
    if kernel_version(&release).is_some_and(|v| v < MIN_KERNEL) {
        bail!(
            "kernel {release} is too old: tracer needs Linux {}.{} or newer",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        bail!(
            "this kernel has no uprobe support (/sys/bus/event_source/devices/uprobe is missing): tracer needs a kernel built with CONFIG_UPROBE_EVENTS"
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): tracer needs a kernel built with CONFIG_DEBUG_INFO_BTF"
        );
    }
    ensure_tracefs()?;
    raise_limits();
    Ok(())
}

/// Resource limits tracer raises for itself, as they were: what a command
/// it starts gets back.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub nofile: libc::rlimit,
    pub memlock: libc::rlimit,
}

static ORIGINAL_LIMITS: std::sync::OnceLock<Limits> = std::sync::OnceLock::new();

/// The limits tracer started with (before `check` raised them).
pub fn original_limits() -> Option<Limits> {
    ORIGINAL_LIMITS.get().copied()
}

fn get_limit(resource: libc::__rlimit_resource_t) -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct only.
    unsafe { libc::getrlimit(resource, &mut limit) };
    limit
}

/// Raises the descriptor limit to its hard limit: under `--all` tracer
/// holds a pidfd per target and the files of many processes, and with the
/// default soft limit (1,024) it would stop adopting processes within
/// hours on a busy host. And see `raise_memlock`.
fn raise_limits() {
    let original = Limits {
        nofile: get_limit(libc::RLIMIT_NOFILE),
        memlock: get_limit(libc::RLIMIT_MEMLOCK),
    };
    let _ = ORIGINAL_LIMITS.set(original);
    let raised = libc::rlimit {
        rlim_cur: original.nofile.rlim_max,
        rlim_max: original.nofile.rlim_max,
    };
    // SAFETY: setrlimit reads the struct only.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        debug!(
            "could not raise RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
    }
    raise_memlock();
}

/// Where fields of the kernel's `task_struct` are, read from its BTF: the
/// eBPF programs read them by offset (aya has no CO-RE for Rust programs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskLayout {
    /// `thread.fsbase`: the thread pointer, through which the programs find
    /// a thread's CPython state.
    pub fsbase: u64,
    /// `pid` and `tgid`: whether a new task is a process or a thread.
    pub pid: u64,
    pub tgid: u64,
    /// `mm`: whether a new process shares its parent's memory (vfork).
    pub mm: u64,
    /// `signal`, and `live` in `signal_struct`: whether an exiting thread
    /// is its process's last.
    pub signal: u64,
    pub signal_live: u64,
}

pub fn task_layout() -> Result<TaskLayout> {
    use btf_rs::{Btf, Type};
    let btf = Btf::from_file("/sys/kernel/btf/vmlinux")
        .context("reading the kernel's BTF (/sys/kernel/btf/vmlinux)")?;
    let member_offset = |ty: &Type, name: &str| -> Result<(u64, Type)> {
        let Type::Struct(s) = ty else {
            bail!("kernel BTF: not a struct where {name} should be");
        };
        for m in &s.members {
            if btf.resolve_name(m).is_ok_and(|n| n == name) {
                return Ok((u64::from(m.bit_offset() / 8), btf.resolve_chained_type(m)?));
            }
        }
        bail!("kernel BTF: no member {name}")
    };
    let task = btf
        .resolve_types_by_name("task_struct")?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .context("kernel BTF has no struct task_struct")?;
    let (thread, thread_struct) = member_offset(&task, "thread")?;
    let (fsbase, _) = member_offset(&thread_struct, "fsbase")?;
    let signal_struct = btf
        .resolve_types_by_name("signal_struct")?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .context("kernel BTF has no struct signal_struct")?;
    Ok(TaskLayout {
        fsbase: thread + fsbase,
        pid: member_offset(&task, "pid")?.0,
        tgid: member_offset(&task, "tgid")?.0,
        mm: member_offset(&task, "mm")?.0,
        signal: member_offset(&task, "signal")?.0,
        signal_live: member_offset(&signal_struct, "live")?.0,
    })
}

/// "6.18.44-fc" -> (6, 18)
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The syscall tracepoints are found through tracefs, which minimal hosts
/// do not always mount.
fn ensure_tracefs() -> Result<()> {
    const TRACEFS: &str = "/sys/kernel/tracing";
    if Path::new(TRACEFS).join("events").exists()
        || Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return Ok(());
    }
    info!("mounting tracefs at {TRACEFS}");
    if let Err(err) = nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    ) {
        bail!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed ({err}): run `mount -t tracefs nodev {TRACEFS}`"
        );
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones do not,
/// and containers often may not raise it, so failing here is not an error.
fn raise_memlock() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct only.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        debug!(
            "could not raise RLIMIT_MEMLOCK ({}); not needed on kernels >= 5.11",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_task_fields_in_this_kernel() {
        let t = task_layout().expect("task layout");
        // task_struct is several KiB; thread_struct sits at its end.
        assert!((1024..16384).contains(&t.fsbase), "{t:?}");
        // pid_t pid; pid_t tgid; next to each other.
        assert_eq!(t.tgid, t.pid + 4, "{t:?}");
        assert!(t.mm > 0 && t.mm < t.fsbase, "{t:?}");
        assert!(t.signal > 0 && t.signal_live > 0, "{t:?}");
    }

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert!(kernel_version("5.15.0-91-generic").is_some_and(|v| v < MIN_KERNEL));
        assert_eq!(kernel_version("4.19"), Some((4, 19)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(kernel_version("5.4.0").is_some_and(|v| v < MIN_KERNEL));
    }
}
