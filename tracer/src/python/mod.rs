//! CPython: finding the interpreter in a process, and turning the frames
//! the kernel read into functions, files and lines.

mod code;
pub mod heap;
mod layout;
mod lines;
mod memory;
mod thread_local;
mod tls;

use std::collections::HashMap;

use tracer_common::{PyConfig, PyFrame};

use self::{
    code::{CodeError, CodeObject},
    layout::{GilState, Layout},
    memory::Memory,
    thread_local::{ThreadLocal, ThreadLocalError},
};
use crate::{
    elf::ElfFile,
    lru::Lru,
    proc_maps::{FileId, Mapping, ProcessMaps},
    target_file::TargetFile,
};

/// Code objects (with their line tables) kept per process, and the
/// kernel's cut copies: a process runs a few thousand.
const MAX_CODES: usize = 16_384;
const MAX_PARTIAL: usize = 4_096;

/// The contents of the file `m` maps in `pid`, through its descriptor.
fn mapped_elf(pid: u32, m: &Mapping) -> Option<ElfFile> {
    ElfFile::from_target(&TargetFile::mapped(pid, m).ok()?).ok()
}

/// The CPython interpreter of one process.
#[derive(Clone, Debug)]
pub struct Interpreter {
    /// "3.11"
    pub version: String,
    /// The file holding the interpreter: the executable or libpython.
    pub module: String,
    pub layout: Layout,
    /// What the kernel needs, with this process's addresses filled in.
    pub config: PyConfig,
    /// `PyCode_Type` in the process, to check code objects against.
    code_type: Option<u64>,
    /// What a walk of its heap needs.
    pub heap: heap::HeapTarget,
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    #[error("{0} does not say which CPython it is")]
    UnknownVersion(String),
    #[error("its libc is not glibc (no pthread_getspecific to read thread states through)")]
    NotGlibc,
    #[error("CPython 3.{0}: {1}")]
    ThreadLocal(u8, ThreadLocalError),
}

