//! The kernel's own list of a process's uprobes: every uprobe_multi link
//! it holds (tracer attaches through them on kernels with uprobe
//! sessions), with the file the kernel resolved and the offsets in it.
//! What tracer says it attached is not evidence; this is. And what a
//! probe leaves in a process: the bytes of its libc text that differ from
//! the file.

use std::{
    fs,
    io::{self, Read as _, Seek as _, SeekFrom},
    os::fd::FromRawFd as _,
    os::fd::OwnedFd,
};

/// One uprobe_multi link: a file and the offsets probed in it.
#[derive(Debug)]
pub struct UprobeLink {
    pub link_id: u32,
    /// The kernel's path of the probed inode (`d_path`): " (deleted)" if
    /// it has no name left.
    pub path: String,
    pub offsets: Vec<u64>,
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_TYPE_UPROBE_MULTI: u32 = 12;
const MAX_OFFSETS: usize = 4096;
const PATH_MAX: usize = 4096;

/// The uprobe_multi links `pid` holds open.
pub fn uprobe_links(pid: u32) -> Vec<UprobeLink> {
    let mut ids: Vec<u32> = Vec::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in fs::read_dir(&dir).expect("fdinfo").flatten() {
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        if !text.lines().any(|l| l == "link_type:\tuprobe_multi") {
            continue;
        }
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("link_id:\t"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter().filter_map(link).collect()
}

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> libc::c_long {
    // SAFETY: attr is a buffer of the size passed, as bpf(2) reads it.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) }
}

/// The path and offsets of link `id`, if it is still a uprobe_multi link.
fn link(id: u32) -> Option<UprobeLink> {
    let mut attr = [0u8; 16];
    attr[0..4].copy_from_slice(&id.to_ne_bytes());
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr);
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut path = vec![0u8; PATH_MAX];
    let mut offsets = vec![0u64; MAX_OFFSETS];
    // struct bpf_link_info: type, id, prog_id, then (8-aligned) the
    // uprobe_multi member: path, offsets, ref_ctr_offsets, cookies
    // pointers, then path_size, count, flags, pid.
    let mut info = [0u8; 256];
    info[16..24].copy_from_slice(&(path.as_mut_ptr() as u64).to_ne_bytes());
    info[24..32].copy_from_slice(&(offsets.as_mut_ptr() as u64).to_ne_bytes());
    info[48..52].copy_from_slice(&(PATH_MAX as u32).to_ne_bytes());
    info[52..56].copy_from_slice(&(MAX_OFFSETS as u32).to_ne_bytes());
    let mut attr = [0u8; 16];
    attr[0..4].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    let rc = bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr);
    assert!(
        rc == 0,
        "BPF_OBJ_GET_INFO_BY_FD of link {id}: {}",
        std::io::Error::last_os_error()
    );
    let word = |at: usize| u32::from_ne_bytes(info[at..at + 4].try_into().expect("4 bytes"));
    if word(0) != BPF_LINK_TYPE_UPROBE_MULTI {
        return None;
    }
    let count = (word(52) as usize).min(MAX_OFFSETS);
    let len = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    offsets.truncate(count);
    Some(UprobeLink {
        link_id: id,
        path: String::from_utf8_lossy(&path[..len]).into_owned(),
        offsets,
    })
}

/// Bytes of `pid`'s executable libc mapping that differ from its file: a
/// uprobe is an int3 (or, optimized, a call) written into that text, so
/// none once every probe is removed.
pub fn probed_libc_bytes(pid: u32) -> io::Result<usize> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} of process {pid}"),
        )
    };
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let line = maps
        .lines()
        .find(|l| l.contains("r-xp") && l.contains("/libc.so"))
        .ok_or_else(|| bad("no libc text in the maps"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad("a bad maps line"));
    let (start, end) = fields[0]
        .split_once('-')
        .ok_or_else(|| bad("a bad maps range"))?;
    let start = hex(start)?;
    let len = (hex(end)? - start) as usize;
    let offset = hex(fields.get(2).ok_or_else(|| bad("a bad maps line"))?)?;
    let path = fields.get(5..).unwrap_or_default().join(" ");
    let mut file = Vec::with_capacity(len);
    let mut f = fs::File::open(format!("/proc/{pid}/root{path}"))?;
    f.seek(SeekFrom::Start(offset))?;
    let got = f.take(len as u64).read_to_end(&mut file)?;
    let mut text = vec![0; got];
    let mut mem = fs::File::open(format!("/proc/{pid}/mem"))?;
    mem.seek(SeekFrom::Start(start))?;
    mem.read_exact(&mut text)?;
    Ok(text.iter().zip(&file).filter(|(a, b)| a != b).count())
}
