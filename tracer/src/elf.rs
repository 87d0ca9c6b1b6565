//! The few facts tracer needs from an ELF file: where a function is, in
//! virtual addresses and in file offsets, its code bytes, and whether an
//! address starts a function by the file's own unwind table.
//!
//! A file only root can change is mapped into memory; any other (a user's
//! library, a container's) is read into memory instead, bounded: its owner
//! could truncate it under a mapping, and a read past the end of a mapping
//! is SIGBUS (docs/security.md).

use std::{
    fs::File,
    io::{self, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _},
};

use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use crate::target_file::{FileError, TargetFile};

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path} is {size} bytes, more than the {MAX_READ} tracer reads of a file")]
    TooLarge { path: String, size: u64 },
    #[error("{path} is not an ELF file tracer can read: {source}")]
    Parse { path: String, source: object::Error },
}

/// The largest file read into memory (an unstripped libpython is ~30 MB,
/// its debug file ~100 MB).
const MAX_READ: u64 = 512 << 20;

/// An ELF file's contents.
pub struct ElfFile {
    path: String,
    data: Data,
}

enum Data {
    /// A file only root can change.
    Mapped(Mmap),
    /// Any other, read once.
    Read(Vec<u8>),
}

impl std::ops::Deref for Data {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Data::Mapped(m) => m,
            Data::Read(v) => v,
        }
    }
}

/// A function symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    /// Virtual address in the file's own address space.
    pub address: u64,
    /// Size in bytes (0 if the symbol table does not say).
    pub size: u64,
    /// Offset of `address` in the file: what uprobes attach to.
    pub file_offset: u64,
}

/// A function symbol found by a test of its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedFunction {
    pub name: String,
    pub function: Function,
}

