//! Where CPython keeps its GC generation lists and its small-object
//! arenas, per version (x86-64, default build with the GIL), and where the
//! arena table is in a build whose symbols are stripped.
//!
//! Offsets were read with gdb (`ptype /o`) from the DWARF of each pyenv
//! build and of Debian's debug files (python3.X-dbg), and every one is
//! checked again against the running process before it is used: a GC list
//! head must be a circular list head (its next's previous is itself), an
//! arena table must hold arenas of the version's size whose pools are
//! inside them. Where the builds of one version disagree (Debian's 3.13.5
//! puts the generations at 20 in the GC state, 3.13.0 at 24), the
//! candidates are tried in turn. docs/python-heap.md has the tables.

use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind, Register};

use crate::elf::ElfFile;

/// Where the main interpreter's address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MainAt {
    /// At this offset in `_PyRuntime` (`interpreters.main`).
    Runtime(u64),
    /// 3.13+: `_Py_DebugOffsets.runtime_state.interpreters_head` (at this
    /// position of the struct) plus 8: `main` follows `head`.
    DebugOffsets(u64),
}

/// Where the GC state (`struct _gc_runtime_state`) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcAt {
    /// 3.8: in `_PyRuntime`, at this offset.
    Runtime(u64),
    /// In the main interpreter, at this offset.
    Interpreter(u64),
    /// 3.13+: `_Py_DebugOffsets.interpreter_state.gc`, at this position.
    DebugOffsets(u64),
}

/// Where obmalloc's arena table (`arenas`, `maxarenas`) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArenasAt {
    /// 3.8 to 3.11: static variables of obmalloc.c (see `ArenaStatics`).
    Statics,
    /// 3.12: `interp->obmalloc` (a struct) at this offset; `mgmt` in it.
    Embedded(u64),
    /// 3.13+: `interp->obmalloc` is a pointer, at this offset.
    Pointer(u64),
}

/// The walkable structures of one CPython version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapLayout {
    pub minor: u8,
    pub main: MainAt,
    pub gc: GcAt,
    /// Offsets of `generations[0]` in the GC state to try, in order.
    pub generations: &'static [u64],
    pub arenas: ArenasAt,
    /// `POOL_SIZE` and `ARENA_SIZE`.
    pub pool_size: u64,
    pub arena_size: u64,
}

/// `struct gc_generation`: a list head (`PyGC_Head`), threshold, count.
pub const GENERATION_SIZE: u64 = 24;
/// `struct _obmalloc_mgmt` in `struct _obmalloc_state`, after the used
/// pools table (3.12+); `arenas` is its first field, `maxarenas` next.
const OBMALLOC_MGMT: u64 = 512;

impl HeapLayout {
    pub fn for_version(minor: u8) -> Option<Self> {
        let small = |minor| {
            (
                if minor >= 10 { 16 << 10 } else { 4 << 10 },
                if minor >= 10 { 1 << 20 } else { 256 << 10 },
            )
        };
        let (pool_size, arena_size) = small(minor);
        let (main, gc, generations, arenas): (MainAt, GcAt, &'static [u64], ArenasAt) = match minor
        {
            8 => (
                MainAt::Runtime(40),
                GcAt::Runtime(344),
                &[24],
                ArenasAt::Statics,
            ),
            9 | 10 => (
                MainAt::Runtime(40),
                GcAt::Interpreter(616),
                &[24],
                ArenasAt::Statics,
            ),
            11 => (
                MainAt::Runtime(48),
                GcAt::Interpreter(648),
                &[24],
                ArenasAt::Statics,
            ),
            12 => (
                MainAt::Runtime(48),
                GcAt::Interpreter(112),
                &[24],
                ArenasAt::Embedded(3960),
            ),
            13 => (
                MainAt::DebugOffsets(40),
                GcAt::DebugOffsets(80),
                &[24, 20],
                ArenasAt::Pointer(10800),
            ),
            14 => (
                MainAt::DebugOffsets(40),
                GcAt::DebugOffsets(88),
                &[24],
                ArenasAt::Pointer(10904),
            ),
            15 => (
                MainAt::DebugOffsets(40),
                GcAt::DebugOffsets(88),
                &[8],
                ArenasAt::Pointer(10880),
            ),
            _ => return None,
        };
        Some(Self {
            minor,
            main,
            gc,
            generations,
            arenas,
            pool_size,
            arena_size,
        })
    }

    /// The permanent generation (`gc.freeze()`), after the three others:
    /// right after them from 3.14, after the `generation0` pointer before.
    pub fn permanent(&self, generations: u64) -> u64 {
        let end = generations + 3 * GENERATION_SIZE;
        if self.minor >= 14 {
            end
        } else {
            end.next_multiple_of(8) + 8
        }
    }

    /// Where `arenas` and `maxarenas` are in the obmalloc state at `state`.
    pub fn mgmt(state: u64) -> (u64, u64) {
        (state + OBMALLOC_MGMT, state + OBMALLOC_MGMT + 8)
    }
}

/// 3.8 to 3.11: candidate addresses (in the process) of obmalloc's static
/// `maxarenas` and `arenas`, to be checked against the process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArenaStatics {
    /// (`maxarenas`, `arenas`) pairs.
    pub candidates: Vec<(u64, u64)>,
    /// Where they came from, for the report.
    pub source: &'static str,
}

