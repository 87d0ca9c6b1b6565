//! Stacks in the reports' terms: function, module, file and line per frame,
//! with blazesym for native code. Symbols are cached per (module, offset).
//! A stack is taken out of the model (`Unsymbolized`, which owns what it
//! needs, the open files included) so that it can be symbolized on another
//! thread.
//!
//! blazesym is given the descriptor of each file (`/proc/self/fd/N`), never
//! a path a process controls; it maps what it reads and follows debug
//! links, so a file that only root can change is given as it is, and any
//! other as a private copy without its links (`elf::private_copy`). What
//! it caches is bounded: it is made anew once it has seen `MAX_MODULES`
//! files.

pub mod feed;

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::Arc,
};

use blazesym::symbolize::{
    self, Input, Symbolized,
    source::{Elf, Source},
};

use tracer_common::func;

use crate::{
    elf::private_copy,
    frame::{Frame, FrameKind, StackDef, clip},
    model::{
        modules::{ModuleId, Modules},
        registry::NativeFrame,
        stacks::{Cut, Stack},
    },
    python::PyLocation,
    target_file::TargetFile,
};

/// Files blazesym reads before it is made anew (dropping every file it
/// maps and every symbol table it parsed); private copies kept at once.
const MAX_MODULES: usize = 64;
const MAX_COPIES: usize = 16;
/// Symbolized places remembered: past this the cache is started again.
const MAX_PLACES: usize = 1 << 20;

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
        /// The file, open, or why it cannot be read.
        file: Result<Arc<TargetFile>, String>,
        file_offset: u64,
    },
    Unmapped {
        addr: u64,
    },
}

impl Unsymbolized {
    /// `stack`, whose frames point into `modules`; `python` are the
    /// locations of its Python frames.
    pub fn new<'a>(
        stack: &Stack,
        modules: &Modules,
        python: impl IntoIterator<Item = &'a PyLocation>,
    ) -> Self {
        let (allocator, callers) = match stack.frames.split_first() {
            Some((probed, callers)) => (
                Some(allocator_frame(modules, stack.func, *probed)),
                callers.iter().map(|f| native_ref(modules, *f)).collect(),
            ),
            None => (None, Vec::new()),
        };
        Self {
            allocator,
            callers,
            cut: stack.cut,
            python: python.into_iter().map(python_frame).collect(),
            python_truncated: stack.python_cut.is_some(),
        }
    }
}

fn native_ref(modules: &Modules, frame: NativeFrame) -> NativeRef {
    match frame {
        NativeFrame::Module {
            module,
            file_offset,
        } => {
            let m = modules.get(module);
            NativeRef::Module {
                module,
                path: m.path.clone(),
                file: m.file(),
                file_offset,
            }
        }
        NativeFrame::Unmapped { addr } => NativeRef::Unmapped { addr },
    }
}

pub struct Symbolizer {
    blazesym: symbolize::Symbolizer,
    /// Modules blazesym has read since it was made.
    seen: Vec<ModuleId>,
    debug_dirs: Vec<PathBuf>,
    /// Private copies of files only their owner could change, oldest first.
    copies: VecDeque<(ModuleId, Result<File, String>)>,
    frames: HashMap<ModuleOffset, Vec<Frame>>,
}

/// A place in a module's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ModuleOffset {
    module: ModuleId,
    file_offset: u64,
}

fn blazesym(debug_dirs: &[PathBuf]) -> symbolize::Symbolizer {
    symbolize::Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_demangling(true)
        .set_debug_dirs(Some(debug_dirs))
        .build()
}

impl Symbolizer {
    /// `debug_dirs`: where to look for separate debug files (by build id),
    /// directories only root can change.
    pub fn new(debug_dirs: &[PathBuf]) -> Self {
        Self {
            blazesym: blazesym(debug_dirs),
            seen: Vec::new(),
            debug_dirs: debug_dirs.to_vec(),
            copies: VecDeque::new(),
            frames: HashMap::new(),
        }
    }

