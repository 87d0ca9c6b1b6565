//! Stacks in the reports' terms: function, module, file and line per frame,
//! with blazesym for native code. Symbols are cached per (module, offset),
//! whole stacks per stack id.

use std::collections::HashMap;

use blazesym::symbolize::{
    self, Input, Symbolized,
    source::{Elf, Source},
};

use tracer_common::func;

use crate::{
    modules::ModuleId,
    python::PyLocation,
    stacks::{Cut, NativeFrame, StackId, StackTable},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    Native,
    Python,
}

/// One frame of a report's stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Frame {
    pub kind: FrameKind,
    pub function: String,
    /// The module's path as the traced process names it.
    pub module: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Native frames: the offset in the module's file.
    pub offset: Option<u64>,
    /// Compiled into its caller: shares the caller's address.
    pub inlined: bool,
    /// Why the frame has no function name, if it has none.
    pub unknown: Option<String>,
}

impl Frame {
    pub const UNKNOWN_FUNCTION: &str = "[unknown]";

    fn unknown(module: String, offset: u64, why: String) -> Self {
        Frame {
            kind: FrameKind::Native,
            function: Self::UNKNOWN_FUNCTION.to_owned(),
            module,
            file: None,
            line: None,
            offset: Some(offset),
            inlined: false,
            unknown: Some(why),
        }
    }

    /// Where the frame is, as a reader sees it: the offset only counts
    /// when there is no line to tell frames apart.
    pub fn place(&self) -> String {
        let offset = if self.line.is_none() {
            self.offset
        } else {
            None
        };
        format!(
            "{:?} {} {} {:?}:{:?} {} {:?}",
            self.kind, self.function, self.module, self.file, self.line, self.inlined, offset
        )
    }

    /// The module's file name.
    pub fn module_name(&self) -> &str {
        self.module.rsplit('/').next().unwrap_or(&self.module)
    }
}

/// A symbolized stack, innermost frame first, as a view shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolizedStack {
    pub frames: Vec<Frame>,
    /// The stack may be missing outer frames: it was cut, or it does not end
    /// in a thread's entry function.
    pub truncated: bool,
}

/// A symbolized stack with its native and Python parts apart, from which
/// every view is made (and which captures keep).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StackDef {
    /// The allocation function first, then its callers.
    pub native: Vec<Frame>,
    pub native_truncated: bool,
    /// The thread's Python frames, innermost first.
    pub python: Vec<Frame>,
    pub python_truncated: bool,
}

impl View {
    pub fn show(self, stack: &StackDef) -> SymbolizedStack {
        let native = match self {
            // The allocation function stays first.
            View::Python => stack.native.iter().take(1).cloned().collect(),
            _ => stack.native.clone(),
        };
        let python = match self {
            View::Native => Vec::new(),
            _ => stack.python.clone(),
        };
        // The Python frames, where there are some, reach the thread's first
        // Python frame: the stack is complete unless they were cut.
        let truncated = if python.is_empty() {
            stack.native_truncated
        } else {
            stack.python_truncated
        };
        SymbolizedStack {
            frames: merge(native, python),
            truncated,
        }
    }
}

/// Functions a complete stack ends in: where the kernel starts a process or
/// a thread.
const ROOT_FUNCTIONS: [&str; 8] = [
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
];

/// Which frames a report shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    /// Python frames in place of the interpreter's evaluation frames, native
    /// frames (C extensions, libc) around them.
    #[default]
    Mixed,
    /// The allocation function, then Python frames only.
    Python,
    /// Native frames only.
    Native,
}

/// CPython's evaluation loop and the calls between its frames: where a
/// native stack runs Python code, which the Python frames stand for.
fn is_interpreter_frame(function: &str) -> bool {
    const EVAL: [&str; 12] = [
        "_PyEval_EvalFrameDefault",
        "_PyEval_EvalFrame",
        "PyEval_EvalFrameEx",
        "PyEval_EvalFrame",
        "_PyEval_Vector",
        "_PyEval_EvalCode",
        "_PyEval_EvalCodeWithName",
        "PyEval_EvalCode",
        "PyEval_EvalCodeEx",
        "_PyFunction_Vectorcall",
        "function_code_fastcall",
        "_PyObject_VectorcallTstate",
    ];
    let base = function.split('.').next().unwrap_or(function);
    EVAL.contains(&base)
}

/// Native frames with the Python frames in place of the interpreter's
/// frames between the first and the last evaluation frame; after the native
/// frames when the native stack does not reach the interpreter (no frame
/// pointers).
fn merge(native: Vec<Frame>, python: Vec<Frame>) -> Vec<Frame> {
    if python.is_empty() {
        return native;
    }
    let first = native
        .iter()
        .position(|f| is_interpreter_frame(&f.function));
    let last = native
        .iter()
        .rposition(|f| is_interpreter_frame(&f.function));
    match (first, last) {
        (Some(first), Some(last)) => {
            let mut native = native.into_iter();
            let mut merged: Vec<Frame> = native.by_ref().take(first).collect();
            merged.extend(python);
            merged.extend(native.skip(last + 1 - first));
            merged
        }
        _ => native.into_iter().chain(python).collect(),
    }
}