impl ElfFile {
    /// A file of the host's own that only root can change (what tests
    /// read; files of processes are opened through `TargetFile`).
    #[cfg(test)]
    pub fn open(path: &std::path::Path) -> Result<Self, ElfError> {
        let file = File::open(path).map_err(|source| ElfError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::map(&file, path.display().to_string())
    }

    /// The contents of a file a process maps or names: mapped if only root
    /// can change it, else read.
    pub fn from_target(file: &TargetFile) -> Result<Self, ElfError> {
        let path = file.shown().to_owned();
        if file.trusted() {
            let dup = file.try_clone().map_err(|source| ElfError::Open {
                path: path.clone(),
                source,
            })?;
            return Self::map(&dup, path);
        }
        let size = file.len();
        if size > MAX_READ {
            return Err(ElfError::TooLarge { path, size });
        }
        let mut data = vec![0u8; size as usize];
        let got = file.read_at(0, &mut data);
        // Its owner may have cut it since: what is left is parsed.
        data.truncate(got);
        let elf = Self {
            path,
            data: Data::Read(data),
        };
        elf.object()?;
        Ok(elf)
    }

    fn map(file: &File, path: String) -> Result<Self, ElfError> {
        // SAFETY: read-only, of a file only root can truncate (tracer runs
        // as root and does not).
        let data = unsafe { Mmap::map(file) }.map_err(|source| ElfError::Open {
            path: path.clone(),
            source,
        })?;
        let elf = Self {
            path,
            data: Data::Mapped(data),
        };
        elf.object()?;
        Ok(elf)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn object(&self) -> Result<object::File<'_>, ElfError> {
        object::File::parse(&self.data[..]).map_err(|source| ElfError::Parse {
            path: self.path.clone(),
            source,
        })
    }

    /// The defined function called `name`: dynamic symbols first (what a
    /// stripped library still has), then the full symbol table.
    pub fn function(&self, name: &str) -> Option<Function> {
        let obj = self.object().ok()?;
        let found = obj.dynamic_symbols().chain(obj.symbols()).find(|s| {
            s.is_definition() && s.kind() == object::SymbolKind::Text && s.name() == Ok(name)
        })?;
        let file_offset = self.file_offset(found.address())?;
        Some(Function {
            address: found.address(),
            size: found.size(),
            file_offset,
        })
    }

    /// The first defined function whose name satisfies `matches`.
    pub fn find_function(&self, matches: impl Fn(&str) -> bool) -> Option<NamedFunction> {
        let obj = self.object().ok()?;
        let found = obj.dynamic_symbols().chain(obj.symbols()).find(|s| {
            s.is_definition()
                && s.kind() == object::SymbolKind::Text
                && s.name().is_ok_and(&matches)
        })?;
        Some(NamedFunction {
            name: found.name().ok()?.to_owned(),
            function: Function {
                address: found.address(),
                size: found.size(),
                file_offset: self.file_offset(found.address()).unwrap_or(0),
            },
        })
    }

    /// The GNU build id, as lowercase hex.
    pub fn build_id(&self) -> Option<String> {
        let obj = self.object().ok()?;
        let id = obj.build_id().ok()??;
        Some(id.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The address of the defined symbol (function or data) called `name`.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        let obj = self.object().ok()?;
        obj.dynamic_symbols()
            .chain(obj.symbols())
            .find(|s| s.is_definition() && s.name() == Ok(name))
            .map(|s| s.address())
    }

    /// Up to `len` bytes of the file's contents at virtual address `vaddr`.
    pub fn bytes_at_vaddr(&self, vaddr: u64, len: usize) -> &[u8] {
        self.file_offset(vaddr)
            .map_or(&[], |offset| self.bytes_at(offset, len))
    }

    /// The virtual address a file offset is loaded at.
    pub fn vaddr_of_offset(&self, file_offset: u64) -> Option<u64> {
        let obj = self.object().ok()?;
        obj.segments().find_map(|seg| {
            let (offset, filesz) = seg.file_range();
            (file_offset >= offset && file_offset < offset + filesz.max(1))
                .then(|| seg.address() + (file_offset - offset))
        })
    }

    /// The file offset a virtual address is loaded from.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        let obj = self.object().ok()?;
        obj.segments().find_map(|seg| {
            let (offset, filesz) = seg.file_range();
            let start = seg.address();
            (vaddr >= start && vaddr < start + filesz).then(|| offset + (vaddr - start))
        })
    }

    /// Whether `vaddr` starts a function by the file's own unwind table
    /// (`.eh_frame_hdr`, whose search table lists the first address of
    /// every function with unwind information); `None` if the file has no
    /// table tracer can read. What a debug file says is a function is
    /// probed only if the file itself agrees.
    pub fn is_function_start(&self, vaddr: u64) -> Option<bool> {
        let obj = self.object().ok()?;
        let hdr = obj.section_by_name(".eh_frame_hdr")?;
        let data = hdr.data().ok()?;
        // version 1; eh_frame_ptr encoding; fde_count encoding: udata4;
        // table encoding: datarel | sdata4, as every linker writes them.
        let [1, ptr_enc, 0x03, 0x3b, ..] = *data else {
            return None;
        };
        let ptr_len = match ptr_enc & 0x0f {
            0x03 | 0x0b => 4,
            0x04 | 0x0c => 8,
            _ => return None,
        };
        let count_at = 4 + ptr_len;
        let count = u32::from_le_bytes(data.get(count_at..count_at + 4)?.try_into().ok()?);
        let table = data.get(count_at + 4..)?;
        let entries = table.get(..(count as usize).checked_mul(8)?)?;
        let start = |i: usize| {
            let at = i * 8;
            let rel = i32::from_le_bytes(entries[at..at + 4].try_into().unwrap_or([0; 4]));
            hdr.address().wrapping_add_signed(i64::from(rel))
        };
        // Sorted by start address.
        let (mut lo, mut hi) = (0usize, count as usize);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match start(mid).cmp(&vaddr) {
                std::cmp::Ordering::Equal => return Some(true),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Some(false)
    }

    /// Up to `len` bytes at a file offset.
    pub fn bytes_at(&self, offset: u64, len: usize) -> &[u8] {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        let end = start.saturating_add(len).min(self.data.len());
        &self.data[start..end]
    }
}

/// A private copy of `file` for blazesym, which maps the files it reads: a
/// sealed memfd that no one can change or cut, with the sections that name
/// other files (`.gnu_debuglink`, `.gnu_debugaltlink`, `.debug_sup`)
/// renamed, so that blazesym follows no name the file chose and reads only
/// its own symbols and DWARF.
pub fn private_copy(file: &TargetFile) -> io::Result<File> {
    if file.len() > MAX_READ {
        return Err(io::Error::other(format!(
            "{} bytes, more than the {MAX_READ} tracer copies",
            file.len()
        )));
    }
    let mut data = vec![0u8; file.len() as usize];
    let got = file.read_at(0, &mut data);
    data.truncate(got);
    for at in link_section_names(&data) {
        data[at] = b'X';
    }
    // SAFETY: memfd_create takes a name and flags and returns a new fd.
    let fd = unsafe {
        libc::memfd_create(
            c"tracer-copy".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor owned by nobody else.
    let mut copy = unsafe { File::from_raw_fd(fd) };
    copy.write_all(&data)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own descriptor.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(copy)
}

/// Where the names of the sections that link to other files are, in
/// `data`'s section name table.
fn link_section_names(data: &[u8]) -> Vec<usize> {
    use object::read::elf::{ElfFile64, FileHeader as _, SectionHeader as _};
    let Ok(elf) = ElfFile64::<object::Endianness>::parse(data) else {
        return Vec::new();
    };
    let endian = elf.endian();
    let table = elf.elf_section_table();
    let Some(names) = table
        .section(object::SectionIndex(
            elf.elf_header().shstrndx(endian, data).unwrap_or(0) as usize,
        ))
        .ok()
        .and_then(|s| s.file_range(endian))
    else {
        return Vec::new();
    };
    table
        .iter()
        .filter_map(|section| {
            let name = table.section_name(endian, section).ok()?;
            matches!(
                name,
                b".gnu_debuglink" | b".gnu_debugaltlink" | b".debug_sup"
            )
            .then(|| usize::try_from(names.0 + u64::from(section.sh_name(endian))).ok())?
        })
        .filter(|&at| at < data.len())
        .collect()
}

/// The build-id debug file of `elf` (mapped by `pid` at `mapping`): in the
/// process's root, on the host, or beside an interpreter unpacked in a
/// private tree (`<prefix>/bin/python` with `<prefix>/lib/debug`). Its
/// symbols say where probes go: it must be root's (and writable by no one
/// else), opened without following links, and carry the same build id.
pub fn debug_file(pid: u32, elf: &ElfFile, mapping: &crate::proc_maps::Mapping) -> Option<ElfFile> {
    let id = elf.build_id()?;
    let (dir, file) = id.split_at(2);
    let relative = format!("usr/lib/debug/.build-id/{dir}/{file}.debug");
    let prefix = std::path::Path::new(&mapping.path).parent()?.parent()?;
    let private = prefix.join("lib/debug");
    let private = private.strip_prefix("/").ok()?;
    let in_private = format!("{}/.build-id/{dir}/{file}.debug", private.display());
    let process_root = crate::proc_maps::host_path(pid, "/");
    [
        (process_root.as_path(), relative.as_str()),
        (std::path::Path::new("/"), relative.as_str()),
        (std::path::Path::new("/"), in_private.as_str()),
    ]
    .into_iter()
    .find_map(|(root, path)| {
        let file = crate::target_file::TargetFile::root_owned(root, path)
            .inspect_err(|err| log::debug!("{path}: {err}"))
            .ok()?;
        let debug = ElfFile::from_target(&file).ok()?;
        (debug.build_id().as_deref() == Some(id.as_str())).then_some(debug)
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn libc() -> ElfFile {
        ElfFile::open(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).expect("system libc")
    }

    #[test]
    fn finds_malloc_and_its_code() {
        let libc = libc();
        let malloc = libc.function("malloc").expect("malloc symbol");
        assert!(malloc.size > 0);
        // libc's text is mapped at file offset == vaddr on x86-64 distributions.
        assert_eq!(libc.file_offset(malloc.address), Some(malloc.file_offset));
        assert_eq!(libc.bytes_at(malloc.file_offset, 16).len(), 16);
        assert!(libc.function("no_such_function_here").is_none());
    }

    #[test]
    fn finds_data_symbols_and_maps_addresses_both_ways() {
        let libc = libc();
        let environ = libc.symbol("environ").expect("environ is exported data");
        assert!(libc.function("environ").is_none(), "not a function");
        let malloc = libc.function("malloc").expect("malloc");
        assert_eq!(
            libc.vaddr_of_offset(malloc.file_offset),
            Some(malloc.address)
        );
        assert_eq!(
            libc.bytes_at_vaddr(malloc.address, 4),
            libc.bytes_at(malloc.file_offset, 4)
        );
        assert!(environ > 0);
    }

    #[test]
    fn bytes_at_is_clamped() {
        let libc = libc();
        assert!(libc.bytes_at(u64::MAX, 8).is_empty());
    }

    #[test]
    fn function_starts_from_the_unwind_table() {
        let libc = libc();
        let malloc = libc.function("malloc").expect("malloc");
        assert_eq!(libc.is_function_start(malloc.address), Some(true));
        assert_eq!(libc.is_function_start(malloc.address + 1), Some(false));
    }

    #[test]
    fn private_copies_link_nowhere_and_are_sealed() {
        let me = std::process::id();
        let maps = crate::proc_maps::ProcessMaps::read(me).expect("maps");
        let mapping = maps.files().find(|m| m.is_glibc()).expect("libc");
        let target = TargetFile::mapped(me, mapping).expect("open");
        let copy = private_copy(&target).expect("copy");
        let data = std::fs::read(format!("/proc/self/fd/{}", copy.as_raw_fd())).expect("read");
        let obj = object::File::parse(&data[..]).expect("still ELF");
        assert!(obj.section_by_name(".gnu_debuglink").is_none());
        assert!(obj.section_by_name(".text").is_some());
        assert!(
            std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/self/fd/{}", copy.as_raw_fd()))
                .and_then(|mut f| f.write_all(b"x"))
                .is_err()
        );
    }

    #[test]
    fn open_reports_missing_file() {
        let err = ElfFile::open(Path::new("/nonexistent/libc.so.6"))
            .err()
            .expect("error");
        assert!(err.to_string().contains("/nonexistent/libc.so.6"));
    }
}
