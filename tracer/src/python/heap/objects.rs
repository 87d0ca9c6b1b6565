//! Recognising a Python object in another process's memory: a block holds
//! one if, at the offset its type's flags say the object starts (after
//! the GC header and the managed-dict pre-header), there is a non-zero
//! reference count and a pointer to a type object, itself validated: its
//! own type is `type` (or a metaclass, whose type is `type`), it is ready,
//! its sizes are plausible and its name is printable. Every word read is
//! the target's and may be garbage; nothing here trusts one.

use std::collections::HashMap;

use crate::python::memory::Memory;

/// `PyTypeObject` fields, the same from 3.8 to 3.15 (the stable ABI).
const TP_NAME: usize = 24;
const TP_BASICSIZE: usize = 32;
const TP_ITEMSIZE: usize = 40;
const TP_FLAGS: usize = 168;
const TYPE_HEAD: usize = TP_FLAGS + 8;

const TPFLAGS_MANAGED_WEAKREF: u64 = 1 << 3;
const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;
const TPFLAGS_READY: u64 = 1 << 12;
const TPFLAGS_HAVE_GC: u64 = 1 << 14;
const TPFLAGS_TYPE_SUBCLASS: u64 = 1 << 31;

/// `sizeof(PyGC_Head)`, before every object of a GC type.
pub const GC_HEAD: u64 = 16;
/// Longest type name read: dotted identifiers are short.
const MAX_NAME: usize = 128;
/// No object's fixed part is larger than this.
const MAX_BASICSIZE: u64 = 1 << 20;

/// A type object, as read from the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    pub name: String,
    pub flags: u64,
    pub basicsize: u64,
    pub itemsize: u64,
}

impl TypeInfo {
    /// Whether its objects are tracked by the cyclic GC (carry a GC header).
    pub fn is_gc(&self) -> bool {
        self.flags & TPFLAGS_HAVE_GC != 0
    }
}

/// The type objects of one process, each read and validated once.
pub struct Types {
    memory: Memory,
    /// `PyType_Type` in the process.
    type_type: u64,
    minor: u8,
    cache: HashMap<u64, Option<TypeInfo>>,
    /// Reads made so far.
    pub reads: u64,
}

/// An object found in a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// Where the object starts, from the block's start.
    pub offset: u64,
    pub type_addr: u64,
}

impl Types {
    pub fn new(memory: Memory, type_type: u64, minor: u8) -> Self {
        Self {
            memory,
            type_type,
            minor,
            cache: HashMap::new(),
            reads: 0,
        }
    }

    /// The type object at `addr`, if it is one.
    pub fn get(&mut self, addr: u64) -> Option<&TypeInfo> {
        if !self.cache.contains_key(&addr) {
            let info = self.read_type(addr);
            self.cache.insert(addr, info);
        }
        self.cache.get(&addr).and_then(Option::as_ref)
    }

    fn head(&mut self, addr: u64) -> Option<[u8; TYPE_HEAD]> {
        if addr == 0 || !addr.is_multiple_of(8) || addr >= 1 << 47 {
            return None;
        }
        let mut head = [0u8; TYPE_HEAD];
        self.reads += 1;
        self.memory.read_into(addr, &mut head).ok()?;
        Some(head)
    }

    fn read_type(&mut self, addr: u64) -> Option<TypeInfo> {
        let head = self.head(addr)?;
        let meta = word(&head, 8);
        if meta != self.type_type {
            // A metaclass (ABCMeta, EnumType): a ready type whose instances
            // are types, and whose own type is `type`.
            let meta_head = self.head(meta)?;
            let meta_flags = word(&meta_head, TP_FLAGS);
            if word(&meta_head, 8) != self.type_type
                || meta_flags & TPFLAGS_TYPE_SUBCLASS == 0
                || meta_flags & TPFLAGS_READY == 0
            {
                return None;
            }
        }
        let flags = word(&head, TP_FLAGS);
        let basicsize = word(&head, TP_BASICSIZE);
        let itemsize = word(&head, TP_ITEMSIZE);
        if flags & TPFLAGS_READY == 0
            || !(16..=MAX_BASICSIZE).contains(&basicsize)
            || itemsize > 1 << 16
        {
            return None;
        }
        let name = self.name(word(&head, TP_NAME))?;
        Some(TypeInfo {
            name,
            flags,
            basicsize,
            itemsize,
        })
    }

    /// A type's `tp_name`: a C string of printable ASCII.
    fn name(&mut self, addr: u64) -> Option<String> {
        if addr == 0 || addr >= 1 << 47 {
            return None;
        }
        let mut buf = [0u8; MAX_NAME];
        self.reads += 1;
        // The name may end near the end of a mapping: read less then.
        if self.memory.read_into(addr, &mut buf).is_err() {
            self.reads += 1;
            let to_page = (4096 - (addr % 4096)) as usize;
            self.memory
                .read_into(addr, &mut buf[..to_page.min(MAX_NAME)])
                .ok()?;
        }
        let end = buf.iter().position(|&b| b == 0)?;
        let name = &buf[..end];
        if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        Some(String::from_utf8_lossy(name).into_owned())
    }