/// Finds the arena statics of the interpreter file `elf` (loaded at
/// `bias`): from its symbol table (unstripped builds), its build-id debug
/// file (`debug`), or the code of an exported function that reads both.
pub fn arena_statics(elf: &ElfFile, debug: Option<&ElfFile>, bias: u64) -> ArenaStatics {
    for (file, source) in [(Some(elf), "symbols"), (debug, "debug file")] {
        let Some(file) = file else { continue };
        let find = |name: &str| {
            file.symbol(name)
                .or_else(|| file.symbol(&format!("{name}.lto_priv.0")))
        };
        if let (Some(max), Some(arenas)) = (find("maxarenas"), find("arenas")) {
            return ArenaStatics {
                candidates: vec![(bias.wrapping_add(max), bias.wrapping_add(arenas))],
                source,
            };
        }
    }
    // Both are read by `_Py_GetAllocatedBlocks` (3.9 to 3.11) and by
    // `_PyObject_DebugMallocStats` (every version), exported by every build.
    for name in ["_Py_GetAllocatedBlocks", "_PyObject_DebugMallocStats"] {
        let Some(f) = elf.function(name) else {
            continue;
        };
        let len = if f.size > 0 { f.size.min(4096) } else { 1024 } as usize;
        let loads = rip_loads(elf.bytes_at(f.file_offset, len), f.address);
        let ints: Vec<u64> = loads
            .iter()
            .filter(|l| l.size == 4)
            .map(|l| l.addr)
            .collect();
        let pointers: Vec<u64> = loads
            .iter()
            .filter(|l| l.size == 8)
            .map(|l| l.addr)
            .collect();
        let candidates: Vec<(u64, u64)> = ints
            .iter()
            .flat_map(|&i| pointers.iter().map(move |&p| (i, p)))
            .map(|(i, p)| (bias.wrapping_add(i), bias.wrapping_add(p)))
            .take(64)
            .collect();
        if !candidates.is_empty() {
            return ArenaStatics {
                candidates,
                source: "code",
            };
        }
    }
    ArenaStatics::default()
}

/// A load of a global: `mov reg, [rip+disp]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RipLoad {
    /// The global's address in the file.
    addr: u64,
    /// 4 or 8 bytes.
    size: u32,
}

/// The RIP-relative loads of `code` (at file address `ip`), in order.
fn rip_loads(code: &[u8], ip: u64) -> Vec<RipLoad> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    let mut loads = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut ins);
        let is_mov_load = ins.mnemonic() == iced_x86::Mnemonic::Mov
            && ins.op_count() == 2
            && ins.op0_kind() == OpKind::Register
            && ins.op1_kind() == OpKind::Memory
            && ins.memory_base() == Register::RIP;
        if is_mov_load {
            let size = ins.op0_register().size() as u32;
            if size == 4 || size == 8 {
                loads.push(RipLoad {
                    addr: ins.memory_displacement64(),
                    size,
                });
            }
        }
        if ins.mnemonic() == iced_x86::Mnemonic::Ret {
            break;
        }
    }
    loads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_globals_debian_311_reads() {
        // _Py_GetAllocatedBlocks of Debian's python3.11 (3.11.2):
        // mov rdx,[rip+..] (raw_allocated_blocks); mov r9d,[rip+..]
        // (maxarenas); xor r8d,r8d; mov rdi,[rip+..] (arenas); ret.
        let code = [
            0x48, 0x8b, 0x15, 0x99, 0x15, 0x3b, 0x00, 0x44, 0x8b, 0x0d, 0x0a, 0x18, 0x3f, 0x00,
            0x45, 0x31, 0xc0, 0x48, 0x8b, 0x3d, 0x10, 0x18, 0x3f, 0x00, 0xc3,
        ];
        let loads = rip_loads(&code, 0x6cd8e0);
        assert_eq!(
            loads,
            [
                RipLoad {
                    addr: 0xa7ee80,
                    size: 8
                },
                RipLoad {
                    addr: 0xabf0f8,
                    size: 4
                },
                RipLoad {
                    addr: 0xabf108,
                    size: 8
                },
            ]
        );
    }

    #[test]
    fn every_known_version_has_a_layout() {
        for minor in 8..=15 {
            let l = HeapLayout::for_version(minor).expect("layout");
            assert!(!l.generations.is_empty());
        }
        assert!(HeapLayout::for_version(16).is_none());
        // The permanent generation: 3.12 at 104, Debian's 3.13.5 at 104
        // (generations at 20), 3.14 at 96, 3.15 at 80 (gdb).
        let l = |m| HeapLayout::for_version(m).expect("layout");
        assert_eq!(l(12).permanent(24), 104);
        assert_eq!(l(13).permanent(20), 104);
        assert_eq!(l(14).permanent(24), 96);
        assert_eq!(l(15).permanent(8), 80);
        assert_eq!((l(9).pool_size, l(9).arena_size), (4096, 256 << 10));
        assert_eq!((l(10).pool_size, l(10).arena_size), (16384, 1 << 20));
    }

    #[test]
    fn finds_the_statics_of_this_machines_python() {
        // Debian's stripped 3.11 (installed by `cargo xtask` setup): from
        // the code of _Py_GetAllocatedBlocks; gdb with its debug file says
        // maxarenas is at 0xabf0f8 and arenas at 0xabf108.
        let python = std::path::Path::new("/usr/bin/python3.11");
        let elf = ElfFile::open(python).expect("Debian's python3.11");
        let statics = arena_statics(&elf, None, 0);
        assert_eq!(statics.source, "code");
        assert!(statics.candidates.contains(&(0xabf0f8, 0xabf108)));
    }
}
