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

use tracer_common::func::{FUNCTIONS, Family, Function};

use super::{
    At, How, Placement, ProbePoint, Programs,
    placement::{self, Arguments},
};
use crate::{
    elf::{ElfFile, NamedFunction},
    proc_maps::{FileId, Mapping, ProcessMaps},
    target_file::TargetFile,
};

/// Whether `program` is an allocation function's entry, whose return is
/// probed too (with uprobe sessions, by the same program).
pub fn is_call_program(program: &str) -> bool {
    FUNCTIONS
        .iter()
        .any(|f| f.family != Family::Syscall && f.returns() && f.program == program)
}

/// The arguments `f`'s probe must see as passed.
fn arguments(f: &Function) -> Arguments {
    let read = Arguments::first(f.reads);
    match f.family {
        Family::Pymalloc {
            context_first: true,
        } => read.after_context(),
        _ => read,
    }
}

/// Whether `name` is `symbol` or an LTO-privatised copy of it (`symbol.lto_priv.N`).
fn is_symbol_or_lto_copy(name: &str, symbol: &str) -> bool {
    name.strip_prefix(symbol).is_some_and(|rest| {
        rest.is_empty()
            || rest
                .strip_prefix(".lto_priv.")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// A function probed, and where in it.
#[derive(Clone, Debug)]
pub struct Probed {
    pub function: String,
    pub placement: Placement,
}

/// What was attached to one file.
#[derive(Clone, Debug, Default)]
pub struct FileProbes {
    /// The file as the first process that mapped it names it.
    pub path: String,
    /// Allocation functions and where each probe went.
    pub allocators: Vec<Probed>,
    /// `--pymalloc`: CPython object allocator functions probed.
    pub pymalloc: Vec<Probed>,
    /// Where `Py_FinalizeEx`'s probe went, if the file has it.
    pub py_finalize: Option<Placement>,
    /// Where libc's `exit` probe went, if the file is an allocator with it.
    pub libc_exit: Option<Placement>,
    /// When its probes were in place (CLOCK_MONOTONIC ns).
    pub ready_ns: u64,
}

impl FileProbes {
    pub fn is_allocator(&self) -> bool {
        !self.allocators.is_empty()
    }
}

impl fmt::Display for FileProbes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.path)?;
        for p in self.allocators.iter().chain(&self.pymalloc) {
            write!(f, " {}{}", p.function, p.placement)?;
        }
        if let Some(placement) = &self.py_finalize {
            write!(f, " Py_FinalizeEx{placement}")?;
        }
        if let Some(placement) = &self.libc_exit {
            write!(f, " exit{placement}")?;
        }
        Ok(())
    }
}

/// Every file probed so far, and the files found to need nothing.
pub struct AttachedFiles {
    files: HashMap<FileId, FileProbes>,
    /// The probed files, open for as long as their probes are: the kernel
    /// names each probe's file as it was given (`/proc/self/fd/N`).
    open: Vec<TargetFile>,
    /// Probe CPython's object allocator too.
    pymalloc: bool,
}

impl AttachedFiles {
    pub fn new(pymalloc: bool) -> Self {
        Self {
            files: HashMap::new(),
            open: Vec::new(),
            pymalloc,
        }
    }

    pub fn pymalloc(&self) -> bool {
        self.pymalloc
    }

    /// Attaches probes to every file `pid` maps that `wanted` accepts and
    /// that needs them and has none yet. Returns the probes of those files
    /// that hold allocators.
    pub fn attach_process(
        &mut self,
        programs: &mut Programs,
        pid: u32,
        maps: &ProcessMaps,
        wanted: impl Fn(&Mapping) -> bool,
    ) -> Result<Vec<FileProbes>> {
        let mut allocators = Vec::new();
        for mapping in maps.files().filter(|m| wanted(m)) {
            let id = FileId::from(mapping);
            if let Entry::Vacant(slot) = self.files.entry(id) {
                let (mut attached, file) = attach_file(programs, pid, mapping, self.pymalloc)?;
                attached.ready_ns = crate::clock::monotonic_ns();
                if attached.is_allocator() || attached.py_finalize.is_some() {
                    info!("pid {pid}: probes on {attached}");
                    self.open.extend(file);
                }
                slot.insert(attached);
            }
            if let Some(f) = self
                .files
                .get(&id)
                .filter(|f| f.is_allocator() || !f.pymalloc.is_empty())
            {
                allocators.push(f.clone());
            }
        }
        Ok(allocators)
    }
}

