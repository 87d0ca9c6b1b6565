//! The executable files that stack frames point into, each opened once
//! through the process that maps it and checked (`TargetFile`), so that
//! frames can be checked and symbolized after that process has exited (or
//! from outside its container). At most `MAX_OPEN` are held open: under
//! `--all` a host maps thousands of files over days, and the least
//! recently used is closed (and opened again through the next process that
//! maps it).

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use iced_x86::{Decoder, DecoderOptions, FlowControl};

use crate::{
    proc_maps::{FileId, Mapping},
    target_file::TargetFile,
};

/// Files held open at once (with the descriptor limit raised to its hard
/// limit at start, thousands are allowed): the stacks of a recording
/// point into a few dozen.
const MAX_OPEN: usize = 256;
/// Return addresses remembered as checked: past this many the table is
/// started again (a check costs one decode).
const MAX_CHECKED: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId(pub u32);

pub struct Module {
    /// The path as the process that mapped it names it.
    pub path: String,
    /// The file, or why it could not be opened.
    file: Result<Option<Arc<TargetFile>>, String>,
    /// When it was last used, in `Modules::tick`s.
    used: u64,
}

impl Module {
    /// The open file to read, or why there is none.
    pub fn file(&self) -> Result<Arc<TargetFile>, String> {
        match &self.file {
            Ok(Some(file)) => Ok(file.clone()),
            Ok(None) => Err(format!(
                "{} was closed before it was read (more than {MAX_OPEN} files in use at once)",
                self.path
            )),
            Err(err) => Err(err.clone()),
        }
    }
}

#[derive(Default)]
pub struct Modules {
    ids: HashMap<FileId, ModuleId>,
    list: Vec<Module>,
    open: usize,
    tick: u64,
    /// Whether the code before an offset is a call, by (module, offset).
    after_call: HashMap<(ModuleId, u64), bool>,
    /// Where debug files may be besides the system's: `<prefix>/lib/debug`
    /// of a trusted binary at `<prefix>/bin/...` in a tree only root writes.
    debug_dirs: Vec<PathBuf>,
}

impl Modules {
    /// The module for the file `mapping` maps in `pid`, opened on first
    /// use (and again if it was closed since).
    pub fn get_or_open(&mut self, pid: u32, mapping: &Mapping) -> ModuleId {
        self.tick += 1;
        let id = FileId::from(mapping);
        if let Some(&module) = self.ids.get(&id) {
            let tick = self.tick;
            let m = &mut self.list[module.0 as usize];
            m.used = tick;
            if matches!(m.file, Ok(None))
                && let Ok(file) = TargetFile::mapped(pid, mapping)
            {
                m.file = Ok(Some(Arc::new(file)));
                self.open += 1;
                self.close_unused();
            }
            return module;
        }
        let file = match TargetFile::mapped(pid, mapping) {
            Ok(file) => {
                self.open += 1;
                if file.trusted() {
                    self.add_debug_dir(&mapping.path);
                }
                Ok(Some(Arc::new(file)))
            }
            Err(err) => Err(err.to_string()),
        };
        let module_id = ModuleId(self.list.len() as u32);
        self.list.push(Module {
            path: mapping.path.clone(),
            file,
            used: self.tick,
        });
        self.ids.insert(id, module_id);
        self.close_unused();
        module_id
    }

    pub fn get(&self, id: ModuleId) -> &Module {
        &self.list[id.0 as usize]
    }

    /// Files open now.
    pub fn open_files(&self) -> usize {
        self.open
    }

    /// Closes the least recently used files beyond `MAX_OPEN`. A stack
    /// waiting to be symbolized keeps its files (`Arc`) until it is.
    fn close_unused(&mut self) {
        while self.open > MAX_OPEN {
            let Some(oldest) = self
                .list
                .iter_mut()
                .filter(|m| matches!(m.file, Ok(Some(_))))
                .min_by_key(|m| m.used)
            else {
                return;
            };
            oldest.file = Ok(None);
            self.open -= 1;
        }
    }

    /// Files opened so far.
    #[cfg(test)]
    pub(super) fn opened(&self) -> usize {
        self.list.len()
    }

    /// Whether the instruction before `file_offset` in `module` is a call
    /// of the length that ends exactly there: whether a walked frame is a
    /// return address.
    pub fn follows_call(&mut self, module: ModuleId, file_offset: u64) -> bool {
        if let Some(known) = self.after_call.get(&(module, file_offset)) {
            return *known;
        }
        let verdict = self.get(module).file().is_ok_and(|file| {
            let start = file_offset.saturating_sub(7);
            let mut before = [0u8; 7];
            let want = (file_offset - start) as usize;
            let got = file.read_at(start, &mut before[..want]);
            got == want && ends_with_call(&before[..want])
        });
        if self.after_call.len() >= MAX_CHECKED {
            self.after_call.clear();
        }
        self.after_call.insert((module, file_offset), verdict);
        verdict
    }

