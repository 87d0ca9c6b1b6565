//! Frames of a symbolized stack, in the reports' terms (function, module,
//! file and line), and the views a report shows of them: Python frames in
//! place of the interpreter's evaluation loop, Python only, native only.

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

/// The longest name, path or reason a frame keeps, in bytes: far beyond
/// any real one, and what keeps a stack record (and a capture reader)
/// bounded whatever a traced process or a debug file holds.
pub const MAX_TEXT: usize = 4096;

/// `s`, cut to `MAX_TEXT` bytes at a character boundary.
pub fn clip(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Frame {
    pub const UNKNOWN_FUNCTION: &str = "[unknown]";

    /// A frame that is only a name: no module, file or line (a type in a
    /// types profile, a frame in a test).
    pub fn named(kind: FrameKind, function: String) -> Self {
        Frame {
            kind,
            function,
            module: String::new(),
            file: None,
            line: None,
            offset: None,
            inlined: false,
            unknown: None,
        }
    }

    /// A native frame that could not be named, and why.
    pub fn unknown(module: String, offset: u64, why: String) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameKind, function: &str) -> Frame {
        Frame::named(kind, function.into())
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