    pub fn minor(&self) -> u8 {
        self.minor
    }

    /// Where an object can start in a block: at 0, after a GC header, or
    /// after a GC header and the managed pre-header.
    fn offsets(&self) -> &'static [u64] {
        if self.minor >= 11 {
            &[0, 16, 32]
        } else {
            &[0, 16]
        }
    }

    /// The object a block of `size` bytes holds, given its first bytes
    /// (`head`, 48 or fewer if the block is smaller).
    pub fn identify(&mut self, head: &[u8], size: u64) -> Option<Found> {
        let minor = self.minor;
        for &offset in self.offsets() {
            let at = offset as usize;
            if head.len() < at + 16 || offset + 16 > size {
                break;
            }
            // 3.14+ split the count: its low half is the count.
            if word(head, at) as u32 == 0 {
                continue;
            }
            let type_addr = word(head, at + 8);
            let Some(t) = self.get(type_addr) else {
                continue;
            };
            let fits = offset + t.basicsize <= size;
            if fits && preheader(minor, t) == offset {
                return Some(Found { offset, type_addr });
            }
        }
        None
    }

    /// The type at `addr`, known valid (returned by `identify`).
    pub fn info(&self, addr: u64) -> Option<&TypeInfo> {
        self.cache.get(&addr).and_then(Option::as_ref)
    }
}

/// What precedes an object of type `t` in its block in CPython
/// 3.`minor`: the GC header, and from 3.11 the managed `__dict__` (from
/// 3.12 also weakref) pointers before it (`_PyType_PreHeaderSize`).
pub fn preheader(minor: u8, t: &TypeInfo) -> u64 {
    let managed = match minor {
        ..=10 => 0,
        11 => t.flags & TPFLAGS_MANAGED_DICT,
        _ => t.flags & (TPFLAGS_MANAGED_DICT | TPFLAGS_MANAGED_WEAKREF),
    };
    let gc = if t.is_gc() { GC_HEAD } else { 0 };
    gc + if managed != 0 { 16 } else { 0 }
}

/// The little-endian word at `at` of `bytes` (0 past its end).
pub fn word(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake type object in this process's memory.
    #[repr(C, align(8))]
    struct FakeType {
        head: [u64; TYPE_HEAD / 8],
    }

    fn fake(meta: u64, name: &'static [u8], flags: u64, basicsize: u64) -> Box<FakeType> {
        let mut t = Box::new(FakeType {
            head: [0; TYPE_HEAD / 8],
        });
        t.head[0] = 1;
        t.head[1] = meta;
        t.head[TP_NAME / 8] = name.as_ptr() as u64;
        t.head[TP_BASICSIZE / 8] = basicsize;
        t.head[TP_FLAGS / 8] = flags;
        t
    }

    fn addr(t: &FakeType) -> u64 {
        t as *const FakeType as u64
    }

    #[test]
    fn finds_objects_after_their_headers_and_checks_types() {
        let mut type_type = fake(0, b"type\0", TPFLAGS_READY | TPFLAGS_HAVE_GC, 900);
        let tt = addr(&type_type);
        type_type.head[1] = tt;
        let bytes = fake(tt, b"bytes\0", TPFLAGS_READY, 33);
        let session = fake(
            tt,
            b"Session\0",
            TPFLAGS_READY | TPFLAGS_HAVE_GC | TPFLAGS_MANAGED_DICT,
            16,
        );
        let not_a_type = fake(addr(&bytes), b"x\0", TPFLAGS_READY, 16);
        let bad_name = fake(tt, b"a b\0", TPFLAGS_READY, 16);
        let mut types = Types::new(Memory::new(std::process::id()), tt, 12);
        let block = |offset: usize, ty: u64| {
            let mut b = vec![0u8; 48];
            b[offset..offset + 8].copy_from_slice(&3u64.to_le_bytes());
            b[offset + 8..offset + 16].copy_from_slice(&ty.to_le_bytes());
            b
        };
        assert_eq!(
            types.identify(&block(0, addr(&bytes)), 2081),
            Some(Found {
                offset: 0,
                type_addr: addr(&bytes)
            })
        );
        // A GC object with a managed dict: GC header and pre-header first.
        assert_eq!(
            types
                .identify(&block(32, addr(&session)), 64)
                .map(|f| f.offset),
            Some(32)
        );
        // Its type at the wrong offset does not count.
        assert_eq!(types.identify(&block(16, addr(&session)), 64), None);
        // A block too small for the type's fixed part.
        assert_eq!(types.identify(&block(0, addr(&bytes)), 32), None);
        assert_eq!(types.identify(&block(0, addr(&not_a_type)), 64), None);
        assert_eq!(types.identify(&block(0, addr(&bad_name)), 64), None);
        assert_eq!(types.identify(&block(0, 0xdead_beef_0000), 64), None);
        // 3.10 has no pre-header: the same object would be at 16.
        let info = types.get(addr(&session)).expect("valid").clone();
        assert_eq!(preheader(10, &info), 16);
        assert_eq!(preheader(11, &info), 32);
        assert_eq!(
            types.info(addr(&bytes)).map(|t| t.name.as_str()),
            Some("bytes")
        );
    }
}