/// "python3.11", "libpython3.11.so.1.0", "python3.13t" -> (11, free-threaded?)
fn version_from_name(name: &str) -> Option<(u8, bool)> {
    let rest = &name[name.find("python3.")? + "python3.".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let minor = digits.parse().ok()?;
    Some((minor, rest[digits.len()..].starts_with('t')))
}

/// The load bias of a mapped file: its address in the process minus its
/// address in the file.
fn bias(elf: &ElfFile, maps: &ProcessMaps, file: FileId) -> Option<u64> {
    let first = maps.iter().find(|m| FileId::from(*m) == file)?;
    Some(first.start.wrapping_sub(elf.vaddr_of_offset(first.offset)?))
}

/// Finds the CPython interpreter `pid` runs, if it runs one.
pub fn detect(pid: u32, maps: &ProcessMaps) -> Result<Option<Interpreter>, DetectError> {
    // The interpreter is the executable or a libpython; an embedding
    // program names its libpython too.
    let candidates = maps.files().filter(|m| {
        m.path
            .rsplit('/')
            .next()
            .is_some_and(|n| n.contains("python"))
    });
    let Some((mapping, elf, runtime_vaddr)) = candidates
        .filter_map(|m| {
            let elf = mapped_elf(pid, m)?;
            let runtime = elf.symbol("_PyRuntime")?;
            Some((m.clone(), elf, runtime))
        })
        .next()
    else {
        return Ok(None);
    };
    let name = mapping.path.rsplit('/').next().unwrap_or(&mapping.path);
    let from_name = version_from_name(name);
    if let Some((minor, true)) = from_name {
        return Err(layout::LayoutError::FreeThreaded(minor).into());
    }
    // 3.11+ export their PY_VERSION_HEX as Py_Version.
    let minor = elf
        .symbol("Py_Version")
        .and_then(|v| elf.bytes_at_vaddr(v, 4).try_into().ok())
        .map(|b: [u8; 4]| ((u32::from_ne_bytes(b) >> 16) & 0xff) as u8)
        .or(from_name.map(|(minor, _)| minor))
        .ok_or_else(|| DetectError::UnknownVersion(mapping.path.clone()))?;
    let bias = bias(&elf, maps, FileId::from(&mapping))
        .ok_or_else(|| DetectError::UnknownVersion(mapping.path.clone()))?;
    let runtime = bias.wrapping_add(runtime_vaddr);
    let memory = Memory::new(pid);
    let layout = Layout::for_version(minor, &memory, runtime)?;
    let pthread_specific = match glibc_specific_block(pid, maps) {
        Some(offset) => offset,
        // Still in its dynamic loader: libc is not mapped yet.
        None if !maps_a_libc(maps) => return Ok(None),
        None => return Err(DetectError::NotGlibc),
    };
    let code_type = elf.symbol("PyCode_Type").map(|v| bias.wrapping_add(v));
    let mut config = PyConfig {
        runtime,
        pthread_specific,
        code_type: code_type.unwrap_or(0),
        ..layout.kernel
    };
    if layout.gilstate == GilState::ThreadLocal {
        match thread_local::find(&elf, bias, &memory) {
            Ok(Some(ThreadLocal::Static { offset })) => config.tls_offset = offset,
            Ok(Some(ThreadLocal::Module { module, offset })) => {
                config.tls_module = module;
                config.tls_offset = offset;
            }
            // Its loader has not relocated libpython yet: found later.
            Ok(None) => return Ok(None),
            Err(err) => return Err(DetectError::ThreadLocal(minor, err)),
        }
    }
    let heap = heap::HeapTarget {
        minor,
        runtime,
        type_type: elf.symbol("PyType_Type").map(|v| bias.wrapping_add(v)),
        statics: arena_statics(pid, minor, &elf, &mapping, bias),
    };
    Ok(Some(Interpreter {
        version: format!("3.{minor}"),
        module: mapping.path.clone(),
        config,
        layout,
        code_type,
        heap,
    }))
}

/// 3.8 to 3.11: where obmalloc's arena table may be, from the file's own
/// symbols or code, else from its build-id debug file.
fn arena_statics(
    pid: u32,
    minor: u8,
    elf: &ElfFile,
    mapping: &Mapping,
    bias: u64,
) -> heap::ArenaStatics {
    if minor > 11 {
        return heap::ArenaStatics::default();
    }
    let own = heap::arena_statics(elf, None, bias);
    if own.source == "symbols" || minor == 11 && !own.candidates.is_empty() {
        return own;
    }
    match crate::elf::debug_file(pid, elf, mapping) {
        Some(debug) => heap::arena_statics(elf, Some(&debug), bias),
        None => own,
    }
}

fn is_glibc_name(name: &str) -> bool {
    name.starts_with("libc.so") || name.starts_with("libc-")
}

/// Whether a C library (glibc's, or musl's loader-and-libc) is mapped.
fn maps_a_libc(maps: &ProcessMaps) -> bool {
    maps.files().any(|m| {
        let name = m.path.rsplit('/').next().unwrap_or("");
        is_glibc_name(name) || name.starts_with("ld-musl") || name.starts_with("libc.musl")
    })
}

fn glibc_specific_block(pid: u32, maps: &ProcessMaps) -> Option<u32> {
    maps.files().find_map(|m: &Mapping| {
        if !is_glibc_name(m.path.rsplit('/').next()?) {
            return None;
        }
        tls::specific_block_offset(&mapped_elf(pid, m)?)
    })
}

/// Where a Python frame is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PyLocation {
    /// The interpreter, e.g. "python3.11".
    pub module: String,
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Why the frame could not be read, if it could not.
    pub unknown: Option<String>,
}

