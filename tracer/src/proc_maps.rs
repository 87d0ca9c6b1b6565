//! A process's memory map, from `/proc/PID/maps`.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub executable: bool,
    /// Offset of `start` in the mapped file.
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The path as the process sees it (in its own mount namespace), or a
    /// pseudo name such as `[heap]`; empty for anonymous memory.
    pub path: String,
}

impl Mapping {
    /// Whether the mapping is backed by a file (not `[heap]`, `[vdso]`, anonymous).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }

    /// Whether it maps a glibc (`libc.so.6`, or `libc-2.x.so` before 2.34).
    pub fn is_glibc(&self) -> bool {
        let name = self.path.rsplit('/').next().unwrap_or("");
        name.starts_with("libc.so") || name.starts_with("libc-")
    }

    /// The file offset that `addr` (inside this mapping) was loaded from.
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// The parsed map of one process, sorted by address.
#[derive(Clone, Debug, Default)]
pub struct ProcessMaps {
    mappings: Vec<Mapping>,
}

impl ProcessMaps {
    pub fn read(pid: u32) -> io::Result<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/maps"))?;
        Ok(Self::parse(&text))
    }

    /// Parses the text of a maps file; malformed lines are skipped (the
    /// kernel's format is fixed, so there are none in practice).
    pub fn parse(text: &str) -> Self {
        let mut mappings: Vec<Mapping> = text.lines().filter_map(parse_line).collect();
        mappings.sort_by_key(|m| m.start);
        Self { mappings }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.mappings.iter()
    }

    /// The mapping that contains `addr`.
    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    /// Every distinct mapped file (first mapping of each inode).
    pub fn files(&self) -> impl Iterator<Item = &Mapping> {
        let mut seen = std::collections::HashSet::new();
        self.mappings
            .iter()
            .filter(move |m| m.is_file() && seen.insert(FileId::from(*m)))
    }
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?.as_bytes();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start().to_owned();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        readable: perms.first() == Some(&b'r'),
        executable: perms.get(2) == Some(&b'x'),
        offset,
        dev_major: u32::from_str_radix(major, 16).ok()?,
        dev_minor: u32::from_str_radix(minor, 16).ok()?,
        inode,
        path,
    })
}

/// A path inside `pid`'s mount namespace, as this process can open it:
/// through `/proc/PID/root` (a container's files are not at the same path on
/// the host).
pub fn host_path(pid: u32, path: &str) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(path.trim_start_matches('/'))
}

/// A file's identity: device and inode as `/proc/PID/maps` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
}

impl From<&Mapping> for FileId {
    fn from(m: &Mapping) -> Self {
        Self {
            dev_major: m.dev_major,
            dev_minor: m.dev_minor,
            inode: m.inode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234 /usr/bin/python3.11
55d0c0a01000-55d0c0c00000 r-xp 00001000 fe:01 1234 /usr/bin/python3.11
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000028000 r--p 00000000 fe:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000028000-7f000019d000 r-xp 00028000 fe:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f00001a0000-7f00001a4000 rw-p 00000000 00:00 0 
7ffd000000000-7ffd000021000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn parses_and_finds() {
        let maps = ProcessMaps::parse(SAMPLE);
        let libc = maps.find(0x7f0000028000 + 0x10).expect("libc text");
        assert!(libc.executable);
        assert!(libc.path.ends_with("/libc.so.6"));
        assert_eq!(libc.file_offset(0x7f0000028010), 0x28010);
        assert_eq!((libc.dev_major, libc.dev_minor, libc.inode), (0xfe, 1, 99));
        assert!(maps.find(0x7f00001a4000).is_none(), "end is exclusive");
        assert!(maps.find(0x1000).is_none());
        let anon = maps.find(0x7f00001a0000).expect("anonymous");
        assert!(!anon.is_file());
        assert_eq!(maps.files().count(), 2);
    }

    #[test]
    fn host_path_goes_through_proc_root() {
        assert_eq!(
            host_path(42, "/usr/lib/libc.so.6"),
            PathBuf::from("/proc/42/root/usr/lib/libc.so.6")
        );
    }
}
