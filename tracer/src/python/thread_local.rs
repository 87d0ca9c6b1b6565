//! Where CPython 3.15+ keeps each thread's own thread state: the
//! thread-local `_Py_tss_gilstate` (up to 3.14 a `pthread_getspecific`
//! key, whose glibc side is `tls`). A stripped build does not name the
//! variable, but every build exports `PyGILState_GetThisThreadState`, which
//! only returns it: its code says where the variable is, in the TLS model
//! the build was linked with.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};

use super::memory::{Memory, ReadError};
use crate::elf::ElfFile;

/// Where `_Py_tss_gilstate` is, the same for every thread of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadLocal {
    /// In the static TLS block, at the thread pointer plus `offset`
    /// (negative): libpython linked into the executable.
    Static { offset: i32 },
    /// At `offset` in the TLS block of module `module` (a shared
    /// libpython), which the thread's DTV points to.
    Module { module: u32, offset: i32 },
}

/// How `PyGILState_GetThisThreadState` reads the variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// `mov rax, fs:[offset]`: local-exec, the executable's own TLS.
    ThreadPointer(i32),
    /// `lea rdi, [rip+got]; call __tls_get_addr; mov rax, [rax+disp]`:
    /// general or local dynamic, from a shared library. The loader fills
    /// the GOT pair at `got` (file address) with the module id and the
    /// variable's offset in its block (0 for local dynamic, where the
    /// offset is `disp`).
    Got { got: u64, disp: i32 },
}

#[derive(Debug, thiserror::Error)]
pub enum ThreadLocalError {
    #[error("it exports no PyGILState_GetThisThreadState to find its thread states through")]
    NoFunction,
    #[error(
        "its PyGILState_GetThisThreadState reads the thread state in a way tracer does not know (TLS descriptors?)"
    )]
    Unknown,
    #[error("its TLS module id {0} is implausible")]
    Module(u64),
    #[error(transparent)]
    Unreadable(#[from] ReadError),
}

/// Where `_Py_tss_gilstate` of `elf` (loaded at `bias` in the process
/// `memory` reads) is. `None` while the loader has not filled the GOT yet.
pub fn find(
    elf: &ElfFile,
    bias: u64,
    memory: &Memory,
) -> Result<Option<ThreadLocal>, ThreadLocalError> {
    let f = elf
        .function("PyGILState_GetThisThreadState")
        .ok_or(ThreadLocalError::NoFunction)?;
    // A few instructions: no more than this is decoded.
    let len = if f.size == 0 { 64 } else { f.size.min(64) };
    let access = decode(elf.bytes_at(f.file_offset, len as usize), f.address)
        .ok_or(ThreadLocalError::Unknown)?;
    Ok(match access {
        Access::ThreadPointer(offset) => Some(ThreadLocal::Static { offset }),
        Access::Got { got, disp } => {
            let at = bias.wrapping_add(got);
            let module = memory.u64(at)?;
            if module == 0 {
                return Ok(None);
            }
            let in_block = memory.i64(at + 8)?.wrapping_add(i64::from(disp));
            match (u32::try_from(module), i32::try_from(in_block)) {
                (Ok(module), Ok(offset)) if module < 1 << 16 => {
                    Some(ThreadLocal::Module { module, offset })
                }
                _ => return Err(ThreadLocalError::Module(module)),
            }
        }
    })
}

/// Decodes the function's code at `ip` up to its return.
fn decode(code: &[u8], ip: u64) -> Option<Access> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    // The GOT address passed to __tls_get_addr, and whether it was called.
    let mut got = None;
    let mut called = false;
    while decoder.can_decode() {
        let ins = decoder.decode();
        let from_memory = ins.op_count() == 2 && ins.op1_kind() == OpKind::Memory;
        let no_index = ins.memory_index() == Register::None;
        let disp = || i32::try_from(ins.memory_displacement64() as i64).ok();
        match ins.mnemonic() {
            Mnemonic::Mov
                if from_memory
                    && ins.memory_segment() == Register::FS
                    && ins.memory_base() == Register::None
                    && no_index =>
            {
                return disp().map(Access::ThreadPointer);
            }
            Mnemonic::Lea
                if ins.memory_base() == Register::RIP && ins.op0_register() == Register::RDI =>
            {
                // RIP-relative: the decoder gives the absolute address.
                got = Some(ins.memory_displacement64());
            }
            Mnemonic::Call if got.is_some() => called = true,
            Mnemonic::Mov
                if called && from_memory && ins.memory_base() == Register::RAX && no_index =>
            {
                return Some(Access::Got {
                    got: got?,
                    disp: disp()?,
                });
            }
            Mnemonic::Ret => break,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_tls_of_debian_315() {
        // Debian's python3.15 3.15.2-1 (libpython linked in):
        // endbr64; mov rax, fs:[-0x28]; ret
        let code = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x64, 0x48, 0x8b, 0x04, 0x25, 0xd8, 0xff, 0xff, 0xff, 0xc3,
        ];
        assert_eq!(decode(&code, 0x42fa7d), Some(Access::ThreadPointer(-0x28)));
    }

    #[test]
    fn dynamic_tls_of_debian_libpython315() {
        // Debian's libpython3.15.so.1.0 3.15.2-1 (local dynamic): endbr64;
        // push rbp; mov rbp, rsp; lea rdi, [rip+0x4aa661];
        // call __tls_get_addr; pop rbp; mov rax, [rax+0x28]; ret
        let code = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5, 0x48, 0x8d, 0x3d, 0x61, 0xa6, 0x4a,
            0x00, 0xe8, 0x5c, 0x9d, 0xcf, 0xff, 0x5d, 0x48, 0x8b, 0x80, 0x28, 0x00, 0x00, 0x00,
            0xc3,
        ];
        assert_eq!(
            decode(&code, 0x3cf120),
            Some(Access::Got {
                got: 0x879790,
                disp: 0x28
            })
        );
    }

    #[test]
    fn other_code_is_not_guessed_at() {
        // xor eax, eax; ret
        assert_eq!(decode(&[0x31, 0xc0, 0xc3], 0x1000), None);
        // TLS descriptors: lea rax, [rip+desc]; call [rax]; mov rax, fs:[rax]; ret
        let code = [
            0x48, 0x8d, 0x05, 0x00, 0x10, 0x00, 0x00, 0xff, 0x10, 0x64, 0x48, 0x8b, 0x00, 0xc3,
        ];
        assert_eq!(decode(&code, 0x1000), None);
    }
}