struct Process {
    interpreter: Interpreter,
    memory: Memory,
    /// By (address, co_firstlineno): a code object freed and another made
    /// at its address is read again unless both start on the same line.
    codes: Lru<(u64, i32), Result<CodeObject, CodeError>>,
    /// Kernel copies whose line table was cut: used only if the process can
    /// no longer be read.
    partial: Lru<(u64, i32), CodeObject>,
}

/// Resolves Python frames of the traced CPython processes, while they run:
/// code objects are read from the process, once each.
#[derive(Default)]
pub struct Resolver {
    processes: HashMap<u32, Process>,
}

impl Resolver {
    pub fn add(&mut self, pid: u32, interpreter: Interpreter) {
        self.processes.insert(
            pid,
            Process {
                interpreter,
                memory: Memory::new(pid),
                codes: Lru::new(MAX_CODES),
                partial: Lru::new(MAX_PARTIAL),
            },
        );
    }

    /// A code object the kernel copied while `pid` ran it.
    pub fn learn(&mut self, pid: u32, rec: &tracer_common::CodeRecord) {
        let Some(p) = self.processes.get_mut(&pid) else {
            return;
        };
        // A name the kernel could not copy (kind 0: unreadable, or a length
        // no string has): the process is read instead, or the frame is
        // unknown, rather than named with bytes that are no name.
        if rec.name_kind == 0 || rec.filename_kind == 0 {
            return;
        }
        let key = (rec.code, rec.firstlineno);
        let code = CodeObject::from_record(rec);
        if rec.table_full == 0 {
            p.codes.insert(key, Ok(code));
        } else {
            p.partial.insert(key, code);
        }
    }

    /// `pid` replaced its image: its code objects are gone.
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    pub fn interpreter(&self, pid: u32) -> Option<&Interpreter> {
        self.processes.get(&pid).map(|p| &p.interpreter)
    }

    /// Where `frame` is; `None` for the interpreter's own hidden frames.
    pub fn resolve(&mut self, pid: u32, frame: &PyFrame) -> Option<PyLocation> {
        let unknown = |module: String, why: String| PyLocation {
            module,
            function: crate::frame::Frame::UNKNOWN_FUNCTION.to_owned(),
            file: None,
            line: None,
            unknown: Some(why),
        };
        let Some(p) = self.processes.get_mut(&pid) else {
            return Some(unknown("python".into(), "interpreter not found".into()));
        };
        if frame.code == 0 {
            return Some(unknown(
                format!("python{}", p.interpreter.version),
                "frame not readable".into(),
            ));
        }
        let module = format!("python{}", p.interpreter.version);
        let layout = p.interpreter.layout;
        let key = (frame.code, frame.firstlineno);
        if p.codes.get(&key).is_none() {
            let read = match CodeObject::read(
                &p.memory,
                &layout.code,
                frame.code,
                p.interpreter.code_type,
            ) {
                Err(CodeError::Unreadable(why)) => {
                    p.partial.remove(&key).ok_or(CodeError::Unreadable(why))
                }
                read => read,
            };
            p.codes.insert(key, read);
        }
        let code = p.codes.get(&key)?;
        match code {
            Ok(code) if code.hidden => None,
            // Frames whose executable is no code object are the
            // interpreter's own (3.13's shims, 3.14's base frame).
            Err(CodeError::NotCode) => None,
            Ok(code) => Some(PyLocation {
                module,
                function: code.name.clone(),
                file: Some(code.filename.clone()),
                line: code.line(layout.code.lines, frame.code, frame.instr),
                unknown: None,
            }),
            Err(CodeError::Unreadable(why)) => Some(unknown(module, why.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(version_from_name("python3.11"), Some((11, false)));
        assert_eq!(version_from_name("libpython3.10.so.1.0"), Some((10, false)));
        assert_eq!(version_from_name("python3.13t"), Some((13, true)));
        assert_eq!(version_from_name("libpython3.9d.so"), Some((9, false)));
        assert_eq!(version_from_name("bash"), None);
    }
}
