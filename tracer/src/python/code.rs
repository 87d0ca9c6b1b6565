//! Code objects read from a CPython process: name, file, first line and
//! line table, and the line of an instruction.

use super::{
    layout::{CodeLayout, Lines},
    lines,
    memory::Memory,
};

use tracer_common::MAX_PY_OBJECT_LEN;
/// Characters of a name or file name kept: a longer one is cut (the
/// kernel's copies keep 256 bytes).
const MAX_NAME_CHARS: i64 = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeObject {
    /// The qualified name where the version has one (3.11+), else the name.
    pub name: String,
    pub filename: String,
    pub firstlineno: i32,
    pub table: Vec<u8>,
    /// The interpreter's own frames that Python does not show either
    /// (3.13's `__init__` shim).
    pub hidden: bool,
}

/// `co_flags` bit of 3.13's shim code objects (`CO_NO_MONITORING_EVENTS`).
const CO_NO_MONITORING_EVENTS: u32 = 0x0200_0000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeError {
    /// The frame's executable is another kind of object.
    NotCode,
    Unreadable(String),
}

impl CodeObject {
    /// Reads the code object at `addr`; `code_type` (the address of
    /// `PyCode_Type`), when known, must be its type.
    pub fn read(
        memory: &Memory,
        layout: &CodeLayout,
        addr: u64,
        code_type: Option<u64>,
    ) -> Result<Self, CodeError> {
        if let Some(code_type) = code_type {
            let ob_type = memory
                .u64(addr + 8)
                .map_err(|e| CodeError::Unreadable(e.to_string()))?;
            if ob_type != code_type {
                return Err(CodeError::NotCode);
            }
        }
        Self::read_fields(memory, layout, addr).map_err(CodeError::Unreadable)
    }

    fn read_fields(memory: &Memory, layout: &CodeLayout, addr: u64) -> Result<Self, String> {
        let e = |err: super::memory::ReadError| err.to_string();
        let name_at = layout.qualname.unwrap_or(layout.name);
        Ok(Self {
            name: read_str(memory, layout, memory.u64(addr + name_at).map_err(e)?)?,
            filename: read_str(
                memory,
                layout,
                memory.u64(addr + layout.filename).map_err(e)?,
            )?,
            firstlineno: memory.u32(addr + layout.firstlineno).map_err(e)? as i32,
            table: read_bytes(memory, memory.u64(addr + layout.linetable).map_err(e)?)?,
            hidden: is_hidden(memory.u32(addr + layout.flags).map_err(e)?),
        })
    }

    /// A code object the kernel copied (`CodeRecord`).
    pub fn from_record(rec: &tracer_common::CodeRecord) -> Self {
        let text = |bytes: &[u8], len: u32, kind: u32| {
            decode(&bytes[..(len as usize).min(bytes.len())], kind)
        };
        Self {
            name: text(&rec.name, rec.name_len, rec.name_kind),
            filename: text(&rec.filename, rec.filename_len, rec.filename_kind),
            firstlineno: rec.firstlineno,
            table: rec.table[..(rec.table_len as usize).min(rec.table.len())].to_vec(),
            hidden: is_hidden(rec.co_flags),
        }
    }

    /// The line of a frame of this code object (at `addr`) whose
    /// instruction the kernel read as `instr`.
    pub fn line(&self, lines: Lines, addr: u64, instr: u64) -> Option<u32> {
        // Up to 3.10 the instruction is the int f_lasti, -1 before the first.
        let lasti = || u64::try_from(instr as u32 as i32).ok();
        match lines {
            Lines::Lnotab => lines::lnotab(&self.table, self.firstlineno, lasti()?),
            Lines::Linetable310 => {
                lines::linetable_310(&self.table, self.firstlineno, lasti()? * 2)
            }
            Lines::Locations { code_adaptive } => match instr.checked_sub(addr + code_adaptive) {
                Some(offset) => lines::locations(&self.table, self.firstlineno, offset / 2),
                // A frame just pushed points before its first instruction.
                None => u32::try_from(self.firstlineno).ok(),
            },
        }
    }
}

fn is_hidden(co_flags: u32) -> bool {
    co_flags & CO_NO_MONITORING_EVENTS != 0
}

/// Characters of a compact string of `kind` bytes each.
fn decode(raw: &[u8], kind: u32) -> String {
    match kind {
        1 => raw.iter().map(|&b| char::from(b)).collect(),
        2 => String::from_utf16_lossy(
            &raw.chunks_exact(2)
                .map(|c| u16::from_ne_bytes([c[0], c[1]]))
                .collect::<Vec<_>>(),
        ),
        _ => raw
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
    }
}

/// A `str` object's text (compact strings: every string code objects hold).
fn read_str(memory: &Memory, layout: &CodeLayout, addr: u64) -> Result<String, String> {
    let e = |err: super::memory::ReadError| err.to_string();
    let length = memory.i64(addr + 16).map_err(e)?;
    let state = memory.u32(addr + 32).map_err(e)?;
    let kind = (state >> 2) & 7;
    let compact = state & (1 << 5) != 0;
    let ascii = state & (1 << 6) != 0;
    if !compact || !(0..=MAX_PY_OBJECT_LEN).contains(&length) || !matches!(kind, 1 | 2 | 4) {
        return Err(format!("{addr:#x} is not a compact string"));
    }
    let data = addr
        + if ascii {
            layout.ascii_data
        } else {
            layout.compact_data
        };
    let chars = length.min(MAX_NAME_CHARS) as usize;
    let raw = memory.read(data, chars * kind as usize).map_err(e)?;
    Ok(decode(&raw, kind))
}

/// A `bytes` object's contents.
fn read_bytes(memory: &Memory, addr: u64) -> Result<Vec<u8>, String> {
    let e = |err: super::memory::ReadError| err.to_string();
    let size = memory.i64(addr + 16).map_err(e)?;
    if !(0..=MAX_PY_OBJECT_LEN).contains(&size) {
        return Err(format!("{addr:#x} is not a bytes object"));
    }
    memory.read(addr + 32, size as usize).map_err(e)
}
