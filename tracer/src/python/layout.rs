//! Where CPython keeps what tracer reads, per version (x86-64, default
//! build with the GIL).
//!
//! 3.8 to 3.12: offsets checked by compiling against each version's internal
//! headers (pyenv builds) and against the running interpreters in the
//! end-to-end tests. 3.13 and later describe themselves: `_PyRuntime` begins
//! with `_Py_DebugOffsets`, read from the process at attach time; only
//! `autoTSSkey`, which it does not list, comes from the table. See
//! docs/python-frames.md.

use tracer_common::{PyConfig, py_config};

use super::memory::Memory;

/// How a frame's instruction is turned into a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// 3.8, 3.9: `f_lasti` is a byte offset into `co_lnotab`.
    Lnotab,
    /// 3.10: `f_lasti` counts code units; `co_linetable` has byte ranges.
    Linetable310,
    /// 3.11+: an instruction pointer into the code object's
    /// `co_code_adaptive`; the location table counts code units.
    Locations { code_adaptive: u64 },
}

/// Offsets inside a code object and in strings, for userspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    pub filename: u64,
    pub name: u64,
    /// 3.11+.
    pub qualname: Option<u64>,
    pub linetable: u64,
    pub firstlineno: u64,
    pub flags: u64,
    /// Where a compact ASCII string's characters start (`sizeof(PyASCIIObject)`).
    pub ascii_data: u64,
    /// Where other compact strings' characters start.
    pub compact_data: u64,
    pub lines: Lines,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub minor: u8,
    /// For the kernel: everything but the per-process addresses.
    pub kernel: PyConfig,
    pub code: CodeLayout,
}

const NONE: u32 = py_config::NONE;

