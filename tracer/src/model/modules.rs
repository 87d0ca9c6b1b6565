//! The executable files that stack frames point into, opened once each and
//! kept open, so that frames can be checked and symbolized after the
//! process that mapped them has exited (or from outside its container).

use std::{collections::HashMap, fs::File, os::fd::AsRawFd as _, path::PathBuf};

use iced_x86::{Decoder, DecoderOptions, FlowControl};

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
    /// Whether the code before an offset is a call, by (module, offset).
    after_call: HashMap<(ModuleId, u64), bool>,
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
        let verdict = self.get(module).elf.as_ref().is_ok_and(|elf| {
            ends_with_call(elf.bytes_at(file_offset.saturating_sub(7), 7.min(file_offset as usize)))
        });
        self.after_call.insert((module, file_offset), verdict);
        verdict
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
}
