//! Which probes a process's mapped files get, attached once per file.
//!
//! Uprobes live on a file (inode), not on a process: one attachment to a
//! libc serves every process that maps it, and the traced-set filter in the
//! kernel decides whose calls are recorded.

use std::{
    collections::{HashMap, hash_map::Entry},
    fmt,
};

use anyhow::Result;
use log::{debug, info, warn};

use super::{How, Placement, Probes, placement};
use crate::{
    elf::ElfFile,
    proc_maps::{FileId, Mapping, ProcessMaps, mapped_file_path},
};

/// An allocation function: its symbol, the program that records its entry,
/// and whether its return is probed (to learn the pointer).
struct AllocFunction {
    symbol: &'static str,
    program: &'static str,
    returns: bool,
    /// Called often enough that a single-stepped probe matters.
    hot: bool,
}

const fn entry(symbol: &'static str, program: &'static str, hot: bool) -> AllocFunction {
    AllocFunction {
        symbol,
        program,
        returns: true,
        hot,
    }
}

/// The libc allocation family. `free` has no return probe and is the only
/// one whose NULL argument does nothing, so the only one whose probe may skip
/// a NULL check.
const ALLOC_FUNCTIONS: [AllocFunction; 10] = [
    entry("malloc", "malloc_entry", true),
    entry("calloc", "calloc_entry", true),
    entry("realloc", "realloc_entry", true),
    entry("reallocarray", "reallocarray_entry", false),
    entry("posix_memalign", "posix_memalign_entry", false),
    entry("aligned_alloc", "memalign_entry", false),
    entry("memalign", "memalign_entry", false),
    entry("valloc", "valloc_entry", false),
    entry("pvalloc", "pvalloc_entry", false),
    AllocFunction {
        symbol: "free",
        program: "free_entry",
        returns: false,
        hot: true,
    },
];

/// What was attached to one file.
#[derive(Clone, Debug, Default)]
pub struct FileProbes {
    /// The file as the first process that mapped it names it.
    pub path: String,
    /// Allocation functions and where each probe went.
    pub allocators: Vec<(&'static str, Placement)>,
    pub py_finalize: bool,
    pub libc_exit: bool,
}

impl FileProbes {
    pub fn is_allocator(&self) -> bool {
        !self.allocators.is_empty()
    }
}

impl fmt::Display for FileProbes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.path)?;
        for (name, p) in &self.allocators {
            write!(f, " {name}{p}")?;
        }
        if self.py_finalize {
            write!(f, " Py_FinalizeEx")?;
        }
        if self.libc_exit {
            write!(f, " exit")?;
        }
        Ok(())
    }
}

/// Every file probed so far, and the files found to need nothing.
#[derive(Default)]
pub struct AttachedFiles {
    files: HashMap<FileId, FileProbes>,
}

impl AttachedFiles {
    /// Attaches probes to every file `pid` maps that needs them and has none
    /// yet. Returns the probes of `pid`'s files that hold allocators.
    pub fn attach_process(
        &mut self,
        probes: &mut Probes,
        pid: u32,
        maps: &ProcessMaps,
    ) -> Result<Vec<FileProbes>> {
        let mut allocators = Vec::new();
        for mapping in maps.files() {
            let id = FileId::from(mapping);
            if let Entry::Vacant(slot) = self.files.entry(id) {
                let attached = attach_file(probes, pid, maps, mapping)?;
                if attached.is_allocator() || attached.py_finalize {
                    info!("pid {pid}: probes on {attached}");
                }
                slot.insert(attached);
            }
            if let Some(f) = self.files.get(&id).filter(|f| f.is_allocator()) {
                allocators.push(f.clone());
            }
        }
        Ok(allocators)
    }
}

fn attach_file(
    probes: &mut Probes,
    pid: u32,
    maps: &ProcessMaps,
    mapping: &Mapping,
) -> Result<FileProbes> {
    let mut done = FileProbes {
        path: mapping.path.clone(),
        ..FileProbes::default()
    };
    let path = mapped_file_path(pid, maps, mapping);
    let elf = match ElfFile::open(&path) {
        Ok(elf) => elf,
        Err(err) => {
            // Not every mapped file is an ELF (locale archives, caches).
            debug!("pid {pid}: skipping {}: {err}", mapping.path);
            return Ok(done);
        }
    };
    // A file that defines malloc and free is an allocator: libc, a static
    // executable, or a preloaded jemalloc/tcmalloc/mimalloc.
    if elf.function("malloc").is_some() && elf.function("free").is_some() {
        attach_allocators(probes, &elf, &path, &mut done)?;
        if let Some(exit) = elf.function("exit") {
            probes.attach("exit_entry", &path, exit.file_offset)?;
            done.libc_exit = true;
        }
    }
    if let Some(finalize) = elf.function("Py_FinalizeEx") {
        probes.attach("py_finalize_entry", &path, finalize.file_offset)?;
        done.py_finalize = true;
    }
    Ok(done)
}

fn attach_allocators(
    probes: &mut Probes,
    elf: &ElfFile,
    path: &std::path::Path,
    done: &mut FileProbes,
) -> Result<()> {
    // glibc gives aligned_alloc and memalign one address: probe it once.
    let mut by_address: HashMap<u64, &'static str> = HashMap::new();
    let mut single_stepped_hot = Vec::new();
    for f in &ALLOC_FUNCTIONS {
        let Some(func) = elf.function(f.symbol) else {
            debug!("{}: no {}", elf.path(), f.symbol);
            continue;
        };
        if let Some(first) = by_address.insert(func.address, f.symbol) {
            debug!("{}: {} is {first}, probed once", elf.path(), f.symbol);
            continue;
        }
        let code = elf.bytes_at(func.file_offset, 32);
        let place = placement::choose(code, !f.returns);
        probes.attach(f.program, path, func.file_offset + place.offset)?;
        if f.returns {
            // Never past a NULL check here, so the return address is still
            // at the stack pointer where the entry probe sits.
            probes.attach("alloc_return", path, func.file_offset + place.offset)?;
        }
        if f.hot && place.how == How::SingleStepped {
            single_stepped_hot.push(format!("{} ({})", f.symbol, place.instruction));
        }
        done.allocators.push((f.symbol, place));
    }
    if !single_stepped_hot.is_empty() {
        warn!(
            "{}: probes on {} are single-stepped by the kernel (no emulated instruction at their entry): expect about 10 µs per call",
            elf.path(),
            single_stepped_hot.join(", ")
        );
    }
    Ok(())
}
