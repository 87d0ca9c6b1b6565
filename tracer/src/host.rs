//! Checks that this host can run tracer, each failing with one line that
//! says what to do.

use std::path::Path;

use anyhow::{Result, bail};
use log::{debug, info};

/// Oldest kernel with everything used: BPF ring buffers (5.8),
/// `bpf_get_current_task_btf` and `bpf_task_pt_regs` (5.15).
const MIN_KERNEL: (u32, u32) = (5, 15);

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
    raise_memlock();
    Ok(())
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
    fn parses_kernel_releases() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(kernel_version("4.19"), Some((4, 19)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(kernel_version("5.4.0").is_some_and(|v| v < MIN_KERNEL));
    }
}
