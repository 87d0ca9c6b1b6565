//! The allocation functions: the ids their calls are recorded with
//! (`AllocRecord::func`, written into capture files: never renumbered) and
//! [`FUNCTIONS`], the one table of what tracer probes for each. The
//! kernel's entry programs take their ids from it when they are compiled
//! ([`entry_id`]); userspace attaches, places and names probes from it.

pub const MALLOC: u32 = 1;
pub const CALLOC: u32 = 2;
pub const REALLOC: u32 = 3;
pub const REALLOCARRAY: u32 = 4;
pub const POSIX_MEMALIGN: u32 = 5;
/// `memalign` and `aligned_alloc` (one address in glibc).
pub const MEMALIGN: u32 = 6;
pub const VALLOC: u32 = 7;
pub const PVALLOC: u32 = 8;
pub const MMAP: u32 = 9;
pub const MREMAP: u32 = 10;
/// CPython's object allocator (`--pymalloc`), told apart by attach cookie.
pub const PYOBJECT_MALLOC: u32 = 11;
pub const PYOBJECT_CALLOC: u32 = 12;
pub const PYOBJECT_REALLOC: u32 = 13;
/// CPython's `PyMem_*` domain, served by the same allocator.
pub const PYMEM_MALLOC: u32 = 14;
pub const PYMEM_CALLOC: u32 = 15;
pub const PYMEM_REALLOC: u32 = 16;
/// No allocation function: a free's row, which records none.
pub const NONE: u32 = 0;

/// Whether `--sample-bytes` samples calls of `f`. Mappings are few and
/// large: always recorded, with their own size.
pub const fn is_sampled(f: u32) -> bool {
    f != MMAP && f != MREMAP
}

/// One symbol tracer probes as an allocation function (or a free), or a
/// syscall recorded as one: a row of [`FUNCTIONS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    /// The symbol probed (or the syscall).
    pub symbol: &'static str,
    /// What its calls are recorded as; [`NONE`] for a free.
    pub id: u32,
    /// What reports call its calls: the name its callers know (libc's own
    /// symbol for it is often an internal alias such as
    /// `__GI___libc_malloc`). Every row of one id has the same.
    pub name: &'static str,
    /// The kernel program that records its calls, by name
    /// (`tracer-ebpf/src/main.rs`).
    pub program: &'static str,
    /// The integer arguments the program reads (after the context pointer
    /// of a [`Family::Pymalloc`] `context_first` row): its probe goes where
    /// the function still has them as passed (tracer's placement.rs).
    pub reads: usize,
    pub family: Family,
}

/// Where a [`Function`] is found and how its probes are told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// libc's allocation family, probed in every file that defines both
    /// `malloc` and `free` (libc, a static executable, a preloaded
    /// jemalloc or tcmalloc). Its probes carry no cookie: its program's id
    /// is its own. `hot`: called often enough that a single-stepped probe
    /// matters (warned of).
    Libc { hot: bool },
    /// CPython's object allocator (`--pymalloc`): the exported entry
    /// points of its object and mem domains (both served by pymalloc since
    /// 3.6), probed in the file that defines `Py_FinalizeEx` with libc's
    /// programs, told apart by attach cookie ([`Function::cookie`]).
    /// `context_first`: obmalloc's functions behind them (static, found in
    /// the file's symbol table or its build-id debug file), which take the
    /// allocator's context pointer first; only their LTO copies
    /// (`.lto_priv.N`), which inlined callers reach directly, are probed. A
    /// call of one from the other is nested, so counted once.
    Pymalloc { context_first: bool },
    /// A syscall, recorded by the syscall tracepoints (no uprobe).
    Syscall,
}

const HOT: bool = true;
const COLD: bool = false;