    /// Debug directories found since (a new interpreter's tree) count from
    /// the next time blazesym is made.
    pub fn set_debug_dirs(&mut self, debug_dirs: &[PathBuf]) {
        if self.debug_dirs != debug_dirs {
            self.debug_dirs = debug_dirs.to_vec();
            self.seen.clear();
            self.blazesym = blazesym(debug_dirs);
        }
    }

    /// The path blazesym reads `module` at: the file's own descriptor if
    /// only root can change it, else its private copy's.
    fn source_path(&mut self, module: ModuleId, file: &TargetFile) -> Result<PathBuf, String> {
        if !self.seen.contains(&module) {
            if self.seen.len() >= MAX_MODULES {
                self.blazesym = blazesym(&self.debug_dirs);
                self.seen.clear();
            }
            self.seen.push(module);
        }
        if file.trusted() {
            return Ok(file.kernel_path());
        }
        if !self.copies.iter().any(|(m, _)| *m == module) {
            if self.copies.len() >= MAX_COPIES {
                self.copies.pop_front();
                // A copy blazesym still maps would be read again under
                // another descriptor: start it afresh.
                self.blazesym = blazesym(&self.debug_dirs);
                self.seen.clear();
                self.seen.push(module);
            }
            let copy = private_copy(file)
                .map_err(|e| format!("cannot copy {} to read it: {e}", file.shown()));
            self.copies.push_back((module, copy));
        }
        match self.copies.iter().find(|(m, _)| *m == module) {
            Some((_, Ok(copy))) => Ok(PathBuf::from(format!("/proc/self/fd/{}", copy.as_raw_fd()))),
            Some((_, Err(err))) => Err(err.clone()),
            None => Err("no copy".into()),
        }
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
        let why_not = match stack.cut {
            Some(Cut::Lost) => Some("stack not captured"),
            Some(Cut::OverLimit) => Some(
                "stack not kept: its process made more distinct stacks than tracer keeps of one process",
            ),
            _ => None,
        };
        if let Some(why) = why_not {
            native.push(Frame::unknown(String::new(), 0, why.into()));
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
        if let Some(frames) = self.frames.get(&ModuleOffset {
            module,
            file_offset,
        }) {
            return frames.clone();
        }
        let source = match file {
            Ok(file) => self.source_path(module, file),
            Err(err) => Err(err.clone()),
        };
        let path = clip(path.clone());
        let path = &path;
        let frames = match source {
            Err(err) => vec![Frame::unknown(path.clone(), file_offset, err)],
            Ok(source) => {
                let src = Source::Elf(Elf::new(source));
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
        if self.frames.len() >= MAX_PLACES {
            self.frames.clear();
        }
        self.frames.insert(
            ModuleOffset {
                module,
                file_offset,
            },
            frames.clone(),
        );
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
fn allocator_frame(modules: &Modules, func: u32, probed: NativeFrame) -> Frame {
    let (module, offset) = match probed {
        NativeFrame::Module {
            module,
            file_offset,
        } => (modules.get(module).path.clone(), file_offset),
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

/// What reports call the allocation function recorded as `func`
/// (`tracer_common::func::FUNCTIONS`).
pub fn allocator_name(func: u32) -> &'static str {
    func::name(func).unwrap_or("[allocation]")
}

fn frames_of(sym: &symbolize::Sym<'_>, module: &str, offset: u64) -> Vec<Frame> {
    let location = |info: Option<&symbolize::CodeInfo<'_>>| {
        info.map_or((None, None), |ci| {
            (Some(clip(ci.to_path().display().to_string())), ci.line)
        })
    };
    let mut frames = Vec::with_capacity(1 + sym.inlined.len());
    // blazesym lists inlined calls outermost first; each one's location is
    // inside it, and the symbol's own location is where the first is called.
    for inl in sym.inlined.iter().rev() {
        let (file, line) = location(inl.code_info.as_ref());
        frames.push(Frame {
            kind: FrameKind::Native,
            function: clip(inl.name.to_string()),
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
        function: clip(sym.name.to_string()),
        module: module.to_owned(),
        file,
        line,
        offset: Some(offset),
        inlined: false,
        unknown: None,
    });
    frames
}
