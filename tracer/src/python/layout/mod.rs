//! Where CPython keeps what tracer reads, per version (x86-64, default
//! build with the GIL).
//!
//! 3.8 to 3.12: offsets checked by compiling against each version's internal
//! headers (pyenv builds) and against the running interpreters in the
//! end-to-end tests. 3.13 and later describe themselves: `_PyRuntime` begins
//! with `_Py_DebugOffsets`, read from the process at attach time
//! (`debug_offsets`). What it does not list comes from here: `autoTSSkey`
//! up to 3.14, and from 3.15 that the thread state is a thread-local
//! instead (found by `python::thread_local`). See docs/python-frames.md.

mod debug_offsets;

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

/// Where each thread's own thread state is kept: the one
/// `PyGILState_GetThisThreadState` returns, set for the thread's whole life
/// (unlike `_Py_tss_tstate`, NULL while C code runs with the GIL released).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GilState {
    /// 3.8 to 3.14: under the TSS key at this offset in `_PyRuntime`
    /// (`autoTSSkey`).
    TssKey(u32),
    /// 3.15+: in the thread-local `_Py_tss_gilstate`, which no table lists.
    ThreadLocal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub minor: u8,
    /// For the kernel: everything but the per-process addresses.
    pub kernel: PyConfig,
    pub code: CodeLayout,
    pub gilstate: GilState,
    /// A version newer than [`NEWEST`] whose `_Py_DebugOffsets` describe
    /// the newest one's layout, read as that one.
    pub newer_than_known: bool,
}

/// The newest CPython whose layout tracer was checked against.
pub const NEWEST: u8 = 15;

const NONE: u32 = py_config::NONE;

/// Where each thread's thread state is, per minor version.
fn gilstate(minor: u8) -> Option<GilState> {
    let tss_key = match minor {
        8 => 1392,
        9 | 10 => 584,
        11 => 592,
        12 => 1544,
        13 => 2160,
        14 => 2336,
        // `autoTSSkey` became the thread-local `_Py_tss_gilstate` (gh-131185).
        15.. => return Some(GilState::ThreadLocal),
        _ => return None,
    };
    Some(GilState::TssKey(tss_key))
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("CPython 3.{0} is not supported (3.8 to 3.{NEWEST} are)")]
    Unsupported(u8),
    #[error("free-threaded CPython 3.{0}t is not supported yet")]
    FreeThreaded(u8),
    #[error("_Py_DebugOffsets of CPython 3.{0} could not be read: {1}")]
    DebugOffsets(u8, String),
    #[error(
        "CPython 3.{0} is newer than tracer knows (3.8 to 3.{NEWEST}) and its _Py_DebugOffsets do not have 3.{NEWEST}'s layout: {1}"
    )]
    Unrecognized(u8, String),
}

impl Layout {
    /// The layout of CPython 3.`minor`; `runtime` is `_PyRuntime` in the
    /// process, read for 3.13+.
    pub fn for_version(minor: u8, memory: &Memory, runtime: u64) -> Result<Self, LayoutError> {
        let gilstate = gilstate(minor).ok_or(LayoutError::Unsupported(minor))?;
        let base = PyConfig {
            runtime: 0,
            tss_key: match gilstate {
                GilState::TssKey(offset) => offset,
                GilState::ThreadLocal => NONE,
            },
            pthread_specific: 0,
            // Filled by `python::detect` for `GilState::ThreadLocal`.
            tls_module: 0,
            tls_offset: 0,
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
        let table = |kernel: PyConfig, code: CodeLayout| Layout {
            minor,
            kernel,
            code,
            gilstate,
            newer_than_known: false,
        };
        let layout = match minor {
            8..=10 => table(
                PyConfig {
                    tstate_frame: 24,
                    frame_code: 32,
                    frame_previous: 24,
                    frame_instr: if minor == 10 { 96 } else { 104 },
                    code_firstlineno: 40,
                    ..base
                },
                CodeLayout {
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
            ),
            11 => table(
                PyConfig {
                    tstate_frame: 56,
                    cframe_frame: 8,
                    frame_code: 32,
                    frame_previous: 48,
                    frame_instr: 56,
                    code_firstlineno: 72,
                    ..base
                },
                code_311_plus(72, 184, 48, 72),
            ),
            12 => table(
                PyConfig {
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
                code_311_plus(68, 192, 40, 56),
            ),
            _ => {
                let newer = minor > NEWEST;
                let read = debug_offsets::read(minor, newer, memory, runtime, base);
                let read = read.map_err(|refusal| match refusal {
                    debug_offsets::Refusal::FreeThreaded => LayoutError::FreeThreaded(minor),
                    debug_offsets::Refusal::Layout(why) if newer => {
                        LayoutError::Unrecognized(minor, why)
                    }
                    debug_offsets::Refusal::Layout(why) => LayoutError::DebugOffsets(minor, why),
                })?;
                Layout {
                    gilstate,
                    newer_than_known: newer,
                    ..table(read.kernel, read.code)
                }
            }
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

    /// What to tell the user about a version newer than tracer knows.
    pub fn warning(&self) -> Option<String> {
        self.newer_than_known.then(|| {
            format!(
                "CPython 3.{} is newer than tracer knows (3.8 to 3.{NEWEST}): its _Py_DebugOffsets have 3.{NEWEST}'s layout, so its frames are read as 3.{NEWEST}'s",
                self.minor
            )
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
            assert_eq!(l.warning(), None);
        }
        assert!(matches!(
            Layout::for_version(7, &memory, 0),
            Err(LayoutError::Unsupported(7))
        ));
        // 3.13+ read the process: this one has no _PyRuntime at 0.
        assert!(Layout::for_version(13, &memory, 0).is_err());
        assert!(matches!(
            Layout::for_version(16, &memory, 0),
            Err(LayoutError::Unrecognized(16, _))
        ));
    }

    #[test]
    fn thread_state_moved_to_a_thread_local_in_315() {
        assert_eq!(gilstate(14), Some(GilState::TssKey(2336)));
        assert_eq!(gilstate(15), Some(GilState::ThreadLocal));
        assert_eq!(gilstate(16), Some(GilState::ThreadLocal));
        assert_eq!(gilstate(7), None);
    }
}