/// Every allocation function tracer records, a row per symbol, in the
/// order userspace probes them (glibc gives `aligned_alloc` and `memalign`
/// one address: the first is probed). Adding one: a row here, and its
/// entry program's line in the kernel's entry table (`alloc_entries!` in
/// `tracer-ebpf/src/main.rs`) unless it reuses one, with an id above if it
/// is a new function.
pub const FUNCTIONS: [Function; 24] = [
    libc("malloc", MALLOC, "malloc_entry", 1, HOT),
    libc("calloc", CALLOC, "calloc_entry", 2, HOT),
    libc("realloc", REALLOC, "realloc_entry", 2, HOT),
    libc("reallocarray", REALLOCARRAY, "reallocarray_entry", 3, COLD),
    libc(
        "posix_memalign",
        POSIX_MEMALIGN,
        "posix_memalign_entry",
        3,
        COLD,
    ),
    libc("aligned_alloc", MEMALIGN, "memalign_entry", 2, COLD).named("memalign"),
    libc("memalign", MEMALIGN, "memalign_entry", 2, COLD),
    libc("valloc", VALLOC, "valloc_entry", 1, COLD),
    libc("pvalloc", PVALLOC, "pvalloc_entry", 1, COLD),
    libc("free", NONE, "free_entry", 1, HOT),
    syscall("mmap", MMAP, "mmap_enter"),
    syscall("mremap", MREMAP, "mremap_enter"),
    pymalloc("PyObject_Malloc", PYOBJECT_MALLOC, "malloc_entry", 1),
    pymalloc("PyObject_Calloc", PYOBJECT_CALLOC, "calloc_entry", 2),
    pymalloc("PyObject_Realloc", PYOBJECT_REALLOC, "realloc_entry", 2),
    pymalloc("PyObject_Free", NONE, "free_entry", 1),
    pymalloc("PyMem_Malloc", PYMEM_MALLOC, "malloc_entry", 1),
    pymalloc("PyMem_Calloc", PYMEM_CALLOC, "calloc_entry", 2),
    pymalloc("PyMem_Realloc", PYMEM_REALLOC, "realloc_entry", 2),
    pymalloc("PyMem_Free", NONE, "free_entry", 1),
    pymalloc("_PyObject_Malloc", PYOBJECT_MALLOC, "malloc_entry", 1).behind("PyObject_Malloc"),
    pymalloc("_PyObject_Calloc", PYOBJECT_CALLOC, "calloc_entry", 2).behind("PyObject_Calloc"),
    pymalloc("_PyObject_Realloc", PYOBJECT_REALLOC, "realloc_entry", 2).behind("PyObject_Realloc"),
    pymalloc("_PyObject_Free", NONE, "free_entry", 1).behind("PyObject_Free"),
];

const fn libc(
    symbol: &'static str,
    id: u32,
    program: &'static str,
    reads: usize,
    hot: bool,
) -> Function {
    Function {
        symbol,
        id,
        name: symbol,
        program,
        reads,
        family: Family::Libc { hot },
    }
}

const fn pymalloc(symbol: &'static str, id: u32, program: &'static str, reads: usize) -> Function {
    Function {
        family: Family::Pymalloc {
            context_first: false,
        },
        ..libc(symbol, id, program, reads, COLD)
    }
}

const fn syscall(symbol: &'static str, id: u32, program: &'static str) -> Function {
    Function {
        family: Family::Syscall,
        ..libc(symbol, id, program, 0, COLD)
    }
}

impl Function {
    /// Another symbol of the function reports call `name`.
    const fn named(self, name: &'static str) -> Self {
        Self { name, ..self }
    }

    /// obmalloc's function behind the exported `exported`, which takes the
    /// allocator's context pointer first.
    const fn behind(self, exported: &'static str) -> Self {
        Self {
            name: exported,
            family: Family::Pymalloc {
                context_first: true,
            },
            ..self
        }
    }

    /// Whether its return is probed too, to learn the pointer: by
    /// `alloc_return`, or with uprobe sessions by the same program (a
    /// syscall's by its exit tracepoint). A free's is not.
    pub const fn returns(&self) -> bool {
        self.id != NONE
    }

