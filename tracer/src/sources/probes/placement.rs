//! Where in a function to put its uprobe.
//!
//! x86-64 uprobes replace an instruction with `int3`. The kernel emulates a
//! few instructions in the trap handler (`push reg`, its nop patterns,
//! `jmp`/`call`/`jcc` with relative targets) and single-steps every other one
//! out of line, which costs about 12x more here (see docs/probes.md). So the
//! probe goes on the first instruction that the kernel emulates *and* that
//! still sees the function's arguments and return address untouched:
//!
//! 1. a leading `endbr64` (a no-op without user-space IBT) is skipped;
//! 2. if the instruction there is emulated, the probe goes there;
//! 3. for functions where a NULL first argument does nothing (`free`), a
//!    leading `test rdi, rdi; je ...` is skipped: every non-NULL call passes
//!    through its fall-through with all registers unchanged;
//! 4. otherwise the probe stays at the entry and is single-stepped.

use std::fmt;

use iced_x86::{
    Code, Decoder, DecoderOptions, Formatter as _, Instruction, IntelFormatter, Register,
};

/// The chosen place, as an offset from the function's first byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub offset: u64,
    /// The instruction at `offset`, in Intel syntax.
    pub instruction: String,
    pub how: How,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// On an emulated instruction at the entry (or right after `endbr64`).
    Emulated,
    /// On an emulated instruction after a NULL check of the first argument.
    AfterNullCheck,
    /// On the entry, which the kernel single-steps.
    SingleStepped,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.how {
            How::Emulated => "emulated",
            How::AfterNullCheck => "emulated, past the NULL check",
            How::SingleStepped => "single-stepped",
        };
        write!(f, "+{} ({}; {how})", self.offset, self.instruction)
    }
}

/// Chooses where to probe a function whose code starts with `code` (at least
/// the first few instructions). `skip_null_check` allows rule 3; it must be
/// false for a function with a return probe or for which NULL matters.
pub fn choose(code: &[u8], skip_null_check: bool) -> Placement {
    let insns = decode(code, 4);
    let mut i = 0;
    if insns
        .first()
        .is_some_and(|(_, ins)| ins.code() == Code::Endbr64)
    {
        i = 1;
    }
    let Some((offset, first)) = insns.get(i) else {
        return Placement {
            offset: 0,
            instruction: "(undecodable)".into(),
            how: How::SingleStepped,
        };
    };
    if is_emulated(code, *offset, first) {
        return at(*offset, first, How::Emulated);
    }
    if skip_null_check
        && is_null_test_of_rdi(first)
        && let Some((_, jump)) = insns.get(i + 1)
        && matches!(jump.code(), Code::Je_rel8_64 | Code::Je_rel32_64)
        && let Some((next_offset, next)) = insns.get(i + 2)
        && is_emulated(code, *next_offset, next)
    {
        return at(*next_offset, next, How::AfterNullCheck);
    }
    let (offset, entry) = &insns[0];
    at(*offset, entry, How::SingleStepped)
}

fn decode(code: &[u8], max: usize) -> Vec<(u64, Instruction)> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut out = Vec::with_capacity(max);
    while decoder.can_decode() && out.len() < max {
        let ins = decoder.decode();
        if ins.is_invalid() {
            break;
        }
        out.push((ins.ip(), ins));
    }
    out
}

fn at(offset: u64, ins: &Instruction, how: How) -> Placement {
    let mut text = String::new();
    IntelFormatter::new().format(ins, &mut text);
    Placement {
        offset,
        instruction: text,
        how,
    }
}

fn is_null_test_of_rdi(ins: &Instruction) -> bool {
    ins.code() == Code::Test_rm64_r64
        && ins.op0_register() == Register::RDI
        && ins.op1_register() == Register::RDI
}

/// The kernel's own nop patterns (arch/x86/include/asm/nops.h, x86_nops),
/// which its uprobe code emulates byte for byte.
const KERNEL_NOPS: [&[u8]; 8] = [
    &[0x90],
    &[0x66, 0x90],
    &[0x0f, 0x1f, 0x00],
    &[0x0f, 0x1f, 0x40, 0x00],
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];

/// Whether arch/x86/kernel/uprobes.c emulates `ins` (push_setup_xol_ops,
/// branch_setup_xol_ops) instead of single-stepping it.
fn is_emulated(code: &[u8], offset: u64, ins: &Instruction) -> bool {
    let Ok(start) = usize::try_from(offset) else {
        return false;
    };
    let Some(bytes) = code.get(start..start + ins.len()) else {
        return false;
    };
    if KERNEL_NOPS.contains(&bytes) {
        return true;
    }
    match ins.code() {
        // `push reg`, with at most a REX.B prefix.
        Code::Push_r64 => bytes.len() == 1 || (bytes.len() == 2 && bytes[0] == 0x41),
        Code::Jmp_rel8_64 | Code::Jmp_rel32_64 | Code::Call_rel32_64 => bytes[0] != 0x66,
        _ => ins.is_jcc_short_or_near() && bytes[0] != 0x66,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_at_entry_is_emulated() {
        // glibc 2.36 malloc: push r12; push rbp
        let p = choose(&[0x41, 0x54, 0x55, 0x53], false);
        assert_eq!((p.offset, p.how), (0, How::Emulated));
        assert_eq!(p.instruction, "push r12");
    }

    #[test]
    fn free_goes_past_its_null_check() {
        // glibc 2.36 free: test rdi,rdi; je +0xbf; push rbp; lea rsi,[rdi-10h]
        let code = [
            0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55, 0x48, 0x8d, 0x77, 0xf0,
        ];
        let p = choose(&code, true);
        assert_eq!((p.offset, p.how), (9, How::AfterNullCheck));
        assert_eq!(p.instruction, "push rbp");
        // Not allowed to skip: the entry is single-stepped.
        let p = choose(&code, false);
        assert_eq!((p.offset, p.how), (0, How::SingleStepped));
    }

    #[test]
    fn endbr64_is_skipped() {
        // endbr64; push rbp
        let p = choose(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5], false);
        assert_eq!((p.offset, p.how), (4, How::Emulated));
    }

    #[test]
    fn other_instructions_are_single_stepped() {
        // glibc 2.36 aligned_alloc: cmp byte ptr [rip+...],0; je; jmp
        let code = [0x80, 0x3d, 0x71, 0x0e, 0x14, 0x00, 0x00, 0x74, 0x07];
        let p = choose(&code, true);
        assert_eq!((p.offset, p.how), (0, How::SingleStepped));
        // mov rax, rsi (reallocarray's entry)
        let p = choose(&[0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2], false);
        assert_eq!(p.how, How::SingleStepped);
    }

    #[test]
    fn nops_and_branches_are_emulated() {
        assert_eq!(
            choose(&[0x0f, 0x1f, 0x44, 0x00, 0x00], false).how,
            How::Emulated
        );
        assert_eq!(
            choose(&[0xe9, 0x00, 0x01, 0x00, 0x00], false).how,
            How::Emulated
        );
        assert_eq!(choose(&[0x74, 0x07], false).how, How::Emulated);
        // A non-kernel nop encoding (nop word ptr [rax+rax]) is not.
        assert_eq!(
            choose(&[0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0], false).how,
            How::SingleStepped
        );
    }

    #[test]
    fn garbage_is_handled() {
        assert_eq!(choose(&[], false).how, How::SingleStepped);
        assert_eq!(choose(&[0x0f], false).how, How::SingleStepped);
    }
}
