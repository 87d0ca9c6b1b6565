//! Where in a function to put its uprobe.
//!
//! x86-64 uprobes replace an instruction with `int3`. The kernel emulates a
//! few instructions in the trap handler (`push reg`, its nop patterns,
//! `jmp`/`call`/`jcc` with relative targets) and single-steps every other one
//! out of line, which costs about 12x more here (see docs/probes.md). So the
//! probe goes on the first instruction of the function's entry block that the
//! kernel emulates, if every instruction before it leaves what the probes
//! read as the call found it:
//!
//! - the stack pointer: the entry program reads the return address there and
//!   the return probe (attached at the same place) replaces it there;
//! - the frame pointer, where the frame walk starts;
//! - the function's argument registers, which the entry program reads;
//!
//! and neither writes memory nor branches, so that every call reaches the
//! probe having done nothing the function's caller could tell. A leading
//! `endbr64`, a `test`/`cmp`, a `mov` into a scratch register all qualify:
//! glibc 2.43's `malloc` (`test rdi,rdi; js`) is probed on its `js`, its
//! `free` on the `je` of its NULL check (`free(NULL)` then traps too, and
//! the program ignores it). If none qualifies the probe stays on the entry,
//! single-stepped.

use std::fmt;

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Formatter as _, Instruction,
    InstructionInfoFactory, IntelFormatter, OpAccess, Register,
};

/// System V's integer argument registers, in order.
const ARGUMENT_REGISTERS: [Register; 6] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
];

/// The integer arguments a function's entry program reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arguments {
    /// Arguments passed before the first one read (a context pointer: 1).
    pub skipped: usize,
    pub read: usize,
}

impl Arguments {
    /// The first `read` arguments.
    pub const fn first(read: usize) -> Self {
        Self { skipped: 0, read }
    }

    /// The same arguments after a context pointer passed first.
    pub const fn after_context(self) -> Self {
        Self {
            skipped: self.skipped + 1,
            read: self.read,
        }
    }

    fn registers(self) -> &'static [Register] {
        let end = (self.skipped + self.read).min(ARGUMENT_REGISTERS.len());
        &ARGUMENT_REGISTERS[self.skipped.min(end)..end]
    }
}

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
    /// On an emulated instruction, after `past` instructions that leave
    /// the call as it was.
    Emulated { past: usize },
    /// On the entry, which the kernel single-steps.
    SingleStepped,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.how {
            How::Emulated { past: 0 } => "emulated".to_owned(),
            How::Emulated { past: 1 } => "emulated, past 1 instruction".to_owned(),
            How::Emulated { past } => format!("emulated, past {past} instructions"),
            How::SingleStepped => "single-stepped".to_owned(),
        };
        write!(f, "+{} ({}; {how})", self.offset, self.instruction)
    }
}

/// How much of a function's start the choice decodes: its entry block's
/// first instructions, enough to reach the first emulated one.
pub const DECODED_BYTES: usize = 32;

/// Chooses where to probe a function whose code starts with `code` (its
/// first `DECODED_BYTES`) and whose entry program reads `args`.
pub fn choose(code: &[u8], args: Arguments) -> Placement {
    let kept = args.registers();
    let mut info = InstructionInfoFactory::new();
    choose_past(code, |ins| leaves_the_call(&mut info, ins, kept))
}

/// Chooses where to probe a function whose program only marks that it was
/// called (`exit`, `Py_FinalizeEx`: it reads no argument and no stack, and
/// has no return probe): the first emulated instruction every call reaches,
/// past instructions that go on to the next one and write no memory but
/// the stack. libc's `exit` starts `sub rsp,8`, which the kernel would
/// single-step in every process on the host that exits, each then mapping
/// a page to step it in.
pub fn choose_marker(code: &[u8]) -> Placement {
    let mut info = InstructionInfoFactory::new();
    choose_past(code, |ins| writes_only_the_stack(&mut info, ins))
}

/// The first emulated instruction of `code`, reached past instructions that
/// `passes` accepts, or else the entry (single-stepped).
fn choose_past(code: &[u8], mut passes: impl FnMut(&Instruction) -> bool) -> Placement {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut entry = None;
    let mut past = 0;
    while decoder.can_decode() {
        // An instruction cut off by the end of `code` decodes as invalid.
        let ins = decoder.decode();
        if ins.is_invalid() {
            break;
        }
        entry.get_or_insert(ins);
        if is_emulated(code, &ins) {
            return at(&ins, How::Emulated { past });
        }
        if !passes(&ins) {
            break;
        }
        past += 1;
    }
    match entry {
        Some(ins) => at(&ins, How::SingleStepped),
        None => Placement {
            offset: 0,
            instruction: "(undecodable)".into(),
            how: How::SingleStepped,
        },
    }
}

fn at(ins: &Instruction, how: How) -> Placement {
    let mut text = String::new();
    IntelFormatter::new().format(ins, &mut text);
    Placement {
        offset: ins.ip(),
        instruction: text,
        how,
    }
}

fn writes(access: OpAccess) -> bool {
    matches!(
        access,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

/// Whether `ins` goes on to the next instruction without writing memory,
/// the stack or frame pointer, or any of `kept` (a write to a part of a
/// register is a write to it).
fn leaves_the_call(
    info: &mut InstructionInfoFactory,
    ins: &Instruction,
    kept: &[Register],
) -> bool {
    if ins.flow_control() != FlowControl::Next {
        return false;
    }
    let info = info.info(ins);
    let writes_memory = info.used_memory().iter().any(|m| writes(m.access()));
    let writes_kept = info.used_registers().iter().any(|r| {
        let full = r.register().full_register();
        writes(r.access())
            && (full == Register::RSP || full == Register::RBP || kept.contains(&full))
    });
    !writes_memory && !writes_kept
}

/// Whether `ins` goes on to the next instruction writing no memory but the
/// stack (addressed through the stack pointer).
fn writes_only_the_stack(info: &mut InstructionInfoFactory, ins: &Instruction) -> bool {
    ins.flow_control() == FlowControl::Next
        && info
            .info(ins)
            .used_memory()
            .iter()
            .all(|m| !writes(m.access()) || m.base() == Register::RSP)
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
fn is_emulated(code: &[u8], ins: &Instruction) -> bool {
    let Ok(start) = usize::try_from(ins.ip()) else {
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
#[path = "placement_tests.rs"]
mod tests;
