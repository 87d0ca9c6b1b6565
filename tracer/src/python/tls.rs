//! Where glibc keeps a thread's `pthread_getspecific` values, which is where
//! CPython keeps each thread's state (its GIL-state TSS key).

use iced_x86::{Code, Decoder, DecoderOptions, Register};

use crate::elf::ElfFile;

/// The offset of `specific_1stblock` in glibc's `struct pthread`, read from
/// `pthread_getspecific` itself: its fast path computes
/// `self + (key + N) * 16` (`add rax, N; shl rax, 4`), so the block is at
/// `N * 16`. `None` if the code does not look like that (not glibc).
pub fn specific_block_offset(libc: &ElfFile) -> Option<u32> {
    let f = libc
        .function("pthread_getspecific")
        .or_else(|| libc.function("__pthread_getspecific"))?;
    decode(libc.bytes_at(f.file_offset, 48))
}

fn decode(code: &[u8]) -> Option<u32> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut added: Option<(Register, u64)> = None;
    while decoder.can_decode() {
        let ins = decoder.decode();
        match ins.code() {
            Code::Add_rm64_imm8 | Code::Add_rm64_imm32 => {
                added = Some((ins.op0_register(), ins.immediate(1)));
            }
            Code::Shl_rm64_imm8 if ins.immediate(1) == 4 => {
                if let Some((reg, n)) = added
                    && reg == ins.op0_register()
                {
                    return u32::try_from(n * 16).ok();
                }
            }
            Code::Retnq => break,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_glibc_236() {
        // cmp edi,1fh; ja; mov eax,edi; add rax,31h; shl rax,4; add rax,fs:[10h]
        let code = [
            0x83, 0xff, 0x1f, 0x77, 0x3b, 0x89, 0xf8, 0x48, 0x83, 0xc0, 0x31, 0x48, 0xc1, 0xe0,
            0x04, 0x64, 0x48, 0x03, 0x04, 0x25, 0x10, 0x00, 0x00, 0x00,
        ];
        assert_eq!(decode(&code), Some(0x310));
        assert_eq!(decode(&[0xc3]), None);
    }

    #[test]
    fn reads_this_machines_libc() {
        let libc =
            ElfFile::open(std::path::Path::new("/lib/x86_64-linux-gnu/libc.so.6")).expect("libc");
        // glibc 2.36 (Debian 12): struct pthread.specific_1stblock.
        assert_eq!(specific_block_offset(&libc), Some(0x310));
    }
}
