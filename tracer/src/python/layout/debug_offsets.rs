//! 3.13+: the offsets `_PyRuntime` lists about the interpreter in its first
//! member, `_Py_DebugOffsets` (Include/internal/pycore_debug_offsets.h),
//! read from the process at attach time.
//!
//! The struct grows with each version, so where each offset sits in it is
//! per version: checked by compiling against each version's headers
//! (Debian's libpython3.X-dev) and by reading the running interpreters. A
//! version newer than the newest known is read at the newest one's
//! positions and accepted only if what it finds there is consistent: every
//! struct begins with its size, and the offsets tracer reads must lie
//! inside it.

use tracer_common::PyConfig;

use super::{CodeLayout, Lines, NEWEST};
use crate::python::memory::Memory;

/// `_Py_DebugOffsets` starts with this cookie, the version (PY_VERSION_HEX)
/// and whether the build is free-threaded.
const COOKIE: &[u8; 8] = b"xdebugpy";

/// `co_flags`, which `_Py_DebugOffsets` does not list: at 48 since 3.11
/// (checked against each version's headers).
const CO_FLAGS: u64 = 48;

/// A string's `state` (4 bytes), the last field of `PyASCIIObject`.
const STR_STATE: u64 = 32;

/// Offsets the kernel and `python::code` read without a table; every
/// version so far agrees, and one that did not would be refused.
const FIXED: [(&str, u64); 5] = [
    ("pyobject.ob_type", 8),
    ("bytes_object.ob_size", 16),
    ("bytes_object.ob_sval", 32),
    ("unicode_object.length", 16),
    ("unicode_object.state", STR_STATE),
];

/// Where one version's `_Py_DebugOffsets` holds each value tracer reads
/// (byte positions in the struct), and what the struct does not say.
struct Positions {
    tstate_size: u64,
    current_frame: u64,
    frame_size: u64,
    frame_previous: u64,
    frame_executable: u64,
    frame_instr_ptr: u64,
    frame_owner: u64,
    code_size: u64,
    code_filename: u64,
    code_name: u64,
    code_qualname: u64,
    code_linetable: u64,
    code_firstlineno: u64,
    code_adaptive: u64,
    /// The positions of the `FIXED` offsets, in order.
    fixed: [u64; 5],
    /// 3.15+: `sizeof(PyASCIIObject)` and `sizeof(PyCompactUnicodeObject)`,
    /// where compact strings' characters start (3.13, 3.14: 40 and 56).
    str_sizes: Option<[u64; 2]>,
    /// The `owner` of the interpreter's own frames, skipped: C shims
    /// (3.13: `FRAME_OWNED_BY_CSTACK` = 3, 3.14: 4), 3.15's entry frames
    /// (`FRAME_OWNED_BY_INTERPRETER` = 3, now the last owner).
    owner_cstack: u32,
    /// 3.14+: `f_executable` is a `_PyStackRef`, its bit 0 a tag.
    tagged_code: bool,
}

impl Positions {
    /// How many bytes of the struct hold every value tracer reads.
    fn end(&self) -> u64 {
        let named = [
            self.tstate_size,
            self.current_frame,
            self.frame_size,
            self.frame_previous,
            self.frame_executable,
            self.frame_instr_ptr,
            self.frame_owner,
            self.code_size,
            self.code_filename,
            self.code_name,
            self.code_qualname,
            self.code_linetable,
            self.code_firstlineno,
            self.code_adaptive,
        ];
        let last = named
            .into_iter()
            .chain(self.fixed)
            .chain(self.str_sizes.into_iter().flatten())
            .max();
        last.unwrap_or(0) + 8
    }
}

fn positions(minor: u8) -> Option<Positions> {
    Some(match minor {
        13 => Positions {
            tstate_size: 152,
            current_frame: 184,
            frame_size: 224,
            frame_previous: 232,
            frame_executable: 240,
            frame_instr_ptr: 248,
            frame_owner: 264,
            code_size: 272,
            code_filename: 280,
            code_name: 288,
            code_qualname: 296,
            code_linetable: 304,
            code_firstlineno: 312,
            code_adaptive: 344,
            fixed: [360, 520, 528, 552, 544],
            str_sizes: None,
            owner_cstack: 3,
            tagged_code: false,
        },
        14 => Positions {
            tstate_size: 176,
            current_frame: 208,
            frame_size: 248,
            frame_previous: 256,
            frame_executable: 264,
            frame_instr_ptr: 272,
            frame_owner: 288,
            code_size: 312,
            code_filename: 320,
            code_name: 328,
            code_qualname: 336,
            code_linetable: 344,
            code_firstlineno: 352,
            code_adaptive: 384,
            fixed: [408, 600, 608, 632, 624],
            str_sizes: None,
            owner_cstack: 4,
            tagged_code: true,
        },
        15 => Positions {
            tstate_size: 176,
            current_frame: 208,
            frame_size: 312,
            frame_previous: 320,
            frame_executable: 328,
            frame_instr_ptr: 336,
            frame_owner: 352,
            code_size: 376,
            code_filename: 384,
            code_name: 392,
            code_qualname: 400,
            code_linetable: 408,
            code_firstlineno: 416,
            code_adaptive: 448,
            fixed: [472, 696, 704, 728, 720],
            str_sizes: Some([736, 744]),
            owner_cstack: 3,
            tagged_code: true,
        },
        _ => return None,
    })
}

/// What `_Py_DebugOffsets` gave.
pub struct Read {
    pub kernel: PyConfig,
    pub code: CodeLayout,
}

/// Why a process's `_Py_DebugOffsets` were not used.
#[derive(Debug)]
pub enum Refusal {
    FreeThreaded,
    /// Unreadable, or not what tracer understands: says what is wrong.
    Layout(String),
}