    /// Where debug files of these modules may be, besides the system's.
    pub fn debug_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![PathBuf::from("/usr/lib/debug"), PathBuf::from("/lib/debug")];
        dirs.extend(self.debug_dirs.iter().cloned());
        dirs
    }

    /// `<prefix>/lib/debug` of a binary at `<prefix>/bin/...` (an
    /// interpreter unpacked in a private tree), if only root can change it
    /// or any directory above it: blazesym reads (and maps) what it finds
    /// there.
    fn add_debug_dir(&mut self, binary: &str) {
        let Some(prefix) = Path::new(binary).parent().and_then(Path::parent) else {
            return;
        };
        let dir = prefix.join("lib/debug");
        if !self.debug_dirs.contains(&dir) && only_root_writes(&dir) {
            self.debug_dirs.push(dir);
        }
    }
}

/// Whether `dir` and every directory above it belong to root and no one
/// else can change them (or only their own entries: sticky, as /tmp).
fn only_root_writes(dir: &Path) -> bool {
    let Ok(md) = std::fs::symlink_metadata(dir) else {
        return false;
    };
    if !md.is_dir() {
        return false;
    }
    dir.ancestors().all(|d| {
        std::fs::symlink_metadata(d)
            .is_ok_and(|md| md.uid() == 0 && (md.mode() & 0o022 == 0 || md.mode() & 0o1000 != 0))
    })
}

/// Whether `before` (the bytes just before a return address) ends with a
/// complete call instruction. x86-64 calls are 2 to 7 bytes long.
fn ends_with_call(before: &[u8]) -> bool {
    (2..=before.len()).any(|len| {
        let code = &before[before.len() - len..];
        let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
        let ins = decoder.decode();
        !ins.is_invalid()
            && ins.len() == len
            && matches!(
                ins.flow_control(),
                FlowControl::Call | FlowControl::IndirectCall
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc_maps::ProcessMaps;

    #[test]
    fn recognises_calls_before_return_addresses() {
        // call rel32
        assert!(ends_with_call(&[0x90, 0x90, 0xe8, 0x10, 0x20, 0x30, 0x40]));
        // call rax
        assert!(ends_with_call(&[0x01, 0x02, 0x03, 0x04, 0x05, 0xff, 0xd0]));
        // call qword ptr [rip+disp32]
        assert!(ends_with_call(&[0x00, 0xff, 0x15, 0x01, 0x02, 0x03, 0x04]));
        // call qword ptr [rbx+8]
        assert!(ends_with_call(&[0, 0, 0, 0, 0xff, 0x53, 0x08]));
        // mov rbx, rdi; pop rbp... not a call
        assert!(!ends_with_call(&[0x48, 0x89, 0xfb, 0x5d, 0xc3, 0x90, 0x90]));
        assert!(!ends_with_call(&[]));
    }

    #[test]
    fn keeps_at_most_max_open_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let count = MAX_OPEN + 40;
        let mapped: Vec<memmap2::Mmap> = (0..count)
            .map(|i| {
                let path = tmp.path().join(format!("f{i}"));
                std::fs::write(&path, [0u8; 64]).expect("write");
                let file = std::fs::File::open(&path).expect("open");
                // SAFETY: a private file of this test, never changed.
                unsafe { memmap2::Mmap::map(&file) }.expect("mmap")
            })
            .collect();
        let me = std::process::id();
        let maps = ProcessMaps::read(me).expect("maps");
        let ours: Vec<&Mapping> = maps
            .files()
            .filter(|m| m.path.starts_with(&tmp.path().display().to_string()))
            .collect();
        assert_eq!(ours.len(), count);
        let fds = || std::fs::read_dir("/proc/self/fd").expect("fds").count();
        let before = fds();
        let mut modules = Modules::default();
        let ids: Vec<ModuleId> = ours.iter().map(|m| modules.get_or_open(me, m)).collect();
        assert_eq!(modules.open_files(), MAX_OPEN);
        assert!(fds() <= before + MAX_OPEN, "{} descriptors", fds() - before);
        // The first was closed, and is opened again through the process.
        assert!(modules.get(ids[0]).file().is_err());
        assert_eq!(modules.get_or_open(me, ours[0]), ids[0]);
        assert!(modules.get(ids[0]).file().is_ok());
        assert_eq!(modules.open_files(), MAX_OPEN);
        drop(mapped);
        assert!(!only_root_writes(Path::new("/nonexistent/lib/debug")));
    }
}