/// Opens the file `mapping` maps in `pid` once, checks it is the file the
/// process maps, and attaches its probes through that descriptor, at
/// offsets read from it. Returns the file too, if probes hold it.
fn attach_file(
    programs: &mut Programs,
    pid: u32,
    mapping: &Mapping,
    pymalloc: bool,
) -> Result<(FileProbes, Option<TargetFile>)> {
    let mut done = FileProbes {
        path: mapping.path.clone(),
        ..FileProbes::default()
    };
    let opened = TargetFile::mapped(pid, mapping)
        .map_err(crate::elf::ElfError::from)
        .and_then(|file| Ok((ElfFile::from_target(&file)?, file)));
    let (elf, file) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            // Not every mapped file is an ELF (locale archives, caches);
            // one that changed or went away since is skipped.
            debug!("pid {pid}: skipping {}: {err}", mapping.path);
            return Ok((done, None));
        }
    };
    // A marker's probe (`placement::choose_marker`) at function `offset`.
    let marker = |program, offset| {
        let place = placement::choose_marker(elf.bytes_at(offset, placement::DECODED_BYTES));
        let point = ProbePoint {
            program,
            offset: offset + place.offset,
            cookie: 0,
            at: At::Entry,
        };
        (point, place)
    };
    let mut points = Vec::new();
    let mut starts = FunctionStarts {
        elf: &elf,
        checked: !file.trusted(),
        refused: Vec::new(),
    };
    // A file that defines malloc and free is an allocator: libc, a static
    // executable, or a preloaded jemalloc/tcmalloc/mimalloc.
    if elf.function("malloc").is_some() && elf.function("free").is_some() {
        points.extend(allocators(&elf, &mut starts, &mut done));
        if let Some(exit) = starts.function("exit") {
            let (point, place) = marker("exit_entry", exit.file_offset);
            points.push(point);
            done.libc_exit = Some(place);
        }
    }
    if let Some(finalize) = starts.function("Py_FinalizeEx") {
        let (point, place) = marker("py_finalize_entry", finalize.file_offset);
        points.push(point);
        done.py_finalize = Some(place);
        if pymalloc {
            points.extend(pymalloc_functions(pid, &mut starts, mapping, &mut done));
        }
    }
    starts.warn(&file);
    if !points.is_empty() {
        programs.attach_all(&file, &points)?;
    }
    Ok((done, Some(file)))
}

/// The probes of CPython's object allocator in `elf`.
fn pymalloc_functions(
    pid: u32,
    starts: &mut FunctionStarts<'_>,
    mapping: &Mapping,
    done: &mut FileProbes,
) -> Vec<ProbePoint> {
    let elf = starts.elf;
    let mut points = Vec::new();
    let debug = crate::elf::debug_file(pid, elf, mapping);
    let mut probed_addresses = Vec::new();
    let mut single_stepped = Vec::new();
    for f in &FUNCTIONS {
        let Family::Pymalloc { context_first } = f.family else {
            continue;
        };
        // Without LTO every call of the internal functions comes through the
        // exported ones, and probing both would report each free twice
        // (frees have no return probe to tell nesting): only LTO copies,
        // which inlined callers reach directly, are probed.
        let matches = |name: &str| {
            is_symbol_or_lto_copy(name, f.symbol) && (!context_first || name.contains(".lto_priv."))
        };
        let own = elf.find_function(matches);
        let from_debug = own.is_none();
        let Some(NamedFunction {
            name,
            function: found,
        }) = own.or_else(|| debug.as_ref()?.find_function(matches))
        else {
            debug!("{}: no {}", elf.path(), f.symbol);
            continue;
        };
        // Where a debug file says a function is, the file itself must
        // start one (its unwind table): a probe goes nowhere else.
        if from_debug && elf.is_function_start(found.address) != Some(true) {
            warn!(
                "{}: the debug file puts {name} at {:#x}, where the file itself starts no function: not probed",
                elf.path(),
                found.address
            );
            continue;
        }
        if !from_debug && !starts.allows(&name, found.address) {
            continue;
        }
        // A debug file's addresses are the binary's; its offsets are not.
        let Some(file_offset) = elf.file_offset(found.address) else {
            continue;
        };
        if probed_addresses.contains(&found.address) {
            continue;
        }
        probed_addresses.push(found.address);
        let place = placement::choose(
            elf.bytes_at(file_offset, placement::DECODED_BYTES),
            arguments(f),
        );
        points.extend(call_points(
            f.program,
            file_offset + place.offset,
            f.cookie(),
            f.returns(),
        ));
        if place.how == How::SingleStepped {
            single_stepped.push(format!("{name} ({})", place.instruction));
        }
        done.pymalloc.push(Probed {
            function: name,
            placement: place,
        });
    }
    if !single_stepped.is_empty() {
        warn!(
            "{}: --pymalloc probes on {} are single-stepped by the kernel: expect about 10 µs per object allocation",
            elf.path(),
            single_stepped.join(", ")
        );
    }
    points
}