/// The `_Py_DebugOffsets` at `runtime` in the process, at the positions of
/// 3.`minor`, or of the newest known version if `newer`.
pub fn read(
    minor: u8,
    newer: bool,
    memory: &Memory,
    runtime: u64,
    base: PyConfig,
) -> Result<Read, Refusal> {
    let at = positions(if newer { NEWEST } else { minor })
        .ok_or_else(|| Refusal::Layout(format!("no positions for 3.{minor}")))?;
    let blob = memory
        .read(runtime, at.end() as usize)
        .map_err(|e| Refusal::Layout(e.to_string()))?;
    if blob.get(..8) != Some(&COOKIE[..]) {
        return Err(Refusal::Layout("no xdebugpy cookie at _PyRuntime".into()));
    }
    let word = |pos: u64| {
        blob.get(pos as usize..pos as usize + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_ne_bytes)
    };
    let version = word(8).unwrap_or(0);
    if version >> 24 != 3 || (version >> 16) & 0xff != u64::from(minor) {
        return Err(Refusal::Layout(format!("it says version {version:#x}")));
    }
    if word(16) != Some(0) {
        return Err(Refusal::FreeThreaded);
    }
    let value = |name: &str, pos: u64| -> Result<u64, Refusal> {
        match word(pos) {
            // Every offset and size tracer reads is within a few KiB.
            Some(value) if value < 1 << 16 => Ok(value),
            Some(value) => Err(Refusal::Layout(format!(
                "{name} (at +{pos}) is {value:#x}, not an offset"
            ))),
            None => Err(Refusal::Layout(format!("{name} (at +{pos}) not read"))),
        }
    };
    let tstate = Struct::new("thread_state", value("thread_state.size", at.tstate_size)?);
    let frame = Struct::new(
        "interpreter_frame",
        value("interpreter_frame.size", at.frame_size)?,
    );
    let code = Struct::new("code_object", value("code_object.size", at.code_size)?);
    let current_frame = tstate.field("current_frame", &value, at.current_frame, 8)?;
    let previous = frame.field("previous", &value, at.frame_previous, 8)?;
    let executable = frame.field("executable", &value, at.frame_executable, 8)?;
    let instr_ptr = frame.field("instr_ptr", &value, at.frame_instr_ptr, 8)?;
    let owner = frame.field("owner", &value, at.frame_owner, 1)?;
    let adaptive = code.field("co_code_adaptive", &value, at.code_adaptive, 0)?;
    // The bytecode follows the fixed fields: they lie before it.
    let fields = Struct::new("code_object", adaptive);
    let filename = fields.field("filename", &value, at.code_filename, 8)?;
    let name = fields.field("name", &value, at.code_name, 8)?;
    let qualname = fields.field("qualname", &value, at.code_qualname, 8)?;
    let linetable = fields.field("linetable", &value, at.code_linetable, 8)?;
    let firstlineno = fields.field("firstlineno", &value, at.code_firstlineno, 4)?;
    let flags = fields.inside("co_flags", CO_FLAGS, 4)?;
    for ((name, expected), pos) in FIXED.iter().zip(at.fixed) {
        let v = value(name, pos)?;
        if v != *expected {
            return Err(Refusal::Layout(format!(
                "{name} is {v}, tracer reads {expected}"
            )));
        }
    }
    let [ascii_data, compact_data] = match at.str_sizes {
        Some([ascii, compact]) => {
            let ascii = value("unicode_object.asciiobject_size", ascii)?;
            let compact = value("unicode_object.compactunicodeobject_size", compact)?;
            // Both begin with PyASCIIObject, which ends after `state`.
            if ascii < STR_STATE + 4 || compact <= ascii {
                return Err(Refusal::Layout(format!(
                    "string sizes {ascii} and {compact} are not those of compact strings"
                )));
            }
            [ascii, compact]
        }
        None => [40, 56],
    };
    let small = |v: u64| v as u32;
    Ok(Read {
        kernel: PyConfig {
            tstate_frame: small(current_frame),
            frame_code: small(executable),
            frame_previous: small(previous),
            frame_instr: small(instr_ptr),
            frame_owner: small(owner),
            owner_cstack: at.owner_cstack,
            code_firstlineno: small(firstlineno),
            code_tag_bits: u32::from(at.tagged_code),
            ..base
        },
        code: CodeLayout {
            filename,
            name,
            qualname: Some(qualname),
            linetable,
            firstlineno,
            flags,
            ascii_data,
            compact_data,
            lines: Lines::Locations {
                code_adaptive: adaptive,
            },
        },
    })
}

/// A struct `_Py_DebugOffsets` gives the size of, to check offsets into.
struct Struct {
    name: &'static str,
    size: u64,
}

impl Struct {
    fn new(name: &'static str, size: u64) -> Self {
        Self { name, size }
    }

    /// The offset of `field`, read at `pos`, if a `width`-byte field there
    /// lies inside the struct.
    fn field(
        &self,
        field: &str,
        value: &impl Fn(&str, u64) -> Result<u64, Refusal>,
        pos: u64,
        width: u64,
    ) -> Result<u64, Refusal> {
        let offset = value(&format!("{}.{field}", self.name), pos)?;
        self.inside(field, offset, width)
    }

    fn inside(&self, field: &str, offset: u64, width: u64) -> Result<u64, Refusal> {
        if offset + width <= self.size {
            return Ok(offset);
        }
        Err(Refusal::Layout(format!(
            "{}.{field} at {offset} is not inside its {} bytes",
            self.name, self.size
        )))
    }
}

#[cfg(test)]
#[path = "debug_offsets_tests.rs"]
mod tests;