    /// The attach cookie of its probes, which `tracer-ebpf/src/probe.rs`
    /// reads: the id to record in the low 32 bits (0: the program's own),
    /// and in bit 32 whether the arguments follow a context pointer.
    pub const fn cookie(&self) -> u64 {
        match self.family {
            Family::Pymalloc { context_first } => self.id as u64 | (context_first as u64) << 32,
            Family::Libc { .. } | Family::Syscall => 0,
        }
    }
}

/// What reports call the calls recorded as `id`, if it is an allocation
/// function's.
pub const fn name(id: u32) -> Option<&'static str> {
    if id == NONE {
        return None;
    }
    let mut i = 0;
    while i < FUNCTIONS.len() {
        if FUNCTIONS[i].id == id {
            return Some(FUNCTIONS[i].name);
        }
        i += 1;
    }
    None
}

/// The id the kernel's entry `program` records when its probe carries no
/// cookie (that of its libc rows), computed when the kernel's entry table is
/// compiled. That table does not compile if no libc row names the program,
/// if the program reads more arguments than a row of it says (its probe
/// could go where they are changed already), or if its rows' return probes
/// are not as `returns` says.
pub const fn entry_id(program: &str, reads: usize, returns: bool) -> u32 {
    let mut own = None;
    let mut i = 0;
    while i < FUNCTIONS.len() {
        let f = &FUNCTIONS[i];
        i += 1;
        if !same(f.program, program) {
            continue;
        }
        if f.reads < reads {
            panic!("an entry program reads more arguments than a row of it says");
        }
        if f.returns() != returns {
            panic!("an entry program's rows probe its return otherwise");
        }
        if let Family::Libc { .. } = f.family {
            match own {
                Some(id) if id != f.id => panic!("an entry program's libc rows give it two ids"),
                _ => own = Some(f.id),
            }
        }
    }
    match own {
        Some(id) => id,
        None => panic!("an entry program that no libc row of func::FUNCTIONS names"),
    }
}

/// `a == b`, in a `const fn`.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_has_one_name() {
        for id in MALLOC..=PYMEM_REALLOC {
            let name = name(id).expect("a name for every id");
            for f in FUNCTIONS.iter().filter(|f| f.id == id) {
                assert_eq!(f.name, name, "{}", f.symbol);
            }
        }
        assert_eq!(name(MEMALIGN), Some("memalign"));
        assert_eq!(name(PYOBJECT_MALLOC), Some("PyObject_Malloc"));
        assert_eq!(name(MMAP), Some("mmap"));
        assert_eq!(name(NONE), None);
        assert_eq!(name(PYMEM_REALLOC + 1), None);
    }

    #[test]
    fn the_programs_rows_agree() {
        // What the kernel's entry table asks of its programs, asked of
        // every row: a libc row is its program's own.
        for f in &FUNCTIONS {
            if f.family == Family::Syscall {
                continue;
            }
            let own = entry_id(f.program, f.reads, f.returns());
            if let Family::Libc { .. } = f.family {
                assert_eq!(own, f.id, "{}", f.symbol);
            }
        }
        assert_eq!(entry_id("memalign_entry", 2, true), MEMALIGN);
        assert_eq!(entry_id("free_entry", 1, false), NONE);
    }

    #[test]
    fn only_mappings_are_not_sampled() {
        for f in &FUNCTIONS {
            assert_eq!(
                is_sampled(f.id),
                f.family != Family::Syscall,
                "{}",
                f.symbol
            );
        }
    }

    #[test]
    fn cookies_are_the_old_ones() {
        let cookie = |symbol| {
            FUNCTIONS
                .iter()
                .find(|f| f.symbol == symbol)
                .map(Function::cookie)
        };
        assert_eq!(cookie("malloc"), Some(0));
        assert_eq!(cookie("PyMem_Calloc"), Some(u64::from(PYMEM_CALLOC)));
        assert_eq!(cookie("PyObject_Free"), Some(0));
        assert_eq!(cookie("_PyObject_Free"), Some(1 << 32));
        assert_eq!(
            cookie("_PyObject_Realloc"),
            Some(u64::from(PYOBJECT_REALLOC) | 1 << 32)
        );
    }
}