/// A function's probes: its return first (in a running process, an entry
/// seen without its return would leave the thread's call in flight), then
/// its entry, at the same place, where the return address is still at the
/// stack pointer (placement.rs).
fn call_points(program: &'static str, offset: u64, cookie: u64, returns: bool) -> Vec<ProbePoint> {
    let at = |at| ProbePoint {
        program,
        offset,
        cookie,
        at,
    };
    if returns {
        vec![at(At::Return), at(At::Entry)]
    } else {
        vec![at(At::Entry)]
    }
}

/// The probes of the libc allocation family in `elf`.
fn allocators(
    elf: &ElfFile,
    starts: &mut FunctionStarts<'_>,
    done: &mut FileProbes,
) -> Vec<ProbePoint> {
    let mut points = Vec::new();
    // glibc gives aligned_alloc and memalign one address: probe it once.
    let mut by_address: HashMap<u64, &'static str> = HashMap::new();
    let mut single_stepped_hot = Vec::new();
    for f in &FUNCTIONS {
        let Family::Libc { hot } = f.family else {
            continue;
        };
        let Some(func) = starts.function(f.symbol) else {
            debug!("{}: no {}", elf.path(), f.symbol);
            continue;
        };
        if let Some(first) = by_address.insert(func.address, f.symbol) {
            debug!("{}: {} is {first}, probed once", elf.path(), f.symbol);
            continue;
        }
        let code = elf.bytes_at(func.file_offset, placement::DECODED_BYTES);
        let place = placement::choose(code, arguments(f));
        points.extend(call_points(
            f.program,
            func.file_offset + place.offset,
            f.cookie(),
            f.returns(),
        ));
        if hot && place.how == How::SingleStepped {
            single_stepped_hot.push(format!("{} ({})", f.symbol, place.instruction));
        }
        done.allocators.push(Probed {
            function: f.symbol.to_owned(),
            placement: place,
        });
    }
    if !single_stepped_hot.is_empty() {
        warn!(
            "{}: probes on {} are single-stepped by the kernel (no emulated instruction in their entry block before their arguments change): expect about 10 µs per call",
            elf.path(),
            single_stepped_hot.join(", ")
        );
    }
    points
}

/// Where a file's symbols may put a probe. A symbol is only a name for an
/// address: a crafted file can name the middle of an instruction, and a
/// uprobe's `int3` there corrupts that instruction for every process that
/// maps the file. So in a file someone other than root can change, a
/// function is probed only where the file's own unwind table does not say
/// otherwise (`.eh_frame_hdr` lists every function start). A file without
/// a readable table is probed: nothing in it contradicts its symbols, and
/// its probes reach only the processes that map that very inode.
struct FunctionStarts<'a> {
    elf: &'a ElfFile,
    /// Not root's own file: its symbols are checked.
    checked: bool,
    /// Symbols refused, for one warning per file.
    refused: Vec<String>,
}

impl FunctionStarts<'_> {
    /// `name`, if it may be probed.
    fn function(&mut self, name: &str) -> Option<crate::elf::Function> {
        let f = self.elf.function(name)?;
        self.allows(name, f.address).then_some(f)
    }

    fn allows(&mut self, name: &str, address: u64) -> bool {
        if self.checked && self.elf.is_function_start(address) == Some(false) {
            self.refused.push(format!("{name} ({address:#x})"));
            return false;
        }
        true
    }

    fn warn(&self, file: &TargetFile) {
        if !self.refused.is_empty() {
            warn!(
                "{}: its symbols put {} where its own unwind table starts no function (inside an instruction?): not probed",
                file.shown(),
                self.refused.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_glibc_starts_a_function_at_every_symbol_probed() {
        // What keeps the check of FunctionStarts from refusing an honest
        // libc in a container (not root's own file on the host).
        let elf = ElfFile::open(std::path::Path::new("/lib/x86_64-linux-gnu/libc.so.6"))
            .expect("system libc");
        let names = FUNCTIONS
            .iter()
            .filter(|f| matches!(f.family, Family::Libc { .. }))
            .map(|f| f.symbol)
            .chain(["exit"]);
        for name in names {
            let Some(f) = elf.function(name) else {
                continue;
            };
            assert_eq!(elf.is_function_start(f.address), Some(true), "{name}");
        }
    }

    #[test]
    fn lto_copies_match() {
        assert!(is_symbol_or_lto_copy(
            "_PyObject_Malloc",
            "_PyObject_Malloc"
        ));
        assert!(is_symbol_or_lto_copy(
            "_PyObject_Malloc.lto_priv.0",
            "_PyObject_Malloc"
        ));
        assert!(!is_symbol_or_lto_copy(
            "_PyObject_Malloc.lto_priv.0.cold",
            "_PyObject_Malloc"
        ));
        assert!(!is_symbol_or_lto_copy(
            "_PyObject_Malloc.isra.0",
            "_PyObject_Malloc"
        ));
        assert!(!is_symbol_or_lto_copy(
            "_PyObject_MallocX",
            "_PyObject_Malloc"
        ));
    }
}
