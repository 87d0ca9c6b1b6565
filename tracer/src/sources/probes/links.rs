//! How uprobes are attached: one BPF link per program and file holding all
//! of that file's offsets (`BPF_LINK_CREATE` with a multi-uprobe or a
//! uprobe session), created here since aya 0.14 does neither; or, on
//! kernels without them, one perf-event uprobe per offset through aya.
//! docs/probes.md, "How probes are attached".

use std::{
    ffi::CString,
    fmt, io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// The kernel's `enum bpf_attach_type` values used here (uapi/linux/bpf.h).
pub const BPF_TRACE_UPROBE_MULTI: u32 = 48;
pub const BPF_TRACE_UPROBE_SESSION: u32 = 57;
/// `uprobe_multi.flags`: the link's probes are return probes.
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;
const BPF_LINK_CREATE: libc::c_long = 28;

/// How a run's uprobes are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// Linux 6.13+: each allocation function's entry program is a uprobe
    /// session, run at its return only when its entry asked: an untraced,
    /// nested or unsampled call pays one trap instead of two. One link per
    /// program and file; all of a run's links go in one close each.
    Session,
    /// Linux 6.6+: multi-uprobe links (entry and return programs apart),
    /// one per program and file.
    Multi,
    /// Older kernels: a perf-event uprobe per offset, each removed with an
    /// RCU grace period of its own (~80 ms here).
    Perf,
}

impl LinkKind {
    /// The best this kernel (`release`, e.g. "6.18.44-fc") has.
    pub fn for_kernel(release: &str) -> Self {
        let mut parts = release.split(['.', '-']);
        let version = (
            parts.next().and_then(|p| p.parse::<u32>().ok()),
            parts.next().and_then(|p| p.parse::<u32>().ok()),
        );
        match version {
            (Some(major), Some(minor)) if (major, minor) >= (6, 13) => LinkKind::Session,
            (Some(major), Some(minor)) if (major, minor) >= (6, 6) => LinkKind::Multi,
            _ => LinkKind::Perf,
        }
    }
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkKind::Session => "uprobe sessions (an untraced or unsampled call pays one trap)",
            LinkKind::Multi => "multi-uprobe links (entry and return traps)",
            LinkKind::Perf => "perf-event uprobes (entry and return traps; slow to remove)",
        })
    }
}

/// Whether the links made are entry, return or session probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Entry,
    Return,
    Session,
}

/// `union bpf_attr` as `BPF_LINK_CREATE` reads it for uprobe links
/// (`link_create` with its `uprobe_multi` member).
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _pad: u32,
}

/// Attaches `program` (loaded for multi-uprobes, or sessions for
/// `Role::Session`) at `offsets` of `file`, each with its cookie, in every
/// process: one link, removed when the returned descriptor is closed.
pub fn uprobe_multi(
    program: BorrowedFd<'_>,
    file: &Path,
    offsets: &[u64],
    cookies: &[u64],
    role: Role,
) -> io::Result<OwnedFd> {
    let path = CString::new(file.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let cnt = u32::try_from(offsets.len()).map_err(io::Error::other)?;
    if cookies.len() != offsets.len() {
        return Err(io::Error::other("one cookie per offset"));
    }
    let attr = LinkCreate {
        prog_fd: program.as_raw_fd() as u32,
        attach_type: match role {
            Role::Session => BPF_TRACE_UPROBE_SESSION,
            Role::Entry | Role::Return => BPF_TRACE_UPROBE_MULTI,
        },
        path: path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        cookies: cookies.as_ptr() as u64,
        cnt,
        multi_flags: if role == Role::Return {
            BPF_F_UPROBE_MULTI_RETURN
        } else {
            0
        },
        ..LinkCreate::default()
    };
    // SAFETY: the attribute and everything it points to outlive the call;
    // the kernel reads `size_of::<LinkCreate>()` bytes of it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &raw const attr,
            size_of::<LinkCreate>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_kernel() {
        assert_eq!(LinkKind::for_kernel("6.18.44-fc"), LinkKind::Session);
        assert_eq!(LinkKind::for_kernel("6.13.0"), LinkKind::Session);
        assert_eq!(LinkKind::for_kernel("6.12.9-1"), LinkKind::Multi);
        assert_eq!(LinkKind::for_kernel("6.6.0"), LinkKind::Multi);
        assert_eq!(LinkKind::for_kernel("6.1.0-25-amd64"), LinkKind::Perf);
        assert_eq!(LinkKind::for_kernel("garbage"), LinkKind::Perf);
    }

    #[test]
    fn the_attribute_has_the_kernels_layout() {
        // link_create: four u32, then the union at 16; uprobe_multi's
        // path, offsets, ref_ctr_offsets, cookies (u64), cnt, flags, pid.
        assert_eq!(std::mem::offset_of!(LinkCreate, path), 16);
        assert_eq!(std::mem::offset_of!(LinkCreate, cnt), 48);
        assert_eq!(std::mem::offset_of!(LinkCreate, pid), 56);
    }
}