/// `_PyRuntime.autoTSSkey` per minor version.
fn tss_key(minor: u8) -> Option<u32> {
    Some(match minor {
        8 => 1392,
        9 | 10 => 584,
        11 => 592,
        12 => 1544,
        13 => 2160,
        14 => 2336,
        _ => return None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("CPython 3.{0} is not supported (3.8 to 3.14 are)")]
    Unsupported(u8),
    #[error("free-threaded CPython 3.{0}t is not supported yet")]
    FreeThreaded(u8),
    #[error("_Py_DebugOffsets of CPython 3.{0} could not be read: {1}")]
    DebugOffsets(u8, String),
}

impl Layout {
    /// The layout of CPython 3.`minor`; `runtime` is `_PyRuntime` in the
    /// process, read for 3.13+.
    pub fn for_version(minor: u8, memory: &Memory, runtime: u64) -> Result<Self, LayoutError> {
        let tss_key = tss_key(minor).ok_or(LayoutError::Unsupported(minor))?;
        let base = PyConfig {
            runtime: 0,
            tss_key,
            pthread_specific: 0,
            tstate_frame: 0,
            cframe_frame: NONE,
            frame_code: 0,
            frame_previous: 0,
            frame_instr: 0,
            // No owner byte before 3.12: read any field, match nothing.
            frame_owner: 0,
            owner_cstack: py_config::NO_OWNER,
            code_firstlineno: 0,
            code_tag_bits: 0,
            _pad: 0,
            // Filled from `CodeLayout` and by `python::detect`.
            code_type: 0,
            code_filename: 0,
            code_name: 0,
            code_linetable: 0,
            code_flags: 0,
            str_ascii_data: 0,
            str_compact_data: 0,
        };
        let layout = match minor {
            8..=10 => Layout {
                minor,
                kernel: PyConfig {
                    tstate_frame: 24,
                    frame_code: 32,
                    frame_previous: 24,
                    frame_instr: if minor == 10 { 96 } else { 104 },
                    code_firstlineno: 40,
                    ..base
                },
                code: CodeLayout {
                    filename: 104,
                    name: 112,
                    qualname: None,
                    linetable: 120,
                    firstlineno: 40,
                    flags: 36,
                    ascii_data: 48,
                    compact_data: 72,
                    lines: if minor == 10 {
                        Lines::Linetable310
                    } else {
                        Lines::Lnotab
                    },
                },
            },
            11 => Layout {
                minor,
                kernel: PyConfig {
                    tstate_frame: 56,
                    cframe_frame: 8,
                    frame_code: 32,
                    frame_previous: 48,
                    frame_instr: 56,
                    code_firstlineno: 72,
                    ..base
                },
                code: code_311_plus(72, 184, 48, 72),
            },
            12 => Layout {
                minor,
                kernel: PyConfig {
                    tstate_frame: 56,
                    cframe_frame: 0,
                    frame_code: 0,
                    frame_previous: 8,
                    frame_instr: 56,
                    frame_owner: 70,
                    owner_cstack: 3,
                    code_firstlineno: 68,
                    ..base
                },
                code: code_311_plus(68, 192, 40, 56),
            },
            _ => from_debug_offsets(minor, memory, runtime, base)?,
        };
        let c = &layout.code;
        // Every code and string offset is a few hundred bytes at most.
        let small = |v: u64| v as u32;
        Ok(Layout {
            kernel: PyConfig {
                code_filename: small(c.filename),
                code_name: small(c.qualname.unwrap_or(c.name)),
                code_linetable: small(c.linetable),
                code_flags: small(c.flags),
                str_ascii_data: small(c.ascii_data),
                str_compact_data: small(c.compact_data),
                ..layout.kernel
            },
            ..layout
        })
    }
}

fn code_311_plus(
    firstlineno: u64,
    code_adaptive: u64,
    ascii_data: u64,
    compact_data: u64,
) -> CodeLayout {
    CodeLayout {
        filename: 112,
        name: 120,
        qualname: Some(128),
        linetable: 136,
        firstlineno,
        flags: 48,
        ascii_data,
        compact_data,
        lines: Lines::Locations { code_adaptive },
    }
}

/// Where 3.13 and 3.14 list the offsets tracer needs inside their
/// `_Py_DebugOffsets` (Include/internal/pycore_debug_offsets.h).
struct DebugOffsetsLayout {
    current_frame: u64,
    frame_previous: u64,
    frame_executable: u64,
    frame_instr_ptr: u64,
    frame_owner: u64,
    code_filename: u64,
    code_name: u64,
    code_qualname: u64,
    code_linetable: u64,
    code_firstlineno: u64,
    code_adaptive: u64,
    owner_cstack: u32,
    tagged_code: bool,
}

fn debug_offsets_layout(minor: u8) -> Option<DebugOffsetsLayout> {
    match minor {
        13 => Some(DebugOffsetsLayout {
            current_frame: 184,
            frame_previous: 232,
            frame_executable: 240,
            frame_instr_ptr: 248,
            frame_owner: 264,
            code_filename: 280,
            code_name: 288,
            code_qualname: 296,
            code_linetable: 304,
            code_firstlineno: 312,
            code_adaptive: 344,
            owner_cstack: 3,
            tagged_code: false,
        }),
        14 => Some(DebugOffsetsLayout {
            current_frame: 208,
            frame_previous: 256,
            frame_executable: 264,
            frame_instr_ptr: 272,
            frame_owner: 288,
            code_filename: 320,
            code_name: 328,
            code_qualname: 336,
            code_linetable: 344,
            code_firstlineno: 352,
            code_adaptive: 384,
            owner_cstack: 4,
            tagged_code: true,
        }),
        _ => None,
    }
}

/// `_Py_DebugOffsets` starts with this cookie, the version (PY_VERSION_HEX)
/// and whether the build is free-threaded.
const COOKIE: &[u8; 8] = b"xdebugpy";

fn from_debug_offsets(
    minor: u8,
    memory: &Memory,
    runtime: u64,
    base: PyConfig,
) -> Result<Layout, LayoutError> {
    let at = debug_offsets_layout(minor).ok_or(LayoutError::Unsupported(minor))?;
    let err = |e: String| LayoutError::DebugOffsets(minor, e);
    let head = memory.read(runtime, 24).map_err(|e| err(e.to_string()))?;
    if head[..8] != COOKIE[..] {
        return Err(err("no xdebugpy cookie at _PyRuntime".into()));
    }
    let version = u64::from_ne_bytes(head[8..16].try_into().unwrap_or_default());
    if (version >> 16) & 0xff != u64::from(minor) {
        return Err(err(format!("it says version {version:#x}")));
    }
    if u64::from_ne_bytes(head[16..24].try_into().unwrap_or_default()) != 0 {
        return Err(LayoutError::FreeThreaded(minor));
    }
    let field = |offset: u64| -> Result<u64, LayoutError> {
        let value = memory
            .u64(runtime + offset)
            .map_err(|e| err(e.to_string()))?;
        // Every offset tracer reads lies within a few KiB of its struct.
        if value >= 1 << 16 {
            return Err(err(format!("implausible offset {value} at +{offset}")));
        }
        Ok(value)
    };
    let small = |offset: u64| -> Result<u32, LayoutError> { Ok(field(offset)? as u32) };
    Ok(Layout {
        minor,
        kernel: PyConfig {
            tstate_frame: small(at.current_frame)?,
            frame_code: small(at.frame_executable)?,
            frame_previous: small(at.frame_previous)?,
            frame_instr: small(at.frame_instr_ptr)?,
            frame_owner: small(at.frame_owner)?,
            owner_cstack: at.owner_cstack,
            code_firstlineno: small(at.code_firstlineno)?,
            code_tag_bits: u32::from(at.tagged_code),
            ..base
        },
        code: CodeLayout {
            filename: field(at.code_filename)?,
            name: field(at.code_name)?,
            qualname: Some(field(at.code_qualname)?),
            linetable: field(at.code_linetable)?,
            firstlineno: field(at.code_firstlineno)?,
            // Not in _Py_DebugOffsets; unchanged since 3.11.
            flags: 48,
            ascii_data: 40,
            compact_data: 56,
            lines: Lines::Locations {
                code_adaptive: field(at.code_adaptive)?,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_cover_38_to_312() {
        let memory = Memory::new(std::process::id());
        for minor in 8..=12 {
            let l = Layout::for_version(minor, &memory, 0).expect("layout");
            assert_eq!(l.minor, minor);
            assert_ne!(l.kernel.tss_key, 0);
        }
        assert!(matches!(
            Layout::for_version(7, &memory, 0),
            Err(LayoutError::Unsupported(7))
        ));
        // 3.13+ read the process: this one has no _PyRuntime at 0.
        assert!(Layout::for_version(13, &memory, 0).is_err());
    }

    #[test]
    fn reads_debug_offsets() {
        // A fake 3.13 _Py_DebugOffsets.
        let mut bytes = vec![0u8; 512];
        bytes[..8].copy_from_slice(COOKIE);
        bytes[8..16].copy_from_slice(&0x030d_00f0u64.to_ne_bytes());
        let at = debug_offsets_layout(13).expect("3.13");
        let put = |bytes: &mut [u8], at: u64, v: u64| {
            bytes[at as usize..at as usize + 8].copy_from_slice(&v.to_ne_bytes())
        };
        put(&mut bytes, at.current_frame, 72);
        put(&mut bytes, at.frame_instr_ptr, 56);
        put(&mut bytes, at.code_adaptive, 200);
        put(&mut bytes, at.code_filename, 112);
        let memory = Memory::new(std::process::id());
        let l = Layout::for_version(13, &memory, bytes.as_ptr() as u64).expect("layout");
        assert_eq!(l.kernel.tstate_frame, 72);
        assert_eq!(l.kernel.frame_instr, 56);
        assert_eq!(l.kernel.tss_key, 2160);
        assert_eq!(l.code.filename, 112);
        assert_eq!(l.code.lines, Lines::Locations { code_adaptive: 200 });
        // A free-threaded build is refused.
        put(&mut bytes, 16, 1);
        assert!(matches!(
            Layout::for_version(13, &memory, bytes.as_ptr() as u64),
            Err(LayoutError::FreeThreaded(13))
        ));
    }
}