/// A stack with what symbolizing it needs and nothing of the stack table,
/// so that it can be symbolized on another thread.
#[derive(Clone, Debug)]
pub struct Unsymbolized {
    /// The probed allocation function, already named (none if the kernel
    /// captured no frame).
    allocator: Option<Frame>,
    /// Its callers' return addresses.
    callers: Vec<NativeRef>,
    cut: Option<Cut>,
    python: Vec<Frame>,
    python_truncated: bool,
}

/// A native frame and the file it points into.
#[derive(Clone, Debug)]
enum NativeRef {
    Module {
        module: ModuleId,
        path: String,
        /// Where to read the file, or why it cannot be read.
        file: Result<std::path::PathBuf, String>,
        file_offset: u64,
    },
    Unmapped {
        addr: u64,
    },
}

impl Unsymbolized {
    pub fn new(table: &StackTable, id: StackId) -> Self {
        let stack = table.get(id);
        let (allocator, callers) = match stack.frames.split_first() {
            Some((probed, callers)) => (
                Some(allocator_frame(table, stack.func, *probed)),
                callers.iter().map(|f| native_ref(table, *f)).collect(),
            ),
            None => (None, Vec::new()),
        };
        Self {
            allocator,
            callers,
            cut: stack.cut,
            python: stack
                .python
                .iter()
                .map(|id| python_frame(table.python_location(*id)))
                .collect(),
            python_truncated: stack.python_cut.is_some(),
        }
    }
}

fn native_ref(table: &StackTable, frame: NativeFrame) -> NativeRef {
    match frame {
        NativeFrame::Module {
            module,
            file_offset,
        } => {
            let m = table.modules.get(module);
            NativeRef::Module {
                module,
                path: m.path.clone(),
                file: match &m.elf {
                    Ok(_) => Ok(m.symbolize_path.clone()),
                    Err(err) => Err(err.clone()),
                },
                file_offset,
            }
        }
        NativeFrame::Unmapped { addr } => NativeRef::Unmapped { addr },
    }
}

pub struct Symbolizer {
    blazesym: symbolize::Symbolizer,
    frames: HashMap<(ModuleId, u64), Vec<Frame>>,
    stacks: HashMap<StackId, StackDef>,
}

impl Symbolizer {
    /// `debug_dirs`: where to look for separate debug files (by build id).
    pub fn new(debug_dirs: &[std::path::PathBuf]) -> Self {
        Self {
            blazesym: symbolize::Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .set_debug_dirs(Some(debug_dirs))
                .build(),
            frames: HashMap::new(),
            stacks: HashMap::new(),
        }
    }

    /// The stack `id` of `table`, symbolized once.
    pub fn stack(&mut self, table: &StackTable, id: StackId) -> &StackDef {
        if !self.stacks.contains_key(&id) {
            let symbolized = self.symbolize(&Unsymbolized::new(table, id));
            self.stacks.insert(id, symbolized);
        }
        &self.stacks[&id]
    }

    pub fn symbolize(&mut self, stack: &Unsymbolized) -> StackDef {
        let mut native = Vec::with_capacity(stack.callers.len() + 4);
        native.extend(stack.allocator.clone());
        for frame in &stack.callers {
            // Return addresses point after the call: look up the call itself.
            native.extend(self.native(frame, 1));
        }
        let reached_root = native
            .last()
            .is_some_and(|f| ROOT_FUNCTIONS.contains(&f.function.as_str()));
        let native_truncated = stack.cut.is_some() || !reached_root;
        if stack.cut == Some(Cut::Lost) {
            native.push(Frame::unknown(
                String::new(),
                0,
                "stack not captured".into(),
            ));
        }
        StackDef {
            native,
            native_truncated,
            python: stack.python.clone(),
            python_truncated: stack.python_truncated,
        }
    }

    /// The frames (several if inlined) at a native frame, innermost first.
    fn native(&mut self, frame: &NativeRef, back: u64) -> Vec<Frame> {
        let (module, path, file, file_offset) = match frame {
            NativeRef::Module {
                module,
                path,
                file,
                file_offset,
            } => (*module, path, file, *file_offset),
            NativeRef::Unmapped { addr } => {
                return vec![Frame::unknown(
                    "[anonymous]".into(),
                    *addr,
                    "address in no file mapping".into(),
                )];
            }
        };
        if let Some(frames) = self.frames.get(&(module, file_offset)) {
            return frames.clone();
        }
        let frames = match file {
            Err(err) => vec![Frame::unknown(path.clone(), file_offset, err.clone())],
            Ok(file) => {
                let src = Source::Elf(Elf::new(file));
                let query = file_offset.saturating_sub(back);
                match self
                    .blazesym
                    .symbolize_single(&src, Input::FileOffset(query))
                {
                    Ok(Symbolized::Sym(sym)) => frames_of(&sym, path, file_offset),
                    Ok(Symbolized::Unknown(reason)) => {
                        vec![Frame::unknown(
                            path.clone(),
                            file_offset,
                            reason.to_string(),
                        )]
                    }
                    Err(err) => vec![Frame::unknown(path.clone(), file_offset, err.to_string())],
                }
            }
        };
        self.frames.insert((module, file_offset), frames.clone());
        frames
    }
}

