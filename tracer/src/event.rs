//! The events one recording is made of, in the terms every stage shares:
//! the collector makes them from kernel records, the heap model applies
//! them, the capture stores them and the reports replay them.

use serde::{Deserialize, Serialize};

/// A process id (the kernel's tgid). In a capture and its reports, the
/// bits above `PID_BITS` tell apart the processes that had one pid during
/// the recording (a pid reused): the first keeps its pid, the next is
/// `pid + 2^22`, and so on (`pid_instance`).
pub type Pid = u32;

/// Pids are below 2^22, the kernel's PID_MAX_LIMIT.
pub const PID_BITS: u32 = 22;
/// Processes with one pid told apart in one recording; later ones count as
/// the last.
pub const MAX_PID_INSTANCE: u32 = (1 << (32 - PID_BITS)) - 1;

/// The kernel's pid of a capture's process.
pub fn os_pid(pid: Pid) -> Pid {
    pid & ((1 << PID_BITS) - 1)
}

/// Which process with its pid a capture's process is: 0 for the first in
/// the recording, 1 for the next, ...
pub fn pid_instance(pid: Pid) -> u32 {
    pid >> PID_BITS
}

/// The capture's name of the `instance`th process with kernel pid `pid`.
pub fn with_instance(pid: Pid, instance: u32) -> Pid {
    os_pid(pid) | instance.min(MAX_PID_INSTANCE) << PID_BITS
}

/// How reports name a capture's process: "1234", or "1234#2" for the
/// second process with pid 1234 in the recording.
pub fn pid_label(pid: Pid) -> String {
    match pid_instance(pid) {
        0 => os_pid(pid).to_string(),
        n => format!("{}#{}", os_pid(pid), n + 1),
    }
}
/// A thread id (the kernel's pid).
pub type Tid = u32;

/// An interned stack (see `model::stacks`); a capture defines each id once.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct StackId(pub u32);

/// Something that happened to one process's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeapEvent {
    pub pid: Pid,
    pub tid: Tid,
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    pub kind: EventKind,
}

/// A heap block as an allocation (or a reallocation) made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub addr: u64,
    /// Bytes, and allocations, this block stands for: the call's own size
    /// and 1, or with sampling the estimate it is weighted to.
    pub size: u64,
    pub count: u32,
    pub stack: StackId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Alloc(Block),
    /// `realloc` of a non-NULL pointer: `old_addr` is freed, `block` made
    /// (possibly at the same address).
    Realloc {
        old_addr: u64,
        block: Block,
    },
    Free {
        addr: u64,
    },
    /// An anonymous `mmap`.
    Map {
        addr: u64,
        len: u64,
        stack: StackId,
        /// Made with `MAP_STACK`: a thread's stack (glibc maps every thread
        /// stack so), which the reports keep apart from the heap.
        thread_stack: bool,
    },
    Remap {
        old_addr: u64,
        old_len: u64,
        addr: u64,
        len: u64,
        stack: StackId,
    },
    Unmap {
        addr: u64,
        len: u64,
    },
    /// The process began to exit: its live set now is its leak set.
    Exiting {
        reason: ExitReason,
    },
    /// The process was just forked from `parent`: it starts with a copy of
    /// the parent's live blocks and mappings, so that its frees of them
    /// match (they are its parent's allocations, not its own leaks).
    Fork {
        parent: Pid,
    },
    /// The process replaced its image: everything it had is gone.
    Exec,
}

impl EventKind {
    /// For heap blocks (not mappings): the address freed first, if any, and
    /// the block made, if any. `Alloc`, `Realloc` and `Free` read the same
    /// way through this to whoever tracks blocks.
    pub fn block_change(&self) -> Option<BlockChange> {
        match *self {
            EventKind::Alloc(block) => Some(BlockChange {
                freed: None,
                made: Some(block),
            }),
            EventKind::Realloc { old_addr, block } => Some(BlockChange {
                freed: Some(old_addr),
                made: Some(block),
            }),
            EventKind::Free { addr } => Some(BlockChange {
                freed: Some(addr),
                made: None,
            }),
            _ => None,
        }
    }
}

/// What one event did to the heap's blocks: a free, then an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockChange {
    pub freed: Option<u64>,
    pub made: Option<Block>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// CPython's `Py_FinalizeEx` was entered.
    PyFinalize,
    /// libc's `exit` was entered.
    LibcExit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realloc_reads_as_free_then_alloc() {
        let block = Block {
            addr: 0x20,
            size: 8,
            count: 1,
            stack: StackId(3),
        };
        let change = EventKind::Realloc {
            old_addr: 0x10,
            block,
        }
        .block_change();
        assert_eq!(
            change,
            Some(BlockChange {
                freed: Some(0x10),
                made: Some(block)
            })
        );
        assert_eq!(EventKind::Unmap { addr: 0, len: 1 }.block_change(), None);
    }

    #[test]
    fn reused_pids_are_told_apart() {
        assert_eq!(pid_label(1234), "1234");
        let second = with_instance(1234, 1);
        assert_ne!(second, 1234);
        assert_eq!((os_pid(second), pid_instance(second)), (1234, 1));
        assert_eq!(pid_label(second), "1234#2");
        assert_eq!(pid_instance(with_instance(7, 5000)), MAX_PID_INSTANCE);
        assert_eq!(os_pid(4_194_303), 4_194_303, "the largest pid");
    }
}
