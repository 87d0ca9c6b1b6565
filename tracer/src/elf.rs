//! The few facts tracer needs from an ELF file: where a function is, in
//! virtual addresses and in file offsets, and its code bytes.

use std::{fs::File, path::Path};

use memmap2::Mmap;
use object::{Object, ObjectSegment, ObjectSymbol};

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file tracer can read: {source}")]
    Parse { path: String, source: object::Error },
}

/// A memory-mapped ELF file.
pub struct ElfFile {
    path: String,
    data: Mmap,
}

/// A function symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    /// Virtual address in the file's own address space.
    pub address: u64,
    /// Size in bytes (0 if the symbol table does not say).
    pub size: u64,
    /// Offset of `address` in the file: what uprobes attach to.
    pub file_offset: u64,
}

/// A function symbol found by a test of its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedFunction {
    pub name: String,
    pub function: Function,
}

impl ElfFile {
    pub fn open(path: &Path) -> Result<Self, ElfError> {
        let file = File::open(path).map_err(|source| ElfError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_file(&file, path.display().to_string())
    }

    /// Maps an open file; `path` names it in errors.
    pub fn from_file(file: &File, path: String) -> Result<Self, ElfError> {
        // SAFETY: the mapping is read-only; a file truncated underneath us
        // could fault, which no library on a live system is.
        let data = unsafe { Mmap::map(file) }.map_err(|source| ElfError::Open {
            path: path.clone(),
            source,
        })?;
        let elf = Self { path, data };
        elf.object()?;
        Ok(elf)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn object(&self) -> Result<object::File<'_>, ElfError> {
        object::File::parse(&*self.data).map_err(|source| ElfError::Parse {
            path: self.path.clone(),
            source,
        })
    }

    /// The defined function called `name`: dynamic symbols first (what a
    /// stripped library still has), then the full symbol table.
    pub fn function(&self, name: &str) -> Option<Function> {
        let obj = self.object().ok()?;
        let found = obj.dynamic_symbols().chain(obj.symbols()).find(|s| {
            s.is_definition() && s.kind() == object::SymbolKind::Text && s.name() == Ok(name)
        })?;
        let file_offset = self.file_offset(found.address())?;
        Some(Function {
            address: found.address(),
            size: found.size(),
            file_offset,
        })
    }

    /// The first defined function whose name satisfies `matches`.
    pub fn find_function(&self, matches: impl Fn(&str) -> bool) -> Option<NamedFunction> {
        let obj = self.object().ok()?;
        let found = obj.dynamic_symbols().chain(obj.symbols()).find(|s| {
            s.is_definition()
                && s.kind() == object::SymbolKind::Text
                && s.name().is_ok_and(&matches)
        })?;
        Some(NamedFunction {
            name: found.name().ok()?.to_owned(),
            function: Function {
                address: found.address(),
                size: found.size(),
                file_offset: self.file_offset(found.address()).unwrap_or(0),
            },
        })
    }

    /// The GNU build id, as lowercase hex.
    pub fn build_id(&self) -> Option<String> {
        let obj = self.object().ok()?;
        let id = obj.build_id().ok()??;
        Some(id.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The address of the defined symbol (function or data) called `name`.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        let obj = self.object().ok()?;
        obj.dynamic_symbols()
            .chain(obj.symbols())
            .find(|s| s.is_definition() && s.name() == Ok(name))
            .map(|s| s.address())
    }

    /// Up to `len` bytes of the file's contents at virtual address `vaddr`.
    pub fn bytes_at_vaddr(&self, vaddr: u64, len: usize) -> &[u8] {
        self.file_offset(vaddr)
            .map_or(&[], |offset| self.bytes_at(offset, len))
    }

    /// The virtual address a file offset is loaded at.
    pub fn vaddr_of_offset(&self, file_offset: u64) -> Option<u64> {
        let obj = self.object().ok()?;
        obj.segments().find_map(|seg| {
            let (offset, filesz) = seg.file_range();
            (file_offset >= offset && file_offset < offset + filesz.max(1))
                .then(|| seg.address() + (file_offset - offset))
        })
    }

    /// The file offset a virtual address is loaded from.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        let obj = self.object().ok()?;
        obj.segments().find_map(|seg| {
            let (offset, filesz) = seg.file_range();
            let start = seg.address();
            (vaddr >= start && vaddr < start + filesz).then(|| offset + (vaddr - start))
        })
    }

    /// Up to `len` bytes at a file offset.
    pub fn bytes_at(&self, offset: u64, len: usize) -> &[u8] {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        let end = start.saturating_add(len).min(self.data.len());
        &self.data[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libc() -> ElfFile {
        ElfFile::open(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).expect("system libc")
    }

    #[test]
    fn finds_malloc_and_its_code() {
        let libc = libc();
        let malloc = libc.function("malloc").expect("malloc symbol");
        assert!(malloc.size > 0);
        // libc's text is mapped at file offset == vaddr on x86-64 distributions.
        assert_eq!(libc.file_offset(malloc.address), Some(malloc.file_offset));
        assert_eq!(libc.bytes_at(malloc.file_offset, 16).len(), 16);
        assert!(libc.function("no_such_function_here").is_none());
    }

    #[test]
    fn finds_data_symbols_and_maps_addresses_both_ways() {
        let libc = libc();
        let environ = libc.symbol("environ").expect("environ is exported data");
        assert!(libc.function("environ").is_none(), "not a function");
        let malloc = libc.function("malloc").expect("malloc");
        assert_eq!(
            libc.vaddr_of_offset(malloc.file_offset),
            Some(malloc.address)
        );
        assert_eq!(
            libc.bytes_at_vaddr(malloc.address, 4),
            libc.bytes_at(malloc.file_offset, 4)
        );
        assert!(environ > 0);
    }

    #[test]
    fn bytes_at_is_clamped() {
        let libc = libc();
        assert!(libc.bytes_at(u64::MAX, 8).is_empty());
    }

    #[test]
    fn open_reports_missing_file() {
        let err = ElfFile::open(Path::new("/nonexistent/libc.so.6"))
            .err()
            .expect("error");
        assert!(err.to_string().contains("/nonexistent/libc.so.6"));
    }
}
