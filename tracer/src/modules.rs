//! The executable files that stack frames point into, opened once each and
//! kept open, so that frames can be checked and symbolized after the
//! process that mapped them has exited (or from outside its container).

use std::{collections::HashMap, fs::File, os::fd::AsRawFd as _, path::PathBuf};

use crate::{
    elf::ElfFile,
    proc_maps::{FileId, Mapping, ProcessMaps, mapped_file_path},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId(pub u32);

pub struct Module {
    /// The path as the process that mapped it names it.
    pub path: String,
    /// The file's contents, or why it could not be opened.
    pub elf: Result<ElfFile, String>,
    /// A path that names the same file for as long as tracer runs: the
    /// mapped path itself when this process sees the same file there, else
    /// the descriptor kept open in `file`.
    pub symbolize_path: PathBuf,
    _file: Option<File>,
}

#[derive(Default)]
pub struct Modules {
    ids: HashMap<FileId, ModuleId>,
    list: Vec<Module>,
}

impl Modules {
    /// The module for the file `mapping` maps in `pid`, opened on first use.
    pub fn get_or_open(&mut self, pid: u32, maps: &ProcessMaps, mapping: &Mapping) -> ModuleId {
        let id = FileId::from(mapping);
        if let Some(module) = self.ids.get(&id) {
            return *module;
        }
        let opened = mapped_file_path(pid, maps, mapping);
        let module = match File::open(&opened) {
            Ok(file) => {
                let symbolize_path = if opened.as_os_str() == mapping.path.as_str() {
                    opened
                } else {
                    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
                };
                Module {
                    path: mapping.path.clone(),
                    elf: ElfFile::from_file(&file, mapping.path.clone()).map_err(|e| e.to_string()),
                    symbolize_path,
                    _file: Some(file),
                }
            }
            Err(err) => Module {
                path: mapping.path.clone(),
                elf: Err(format!("cannot open {}: {err}", opened.display())),
                symbolize_path: opened,
                _file: None,
            },
        };
        let module_id = ModuleId(self.list.len() as u32);
        self.list.push(module);
        self.ids.insert(id, module_id);
        module_id
    }

    pub fn get(&self, id: ModuleId) -> &Module {
        &self.list[id.0 as usize]
    }

    /// Where debug files of these modules may be, besides the system's:
    /// `<prefix>/lib/debug` of a binary at `<prefix>/bin/...` unpacked in a
    /// private tree.
    pub fn debug_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![PathBuf::from("/usr/lib/debug"), PathBuf::from("/lib/debug")];
        for m in &self.list {
            let Some(prefix) = std::path::Path::new(&m.path)
                .parent()
                .and_then(|p| p.parent())
            else {
                continue;
            };
            let dir = prefix.join("lib/debug");
            if !dirs.contains(&dir) && dir.is_dir() {
                dirs.push(dir);
            }
        }
        dirs
    }
}