fn python_frame(location: &PyLocation) -> Frame {
    Frame {
        kind: FrameKind::Python,
        function: location.function.clone(),
        module: location.module.clone(),
        file: location.file.clone(),
        line: location.line,
        offset: None,
        inlined: false,
        unknown: location.unknown.clone(),
    }
}

/// The probed allocation function, named as its callers call it (libc's
/// own symbol there is often an internal alias such as `__GI___libc_malloc`).
fn allocator_frame(table: &StackTable, func: u32, probed: NativeFrame) -> Frame {
    let (module, offset) = match probed {
        NativeFrame::Module {
            module,
            file_offset,
        } => (table.modules.get(module).path.clone(), file_offset),
        NativeFrame::Unmapped { addr } => ("[anonymous]".to_owned(), addr),
    };
    Frame {
        kind: FrameKind::Native,
        function: allocator_name(func).to_owned(),
        module,
        file: None,
        line: None,
        offset: Some(offset),
        inlined: false,
        unknown: None,
    }
}

pub fn allocator_name(func: u32) -> &'static str {
    match func {
        func::MALLOC => "malloc",
        func::CALLOC => "calloc",
        func::REALLOC => "realloc",
        func::REALLOCARRAY => "reallocarray",
        func::POSIX_MEMALIGN => "posix_memalign",
        func::MEMALIGN => "memalign",
        func::VALLOC => "valloc",
        func::PVALLOC => "pvalloc",
        func::MMAP => "mmap",
        func::MREMAP => "mremap",
        func::PYOBJECT_MALLOC => "PyObject_Malloc",
        func::PYOBJECT_CALLOC => "PyObject_Calloc",
        func::PYOBJECT_REALLOC => "PyObject_Realloc",
        func::PYMEM_MALLOC => "PyMem_Malloc",
        func::PYMEM_CALLOC => "PyMem_Calloc",
        func::PYMEM_REALLOC => "PyMem_Realloc",
        _ => "[allocation]",
    }
}

fn frames_of(sym: &symbolize::Sym<'_>, module: &str, offset: u64) -> Vec<Frame> {
    let location = |info: Option<&symbolize::CodeInfo<'_>>| {
        info.map_or((None, None), |ci| {
            (Some(ci.to_path().display().to_string()), ci.line)
        })
    };
    let mut frames = Vec::with_capacity(1 + sym.inlined.len());
    // blazesym lists inlined calls outermost first; each one's location is
    // inside it, and the symbol's own location is where the first is called.
    for inl in sym.inlined.iter().rev() {
        let (file, line) = location(inl.code_info.as_ref());
        frames.push(Frame {
            kind: FrameKind::Native,
            function: inl.name.to_string(),
            module: module.to_owned(),
            file,
            line,
            offset: Some(offset),
            inlined: true,
            unknown: None,
        });
    }
    let (file, line) = location(sym.code_info.as_deref());
    frames.push(Frame {
        kind: FrameKind::Native,
        function: sym.name.to_string(),
        module: module.to_owned(),
        file,
        line,
        offset: Some(offset),
        inlined: false,
        unknown: None,
    });
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameKind, function: &str) -> Frame {
        Frame {
            kind,
            function: function.into(),
            module: String::new(),
            file: None,
            line: None,
            offset: None,
            inlined: false,
            unknown: None,
        }
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| f.function.as_str()).collect()
    }

    #[test]
    fn python_frames_replace_the_evaluation_loop() {
        let native = vec![
            frame(FrameKind::Native, "malloc"),
            frame(FrameKind::Native, "numpy_zeros"),
            frame(FrameKind::Native, "_PyEval_EvalFrameDefault"),
            frame(FrameKind::Native, "_PyFunction_Vectorcall"),
            frame(FrameKind::Native, "_PyEval_EvalFrameDefault.cold"),
            frame(FrameKind::Native, "Py_RunMain"),
        ];
        let python = vec![
            frame(FrameKind::Python, "remember"),
            frame(FrameKind::Python, "handle"),
        ];
        assert_eq!(
            names(&merge(native, python.clone())),
            ["malloc", "numpy_zeros", "remember", "handle", "Py_RunMain"]
        );
        // Without frame pointers the native stack stops short of the loop.
        let short = vec![
            frame(FrameKind::Native, "malloc"),
            frame(FrameKind::Native, "_PyObject_Malloc"),
        ];
        assert_eq!(
            names(&merge(short.clone(), python)),
            ["malloc", "_PyObject_Malloc", "remember", "handle"]
        );
        assert_eq!(
            names(&merge(short, Vec::new())),
            ["malloc", "_PyObject_Malloc"]
        );
    }
}
